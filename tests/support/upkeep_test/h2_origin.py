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
import urllib.parse

from .origin_process import OriginProcess, find_binary

BIN_ENV = "UPKEEP_H2_ORIGIN_BIN"


def binary():
    """The h2_origin path, or SkipTest naming the variable (ctest sets it)."""
    return find_binary(BIN_ENV, "h2_origin")


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


class H2Origin(OriginProcess):
    NAME = "h2_origin"
    BIN_ENV = BIN_ENV

    def __init__(self, max_concurrent_streams=100, goaway_after=None, refuse_every=None,
                 no_ping_ack=False, initial_window_size=None, settings_delay_ms=None,
                 cert="default", start=True, timeout=10.0):
        super().__init__(
            options=(("--max-concurrent-streams", str(max_concurrent_streams)),
                     ("--goaway-after", goaway_after), ("--refuse-every", refuse_every),
                     ("--initial-window-size", initial_window_size),
                     ("--settings-delay-ms", settings_delay_ms)),
            switches=["--no-ping-ack"] if no_ping_ack else [],
            cert=cert, start=start, timeout=timeout)

    def _reset_state(self):
        self._conns = {}          # conn -> {"open": bool, "live": set(streams), "peak": int}
        self._requests = []
        self._by_stream = {}      # (conn, stream) -> H2Request
        self._connections_total = 0
        self._max_open_connections = 0

    @property
    def events(self):
        """Every event so far, in order (the list the reader thread appends to)."""
        return self._events

    def _conn(self, cid):
        return self._conns.setdefault(cid, {"open": False, "live": set(), "peak": 0})

    def _on_event(self, ev):
        kind = ev.get("event")
        if kind == "conn_open":
            c = self._conn(ev["conn"])
            c["open"] = True
            self._connections_total += 1
            self._max_open_connections = max(self._max_open_connections, self._open_unlocked())
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

    # -- what tests read (each settles first: see OriginProcess.settle) ----------
    @property
    def connections_total(self):
        """Connections accepted (TCP)."""
        self.settle()
        with self._cond:
            return self._connections_total

    @property
    def max_open_connections(self):
        self.settle()
        with self._cond:
            return self._max_open_connections

    def events_of(self, kind, **match):
        """Events named `kind` whose fields equal every given keyword."""
        self.settle()
        with self._cond:
            return [e for e in self._events
                    if e.get("event") == kind and all(e.get(k) == v for k, v in match.items())]

    def wait_event(self, kind, timeout=10.0, count=1, **match):
        self.wait_for(lambda: len(self.events_of(kind, **match)) >= count, timeout,
                      "%d %s event(s) matching %r" % (count, kind, match))
        return self.events_of(kind, **match)

    @property
    def open_connections(self):
        self.settle()
        with self._cond:
            return self._open_unlocked()

    def wait_open(self, n, timeout=10.0):
        """Until exactly n connections are open (counted from TCP accept to close)."""
        return self.wait_for(lambda: self._open_unlocked() == n, timeout,
                             "open connections == %d" % n)

    @property
    def requests(self):
        self.settle()
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
        self.settle()
        with self._cond:
            return max([c["peak"] for c in self._conns.values()] or [0])

    def stream_of(self, request):
        """The stream_close event of a processed request (None while it is open)."""
        evs = self.events_of("stream_close", conn=request.conn, stream=request.stream)
        return evs[0] if evs else None
