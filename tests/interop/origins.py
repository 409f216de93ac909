"""The real servers of the interoperability suite, each run as our own process on
127.0.0.1 with its own temp dir, and stopped (by PID, then its process group) at the end.

Every server serves the same endpoints (see servers/main.go for the reference):
    /f/<size>      <size> bytes of the test pattern (tests/support/upkeep_test/patterns.py)
    /echo?id=ID    the POST body echoed back
    /headers       big and many response headers, reports the big and many request headers
    /trailers      a chunked body with trailers (where the server can send them)
and counts, at the server, the DISTINCT connections it accepted and the POST ids that
arrived (the access log with the client port where the server has one; /stats on a
separate cleartext port for the Go and Node servers, whose own code counts).

Classes: Apache (httpd + mod_http2, mod_ssl, mod_lua, mod_cgi), H2o (under its
start_server, for graceful restarts), HAProxy (TLS termination, h2 + HTTP/1.1, in front
of the Go server in cleartext), GoServer (net/http), NodeServer (http2 with allowHTTP1).
"""
import collections
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse

from upkeep_test import certs, patterns

HERE = os.path.dirname(os.path.abspath(__file__))
SERVERS_DIR = os.path.join(HERE, "servers")

# Pattern files the static servers (Apache, h2o) serve from disk: every size the checks ask.
SMALL_SIZES = (1, 1000)
MEDIUM_SIZE = 100003
LARGE_SIZE = 8 * 1024 * 1024 + 13
FILE_SIZES = SMALL_SIZES + (MEDIUM_SIZE, LARGE_SIZE, 10000)

APACHE_MODULES = "/usr/lib/apache2/modules"


class Unavailable(Exception):
    """The server cannot run here (package missing, build failed): its cells are skipped."""


def free_port():
    """A 127.0.0.1 port nobody listens on now (bind-probe) for servers that cannot take an
    inherited socket or port 0."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _tls_get(port, path, timeout=2.0, alpn=("http/1.1",)):
    """One direct HTTPS/1.1 GET with Connection: close -> status (raises OSError)."""
    pki = certs.get()
    ctx = ssl.create_default_context(cafile=pki.ca_cert)
    ctx.set_alpn_protocols(list(alpn))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname="origin.test") as s:
            s.sendall(("GET %s HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n"
                       % path).encode())
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else None


def _http_get_json(port, path, timeout=5.0):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return json.loads(r.read())
    finally:
        c.close()


def _id_of(uri):
    q = urllib.parse.urlsplit(uri).query
    ids = urllib.parse.parse_qs(q).get("id")
    return ids[0] if ids else None


class Server:
    NAME = None          # row label: "apache", "h2o", ...
    TITLE = None         # what it is, for the report
    # (check name, protocol or None for both) -> why this server cannot do it (the skip)
    UNSUPPORTED = {}
    TRAILERS_WITH_LENGTH = False  # sends Content-Length AND trailers over h2 (/trailers?cl=1)
    # A server's fixed cap on the number of request header fields over HTTP/1.1 (None: the
    # configured limits are far above what the checks send), with the reason.
    H1_MAX_REQUEST_FIELDS = None

    def __init__(self, work, idle_timeout=120, watch_aborts=False):
        self.work = work            # the run's scratch dir (shared build products)
        self.idle_timeout = idle_timeout
        self.watch_aborts = watch_aborts  # log enough to tell aborts() (costs log volume)
        self.dir = tempfile.mkdtemp(prefix="interop-%s-" % self.NAME, dir=work.tmp)
        os.chmod(self.dir, 0o755)   # Apache's children run as www-data
        self.pki = certs.get()
        self.port = None
        self.procs = []             # every process we started, in start order
        self._logs = []

    # -- what each server provides -------------------------------------------------
    def unsupported(self, check, proto):
        """Why this server cannot do `check` over `proto`, or None."""
        return self.UNSUPPORTED.get((check, proto)) or self.UNSUPPORTED.get((check, None))

    def start_go_backend(self):
        """The Go server in cleartext HTTP/1.1 (-plain), as a backend of this one; it runs
        in our temp dir and is stopped with us. Sets self.backend."""
        self.backend = GoServer(self.work, idle_timeout=120)
        shutil.rmtree(self.backend.dir, ignore_errors=True)
        self.backend.dir = self.dir
        self.backend.procs = self.procs  # stopped with us
        self.backend._logs = self._logs
        self.backend._start_stats_server([self.work.go_binary(), "-plain", "-stats", "127.0.0.1:0"],
                                         name="backend")
        return self.backend

    @classmethod
    def check_available(cls, work):
        """Raise Unavailable(reason) when this server cannot run here."""

    def start(self):
        raise NotImplementedError

    def reload(self):
        """A graceful reload (as its operators do it); returns once the new generation serves."""
        raise NotImplementedError

    def reload_evidence(self):
        """A short text that shows the reload took effect, or None if nothing shows it."""
        raise NotImplementedError

    def aborts(self):
        """[(epoch seconds, what)] for each connection the server itself aborted with an
        error of its own (not a graceful close), as far as its logs tell (watch_aborts)."""
        return []

    def mark(self):
        """Count connections, requests and POST ids from here on."""
        raise NotImplementedError

    def records(self):
        """[{conn, proto, method, id}] since mark(), one per request the server finished."""
        raise NotImplementedError

    # -- derived ---------------------------------------------------------------------
    def connections(self):
        """Distinct upstream connections the server saw since mark()."""
        return {r["conn"] for r in self.records()}

    def post_ids(self):
        return collections.Counter(r["id"] for r in self.records()
                                   if r["method"] == "POST" and r["id"])

    def protocols(self):
        return {r["proto"] for r in self.records()}

    def wait_records(self, n, timeout=5.0):
        """Access logs are written when a request ends: wait (bounded) for n records."""
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records()
            if len(recs) >= n or time.monotonic() >= deadline:
                return recs
            time.sleep(0.05)

    # -- process handling ------------------------------------------------------------
    def _spawn(self, args, name, env=None, stdout=None):
        log = open(os.path.join(self.dir, name + ".log"), "wb")
        self._logs.append(log)
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                             stdout=stdout if stdout is not None else log, stderr=log,
                             env=env, cwd=self.dir, start_new_session=True)
        self.procs.append(p)
        return p

    def _wait_tls_ready(self, proc, timeout=15.0, path="/f/1"):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("%s exited with %s: %s" % (self.NAME, proc.returncode, self.diag()))
            try:
                status = _tls_get(self.port, path)
                if status == 200:
                    return
                last = "status %s" % status
            except (OSError, ValueError, IndexError) as e:
                last = e
            time.sleep(0.05)  # pacing of a bounded readiness poll
        raise RuntimeError("%s not ready within %.0fs (%s): %s" % (self.NAME, timeout, last, self.diag()))

    def diag(self):
        out = []
        for n in sorted(os.listdir(self.dir)):
            if n.endswith(".log") and "access" not in n:
                try:
                    with open(os.path.join(self.dir, n), errors="replace") as f:
                        out.append("%s: %s" % (n, f.read()[-2000:]))
                except OSError:
                    pass
        return "\n".join(out)

    def _stop_one(self, proc):
        """End one process we started (a start attempt that lost its port) and its group."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(5)
                break
            except subprocess.TimeoutExpired:
                pass
        if proc in self.procs:
            self.procs.remove(proc)

    def stop(self):
        """SIGTERM each process we started (newest first), wait (bounded), then SIGKILL its
        process group (the server's own children: Apache's, h2o's, HAProxy's workers)."""
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in reversed(self.procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)  # our own session: pgid == the pid we started
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for f in self._logs:
            f.close()
        self._logs = []

    def cleanup(self):
        self.stop()
        if not os.environ.get("UPKEEP_INTEROP_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def write_pattern_files(self, root):
        os.makedirs(root, exist_ok=True)
        os.chmod(root, 0o755)
        for size in FILE_SIZES:
            path = os.path.join(root, str(size))
            with open(path, "wb") as f:
                f.write(patterns.pattern(size))
            os.chmod(path, 0o644)


# --- servers whose access log counts ----------------------------------------------------

class LogCounted(Server):
    """Counts from an access log whose lines are `key=value ...` with conn= (the client
    port, or a connection id), proto=, method=, uri=."""
    ACCESS_LOG = "access.log"

    def mark(self):
        try:
            self._offset = os.path.getsize(os.path.join(self.dir, self.ACCESS_LOG))
        except FileNotFoundError:
            self._offset = 0

    def _raw_lines(self):
        try:
            with open(os.path.join(self.dir, self.ACCESS_LOG), "rb") as f:
                f.seek(getattr(self, "_offset", 0))
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        return [l for l in data[:end].decode(errors="replace").splitlines() if l.strip()]

    def records(self):
        out = []
        for line in self._raw_lines():
            rec = dict(kv.partition("=")[::2] for kv in line.split() if "=" in kv)
            if "conn" not in rec:
                continue  # not an access-log line (HAProxy's stderr has its notices too)
            out.append({"conn": rec.get("conn"), "proto": rec.get("proto"),
                        "method": rec.get("method"), "id": _id_of(rec.get("uri", "")),
                        "pid": rec.get("pid"), "status": rec.get("status")})
        return out


class Apache(LogCounted):
    NAME = "apache"
    TITLE = "Apache httpd (mpm_event, mod_ssl, mod_http2; mod_lua, mod_cgi, mod_proxy_http)"
    UNSUPPORTED = {
        ("trailers", "http/1.1"): "Apache httpd's HTTP/1.1 output never sends trailers: its chunk "
                                  "filter ends with an empty last chunk (trailers it has, e.g. from "
                                  "mod_proxy_http, go out over h2 only)",
    }
    BIN = "/usr/sbin/apache2"
    # mod_cgi, not mod_cgid: cgid's daemon restarts with a graceful restart, and POSTs that
    # reach it meanwhile get a 503 ("failed reading PID from cgi daemon").
    MODULES = ("mpm_event", "authz_core", "socache_shmcb", "ssl", "http2", "lua", "cgi", "alias",
               "proxy", "proxy_http")

    def unsupported(self, check, proto):
        if check == "trailers" and proto == "h2" and not getattr(self, "backend", None):
            return ("Apache httpd's handlers cannot make trailers (mod_lua has no trailers_out, CGI "
                    "no syntax); mod_proxy_http relays a backend's, and the Go backend is unavailable: %s"
                    % self._no_backend)
        return super().unsupported(check, proto)

    @classmethod
    def check_available(cls, work):
        if not os.access(cls.BIN, os.X_OK):
            raise Unavailable("%s is missing (Debian package apache2: run tests/interop/install-deps)" % cls.BIN)
        for m in cls.MODULES:
            p = os.path.join(APACHE_MODULES, "mod_%s.so" % m)
            if not os.path.exists(p):
                raise Unavailable("%s is missing (apache2-bin without mod_%s)" % (p, m))

    def start(self):
        www = os.path.join(self.dir, "www")
        self.write_pattern_files(os.path.join(www, "f"))
        os.chmod(www, 0o755)
        # /trailers: Apache's handlers cannot make trailers; mod_proxy_http relays those of
        # a backend (the Go server in cleartext), and mod_http2 sends them over h2.
        self.backend = None
        try:
            self.start_go_backend()
        except Unavailable as e:
            self.backend = None
            self._no_backend = str(e)
        for name, mode in (("apache.lua", 0o644), ("apache-echo.cgi", 0o755)):
            shutil.copy(os.path.join(SERVERS_DIR, name), os.path.join(self.dir, name))
            os.chmod(os.path.join(self.dir, name), mode)
        posts = os.path.join(self.dir, "posts.log")  # the CGI (as www-data) appends ids here
        open(posts, "w").close()
        os.chmod(posts, 0o666)
        for attempt in range(3):
            self.port = free_port()
            conf = os.path.join(self.dir, "httpd.conf")
            with open(conf, "w") as f:
                f.write(self._conf())
            proc = self._spawn([self.BIN, "-f", conf, "-DFOREGROUND"], "stderr%d" % attempt)
            try:
                self._wait_tls_ready(proc)
                self.proc = proc
                break
            except RuntimeError:
                if attempt == 2 or "Address already in use" not in self.diag():
                    raise
                self._stop_one(proc)
        self._generations = self._count_notice("resuming normal operations")
        self.wait_records(1)
        self.mark()

    def _conf(self):
        d = self.dir
        mods = "\n".join("LoadModule %s_module %s/mod_%s.so" % (m, APACHE_MODULES, m) for m in self.MODULES)
        user = "User www-data\nGroup www-data\n" if os.geteuid() == 0 else ""
        return """\
ServerRoot {d}
DefaultRuntimeDir {d}
PidFile {d}/httpd.pid
Mutex file:{d} default
ScoreBoardFile {d}/scoreboard
Listen 127.0.0.1:{port}
ServerName origin.test
{user}ErrorLog {d}/error.log
LogLevel {loglevel}
{mods}
StartServers 2
ThreadsPerChild 25
MaxRequestWorkers 100
ServerLimit 8
Protocols h2 http/1.1
H2MaxSessionStreams 100
LogFormat "conn=%{{remote}}p pid=%P k=%k proto=%H method=%m uri=%U%q status=%>s bytes=%B" interop
CustomLog {d}/access.log interop
DocumentRoot {d}/www
<Directory {d}/www>
  Require all granted
</Directory>
Timeout 30
KeepAlive On
KeepAliveTimeout {idle}
MaxKeepAliveRequests 0
LimitRequestFieldSize 65536
LimitRequestFields 1000
LimitRequestLine 65536
SSLEngine on
SSLCertificateFile {cert}
SSLCertificateKeyFile {key}
SSLSessionCache shmcb:{d}/ssl_scache(512000)
ScriptAlias /echo {d}/apache-echo.cgi
<Directory {d}>
  Require all granted
</Directory>
LuaMapHandler ^/headers$ {d}/apache.lua headers
{trailers}""".format(d=d, port=self.port, user=user, mods=mods, idle=self.idle_timeout,
           loglevel=os.environ.get("UPKEEP_INTEROP_APACHE_LOGLEVEL", "warn mpm_event:notice core:notice"
                                   + (" http2:debug" if self.watch_aborts else "")),
           cert=self.pki.server_cert, key=self.pki.server_key,
           trailers=("ProxyPass /trailers http://127.0.0.1:%d/trailers\n" % self.backend.port)
           if self.backend else "")

    def mark(self):
        super().mark()
        self._posts_offset = os.path.getsize(os.path.join(self.dir, "posts.log"))

    def post_ids(self):
        # Counted by the echo CGI as each POST arrives (posts.log): Apache's access log can
        # miss the line of a request a child was serving when a graceful restart ended it.
        with open(os.path.join(self.dir, "posts.log"), "rb") as f:
            f.seek(getattr(self, "_posts_offset", 0))
            data = f.read()
        end = data.rfind(b"\n")
        lines = data[:end].decode(errors="replace").splitlines() if end >= 0 else []
        return collections.Counter(i for i in (_id_of("/?" + q) for q in lines) if i)

    def log_post_ids(self):
        """POST ids as Apache's access log has them (for a note on the difference)."""
        return LogCounted.post_ids(self)

    def _count_notice(self, text):
        try:
            with open(os.path.join(self.dir, "error.log"), errors="replace") as f:
                return f.read().count(text)
        except OSError:
            return 0

    def reload(self):
        # apachectl -k graceful == SIGUSR1 to the parent: children finish what they serve.
        before = self._count_notice("resuming normal operations")
        self._old_pids = {r["pid"] for r in self.records()}
        os.kill(self.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while self._count_notice("resuming normal operations") <= before:
            if time.monotonic() > deadline:
                raise RuntimeError("apache did not finish its graceful restart within 10s: " + self.diag())
            time.sleep(0.05)

    _TIME = re.compile(r"^\[\w+ (\w+ \d+ [\d:]+)\.(\d+) (\d+)\]")
    _SESSION = re.compile(r"h2_session\((\d+)-(\d+),")
    _PID = re.compile(r"\[pid (\d+):tid (\d+)\]")

    def aborts(self):
        """From mod_http2's debug log (watch_aborts), the connections Apache dropped:
        - "AH03402: ... proto error -> shutdown", then a GOAWAY with a library error (e.g.
          -902 "The user callback function failed"): the session failed internally;
        - a child process that exited ("h2_workers: cleanup all workers terminated") while
          one of its sessions had neither sent a GOAWAY nor been closed: dropped without one.
        """
        def when(line):
            m = self._TIME.match(line)
            if not m:
                return None
            t = time.mktime(time.strptime("%s %s" % (m.group(1), m.group(3)), "%b %d %H:%M:%S %Y"))
            return t + float("0." + m.group(2))
        out = {}
        sessions = {}   # "pid-n" -> {"pid", "ended"}
        exits = {}      # pid -> time its workers were cleaned up (the child exiting)
        try:
            with open(os.path.join(self.dir, "error.log"), errors="replace") as f:
                for line in f:
                    if "[http2:" not in line:
                        continue
                    sm = self._SESSION.search(line)
                    if sm:
                        sid = "%s-%s" % sm.groups()
                        st = sessions.setdefault(sid, {"pid": sm.group(1), "ended": False})
                        if ("sent FRAME[GOAWAY" in line or "sent GOAWAY" in line or "pre_close" in line
                                or "[CLEANUP]" in line):
                            st["ended"] = True
                        if ("proto error -> shutdown" in line or "GOAWAY[error=-" in line) and sid not in out:
                            out[sid] = (when(line), "mod_http2: proto error -> shutdown (GOAWAY with "
                                                    "an internal error)")
                    elif "cleanup all workers terminated" in line:
                        pm = self._PID.search(line)
                        if pm and pm.group(1) == pm.group(2):
                            exits[pm.group(1)] = when(line)
        except OSError:
            pass
        for sid, st in sessions.items():
            if not st["ended"] and st["pid"] in exits and sid not in out:
                out[sid] = (exits[st["pid"]], "Apache child %s exited holding an h2 connection it "
                                              "never sent a GOAWAY on" % st["pid"])
        return sorted(v for v in out.values() if v[0] is not None)

    def reload_evidence(self):
        n = self._count_notice("SIGUSR1 received.  Doing graceful restart")
        return ("error.log: %d x \"SIGUSR1 received.  Doing graceful restart\"" % n) if n else None


class H2o(LogCounted):
    NAME = "h2o"
    TITLE = "h2o 2.2 (under start_server, mruby handlers)"
    UNSUPPORTED = {
        ("trailers", None): "h2o 2.2 cannot send response trailers: its mruby handlers have no "
                            "trailer API, and its reverse proxy drops a backend's trailers",
    }
    H1_MAX_REQUEST_FIELDS = (100, "h2o parses at most 100 request header fields over HTTP/1.1 "
                                  "(H2O_MAX_HEADERS, fixed at compile time; 400 beyond)")
    BIN = "/usr/bin/h2o"
    START_SERVER = "/usr/share/h2o/start_server"

    @classmethod
    def check_available(cls, work):
        if not os.access(cls.BIN, os.X_OK):
            raise Unavailable("%s is missing (Debian package h2o: run tests/interop/install-deps)" % cls.BIN)
        if not os.access(cls.START_SERVER, os.X_OK) or not shutil.which("perl"):
            raise Unavailable("%s (and perl) needed for graceful restarts" % cls.START_SERVER)
        r = subprocess.run([cls.BIN, "-v"], capture_output=True, text=True, timeout=10)
        if "mruby: YES" not in r.stdout:
            raise Unavailable("this h2o is built without mruby (needed for /echo and /headers)")

    def start(self):
        www = os.path.join(self.dir, "www")
        self.write_pattern_files(www)
        for attempt in range(3):
            self.port = free_port()
            conf = os.path.join(self.dir, "h2o.conf")
            with open(conf, "w") as f:
                f.write(self._conf(www))
            proc = self._spawn([self.START_SERVER, "--port=127.0.0.1:%d" % self.port,
                                "--pid-file=%s/start_server.pid" % self.dir,
                                "--status-file=%s/start_server.status" % self.dir,
                                "--", self.BIN, "-c", conf], "stderr%d" % attempt)
            try:
                self._wait_tls_ready(proc)
                self.proc = proc
                break
            except RuntimeError:
                if attempt == 2 or "Address already in use" not in self.diag():
                    raise
                self._stop_one(proc)
        self.wait_records(1)
        self.mark()

    def _conf(self, www):
        return """\
listen:
  host: 127.0.0.1
  port: {port}
  ssl:
    certificate-file: {cert}
    key-file: {key}
    ocsp-update-interval: 0
num-threads: 2
http2-idle-timeout: {idle}
http1-request-timeout: {idle}
error-log: {d}/error.log
access-log:
  path: {d}/access.log
  format: "conn=%{{remote}}p cid=%{{connection-id}}x proto=%H method=%m uri=%U%q status=%s bytes=%b"
hosts:
  default:
    paths:
      /f:
        file.dir: {www}
      /echo:
        mruby.handler: |
          Proc.new do |env|
            input = env["rack.input"]
            body = (input && input.read) || ""
            [200, {{"content-type" => "application/octet-stream",
                   "content-length" => body.bytesize.to_s}}, [body]]
          end
      /headers:
        mruby.handler: |
          Proc.new do |env|
            big = env["HTTP_X_BIG"] || ""
            many = env.keys.count {{ |k| k.start_with?("HTTP_X_MANY_") }}
            h = {{"content-type" => "text/plain", "x-big" => "b" * 16384, "x-echo-big" => big}}
            100.times {{ |i| h["x-many-%03d" % i] = "value-%03d" % i }}
            [200, h, ["big=#{{big.bytesize}} many=#{{many}}"]]
          end
""".format(port=self.port, cert=self.pki.server_cert, key=self.pki.server_key, d=self.dir,
           idle=self.idle_timeout, www=www)

    def _workers_started(self):
        text = ""
        for n in os.listdir(self.dir):
            if n.startswith("stderr"):
                with open(os.path.join(self.dir, n), errors="replace") as f:
                    text += f.read()
        return len(re.findall(r"starting new worker \d+", text)), text

    def reload(self):
        # SIGHUP to start_server: a new h2o starts on the same socket, then the old one
        # gets SIGTERM, on which h2o 2.2 shuts down gracefully (GOAWAY, idle close).
        before, _ = self._workers_started()
        os.kill(self.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self._workers_started()[0] <= before:
            if time.monotonic() > deadline:
                raise RuntimeError("h2o: no new worker within 10s: " + self.diag())
            time.sleep(0.05)

    def reload_evidence(self):
        n, _ = self._workers_started()
        return ("start_server: %d workers started" % n) if n > 1 else None


class GoServer(Server):
    NAME = "go"
    TITLE = "Go net/http (servers/main.go)"
    TRAILERS_WITH_LENGTH = True

    @classmethod
    def check_available(cls, work):
        work.go_binary()  # raises Unavailable with the reason

    def _args(self):
        return [self.work.go_binary(), "-cert", self.pki.server_cert, "-key", self.pki.server_key,
                "-idle", "%ds" % self.idle_timeout, "-stats", "127.0.0.1:0"]

    def start(self):
        self._start_stats_server(self._args())
        self._wait_tls_ready(self.proc)
        self.mark()

    def _start_stats_server(self, args, env=None, name="main"):
        self.proc = self._spawn(args, name, env=env, stdout=subprocess.PIPE)
        self.stats_port = None
        deadline = time.monotonic() + 15
        lines = []
        got = threading.Event()

        def read():
            for raw in iter(self.proc.stdout.readline, b""):
                line = raw.decode(errors="replace").strip()
                lines.append(line)
                if line.startswith("listening "):
                    got.set()
            got.set()
        t = threading.Thread(target=read, daemon=True)
        t.start()
        got.wait(max(0, deadline - time.monotonic()))
        for line in lines:
            if line.startswith("stats "):
                self.stats_port = int(line.rsplit(":", 1)[1])
            if line.startswith("listening "):
                self.port = int(line.rsplit(":", 1)[1])
        if not self.port or not self.stats_port:
            raise RuntimeError("%s did not report its ports (%r): %s" % (self.NAME, lines, self.diag()))

    def stats(self):
        return _http_get_json(self.stats_port, "/stats")

    def mark(self):
        s = self.stats()
        self._mark = (len(s["remotes"]), dict(s["posts"]), s["requests"], dict(s["protos"]))

    def connections(self):
        return set(self.stats()["remotes"][self._mark[0]:])

    def post_ids(self):
        now = self.stats()["posts"]
        before = self._mark[1]
        return collections.Counter({k: v - before.get(k, 0) for k, v in now.items()
                                    if v - before.get(k, 0) > 0})

    def protocols(self):
        now = self.stats()["protos"]
        before = self._mark[3]
        return {k for k, v in now.items() if v > before.get(k, 0)}

    def wait_records(self, n, timeout=5.0):
        return None  # counted as the request arrives, nothing to wait for

    def records(self):
        raise NotImplementedError

    def reload(self):
        before = self.stats()["generation"]
        os.kill(self.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.stats()["generation"] <= before:
            if time.monotonic() > deadline:
                raise RuntimeError("%s: no new generation within 10s" % self.NAME)
            time.sleep(0.02)

    def reload_evidence(self):
        g = self.stats()["generation"]
        return ("server generation %d" % g) if g > 1 else None


class NodeServer(GoServer):
    NAME = "node"
    TITLE = "Node.js http2.createSecureServer, allowHTTP1 (servers/server.js)"
    TRAILERS_WITH_LENGTH = True

    @classmethod
    def check_available(cls, work):
        node = shutil.which("node") or shutil.which("nodejs")
        if not node:
            raise Unavailable("node is not installed (Debian package nodejs)")
        r = subprocess.run([node, "-e", "require('http2'); process.stdout.write(process.version)"],
                           capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            raise Unavailable("node cannot load http2: %s" % r.stderr.strip()[:200])
        cls.node = node

    def _args(self):
        return [self.node, "--max-http-header-size=131072", os.path.join(SERVERS_DIR, "server.js"),
                "--cert", self.pki.server_cert, "--key", self.pki.server_key,
                "--idle-ms", str(int(self.idle_timeout * 1000)), "--stats"]


class HAProxy(LogCounted):
    NAME = "haproxy"
    TITLE = "HAProxy (TLS + h2 termination, master-worker) in front of the Go server in cleartext"
    BIN = "/usr/sbin/haproxy"
    ACCESS_LOG = "haproxy.log"
    TRAILERS_WITH_LENGTH = False  # an HTTP/1.1 backend cannot send a length and trailers

    @classmethod
    def check_available(cls, work):
        if not os.access(cls.BIN, os.X_OK):
            raise Unavailable("%s is missing (Debian package haproxy: run tests/interop/install-deps)" % cls.BIN)
        try:
            work.go_binary()
        except Unavailable as e:
            raise Unavailable("its backend, the Go server, is unavailable: %s" % e)

    def start(self):
        self.start_go_backend()
        pem = os.path.join(self.dir, "server.pem")
        with open(pem, "w") as f:
            for p in (self.pki.server_cert, self.pki.server_key):
                with open(p) as src:
                    f.write(src.read())
        os.chmod(pem, 0o600)
        for attempt in range(3):
            self.port = free_port()
            conf = os.path.join(self.dir, "haproxy.cfg")
            with open(conf, "w") as f:
                f.write(self._conf(pem))
            # -W: master-worker; SIGUSR2 to the master is a graceful reload. The log goes to
            # stderr (haproxy.log): one line per request with the client port.
            log = open(os.path.join(self.dir, self.ACCESS_LOG), "ab")
            self._logs.append(log)
            proc = subprocess.Popen([self.BIN, "-W", "-f", conf], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, cwd=self.dir, start_new_session=True)
            self.procs.append(proc)
            try:
                self._wait_tls_ready(proc)
                self.proc = proc
                break
            except RuntimeError:
                if attempt == 2 or "ddress already in use" not in self.diag():
                    raise
                self._stop_one(proc)
        self.wait_records(1)
        self.mark()

    def mark(self):
        super().mark()
        if getattr(self.backend, "stats_port", None):
            self.backend.mark()

    def post_ids(self):
        # POSTs are counted where they arrive, at the Go backend: HAProxy's log can miss a
        # line of a worker that is being replaced (seen: 1 of ~1700 POSTs during reloads).
        return self.backend.post_ids()

    def log_post_ids(self):
        """POST ids as HAProxy's own access log has them (for a note on the difference)."""
        return LogCounted.post_ids(self)

    def diag(self):
        try:
            with open(os.path.join(self.dir, self.ACCESS_LOG), errors="replace") as f:
                return "haproxy: " + f.read()[-3000:]
        except OSError:
            return ""

    def _conf(self, pem):
        return """\
global
  log stderr format raw local0 info
  pidfile {d}/haproxy.pid
  tune.bufsize 131072
  tune.maxrewrite 16384
  tune.http.maxhdr 1000
  hard-stop-after 30s
defaults
  mode http
  log global
  log-format "conn=%cp pid=%pid proto=%HV method=%HM uri=%HU status=%ST bytes=%B"
  timeout connect 5s
  timeout client {idle}s
  timeout server 60s
  timeout http-request 30s
  timeout http-keep-alive {idle}s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:{port} ssl crt {pem} alpn h2,http/1.1
  default_backend be
backend be
  http-reuse safe
  server go 127.0.0.1:{backend}
""".format(d=self.dir, port=self.port, pem=pem, backend=self.backend.port, idle=self.idle_timeout)

    def _notices(self, text):
        try:
            with open(os.path.join(self.dir, self.ACCESS_LOG), errors="replace") as f:
                return f.read().count(text)
        except OSError:
            return 0

    def reload(self):
        before = self._notices("Loading success.")
        os.kill(self.proc.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while self._notices("Loading success.") <= before:
            if time.monotonic() > deadline:
                raise RuntimeError("haproxy: reload not done within 10s: " + self.diag())
            time.sleep(0.05)

    def reload_evidence(self):
        n = self._notices("New worker")
        return ("master: %d workers forked" % n) if n > 1 else None


ALL = (Apache, H2o, HAProxy, GoServer, NodeServer)
