"""A fault-injecting HTTP/2 origin: the h2_origin binary (tests/support/h2_origin), run
as a child process on 127.0.0.1 port 0, with its events read on a background thread.

    with H2Origin(max_concurrent_streams=2) as o:
        ... o.port, o.wait_requests(10), o.max_open_streams(), o.requests_for("/ok")

The binary's path comes from $UPKEEP_H2_ORIGIN_BIN (ctest sets it); when it is not set
the test is skipped with a message saying so. TLS uses the test PKI (certs.py), ALPN
offers "h2" only: a client that does not offer h2 fails the handshake.

Paths (query string arguments):
  /ok?size=N          200, content-length, N bytes of patterns.pattern()
  /nolength?size=N    the same without content-length
  /echo               200, the request body streamed back (no content-length)
  /status?code=N      that status
  /delay?ms=N&size=M  as /ok, response HEADERS after N ms
  /trailers?size=N    body (no content-length unless &cl=1) then trailers
                      x-checksum: sha256 hex of the body, x-body-bytes: N
  /rst?after=N        headers (content-length > N), N body bytes, RST_STREAM(INTERNAL_ERROR)
  /headers            the request header block (pseudo-headers included) as JSON pairs
Every response carries x-conn and x-stream.

Modes (constructor arguments): max_concurrent_streams, initial_window_size,
goaway_after (GOAWAY(NO_ERROR) on each connection after its Nth processed request, with
that request's stream as last-stream-id), refuse_every (every Kth request HEADERS in the
process answered RST_STREAM(REFUSED_STREAM), not processed), no_ping_ack,
settings_delay_ms (every write, SETTINGS first, held back that long).

Events (one JSON object a line on the binary's stdout) are kept in .events; the views
below are built from them under a condition variable, so every wait is event-driven.
"""
import json
import os
import subprocess
import threading
import time
import unittest
import urllib.parse

from . import certs
from .util import stop_process

BIN_ENV = "UPKEEP_H2_ORIGIN_BIN"


def binary():
    """The h2_origin path, or SkipTest naming the variable (ctest sets it)."""
    path = os.environ.get(BIN_ENV)
    if not path:
        raise unittest.SkipTest("%s is not set: build the h2_origin target and run through ctest, "
                                "or export %s=<build>/tests/h2_origin" % (BIN_ENV, BIN_ENV))
    if not os.access(path, os.X_OK):
        raise RuntimeError("%s=%s is not an executable file" % (BIN_ENV, path))
    return path


class H2Request:
    """One processed request, as the origin saw it (from its "request" event)."""

    def __init__(self, ev):
        self.conn = ev["conn"]
        self.stream = ev["stream"]
        self.method = ev["method"]
        self.target = ev["path"]
        self.authority = ev["authority"]
        self.scheme = ev["scheme"]
        self.headers = [tuple(h) for h in ev["headers"]]  # pseudo-headers included
        self.invalid_headers = [tuple(h) for h in ev.get("invalid_headers", [])]
        u = urllib.parse.urlsplit(self.target)
        self.path = u.path
        self.query = dict(urllib.parse.parse_qsl(u.query))
        self.body_bytes = None   # set when the request body ended (request_done)
        self.close_code = None   # the stream's error code when it closed (0 = clean)
        self.sent_bytes = None   # response body bytes the origin sent

    def header(self, name):
        n = name.lower()
        return [v for k, v in self.headers if k == n]

    def header_names(self):
        return [k for k, _ in self.headers]

    def __repr__(self):
        return "<H2Request c%d s%d %s %s>" % (self.conn, self.stream, self.method, self.target)


class H2Origin:
    def __init__(self, max_concurrent_streams=100, goaway_after=None, refuse_every=None,
                 no_ping_ack=False, initial_window_size=None, settings_delay_ms=None,
                 cert="default", start=True, timeout=10.0):
        self.bin = binary()
        pki = certs.get()
        cert_file, key_file = ((pki.other_server_cert, pki.other_server_key) if cert == "other"
                               else (pki.server_cert, pki.server_key))
        self.args = [self.bin, "--cert", cert_file, "--key", key_file, "--port", "0",
                     "--max-concurrent-streams", str(max_concurrent_streams)]
        for flag, value in (("--goaway-after", goaway_after), ("--refuse-every", refuse_every),
                            ("--initial-window-size", initial_window_size),
                            ("--settings-delay-ms", settings_delay_ms)):
            if value is not None:
                self.args += [flag, str(value)]
        if no_ping_ack:
            self.args.append("--no-ping-ack")
        self.port = None
        self.proc = None
        self.returncode = None
        self.events = []
        self._err = []
        self._cond = threading.Condition()
        self._threads = []
        self._reset_state()
        if start:
            self.start(timeout)

    def _reset_state(self):
        self._conns = {}          # conn -> {"open": bool, "live": set(streams), "peak": int}
        self._requests = []
        self._by_stream = {}      # (conn, stream) -> H2Request
        self.connections_total = 0
        self.max_open_connections = 0

    # -- life cycle -------------------------------------------------------------
    def start(self, timeout=10.0):
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        for target, stream in ((self._read_events, self.proc.stdout), (self._read_err, self.proc.stderr)):
            t = threading.Thread(target=target, args=(stream,), daemon=True,
                                 name="h2-origin-%s" % target.__name__)
            t.start()
            self._threads.append(t)
        with self._cond:
            ok = self._cond.wait_for(lambda: self.port is not None or self.proc.poll() is not None,
                                     timeout)
        if not ok or self.port is None:
            self.stop(check=False)
            raise RuntimeError("h2_origin did not report its port within %.0fs (exit %s): %s"
                               % (timeout, self.returncode, self.stderr_text()))

    def _read_events(self, stream):
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                ev = {"event": "unparsable", "line": line}
            with self._cond:
                self._apply(ev)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_err(self, stream):
        for raw in iter(stream.readline, b""):
            with self._cond:
                self._err.append(raw.decode(errors="replace"))

    def _conn(self, cid):
        return self._conns.setdefault(cid, {"open": False, "live": set(), "peak": 0})

    def _apply(self, ev):
        self.events.append(ev)
        kind = ev.get("event")
        if kind == "listening":
            self.port = ev["port"]
        elif kind == "conn_open":
            c = self._conn(ev["conn"])
            c["open"] = True
            self.connections_total += 1
            self.max_open_connections = max(self.max_open_connections, self._open_unlocked())
        elif kind == "conn_close":
            c = self._conn(ev["conn"])
            c["open"] = False
            c["live"].clear()
            c["peak"] = max(c["peak"], ev.get("max_open_streams", 0))
        elif kind in ("request", "refused", "ignored"):
            c = self._conn(ev["conn"])
            c["live"].add(ev["stream"])
            c["peak"] = max(c["peak"], len(c["live"]), ev.get("open", 0))
            if kind == "request":
                r = H2Request(ev)
                self._requests.append(r)
                self._by_stream[(r.conn, r.stream)] = r
        elif kind == "request_done":
            r = self._by_stream.get((ev["conn"], ev["stream"]))
            if r is not None:
                r.body_bytes = ev["body_bytes"]
        elif kind == "stream_close":
            self._conn(ev["conn"])["live"].discard(ev["stream"])
            r = self._by_stream.get((ev["conn"], ev["stream"]))
            if r is not None:
                r.close_code = ev["error_code"]
                r.sent_bytes = ev["sent_bytes"]

    def _open_unlocked(self):
        return sum(1 for c in self._conns.values() if c["open"])

    def stop(self, check=True, timeout=10.0):
        """SIGTERM and wait; with check, a non-zero exit (a crash, a sanitizer report) fails."""
        if self.proc is None:
            return self.returncode
        self.returncode = stop_process(self.proc, self._threads, timeout)
        self.proc = None
        if check and self.returncode != 0:
            raise AssertionError("h2_origin exited %s on SIGTERM; stderr:\n%s"
                                 % (self.returncode, self.stderr_text()[-4000:]))
        return self.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop(check=exc[0] is None)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stderr_text(self):
        with self._cond:
            return "".join(self._err)

    # -- what tests read ---------------------------------------------------------
    def wait_for(self, predicate, timeout=10.0, message=None):
        """Wait (woken by each event) until predicate() is truthy; it runs under the lock
        and may read any view below. Returns its value; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("h2 origin: %s (not true within %.1fs; last value %r; "
                                         "last events %s)" % (message or "condition", timeout, value,
                                                              self.events[-5:]))
                self._cond.wait(left)

    def events_of(self, kind, **match):
        """Events named `kind` whose fields equal every given keyword."""
        with self._cond:
            return [e for e in self.events
                    if e.get("event") == kind and all(e.get(k) == v for k, v in match.items())]

    def wait_event(self, kind, timeout=10.0, count=1, **match):
        self.wait_for(lambda: len(self.events_of(kind, **match)) >= count, timeout,
                      "%d %s event(s) matching %r" % (count, kind, match))
        return self.events_of(kind, **match)

    @property
    def open_connections(self):
        with self._cond:
            return self._open_unlocked()

    def wait_open(self, n, timeout=10.0):
        """Until exactly n connections are open (counted from TCP accept to close)."""
        return self.wait_for(lambda: self._open_unlocked() == n, timeout,
                             "open connections == %d" % n)

    @property
    def requests(self):
        with self._cond:
            return list(self._requests)

    def requests_for(self, path=None, method=None):
        return [r for r in self.requests
                if (path is None or r.path == path) and (method is None or r.method == method)]

    def wait_requests(self, n, timeout=10.0):
        return self.wait_for(lambda: len(self._requests) >= n and len(self._requests), timeout,
                             "at least %d requests" % n)

    def request_ids(self, key="id"):
        """{query[key]: number of times a request carrying it was processed}"""
        out = {}
        for r in self.requests:
            if key in r.query:
                out[r.query[key]] = out.get(r.query[key], 0) + 1
        return out

    @property
    def refused(self):
        return self.events_of("refused")

    @property
    def rst_received(self):
        return self.events_of("rst_recv")

    @property
    def goaways(self):
        return self.events_of("goaway_sent")

    @property
    def pings(self):
        return self.events_of("ping")

    @property
    def invalid_frames(self):
        return self.events_of("invalid_frame")

    @property
    def tls_failures(self):
        return self.events_of("tls_failed")

    def max_open_streams(self):
        """Peak concurrently open streams on any one connection, open ones included."""
        with self._cond:
            return max([c["peak"] for c in self._conns.values()] or [0])

    def stream_of(self, request):
        """The stream_close event of a processed request (None while it is open)."""
        evs = self.events_of("stream_close", conn=request.conn, stream=request.stream)
        return evs[0] if evs else None
