"""A real nginx origin: TLS + HTTP/2 (ALPN h2) and HTTP/1.1 on one 127.0.0.1 port.

The listening socket is bound here (127.0.0.1, port 0), put into listen state, and
handed to nginx through its inherited-socket mechanism (`NGINX="<fd>;"`), so the
port is the kernel's choice and there is no bind race.

Static files with deterministic content (see patterns.py): /1k, /64k, /256k, /1m, /8m.
  /whoami      200, body = the client certificate subject ("" when none was sent)
  /client-cert 200 only with a client certificate signed by the test CA, else 403

The access log (written per request, no buffer) has one line per request:
  conn=<$connection> n=<$connection_requests> proto=<$server_protocol>
  status=<$status> method=<$request_method> uri=<$request_uri> bytes=<$body_bytes_sent>
  reused=<$ssl_session_reused: "r" when the TLS session was resumed, else ".">
so tests count the DISTINCT upstream connections nginx accepted.
"""
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

from . import certs, patterns

NGINX_BIN = os.environ.get("UPKEEP_NGINX", "/usr/sbin/nginx")

FILES = {"1k": 1024, "64k": 64 * 1024, "256k": 256 * 1024, "1m": 1024 * 1024, "8m": 8 * 1024 * 1024}

_CONF = """\
{user}daemon off;
# master_process off + inherited sockets crashes nginx 1.22 (SIGSEGV); keep the master.
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
events {{ worker_connections 4096; }}
http {{
    default_type application/octet-stream;
    types {{ }}
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    log_format upkeep 'conn=$connection n=$connection_requests proto=$server_protocol '
                      'status=$status method=$request_method uri=$request_uri bytes=$body_bytes_sent '
                      'reused=$ssl_session_reused';
    access_log {dir}/access.log upkeep;
    keepalive_requests 100000;
    keepalive_timeout 75s;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        server_name _;
        ssl_protocols {protocols};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client optional;
        root {dir}/www;
        location = /whoami {{ default_type text/plain; return 200 "$ssl_client_s_dn"; }}
        location = /client-cert {{
            default_type text/plain;
            if ($ssl_client_verify != SUCCESS) {{ return 403 "no client cert\\n"; }}
            return 200 "client $ssl_client_s_dn\\n";
        }}
        location / {{ }}
    }}
}}
"""


def parse_log_line(line):
    rec = {}
    for part in line.split():
        k, _, v = part.partition("=")
        rec[k] = v
    return rec


class Nginx:
    def __init__(self, start=True):
        self.pki = certs.get()
        self.dir = tempfile.mkdtemp(prefix="upkeep-nginx-")
        self.proc = None
        self.port = None
        self._log_offset = 0
        www = os.path.join(self.dir, "www")
        os.mkdir(www)
        for name, size in FILES.items():
            with open(os.path.join(www, name), "wb") as f:
                f.write(patterns.pattern(size))
        if start:
            self.start()

    # -- life cycle -------------------------------------------------------------
    def start(self, timeout=15.0):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(511)
        self.port = sock.getsockname()[1]
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            # UPKEEP_TEST_ORIGIN_TLS_MAX=1.2: a TLS 1.2-only origin (see fault_origin.py).
            protocols = ("TLSv1.2" if os.environ.get("UPKEEP_TEST_ORIGIN_TLS_MAX") == "1.2"
                         else "TLSv1.2 TLSv1.3")
            f.write(_CONF.format(protocols=protocols, user="user root;\n" if os.geteuid() == 0 else "", dir=self.dir, port=self.port, cert=self.pki.server_cert,
                                 key=self.pki.server_key, ca=self.pki.ca_cert))
        env = dict(os.environ)
        env["NGINX"] = "%d;" % sock.fileno()
        self._stderr = open(os.path.join(self.dir, "stderr.log"), "wb")
        self.proc = subprocess.Popen(
            [NGINX_BIN, "-p", self.dir, "-c", conf, "-e", os.path.join(self.dir, "error.log")],
            env=env, pass_fds=[sock.fileno()], stdin=subprocess.DEVNULL,
            stdout=self._stderr, stderr=self._stderr)
        sock.close()  # nginx holds its own copy now
        self._wait_ready(timeout)

    def _wait_ready(self, timeout):
        """Ready = a full HTTPS request is answered; then mark the log past the probe."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("nginx exited with %s: %s" % (self.proc.returncode, self._diag()))
            try:
                status, _ = self.fetch("/1k", timeout=1.0)
                if status == 200:
                    break
                last = "status %s" % status
            except OSError as e:
                last = e
            time.sleep(0.05)  # retry pacing while polling a bounded deadline
        else:
            self.stop()
            raise RuntimeError("nginx not ready within %.0fs (%s): %s" % (timeout, last, self._diag()))
        # The probe's log line is written when nginx finalises the request.
        while time.monotonic() < deadline:
            if self._read_log():
                break
            time.sleep(0.01)
        self.mark()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None:
            self._stderr.close()
        self.proc = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()

    def _diag(self):
        out = []
        for n in ("stderr.log", "error.log"):
            try:
                with open(os.path.join(self.dir, n), errors="replace") as f:
                    out.append("%s: %s" % (n, f.read()[-3000:]))
            except OSError:
                pass
        return "\n".join(out)

    # -- direct access (not through upkeep) -------------------------------------
    def ssl_context(self, alpn=("http/1.1",)):
        ctx = ssl.create_default_context(cafile=self.pki.ca_cert)
        ctx.set_alpn_protocols(list(alpn))
        return ctx

    def fetch(self, path, timeout=5.0):
        """GET path directly over TLS/HTTP/1.1 with Connection: close -> (status, body)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as raw:
            with self.ssl_context().wrap_socket(raw, server_hostname="origin.test") as s:
                s.sendall(("GET %s HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n"
                           % path).encode())
                data = bytearray()
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, body

    # -- the access log ---------------------------------------------------------
    def _read_log(self):
        try:
            with open(os.path.join(self.dir, "access.log"), "rb") as f:
                f.seek(self._log_offset)
                data = f.read()
        except FileNotFoundError:
            return []
        # Only complete lines.
        end = data.rfind(b"\n")
        if end < 0:
            return []
        return [parse_log_line(l) for l in data[:end].decode(errors="replace").splitlines() if l]

    def mark(self):
        """Forget everything logged so far (connections_seen() etc. count from here)."""
        try:
            size = os.path.getsize(os.path.join(self.dir, "access.log"))
        except FileNotFoundError:
            size = 0
        self._log_offset = size

    def log_records(self):
        return self._read_log()

    def requests_seen(self):
        return len(self._read_log())

    def connections_seen(self):
        """Distinct connection serial numbers in the log since mark()."""
        return len({r.get("conn") for r in self._read_log()})

    def protocols_seen(self):
        return {r.get("proto") for r in self._read_log()}

    def wait_requests(self, n, timeout=10.0):
        """Poll (bounded) until at least n requests are logged; returns the count seen."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.requests_seen()
            if seen >= n or time.monotonic() >= deadline:
                return seen
            time.sleep(0.02)
