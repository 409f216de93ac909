"""Run the real upkeep binary (path from $UPKEEP_BIN) with a generated YAML config.

    with Upkeep({"routes": [route("origin.test", nginx.port)]}) as up:
        up.port, up.admin_port, up.metrics(), up.stats(), up.access_log()

The config always starts from `listen: 127.0.0.1:0`, `admin: 127.0.0.1:0`,
`shutdown_grace: 2s` and `upstream.ca_file: <test CA>`; the test's dict is merged
over it (dicts merge recursively, anything else replaces).
upkeep prints `proxy=127.0.0.1:PORT` and `admin=127.0.0.1:PORT` on stderr once both
listeners are bound; the access log (one line per request) comes on stdout.
"""
import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time

from . import certs
from .util import stop_process, wait_until

# --- a tiny YAML emitter ------------------------------------------------------

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def _scalar(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a JSON string is a valid YAML double-quoted scalar


def _key(k):
    k = str(k) if not isinstance(k, str) else k
    return k if _PLAIN_KEY.match(k) or k.isdigit() else json.dumps(k)


def _flow(v):
    if isinstance(v, dict):
        return "{" + ", ".join("%s: %s" % (_key(k), _flow(x)) for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_flow(x) for x in v) + "]"
    return _scalar(v)


def to_yaml(obj, indent=0):
    """dict -> block-style YAML; nested dicts are blocks, list items are flow nodes."""
    pad = "  " * indent
    lines = []
    for k, v in obj.items():
        if isinstance(v, dict) and v:
            lines.append("%s%s:" % (pad, _key(k)))
            lines.append(to_yaml(v, indent + 1).rstrip("\n"))
        elif isinstance(v, (list, tuple)) and v:
            lines.append("%s%s:" % (pad, _key(k)))
            for item in v:
                lines.append("%s  - %s" % (pad, _flow(item)))
        else:
            lines.append("%s%s: %s" % (pad, _key(k), _flow(v)))
    return "\n".join(lines) + "\n"


def merge(base, over):
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def route(host, port, **overrides):
    """A route sending `host` to 127.0.0.1:port (any upstream key may be overridden)."""
    r = {"host": host, "connect_to": "127.0.0.1:%d" % port}
    r.update(overrides)
    return r


# --- log / metrics parsing ------------------------------------------------------

_KV = re.compile(r'([A-Za-z_][A-Za-z0-9_.]*)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_text_log_line(line):
    rec = {}
    for k, v in _KV.findall(line):
        if v.startswith('"'):
            try:
                v = json.loads(v)
            except ValueError:
                v = v[1:-1]
        rec[k] = v
    return rec


_METRIC = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text):
    """Prometheus text -> {(name, frozenset(labels.items())): float}."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _METRIC.match(line)
        if not m:
            raise ValueError("unparsable metrics line: %r" % line)
        name, _, labels, value = m.group(1), m.group(2), m.group(3), m.group(4)
        lab = {}
        if labels:
            for k, v in _LABEL.findall(labels):
                lab[k] = v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        out[(name, frozenset(lab.items()))] = float(value)
    return out


class UpkeepFailed(AssertionError):
    pass


class Upkeep:
    def __init__(self, config=None, args=(), start=True, ca_file=True, timeout=15.0, nofile=None):
        """nofile: RLIMIT_NOFILE (soft and hard) for upkeep from its exec on, via
        prlimit(1), which execs upkeep in its own process (so proc.pid is upkeep's)."""
        self.bin = os.environ.get("UPKEEP_BIN")
        if not self.bin:
            raise RuntimeError("UPKEEP_BIN is not set")
        base = {"listen": "127.0.0.1:0", "admin": "127.0.0.1:0", "shutdown_grace": "2s"}
        # The ThreadSanitizer suite runs every test with several event-loop threads.
        if os.environ.get("UPKEEP_TEST_WORKERS"):
            base["workers"] = int(os.environ["UPKEEP_TEST_WORKERS"])
        if ca_file:
            base["upstream"] = {"ca_file": certs.get().ca_cert}
        self.config = merge(base, config or {})
        self.args = list(args)
        self.nofile = nofile
        self.dir = tempfile.mkdtemp(prefix="upkeep-proxy-")
        self.config_path = os.path.join(self.dir, "upkeep.yaml")
        self.proc = None
        self.port = None
        self.admin_port = None
        self._out = []
        self._err = []
        self._cond = threading.Condition()
        self._threads = []
        if start:
            self.start(timeout)

    # -- life cycle -------------------------------------------------------------
    def start(self, timeout=15.0):
        with open(self.config_path, "w") as f:
            f.write(to_yaml(self.config))
        cmd = [self.bin, "--config", self.config_path] + self.args
        if self.nofile is not None:
            cmd = ["prlimit", "--nofile=%d:%d" % (self.nofile, self.nofile), "--"] + cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        for stream, sink in ((self.proc.stdout, self._out), (self.proc.stderr, self._err)):
            t = threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
            t.start()
            self._threads.append(t)
        want_admin = bool(self.config.get("admin"))
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                text = "".join(self._err)
                # text: proxy=127.0.0.1:P ; json log format: "proxy":"127.0.0.1:P"
                m = re.search(r'\bproxy"?\s*[=:]\s*"?127\.0\.0\.1:(\d+)', text)
                a = re.search(r'\badmin"?\s*[=:]\s*"?127\.0\.0\.1:(\d+)', text)
                if m and (a or not want_admin):
                    self.port = int(m.group(1))
                    self.admin_port = int(a.group(1)) if a else None
                    return
                if self.proc.poll() is not None and not self._threads[1].is_alive():  # exited, stderr read
                    raise UpkeepFailed("upkeep exited with %s before listening; config:\n%s\nstderr:\n%s"
                                       % (self.proc.returncode, to_yaml(self.config), text))
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stop()
                    raise UpkeepFailed("upkeep did not report its listeners within %.0fs; stderr:\n%s"
                                       % (timeout, text))
                self._cond.wait(min(left, 0.2))

    def _pump(self, stream, sink):
        for raw in iter(stream.readline, b""):
            with self._cond:
                sink.append(raw.decode(errors="replace"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout=15.0):
        """SIGTERM, wait (bounded), then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        code = stop_process(self.proc, self._threads, timeout)
        shutil.rmtree(self.dir, ignore_errors=True)
        return code

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    # -- output -------------------------------------------------------------------
    def stderr_text(self):
        with self._cond:
            return "".join(self._err)

    def stdout_lines(self):
        with self._cond:
            return [l.rstrip("\n") for l in self._out]

    def access_log(self):
        """Parsed access-log lines (json objects, or key=value dicts for text)."""
        out = []
        for line in self.stdout_lines():
            if not line.strip():
                continue
            if line.lstrip().startswith("{"):
                try:
                    out.append(json.loads(line))
                    continue
                except ValueError:
                    pass
            out.append(parse_text_log_line(line))
        return out

    def wait_access_log(self, predicate, timeout=10.0):
        """Poll until some access-log record satisfies predicate; return it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for rec in self._parsed_unlocked():
                    if predicate(rec):
                        return rec
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("no access-log line matched within %.0fs; stdout:\n%s"
                                         % (timeout, "".join(self._out)[-4000:]))
                self._cond.wait(min(left, 0.2))

    def _parsed_unlocked(self):
        out = []
        for line in self._out:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line) if line.startswith("{") else parse_text_log_line(line))
            except ValueError:
                out.append(parse_text_log_line(line))
        return out

    # -- admin ---------------------------------------------------------------------
    def admin_get(self, path, timeout=5.0):
        """-> (status, {lower-case header: value}, body bytes)"""
        c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def metrics_text(self):
        status, _, body = self.admin_get("/metrics")
        if status != 200:
            raise AssertionError("/metrics answered %d" % status)
        return body.decode()

    def metrics(self):
        return parse_prometheus(self.metrics_text())

    def metric(self, name, **labels):
        """Sum of every series of `name` whose labels include `labels` (0 if none)."""
        want = set(labels.items())
        return sum(v for (n, lab), v in self.metrics().items() if n == name and want <= set(lab))

    def wait_metric(self, name, predicate, timeout=10.0, **labels):
        """Poll until predicate(metric(name, **labels)) holds; returns the value."""
        holder = {}

        def check():
            holder["v"] = self.metric(name, **labels)
            return predicate(holder["v"])
        wait_until(check, timeout, message="metric %s%r (last %r)" % (name, labels, holder.get("v")))
        return holder["v"]

    def stats(self):
        status, _, body = self.admin_get("/stats")
        if status != 200:
            raise AssertionError("/stats answered %d" % status)
        return json.loads(body)

