"""The checks of the interoperability matrix. Each takes a Ctx (one server, one upstream
protocol), starts the upkeep instances it needs through it, and fails with an
AssertionError naming what went wrong; Skip(reason) when the server cannot do it.

Every socket has a timeout and every wait is bounded; upkeep is always started with
max_connections: 1 (reload: 2) so the server's own count of connections shows reuse.
"""
import calendar
import hashlib
import os
import threading
import time
import uuid

from upkeep_test import client, patterns
from upkeep_test.client import Conn, ConnectionClosed
from upkeep_test.proxy import Upkeep, route

import origins

CLIENT_TIMEOUT = 20.0


class Skip(Exception):
    pass


def server_proto(p):
    """A server's own name of the protocol -> "h2" / "http/1.1"."""
    p = (p or "").upper()
    if p.startswith("HTTP/2"):
        return "h2"
    if p.startswith("HTTP/1.1"):
        return "http/1.1"
    return p.lower() or "?"


class Ctx:
    def __init__(self, work, server, proto):
        self.work = work
        self.server = server          # the shared (main) instance of this server
        self.proto = proto            # "h2" | "http/1.1"
        self.notes = []
        self.warnings = []            # shown under the matrix even when the cell passes
        self._cleanups = []
        self.upkeeps = []

    def note(self, text):
        self.notes.append(text)

    def warn(self, text):
        self.warnings.append(text)

    def upkeep(self, server=None, max_connections=1, upstream=None, log_level=None, **route_over):
        server = server or self.server
        protocols = ["h2", "http/1.1"] if self.proto == "h2" else ["http/1.1"]
        r = route("origin.test", server.port, max_connections=max_connections,
                  protocols=protocols, **route_over)
        cfg = {"routes": [r], "log": {"format": "json"}}
        if log_level or os.environ.get("UPKEEP_INTEROP_DEBUG"):
            cfg["log"]["level"] = log_level or "debug"
        if upstream:
            cfg["upstream"] = upstream
        u = Upkeep(cfg)
        self.upkeeps.append(u)
        self._cleanups.append(u.stop)
        return u

    def fresh_server(self, **kw):
        """A server instance of this check's own (reload, idle timeout)."""
        s = type(self.server)(self.work, **kw)
        self._cleanups.append(s.cleanup)
        s.start()
        return s

    def stderr_tails(self, lines=30):
        out = []
        for u in self.upkeeps:
            out.append("upkeep stderr (last %d lines):\n%s" % (lines, "".join(u.stderr_text().splitlines(True)[-lines:])))
            bad = [l for l in u.stdout_lines() if l.strip() and '"error":"-"' not in l]
            if bad:
                out.append("upkeep access log, requests with an error (%d, first 10):\n%s"
                           % (len(bad), "\n".join(bad[:10])))
        return out

    def cleanup(self):
        """Stop what the check started; returns problems found (upkeep died, bad exit)."""
        problems = []
        for u in self.upkeeps:
            if not u.alive():
                problems.append("upkeep was not running at the end of the check (exit %s); stderr tail:\n%s"
                                % (u.proc.returncode if u.proc else None, u.stderr_text()[-1500:]))
        for fn in reversed(self._cleanups):
            try:
                code = fn()
                if fn.__name__ == "stop" and isinstance(code, int) and code != 0 \
                        and not problems:
                    problems.append("upkeep exited %s on SIGTERM" % code)
            except Exception as e:  # noqa: BLE001 - cleanup must go on
                problems.append("cleanup: %r" % e)
        return problems

    # -- helpers ---------------------------------------------------------------------
    @staticmethod
    def url(path):
        return "http://origin.test" + path

    def get(self, c, path, headers=()):
        c.request("GET", self.url(path), headers)
        return c.read_response()

    def expect_protocol(self, up, n, server=None):
        """upkeep's access log and the server both say the column's protocol."""
        server = server or self.server
        recs = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            recs = [r for r in up.access_log() if "status" in r]
            if len(recs) >= n:
                break
            time.sleep(0.05)
        got = {r.get("protocol") for r in recs}
        assert got == {self.proto}, "upkeep's access log says protocol %r, want %r" % (got, self.proto)
        server.wait_records(n)
        seen = {server_proto(p) for p in server.protocols()}
        assert seen == {self.proto}, "the server saw protocol(s) %r, want %r" % (seen, self.proto)


def assert_pattern(body, size, what):
    want = patterns.pattern(size)
    if body != want:
        first = next((i for i, (a, b) in enumerate(zip(body, want)) if a != b), min(len(body), len(want)))
        raise AssertionError("%s: %d bytes (want %d), first difference at byte %d"
                             % (what, len(body), size, first))


def assert_status(resp, status, what):
    assert resp.status == status, "%s: status %d (want %d) %r body=%r" % (
        what, resp.status, status, resp.headers[:12], resp.body[:200])


def parallel(n, fn, timeout=120.0):
    """fn(i) on n threads; raise the first failure (with how many failed)."""
    errors = []
    lock = threading.Lock()

    def run(i):
        try:
            fn(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            with lock:
                errors.append((i, e))
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = sum(t.is_alive() for t in threads)
    if alive:
        raise AssertionError("%d of %d client threads still running after %.0fs" % (alive, n, timeout))
    if errors:
        i, e = errors[0]
        raise AssertionError("%d of %d clients failed; client %d: %s: %s"
                             % (len(errors), n, i, type(e).__name__, e))


def chunked_irregular(data, sizes=(1, 7, 1000, 16384, 65536, 3)):
    out = bytearray()
    i = k = 0
    while i < len(data):
        piece = data[i:i + sizes[k % len(sizes)]]
        out += b"%x\r\n%s\r\n" % (len(piece), piece)
        i += len(piece)
        k += 1
    return bytes(out) + b"0\r\n\r\n"


def new_id(tag):
    return "%s-%s" % (tag, uuid.uuid4().hex[:16])


def echo_path(server, pid):
    return "/echo?id=" + pid


def assert_posts_once(ctx, server, ids, n_records=None, up=None):
    """Each id arrived exactly once at the server."""
    if n_records:
        server.wait_records(n_records)
    # Access logs are written when a request ends, maybe after its response reached us
    # (and mod_http2 may log a connection's last request only on its next activity): wait
    # (bounded) until every id shows, after 2 s nudging the connection with a GET through
    # upkeep, then a little more for a second arrival.
    start = time.monotonic()
    nudged = up is None
    while time.monotonic() < start + 8:
        seen = server.post_ids()
        if all(seen.get(i, 0) >= 1 for i in ids):
            break
        if not nudged and time.monotonic() > start + 2:
            nudged = True
            try:
                client.fetch(up.port, "GET", ctx.url("/f/1"), timeout=CLIENT_TIMEOUT)
            except OSError:
                pass
            ctx.note("POST ids not logged by the server within 2 s: nudged it with a GET")
        time.sleep(0.05)
    time.sleep(0.2)
    seen = server.post_ids()
    bad = {i: seen.get(i, 0) for i in ids if seen.get(i, 0) != 1}
    assert not bad, "POST ids not seen exactly once at the server: %r" % bad


# --- the checks ------------------------------------------------------------------------

def check_small(ctx):
    up = ctx.upkeep()
    ctx.server.mark()
    with Conn(up.port, CLIENT_TIMEOUT) as c:
        for size in origins.SMALL_SIZES:
            r = ctx.get(c, "/f/%d" % size)
            assert_status(r, 200, "GET /f/%d" % size)
            assert_pattern(r.body, size, "GET /f/%d" % size)
    ctx.expect_protocol(up, len(origins.SMALL_SIZES))
    conns = ctx.server.connections()
    assert len(conns) == 1, "two requests in a row used %d upstream connections, want 1" % len(conns)


def check_large(ctx):
    up = ctx.upkeep()
    ctx.server.mark()
    size = origins.LARGE_SIZE

    def one(i):
        with Conn(up.port, CLIENT_TIMEOUT) as c:
            r = ctx.get(c, "/f/%d" % size)
            assert_status(r, 200, "GET /f/%d" % size)
            assert_pattern(r.body, size, "GET /f/%d (client %d)" % (size, i))
    t0 = time.monotonic()
    parallel(2, one, timeout=60)
    one(2)
    ctx.note("3 x %d bytes in %.2fs" % (size, time.monotonic() - t0))
    ctx.expect_protocol(up, 3)


def check_concurrency(ctx):
    up = ctx.upkeep(max_connections=1)
    ctx.server.mark()
    clients, per_client = 40, 5
    sizes = (1000, origins.MEDIUM_SIZE)

    def one(i):
        keepalive = i % 2 == 0   # half keep their connection, half reconnect per request
        c = Conn(up.port, CLIENT_TIMEOUT) if keepalive else None
        try:
            for k in range(per_client):
                size = sizes[(i + k) % 2]
                if keepalive:
                    r = ctx.get(c, "/f/%d" % size)
                else:
                    r = client.fetch(up.port, "GET", ctx.url("/f/%d" % size), timeout=CLIENT_TIMEOUT)
                assert_status(r, 200, "client %d request %d" % (i, k))
                assert_pattern(r.body, size, "client %d request %d" % (i, k))
        finally:
            if c:
                c.close()
    t0 = time.monotonic()
    parallel(clients, one, timeout=120)
    n = clients * per_client
    ctx.note("%d requests from %d concurrent clients in %.2fs" % (n, clients, time.monotonic() - t0))
    ctx.server.wait_records(n)
    conns = ctx.server.connections()
    assert len(conns) == 1, "the server counted %d connections for max_connections: 1 (%s)" % (
        len(conns), sorted(conns)[:10])
    opened = up.metric("upkeep_upstream_connections_opened_total")
    assert opened == 1, "upkeep opened %s upstream connections, want 1" % opened
    ctx.expect_protocol(up, n)


def check_post_length(ctx):
    up = ctx.upkeep()
    ctx.server.mark()
    ids = []
    with Conn(up.port, CLIENT_TIMEOUT) as c:
        for size in (13, 1024 * 1024 + 5):
            pid = new_id("cl")
            ids.append(pid)
            body = os.urandom(size)
            c.request("POST", ctx.url(echo_path(ctx.server, pid)),
                      [("Content-Type", "application/octet-stream")], body)  # adds Content-Length
            r = c.read_response("POST")
            assert_status(r, 200, "POST %d bytes with Content-Length" % size)
            assert r.body == body, "echo of %d bytes came back as %d bytes, %s" % (
                size, len(r.body), "differing" if len(r.body) == size else "")
    assert_posts_once(ctx, ctx.server, ids, len(ids), up=up)
    ctx.expect_protocol(up, len(ids))


def check_post_chunked(ctx):
    up = ctx.upkeep()
    ctx.server.mark()
    ids = []
    with Conn(up.port, CLIENT_TIMEOUT) as c:
        for size in (0, 300 * 1024 + 1):
            pid = new_id("chunked")
            ids.append(pid)
            body = os.urandom(size)
            c.request("POST", ctx.url(echo_path(ctx.server, pid)),
                      [("Content-Type", "application/octet-stream"), ("Transfer-Encoding", "chunked")])
            c.send(chunked_irregular(body))
            r = c.read_response("POST")
            assert_status(r, 200, "chunked POST of %d bytes" % size)
            assert r.body == body, "chunked echo of %d bytes came back as %d bytes%s" % (
                size, len(r.body), ", differing" if len(r.body) == size else "")
    assert_posts_once(ctx, ctx.server, ids, len(ids), up=up)
    ctx.expect_protocol(up, len(ids))


def check_hangup(ctx):
    up = ctx.upkeep(max_connections=1)
    ctx.server.mark()
    size = origins.LARGE_SIZE
    # 1. downloads abandoned after 64 KiB (RST), 3 times
    for i in range(3):
        c = Conn(up.port, CLIENT_TIMEOUT, rcvbuf=65536)
        c.request("GET", ctx.url("/f/%d" % size))
        head = c.read_head()
        assert_status(head, 200, "GET /f/%d" % size)
        c.read_exact(65536)
        c.abort()
    # 2. uploads abandoned mid-body (RST) after 256 KiB of a declared 4 MiB, twice
    for i in range(2):
        c = Conn(up.port, CLIENT_TIMEOUT)
        c.request("POST", ctx.url(echo_path(ctx.server, new_id("hangup"))),
                  [("Content-Length", str(4 * 1024 * 1024))])
        c.send(os.urandom(256 * 1024))
        time.sleep(0.3)  # let upkeep start forwarding it before the client goes away
        c.abort()
    # 3. everything still works, on a connection of the bounded pool
    with Conn(up.port, CLIENT_TIMEOUT) as c:
        for k in range(5):
            r = ctx.get(c, "/f/1000")
            assert_status(r, 200, "GET after the hang-ups (%d)" % k)
            assert_pattern(r.body, 1000, "GET after the hang-ups")
        body = os.urandom(10000)
        pid = new_id("after")
        c.request("POST", ctx.url(echo_path(ctx.server, pid)), [], body)
        r = c.read_response("POST")
        assert_status(r, 200, "POST after the hang-ups")
        assert r.body == body, "POST echo after the hang-ups differs"
    assert up.alive(), "upkeep died"
    active = up.metric("upkeep_upstream_connections_active")
    assert active <= 1, "upkeep has %s active upstream connections (max_connections: 1)" % active
    ctx.server.wait_records(6)
    conns = ctx.server.connections()
    ctx.note("server saw %d connection(s); upkeep closed: %s" % (len(conns), closed_reasons(up)))
    if ctx.proto == "h2":
        assert len(conns) == 1, ("over h2 the hang-ups must reset only their streams, but the server "
                                 "saw %d connections" % len(conns))
    assert_posts_once(ctx, ctx.server, [pid], up=up)


def closed_reasons(up):
    out = {}
    for (name, labels), v in up.metrics().items():
        if name == "upkeep_upstream_connections_closed_total" and v:
            reason = dict(labels).get("reason")
            out[reason] = out.get(reason, 0) + int(v)
    return out or "none"


def _utc(ts):
    """upkeep's access-log time ("2026-12-02T17:28:56.268Z") -> epoch seconds."""
    try:
        base, frac = ts.rstrip("Z").split(".")
        return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + float("0." + frac)
    except (ValueError, AttributeError):
        return None


def attribute_reload_failures(ctx, server, up, failures):
    """Failures during a reload are the server's own, and only warned about, when the
    server logged that it aborted connections then (server.aborts(): its own error, e.g.
    Apache's mod_http2 "proto error -> shutdown", GOAWAY INTERNAL_ERROR), every request
    upkeep logged with an error ended within 0.5 s after such an abort with the server
    gone (upstream_reset / upstream_closed), every failure the clients saw was a wrong or
    truncated response (none hung or lost), and there are no more of them than of those
    records. Anything else fails the check."""
    texts = [t for _, t in failures]
    aborts = server.aborts()
    errs = [r for r in up.access_log() if r.get("error") not in (None, "-")
            and not (r.get("method") == "POST" and r.get("status") == 502)]

    def near_abort(rec):
        t = _utc(rec.get("time"))
        return t is not None and any(-0.05 <= t - a <= 0.5 for a, _ in aborts)
    explained = [r for r in errs if r.get("error") in ("upstream_reset", "upstream_closed") and near_abort(r)]
    other = [r for r in errs if r not in explained]
    if aborts and not other and len(failures) <= len(explained) and all(k == "bad" for k, _ in failures):
        ctx.warn("%d request(s) failed through the server's own fault: it dropped %d connection(s) "
                 "while they were in flight (%s), so upkeep could only relay the truncation or "
                 "answer 502; failures: %s" % (len(failures), len(aborts),
                                               "; ".join(sorted({w for _, w in aborts})), texts[:2]))
        return
    raise AssertionError("%d failed requests during the reload; first: %s%s%s" % (
        len(failures), texts[:3],
        "; upkeep's errors not explained by a server abort: %s"
        % [(r.get("method"), r.get("url"), r.get("status"), r.get("error"), r.get("upstream_conn"))
           for r in other[:3]] if other else "",
        "; server aborts: %d" % len(aborts)))


def check_reload(ctx):
    server = ctx.fresh_server(watch_aborts=True)
    up = ctx.upkeep(server=server, max_connections=2)
    server.mark()
    stop = threading.Event()
    lock = threading.Lock()
    gets, posts, large_done = [], [], []
    failures = []        # (kind, text): kind "lost" = no response at all, "bad" = a wrong one
    server_answers = []  # 5xx the server itself answered (no Upkeep-Error): relayed, not upkeep's

    def get_loop(i):
        c = Conn(up.port, CLIENT_TIMEOUT)
        k = 0
        # clients 0-2 small and medium bodies; client 3 large ones, in flight at the reloads
        sizes = (1000, origins.MEDIUM_SIZE) if i < 3 else (origins.LARGE_SIZE,)
        try:
            while not stop.is_set():
                size = sizes[(i + k) % len(sizes)]
                k += 1
                try:
                    r = ctx.get(c, "/f/%d" % size)
                except (ConnectionClosed, OSError) as e:
                    with lock:
                        failures.append(("lost", "GET /f/%d: client connection lost: %s" % (size, e)))
                    c.close()
                    c = Conn(up.port, CLIENT_TIMEOUT)
                    continue
                ok = r.status == 200 and r.body == patterns.pattern(size)
                if size == origins.LARGE_SIZE:
                    with lock:
                        large_done.append(ok)
                with lock:
                    gets.append(ok)
                    if not ok and r.status >= 500 and not r.header("upkeep-error"):
                        server_answers.append("GET /f/%d: the server answered %d" % (size, r.status))
                    elif not ok:
                        failures.append(("bad", "GET /f/%d: %d %s, %d bytes%s %r" % (
                            size, r.status, r.header("upkeep-error"), len(r.body),
                            "" if r.complete else " (connection closed before the end)", r.body[:80])))
                if r.header("connection", "").lower() == "close" or not r.complete:
                    c.close()
                    c = Conn(up.port, CLIENT_TIMEOUT)
        finally:
            c.close()

    def post_loop(i):
        c = Conn(up.port, CLIENT_TIMEOUT)
        k = 0
        try:
            while not stop.is_set():
                k += 1
                pid = new_id("reload")
                body = os.urandom(20000 + k)
                hdrs = [("Content-Type", "application/octet-stream")]
                try:
                    if k % 2:
                        c.request("POST", ctx.url(echo_path(server, pid)), hdrs, body)
                    else:
                        c.request("POST", ctx.url(echo_path(server, pid)), hdrs + [("Transfer-Encoding", "chunked")])
                        c.send(chunked_irregular(body))
                    r = c.read_response("POST")
                except (ConnectionClosed, OSError) as e:
                    with lock:
                        posts.append((pid, None))
                        failures.append(("lost", "POST %s: client connection lost: %s" % (pid, e)))
                    c.close()
                    c = Conn(up.port, CLIENT_TIMEOUT)
                    continue
                with lock:
                    if r.status == 200 and r.body == body:
                        posts.append((pid, 200))
                    elif r.status == 502 and r.header("upkeep-error"):
                        posts.append((pid, 502))  # allowed: a POST is never replayed
                    elif r.status >= 500 and not r.header("upkeep-error"):
                        posts.append((pid, r.status))
                        server_answers.append("POST: the server answered %d" % r.status)
                    else:
                        posts.append((pid, r.status))
                        failures.append(("bad", "POST %s: %d %s (%d of %d bytes echoed)%s" % (
                            pid, r.status, r.header("upkeep-error"), len(r.body), len(body),
                            "" if r.complete else ", connection closed before the end")))
                if r.header("connection", "").lower() == "close" or not r.complete:
                    c.close()
                    c = Conn(up.port, CLIENT_TIMEOUT)
        finally:
            c.close()

    threads = [threading.Thread(target=get_loop, args=(i,), daemon=True) for i in range(4)]
    threads += [threading.Thread(target=post_loop, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    reloads = []
    try:
        for at in (0.8, 2.2):
            time.sleep(at - (reloads[-1] if reloads else 0))  # traffic before/between the reloads
            t0 = time.monotonic()
            server.reload()
            reloads.append(at)
            ctx.note("reload took %.2fs" % (time.monotonic() - t0))
        time.sleep(1.2)  # traffic after the last reload
    finally:
        stop.set()
        deadline = time.monotonic() + 40
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "client threads hung after the reload"
    n502 = sum(1 for _, s in posts if s == 502)
    server.wait_records(len(gets) + len(posts) // 2, timeout=5)
    answered = [p for p, s in posts if s == 200]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the last log lines, of the old generation too
        seen = server.post_ids()
        if all(seen.get(p, 0) >= 1 for p in answered):
            break
        time.sleep(0.05)
    time.sleep(0.3)
    seen = server.post_ids()
    twice = {p: n for p, n in seen.items() if n > 1}
    evidence = server.reload_evidence()
    conns = server.connections()
    ctx.note("%d GETs (%d of 8 MiB), %d POSTs (%d answered 502), %d server connections, %s; "
             "upkeep closed: %s" % (len(gets), len(large_done), len(posts), n502, len(conns), evidence,
                                    closed_reasons(up)))
    if hasattr(server, "log_post_ids"):
        logged = server.log_post_ids()
        missing = [p for p in seen if p not in logged]
        if missing:
            ctx.note("%d POST(s) that reached the backend are missing from the front server's "
                     "access log: %s" % (len(missing), missing[:3]))
    assert not twice, "POSTs arrived at the server more than once: %r" % twice
    lost = [p for p, s in posts if s == 200 and seen.get(p, 0) != 1]
    assert not lost, "POSTs answered 200 that the server did not count once: %r" % lost[:5]
    if server_answers:
        ctx.warn("the server itself answered %d request(s) with a 5xx during its reload (relayed as "
                 "they were, not upkeep's): %s" % (len(server_answers), server_answers[:3]))
    if failures:
        attribute_reload_failures(ctx, server, up, failures)
    assert len(gets) >= 20 and len(posts) >= 5, "too little traffic (%d GETs, %d POSTs)" % (len(gets), len(posts))
    assert evidence, "the server shows no sign of the reload"
    assert len(conns) >= 2, "the reload did not move upkeep to a new connection (%d)" % len(conns)


def check_idle(ctx):
    idle = 2
    server = ctx.fresh_server(idle_timeout=idle)
    up = ctx.upkeep(server=server, max_connections=1, idle_timeout="60s")
    server.mark()
    with Conn(up.port, CLIENT_TIMEOUT) as c:
        r = ctx.get(c, "/f/1000")
        assert_status(r, 200, "first GET")
        time.sleep(idle + 1.2)  # past the server's idle timeout, far from upkeep's 60s
        pid = new_id("idle")
        body = os.urandom(5000)
        c.request("POST", ctx.url(echo_path(server, pid)), [], body)
        r = c.read_response("POST")
        assert_status(r, 200, "POST (no idempotency key) after the server's idle timeout")
        assert r.body == body, "POST echo differs"
        time.sleep(idle + 1.2)
        r = ctx.get(c, "/f/1000")
        assert_status(r, 200, "GET after the server's idle timeout")
        assert_pattern(r.body, 1000, "GET after the idle timeout")
    server.wait_records(3)
    conns = server.connections()
    ctx.note("server saw %d connections; upkeep closed: %s" % (len(conns), closed_reasons(up)))
    assert_posts_once(ctx, server, [pid], up=up)
    assert len(conns) == 3, ("3 requests %ds apart with a %ds server idle timeout used %d connections, want 3"
                             % (idle + 1, idle, len(conns)))
    ctx.expect_protocol(up, 3, server=server)


def check_trailers(ctx):
    reason = ctx.server.unsupported("trailers", ctx.proto)
    if reason:
        raise Skip(reason)
    up = ctx.upkeep()
    ctx.server.mark()
    body = patterns.pattern(10000)
    sha = hashlib.sha256(body).hexdigest()
    paths = ["/trailers"]
    if ctx.proto == "h2" and type(ctx.server).TRAILERS_WITH_LENGTH:
        paths.append("/trailers?cl=1")  # Content-Length + trailers: upkeep must go chunked
    with Conn(up.port, CLIENT_TIMEOUT) as c:
        for path in paths:
            r = ctx.get(c, path, [("TE", "trailers")])
            assert_status(r, 200, "GET " + path)
            assert_pattern(r.body, 10000, "GET " + path)
            assert "chunked" in (r.header("transfer-encoding") or "").lower(), \
                "GET %s with TE: trailers was not relayed chunked: %r" % (path, r.headers)
            tr = {k.lower(): v for k, v in r.trailers}
            assert tr.get("x-trailer-one") == "one" and tr.get("x-body-sha256") == sha, \
                "GET %s: trailers %r, want x-trailer-one: one and x-body-sha256: %s" % (path, r.trailers, sha)
    ctx.note("checked " + ", ".join(paths))
    ctx.expect_protocol(up, len(paths))


def check_headers(ctx):
    up = ctx.upkeep()
    ctx.server.mark()
    big = ("0123456789abcdefghijklmnopqrstuv" * 512)  # 16 KiB
    many = 100
    cap = type(ctx.server).H1_MAX_REQUEST_FIELDS
    if cap and ctx.proto == "http/1.1":
        many = cap[0] - 10  # room for Host, Via, X-Big and what else upkeep forwards
        ctx.note("%s: sending %d X-Many request headers, not 100" % (cap[1], many))
    hdrs = [("X-Big", big)] + [("X-Many-%03d" % i, "v-%03d" % i) for i in range(many)]
    with Conn(up.port, CLIENT_TIMEOUT) as c:
        r = ctx.get(c, "/headers", hdrs)
        assert_status(r, 200, "GET /headers with a 16 KiB and %d more request headers" % many)
        assert r.body == b"big=16384 many=%d" % many, "the server received: %r" % r.body[:200]
        assert r.header("x-echo-big") == big, "the 16 KiB request header came back %r..." % (
            (r.header("x-echo-big") or "")[:40])
        assert r.header("x-big") == "b" * 16384, "16 KiB response header: %d bytes" % len(r.header("x-big") or "")
        missing = [i for i in range(100) if r.header("x-many-%03d" % i) != "value-%03d" % i]
        assert not missing, "response headers x-many-NNN missing or wrong: %r" % missing[:10]
        # and the connection is still usable
        r = ctx.get(c, "/f/1000")
        assert_status(r, 200, "GET after the big headers")
    ctx.expect_protocol(up, 2)


CHECKS = [
    ("small", check_small, "small bodies (1 B, 1000 B) byte-exact, on one reused connection"),
    ("large", check_large, "8 MiB + 13 B byte-exact, 2 at once and 1 more"),
    ("concurrency", check_concurrency, "40 clients x 5 requests on max_connections: 1 = 1 server connection"),
    ("post-length", check_post_length, "POST echo with Content-Length (13 B, 1 MiB), each id once"),
    ("post-chunked", check_post_chunked, "POST echo chunked (0 B, 300 KiB, irregular chunks), each id once"),
    ("hangup", check_hangup, "clients hang up mid-download and mid-upload; then all works (h2: same connection)"),
    ("reload", check_reload, "2 graceful server reloads under GET (1 KB to 8 MiB) + POST traffic: "
                             "no GET fails, no POST twice"),
    ("idle", check_idle, "server idle timeout 2 s < upkeep's 60 s: GET, POST, GET 3 s apart all succeed"),
    ("trailers", check_trailers, "response trailers reach the client with TE: trailers"),
    ("headers", check_headers, "a 16 KiB header and 100 headers, both ways"),
]
