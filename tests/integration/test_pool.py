"""The upstream pool: hard bound, queue, idle eviction, stale connections, recycling,
draining abandoned bodies, and faults in the middle of a response or upload."""
import concurrent.futures
import hashlib
import math
import os
import time
import unittest

from upkeep_test import client, patterns
from upkeep_test.client import Conn
from upkeep_test.testcase import UpkeepTestCase

HOST = "fault.origin.test"


def url(path):
    return "http://%s%s" % (HOST, path)


class PoolTest(UpkeepTestCase):
    def setUp(self):
        self.origin = self.start_fault()

    def upkeep(self, **route_overrides):
        return self.start_upkeep({"routes": [self.route(HOST, self.origin.port, **route_overrides)]})

    def get(self, up, path, **kw):
        return self.fetch(up, "GET", url(path), **kw)

    def closed_reason(self, up, reason):
        return up.metric("upkeep_upstream_connections_closed_total", reason=reason)

    # -- hard bound ------------------------------------------------------------------
    def test_hard_bound_200_concurrent_clients(self):
        up = self.upkeep(max_connections=4)
        n = 200

        def one(i):
            size = 100 + i
            r = client.fetch(up.port, "GET", url("/delay-headers?ms=50&size=%d" % size), timeout=30)
            if r.status != 200:
                return "request %d: %r %r" % (i, r, r.body[:200])
            if r.body != patterns.pattern(size):
                return "request %d: wrong body (%d bytes)" % (i, len(r.body))
            return None

        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            results = list(pool.map(one, range(n), timeout=120))
        failures = [r for r in results if r]
        self.assertFalse(failures, "%d failures, first: %s" % (len(failures), failures[:3]))
        print("\nhard bound: %d concurrent clients in %.1fs, origin max open %d, total accepted %d"
              % (n, time.monotonic() - start, self.origin.max_open, self.origin.connections_total), flush=True)
        self.assertEqual(len(self.origin.requests_for("/delay-headers")), n)
        self.assertLessEqual(self.origin.max_open, 4, "origin saw %d connections open at once" % self.origin.max_open)

    # -- queue ---------------------------------------------------------------------------
    def test_queue_full_503(self):
        up = self.upkeep(max_connections=1, queue={"max_pending": 2, "timeout": "20s"})
        conns = []
        try:
            for i in range(3):
                c = Conn(up.port, timeout=20)
                conns.append(c)
                c.request("GET", url("/delay-headers?ms=2000&size=10"))
                if i == 0:
                    self.origin.wait_requests(1)
            up.wait_metric("upkeep_pool_pending_requests", lambda v: v == 2)
            r = self.get(up, "/ok?size=10")
            self.assertUpkeepError(r, 503, "queue_full")
            self.assertTrue(r.header("retry-after"), "503 without Retry-After: %r" % r)
            for c in conns:
                r = c.read_response()
                self.assertEqual(r.status, 200, r)
                self.assertPattern(r.body, 10)
        finally:
            for c in conns:
                c.close()
        self.assertLessEqual(self.origin.max_open, 1)
        up.wait_access_log(lambda d: d.get("status") == "503")

    def test_queue_timeout_504(self):
        up = self.upkeep(max_connections=1, queue={"timeout": "300ms"})
        with Conn(up.port, timeout=20) as first:
            first.request("GET", url("/delay-headers?ms=2500&size=10"))
            self.origin.wait_requests(1)
            t = time.monotonic()
            r = self.get(up, "/ok?size=10")
            waited = time.monotonic() - t
            self.assertUpkeepError(r, 504, "queue_timeout")
            self.assertLess(waited, 2.0, "queue timeout of 300ms took %.1fs" % waited)
            r = first.read_response()
            self.assertEqual(r.status, 200, r)
        self.assertEqual(len(self.origin.requests_for("/ok")), 0, "timed-out request reached the origin")

    # -- idle connections -------------------------------------------------------------------
    def test_server_closes_idle_connection(self):
        self.origin.close_idle_after_ms = 200
        up = self.upkeep()
        r = self.get(up, "/ok?size=10")
        self.assertEqual(r.status, 200)
        self.origin.wait_open(0, timeout=5)
        up.wait_metric("upkeep_upstream_connections_closed_total", lambda v: v >= 1, reason="server_closed")
        r = self.get(up, "/ok?size=20")
        self.assertEqual(r.status, 200, r)
        self.assertIsNone(r.header("upkeep-error"))
        self.assertPattern(r.body, 20)
        self.assertEqual(self.origin.connections_total, 2)
        self.assertEqual(up.metric("upkeep_retries_total"), 0, "evicted connection was used anyway")

    def test_close_after_each_response_without_notice(self):
        self.origin.close_after_requests = 1
        up = self.upkeep()
        for i in range(10):
            r = self.get(up, "/ok?size=%d" % (10 + i))
            self.assertEqual(r.status, 200, "request %d: %r" % (i, r))
            self.assertPattern(r.body, 10 + i)
        # A retried first attempt may or may not have been read by the origin before it closed.
        seen = len(self.origin.requests_for("/ok"))
        retries = int(up.metric("upkeep_retries_total"))
        self.assertGreaterEqual(seen, 10)
        self.assertLessEqual(seen, 10 + retries, "origin saw more requests than requests + retries")

    def test_stale_connection_get_retried(self):
        """The origin reads the next request on a reused connection and closes without
        answering: an idempotent request is retried once on a fresh connection."""
        self.origin.drop_request_after = 1
        up = self.upkeep()
        n = 6
        for i in range(n):
            r = self.get(up, "/ok?size=%d" % (10 + i))
            self.assertEqual(r.status, 200, "request %d: %r %r" % (i, r, r.body[:200]))
            self.assertPattern(r.body, 10 + i)
        self.assertGreater(up.metric("upkeep_retries_total"), 0)
        self.assertEqual(up.metric("upkeep_retries_total"), n - 1)
        self.assertEqual(len(self.origin.requests_for("/ok")), 2 * n - 1)

    def _post_at_most_once(self, up, tag):
        data = ("post body %s " % tag).encode() * 100
        retries_before = up.metric("upkeep_retries_total")
        r = self.fetch(up, "POST", url("/echo?id=%s" % tag), body=data)
        self.assertIn(r.status, (200, 502), r)
        if r.status == 200:
            self.assertEqual(r.header("x-body-sha256"), hashlib.sha256(data).hexdigest())
        got = [q for q in self.origin.requests_for("/echo") if q.query.get("id") == tag]
        self.assertLessEqual(len(got), 1, "a POST reached the origin %d times" % len(got))
        self.assertEqual(up.metric("upkeep_retries_total"), retries_before, "a POST was retried")
        return r.status, len(got)

    def test_post_on_stale_connection_sent_at_most_once(self):
        self.origin.drop_request_after = 1
        up = self.upkeep()
        self.assertEqual(self.get(up, "/ok?size=10").status, 200)
        status, arrived = self._post_at_most_once(up, "dropped")
        self.assertEqual(arrived, 1)
        self.assertEqual(status, 502, "the origin never answered this POST")
        self.assertEqual(self.get(up, "/ok?size=11").status, 200)

    def test_post_after_server_close_at_most_once(self):
        self.origin.close_after_requests = 1
        up = self.upkeep()
        for i in range(5):
            self.assertEqual(self.get(up, "/ok?size=10").status, 200)
            self._post_at_most_once(up, "fin%d" % i)

    def test_idle_timeout(self):
        up = self.upkeep(idle_timeout="300ms")
        self.assertEqual(self.get(up, "/ok?size=10").status, 200)
        up.wait_metric("upkeep_upstream_connections_closed_total", lambda v: v >= 1, timeout=5, reason="idle_timeout")
        self.origin.wait_open(0, timeout=5)
        self.assertEqual(self.get(up, "/ok?size=10").status, 200)
        self.assertEqual(self.origin.connections_total, 2)

    def test_keep_alive_timeout_hint(self):
        up = self.upkeep(idle_timeout="60s")
        t = time.monotonic()
        self.assertEqual(self.get(up, "/keepalive-timeout?s=1").status, 200)
        self.origin.wait_open(0, timeout=8)
        elapsed = time.monotonic() - t
        self.assertLess(elapsed, 8)
        self.assertGreaterEqual(up.metric("upkeep_upstream_connections_closed_total", reason="idle_timeout"), 1)
        self.assertEqual(up.metric("upkeep_upstream_connections_closed_total", reason="server_closed"), 0)

    def test_max_requests_per_connection(self):
        up = self.upkeep(max_requests_per_connection=2)
        n = 7
        for i in range(n):
            r = self.get(up, "/ok?size=10")
            self.assertEqual(r.status, 200, r)
        self.assertEqual(self.origin.connections_total, math.ceil(n / 2))
        per_conn = {}
        for q in self.origin.requests_for("/ok"):
            per_conn[q.conn_id] = per_conn.get(q.conn_id, 0) + 1
        self.assertLessEqual(max(per_conn.values()), 2, per_conn)
        up.wait_metric("upkeep_upstream_connections_closed_total", lambda v: v >= 3, reason="max_requests")

    # -- abandoned bodies -------------------------------------------------------------------
    def _read_prefix_and_hang_up(self, up, path, prefix=100):
        with Conn(up.port, rcvbuf=4096) as c:
            c.request("GET", url(path))
            head = c.read_head()
            self.assertEqual(head.status, 200, head)
            self.assertEqual(c.read_exact(prefix), patterns.pattern(prefix))

    def test_drain_keeps_connection(self):
        # 8 MiB cannot all sit in socket buffers, so the hang-up is seen mid-body
        # whatever the kernel's buffer autotuning does; the cap lets all of it drain.
        up = self.upkeep(drain={"max_bytes": "16MiB", "max_time": "20s"})
        for i in range(3):
            before = up.metric("upkeep_drained_bytes_total")
            self._read_prefix_and_hang_up(up, "/ok?size=8388608")
            up.wait_metric("upkeep_drained_bytes_total", lambda v: v > before)
            r = self.get(up, "/ok?size=1000")
            self.assertEqual(r.status, 200, r)
            self.assertPattern(r.body, 1000)
            self.assertEqual(self.origin.connections_total, 1,
                             "round %d: drained connection not reused (origin saw %d connections,"
                             " %d drains aborted)" % (i, self.origin.connections_total,
                                                      up.metric("upkeep_drain_aborted_total")))
        self.assertEqual(up.metric("upkeep_drain_aborted_total"), 0)

    def test_drain_limit_closes(self):
        up = self.upkeep(drain={"max_bytes": "64KiB"})
        # 8 MiB: loopback socket buffers can swallow a whole 1 MiB response before the
        # hang-up, leaving nothing to drain.
        self._read_prefix_and_hang_up(up, "/ok?size=8388608")
        up.wait_metric("upkeep_upstream_connections_closed_total", lambda v: v >= 1, reason="drain_limit")
        self.origin.wait_open(0)
        r = self.get(up, "/ok?size=1048576")
        self.assertEqual(r.status, 200, r)
        self.assertPattern(r.body, 1 << 20)
        self.assertEqual(self.origin.connections_total, 2)

    # -- faults mid-response / mid-upload ----------------------------------------------------
    def _truncated_then_ok(self, up, path, size):
        with Conn(up.port) as c:
            c.request("GET", url(path))
            try:
                r = c.read_response()
            except client.ConnectionClosed:
                r = None  # closed before any response head: also a visible failure
            if r is not None and r.status == 200:
                self.assertFalse(r.complete, "a truncated upstream body was delivered as complete: %r" % r)
                self.assertLess(len(r.body), size)
                self.assertEqual(r.body, patterns.pattern(len(r.body)))
                self.assertTrue(c.closed_by_peer(5), "client connection not closed after a truncated body")
            elif r is not None:
                self.assertEqual(r.status, 502, r)
        r = self.get(up, "/ok?size=100")
        self.assertEqual(r.status, 200, r)
        self.assertPattern(r.body, 100)

    def test_close_after_headers(self):
        up = self.upkeep()
        self._truncated_then_ok(up, "/close-after-headers?size=100000&send=1000", 100000)
        self.assertEqual(len(self.origin.requests_for("/close-after-headers")), 1, "non-retryable after response bytes")

    def test_reset_mid_body(self):
        up = self.upkeep()
        self._truncated_then_ok(up, "/reset-mid-body?size=100000&send=5000", 100000)
        self.assertEqual(len(self.origin.requests_for("/reset-mid-body")), 1)

    def test_close_silently_first_request(self):
        """A fresh connection closed without a response: 502, never a hang."""
        up = self.upkeep()
        r = self.get(up, "/close-silently")
        self.assertUpkeepError(r, 502)
        self.assertEqual(len(self.origin.requests_for("/close-silently")), 1, "request on a fresh connection retried")
        self.assertEqual(self.get(up, "/ok?size=5").status, 200)

    def test_upload_hang_up(self):
        up = self.upkeep()
        data = os.urandom(100000)
        c = Conn(up.port)
        c.request("POST", url("/echo?id=half"), [("Content-Length", str(len(data)))])
        c.send(data[:50000])
        self.origin.wait_requests(1)
        c.abort()
        # The half-sent upload must not leave its connection in the pool.
        self.origin.wait_open(0, timeout=10)  # HTTP/1.1 upstream must be closed, not pooled
        for i in range(3):
            full = os.urandom(20000)
            r = self.fetch(up, "POST", url("/echo?id=full%d" % i), body=full)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.header("x-body-sha256"), hashlib.sha256(full).hexdigest())
        for q in self.origin.requests_for("/echo"):
            if q.query.get("id") == "half":
                self.assertFalse(q.complete, "the abandoned upload was completed with other bytes")
            else:
                self.assertEqual(q.body_len, 20000)
        self.assertEqual(self.get(up, "/ok?size=7").status, 200)


if __name__ == "__main__":
    unittest.main()
