"""Client-side limits (SPEC `limits`): client_header_timeout against a slowloris,
client_idle_timeout, max_client_connections, max_header_bytes, and the memory an idle
client connection costs.

Timing assertions have generous upper bounds (a loaded CI machine) and lower bounds
that would catch a limit that is not applied at all or applied to the wrong phase."""
import os
import resource
import select
import socket
import time
import unittest

from upkeep_test import client
from upkeep_test.client import Conn, ConnectionClosed
from upkeep_test.testcase import UpkeepTestCase
from upkeep_test.util import rss_kib, wait_until

OK = "http://fault.origin.test/ok?size=10"


def peer_closed(sock, timeout):
    """Wait up to `timeout` for the socket to turn readable; -> (closed, data)."""
    r, _, _ = select.select([sock], [], [], timeout)
    if not r:
        return False, b""
    try:
        data = sock.recv(65536)
    except (ConnectionResetError, ConnectionAbortedError):
        return True, b""
    return not data, data


class LimitsTest(UpkeepTestCase):
    def setUp(self):
        self.origin = self.start_fault()

    def start(self, limits, **kw):
        return self.start_upkeep({"limits": limits,
                                  "routes": [self.route("fault.origin.test", self.origin.port)]}, **kw)

    def request_ok(self, conn, size=10):
        conn.request("GET", "http://fault.origin.test/ok?size=%d" % size)
        r = conn.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertPattern(r.body, size)

    # -- client_header_timeout -----------------------------------------------------------------
    def test_slowloris_cut_off_after_header_timeout(self):
        up = self.start({"client_header_timeout": "1s", "client_idle_timeout": "30s"})
        bystander = Conn(up.port, timeout=10)
        self.addCleanup(bystander.close)
        self.request_ok(bystander)

        head = client.build_request("GET", OK + "&slow=1", [("X-Padding", "p" * 40)])
        slow = socket.create_connection(("127.0.0.1", up.port), timeout=10)
        self.addCleanup(slow.close)
        first_byte = time.monotonic()
        closed_at = None
        served = 0
        got = b""
        for i, byte in enumerate(head):  # one byte per 200 ms: the behaviour under test
            try:
                slow.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic()
                break
            if i == 0:
                first_byte = time.monotonic()
            self.request_ok(bystander)  # another client is served meanwhile
            served += 1
            closed, data = peer_closed(slow, 0.2)
            got += data
            if closed:
                closed_at = time.monotonic()
                break
        self.assertIsNotNone(closed_at, "slowloris client sent its whole %d-byte head over %.1fs and was "
                             "never cut off" % (len(head), time.monotonic() - first_byte))
        elapsed = closed_at - first_byte
        print("\nslowloris cut off %.2fs after its first byte (client_header_timeout 1s); "
              "bystander served %d requests meanwhile" % (elapsed, served))
        self.assertGreaterEqual(elapsed, 0.9, "cut off before client_header_timeout")
        self.assertLess(elapsed, 3.5, "client_header_timeout 1s not enforced")
        self.assertFalse(got.startswith(b"HTTP/1.1 2"), "the slowloris request was served: %r" % got[:200])
        self.assertEqual([q for q in self.origin.requests_for("/ok") if q.query.get("slow")], [],
                         "the slowloris request reached the origin")
        self.assertGreaterEqual(served, 3)
        self.request_ok(bystander)

    # -- client_idle_timeout ---------------------------------------------------------------------
    def test_idle_keepalive_connection_closed(self):
        up = self.start({"client_idle_timeout": "1s", "client_header_timeout": "30s"})
        with Conn(up.port, timeout=10) as c:
            self.request_ok(c)
            t = time.monotonic()
            self.assertTrue(c.closed_by_peer(6), "idle keep-alive connection still open after 6s "
                            "(client_idle_timeout 1s)")
            elapsed = time.monotonic() - t
        print("\nidle keep-alive connection closed after %.2fs (client_idle_timeout 1s)" % elapsed)
        self.assertGreaterEqual(elapsed, 0.8, "closed before client_idle_timeout")
        self.assertLess(elapsed, 3.5)
        up.wait_metric("upkeep_downstream_connections_active", lambda v: v == 0)
        # A busy client is not cut off: requests spaced under the timeout keep it open.
        with Conn(up.port, timeout=10) as c:
            for _ in range(4):
                self.request_ok(c)
                closed, _ = peer_closed(c.sock, 0.5)  # pacing below the 1s idle timeout
                self.assertFalse(closed, "a connection idle for 0.5s was closed (client_idle_timeout 1s)")

    # -- max_client_connections --------------------------------------------------------------------
    def assert_not_served(self, c, what):
        """The refused connection is closed with no response, or answered 503."""
        try:
            c.request("GET", OK)
        except OSError:
            return  # refused before the request was even sent
        try:
            r = c.read_response()
        except (ConnectionClosed, OSError):
            return
        self.assertEqual(r.status, 503, "%s was served: %r" % (what, r))

    def test_max_client_connections(self):
        up = self.start({"max_client_connections": 20, "client_idle_timeout": "60s",
                         "client_header_timeout": "60s"})
        conns = []
        for i in range(20):
            c = Conn(up.port, timeout=10)
            self.addCleanup(c.close)
            self.request_ok(c)  # accepted and counted, then idle keep-alive
            conns.append(c)
        up.wait_metric("upkeep_downstream_connections_active", lambda v: v == 20)
        before = len(self.origin.snapshot())
        extra = Conn(up.port, timeout=10)
        self.addCleanup(extra.close)
        self.assert_not_served(extra, "the 21st connection")
        self.assertEqual(len(self.origin.snapshot()), before, "the 21st client's request reached the origin")
        for c in conns:
            self.request_ok(c)  # the first 20 still work
        for c in conns[:5]:
            c.close()
        up.wait_metric("upkeep_downstream_connections_active", lambda v: v == 15)
        again = []
        for i in range(5):
            c = Conn(up.port, timeout=10)
            self.addCleanup(c.close)
            self.request_ok(c)
            again.append(c)
        refused = Conn(up.port, timeout=10)
        self.addCleanup(refused.close)
        self.assert_not_served(refused, "a connection over the limit after re-filling")
        for c in conns[5:] + again:
            self.request_ok(c)

    # -- max_header_bytes ---------------------------------------------------------------------------
    def test_header_limit_with_many_lines(self):
        up = self.start({"max_header_bytes": 1024})
        small = [("X-Line-%03d" % i, "v" * 10) for i in range(30)]  # ~720 bytes of fields
        with Conn(up.port, timeout=10) as c:
            c.request("GET", OK, small)
            self.assertEqual(c.read_response().status, 200, "a head under the limit was refused")
        before = len(self.origin.snapshot())
        big = [("X-Line-%03d" % i, "v" * 10) for i in range(100)]  # ~2400 bytes in 100 lines
        with Conn(up.port, timeout=10) as c:
            try:
                c.request("GET", OK, big)
            except OSError:
                pass
            r = c.read_response()
            self.assertUpkeepError(r, 431, "header_too_large")
        self.assertEqual(len(self.origin.snapshot()), before, "the oversized head reached the origin")
        # The limit counts the whole head: many tiny lines are no way around it.
        tiny = [("X%d" % i, "") for i in range(400)]
        with Conn(up.port, timeout=10) as c:
            try:
                c.request("GET", OK, tiny)
            except OSError:
                pass
            self.assertUpkeepError(c.read_response(), 431, "header_too_large")
        self.assertEqual(len(self.origin.snapshot()), before)
        r = self.fetch(up, "GET", OK)
        self.assertEqual(r.status, 200)

    def test_long_head_after_idle(self):
        # An idle keep-alive connection waits with a 2 KiB buffer; a longer head that
        # follows must grow it and arrive whole, however the bytes are split.
        up = self.start({})
        value = "".join(chr(ord("a") + i % 26) for i in range(6000))
        with Conn(up.port, timeout=10) as c:
            self.request_ok(c)
            c.request("GET", OK, [("X-Long", value)])
            self.assertEqual(c.read_response().status, 200)
            self.request_ok(c)  # and the connection goes on
        seen = [r.header("x-long") for r in self.origin.snapshot() if r.header("x-long")]
        self.assertEqual(seen, [[value]])

    # -- memory per idle client connection ------------------------------------------------------------
    def test_memory_per_idle_connection(self):
        if os.environ.get("UPKEEP_SANITIZED"):
            self.skipTest("RSS of a sanitizer build (redzones, quarantine) says nothing about upkeep")
        n = 2000
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = n + 512
        if soft < want:
            if hard != resource.RLIM_INFINITY and hard < want:
                self.skipTest("RLIMIT_NOFILE hard limit %d < %d" % (hard, want))
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        # upkeep inherits the raised limit.
        up = self.start({"max_client_connections": n + 100, "client_idle_timeout": "300s",
                         "client_header_timeout": "300s"})
        pid = up.proc.pid
        warm = []
        for _ in range(20):  # warm-up: pool, buffers, allocator arenas
            c = Conn(up.port, timeout=10)
            self.addCleanup(c.close)
            self.request_ok(c, 1000)
            warm.append(c)
        up.wait_metric("upkeep_downstream_connections_active", lambda v: v == len(warm))
        rss_before = rss_kib(pid)
        conns = []
        try:
            for i in range(n):
                c = Conn(up.port, timeout=20)
                conns.append(c)
                self.request_ok(c, 1000)  # one exchange, then idle keep-alive
            up.wait_metric("upkeep_downstream_connections_active", lambda v: v == n + len(warm), timeout=30)
            rss_after = rss_kib(pid)
            per_conn = (rss_after - rss_before) / n
            print("\nidle client connections: %d; upkeep VmRSS %d KiB -> %d KiB: %.2f KiB per connection"
                  % (n, rss_before, rss_after, per_conn))
            self.assertLess(per_conn, 64, "an idle client connection costs %.1f KiB" % per_conn)
            for c in conns[::100]:
                self.request_ok(c)  # still usable
        finally:
            for c in conns:
                c.close()
        up.wait_metric("upkeep_downstream_connections_active", lambda v: v == len(warm), timeout=30)


if __name__ == "__main__":
    unittest.main()
