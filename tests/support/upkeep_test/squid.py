"""A real parent proxy: squid on 127.0.0.1, its own config, logs and pid in a temp dir.

CONNECT is allowed to any port (the origins here listen on high ports) from
127.0.0.1, optionally only with Basic credentials (basic_ncsa_auth over an htpasswd
file made with `openssl passwd -apr1`). Nothing is cached. squid takes no inherited
socket, so the port is picked free just before start and start is retried if another
process took it in between.

access_log lines (squid's native format) are written when a tunnel ends; connects()
returns the CONNECT targets with their status, e.g. ("127.0.0.1:4431", 200).
"""
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from .util import wait_until

SQUID_BIN = os.environ.get("UPKEEP_SQUID", "/usr/sbin/squid")
NCSA_AUTH = "/usr/lib/squid/basic_ncsa_auth"

_CONF = """\
http_port 127.0.0.1:{port}
pid_filename {dir}/squid.pid
cache_log {dir}/cache.log
access_log stdio:{dir}/access.log squid
cache_store_log none
logfile_rotate 0
netdb_filename none
coredump_dir {dir}
cache deny all
cache_mem 8 MB
pinger_enable off
shutdown_lifetime 0 seconds
{user}
acl CONNECT method CONNECT
acl from_test src 127.0.0.1/32
{auth}
http_access deny !from_test
http_access allow {allow}
http_access deny all
"""

_AUTH = """\
auth_param basic program {helper} {dir}/htpasswd
auth_param basic realm upkeep-test
acl authed proxy_auth REQUIRED
"""


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Squid:
    def __init__(self, user=None, password=None):
        if not os.access(SQUID_BIN, os.X_OK):
            raise RuntimeError("squid not installed (%s): run .ci/install-deps" % SQUID_BIN)
        self.dir = tempfile.mkdtemp(prefix="upkeep-squid-")
        self.proc = None
        self.port = None
        self.auth = user is not None
        # Run as root, squid switches to its own user, which must own its files.
        self.run_as = None
        if os.geteuid() == 0:
            self.run_as = "proxy"
            pw = pwd.getpwnam(self.run_as)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        if self.auth:
            hashed = subprocess.run(["openssl", "passwd", "-apr1", password], check=True,
                                    capture_output=True, text=True).stdout.strip()
            path = os.path.join(self.dir, "htpasswd")
            with open(path, "w") as f:
                f.write("%s:%s\n" % (user, hashed))
            os.chmod(path, 0o644)
        try:
            self._start()
        except BaseException:
            self.cleanup()
            raise

    def _start(self):
        last = ""
        for _ in range(3):
            self.port = _free_port()
            conf = os.path.join(self.dir, "squid.conf")
            with open(conf, "w") as f:
                f.write(_CONF.format(
                    port=self.port, dir=self.dir,
                    user="cache_effective_user %s" % self.run_as if self.run_as else "",
                    auth=_AUTH.format(helper=NCSA_AUTH, dir=self.dir) if self.auth else "",
                    allow="authed" if self.auth else "from_test"))
            self.proc = subprocess.Popen([SQUID_BIN, "-N", "-f", conf], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                    return
                except OSError:
                    time.sleep(0.05)
            last = self._diag()
            self._kill()
        raise RuntimeError("squid did not start:\n" + last)

    def _diag(self):
        text = ""
        try:
            with open(os.path.join(self.dir, "cache.log")) as f:
                text = f.read()[-3000:]
        except OSError:
            pass
        return text

    def _kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def connects(self):
        """(target, status) of every CONNECT squid has logged (at tunnel end)."""
        out = []
        try:
            with open(os.path.join(self.dir, "access.log")) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 7 and parts[5] == "CONNECT":
                        code = parts[3].rpartition("/")[2]
                        out.append((parts[6], int(code) if code.isdigit() else 0))
        except FileNotFoundError:
            pass
        return out

    def wait_connects(self, n, timeout=10.0):
        return wait_until(lambda: len(self.connects()) >= n, timeout=timeout)

    def cleanup(self):
        self._kill()
        shutil.rmtree(self.dir, ignore_errors=True)
