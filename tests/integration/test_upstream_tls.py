"""What real TLS servers send between and after responses, and what real servers put
in their responses (issues "TLS 1.3 session tickets make the idle watch throw away
fresh upstream connections" and "interoperability"):

- a TLS 1.3 NewSessionTicket or KeyUpdate that reaches an idle pooled connection is
  processed and the connection stays (it used to be evicted as if the server had
  closed, and the next request dialled again);
- a close_notify that arrived in the same write as the last response, with no FIN
  (hypercorn), is found before the connection is used again;
- `Connection: Upgrade` + `Upgrade: h2` on a 200 (Apache mod_http2) is an
  advertisement, not a reason to drop the connection; `Connection: close` is counted
  as server_closed;
- trailers after the last chunk reach HTTP/1.1 clients; an HTTP/2 response with a
  content-length and trailers goes chunked to a client that sent TE: trailers;
- a request with an Idempotency-Key is retried like an idempotent one.

The origin is tests/support/tls_origin (OpenSSL, controls which records go out when).
"""
import hashlib
import os
import unittest

from upkeep_test import patterns
from upkeep_test.client import Conn
from upkeep_test.h2_origin import H2Origin
from upkeep_test.testcase import UpkeepTestCase
from upkeep_test.tls_origin import TlsOrigin
from upkeep_test.util import wait_until

HOST = "tls.origin.test"


def url(path):
    return "http://%s%s" % (HOST, path)


class UpstreamTlsTest(UpkeepTestCase):
    def start_origin(self, **kw):
        o = TlsOrigin(**kw)
        self.addCleanup(o.stop)
        return o

    def upkeep_for(self, origin, **route):
        route.setdefault("protocols", ["http/1.1"])
        return self.start_upkeep({"routes": [self.route(HOST, origin.port, **route)]})

    def get(self, up, path, headers=()):
        with Conn(up.port, timeout=15) as c:
            c.request("GET", url(path), list(headers) + [("Connection", "close")])
            return c.read_response()

    def evictions(self, up, cause=None):
        kw = {"cause": cause} if cause else {}
        return up.metric("upkeep_upstream_idle_evictions_total", **kw)

    def assert_ok(self, r, size):
        self.assertEqual(r.status, 200, r)
        self.assertPattern(r.body, size)

    # -- post-handshake messages on an idle connection -------------------------------
    def check_post_handshake_message(self, event, **origin_kw):
        o = self.start_origin(tls_max="1.3", **origin_kw)
        up = self.upkeep_for(o)
        self.assert_ok(self.get(up, "/ok?size=100"), 100)
        # The message goes out while the connection sits idle in upkeep's pool.
        o.wait_event(event, conn=1)
        # Whatever upkeep makes of it shows within a moment: the message is processed
        # (the fix), or the connection is closed (the fault).
        wait_until(lambda: up.metric("upkeep_upstream_idle_tls_messages_total") >= 1
                   or o.closed(1) is not None, timeout=10,
                   message="upkeep neither processed the %s nor closed the connection" % event)
        self.assertIsNone(o.closed(1), "upkeep closed an idle connection on a TLS %s" % event)
        for i in range(3):
            r = self.get(up, "/ok?size=%d" % (200 + i))
            self.assert_ok(r, 200 + i)
            self.assertEqual(r.header("x-conn"), "1", r)
        self.assertEqual(o.connections_total, 1)
        self.assertEqual(self.evictions(up), 0)
        self.assertEqual(up.metric("upkeep_upstream_connections_closed_total"), 0)

    def test_tls13_ticket_after_the_first_response_keeps_the_connection(self):
        self.check_post_handshake_message("ticket_sent", ticket_delay_ms=200)

    def test_tls13_key_update_keeps_the_connection(self):
        self.check_post_handshake_message("key_update_sent", key_update_ms=150)

    def test_ticket_before_the_first_request_keeps_a_fresh_connection(self):
        """A connection dialled for a waiter that another connection served is idle
        before its first request; a ticket arriving then must not evict it."""
        o = self.start_origin(tls_max="1.3", ticket_delay_ms=300)
        up = self.upkeep_for(o, max_connections=2)
        # Two requests at once: the pool dials two connections.
        conns = [Conn(up.port, timeout=15) for _ in range(2)]
        try:
            for c in conns:
                c.request("GET", url("/ok?size=50"))
            for c in conns:
                self.assert_ok(c.read_response(), 50)
        finally:
            for c in conns:
                c.close()
        self.assertEqual(o.connections_total, 2)
        for conn in (1, 2):
            o.wait_event("ticket_sent", conn=conn)
        wait_until(lambda: up.metric("upkeep_upstream_idle_tls_messages_total") >= 2
                   or o.closed(1) or o.closed(2), timeout=10)
        self.assertIsNone(o.closed(1))
        self.assertIsNone(o.closed(2))
        for i in range(4):
            self.assert_ok(self.get(up, "/ok?size=10"), 10)
        self.assertEqual(o.connections_total, 2)

    def test_tls12_origin_reuses(self):
        o = self.start_origin(tls_max="1.2")
        up = self.upkeep_for(o)
        for i in range(5):
            self.assert_ok(self.get(up, "/ok?size=%d" % (10 + i)), 10 + i)
        self.assertEqual(o.connections_total, 1)
        self.assertEqual(o.handshakes()[0]["version"], "TLSv1.2")

    # -- close_notify with the last response, no FIN --------------------------------
    def test_close_notify_with_the_last_response_is_noticed(self):
        o = self.start_origin(tls_max="1.3", close_notify_after=1)
        up = self.upkeep_for(o)
        self.assert_ok(self.get(up, "/ok?size=100"), 100)
        ev = o.wait_event("close_notify_sent", conn=1)
        self.assertGreater(ev["with_response_bytes"], 0, "close_notify did not share the write")
        up.wait_metric("upkeep_upstream_idle_evictions_total", lambda v: v >= 1, cause="close_notify")
        # A POST (never retried) a moment later goes on a fresh connection.
        data = os.urandom(256 * 1024)
        with Conn(up.port, timeout=20) as c:
            c.request("POST", url("/echo"), [("Connection", "close")], body=data)
            r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body.decode().split()[0], hashlib.sha256(data).hexdigest())
        self.assertEqual(o.connections_total, 2)
        self.assertEqual(len(o.requests("/echo")), 1)

    # -- reuse decisions -------------------------------------------------------------
    def test_upgrade_advertisement_does_not_stop_reuse(self):
        o = self.start_origin()
        up = self.upkeep_for(o)
        for i in range(20):
            r = self.get(up, "/upgrade-advert?size=%d" % (30 + i))
            self.assert_ok(r, 30 + i)
            self.assertIsNone(r.header("upgrade"), "hop-by-hop Upgrade relayed")
        self.assertEqual(o.connections_total, 1)
        self.assertEqual(up.metric("upkeep_upstream_connections_closed_total", reason="error"), 0)

    def test_server_connection_close_counted_server_closed(self):
        o = self.start_origin()
        up = self.upkeep_for(o)
        for i in range(3):
            self.assert_ok(self.get(up, "/close?size=10"), 10)
        up.wait_metric("upkeep_upstream_connections_closed_total", lambda v: v >= 3,
                       reason="server_closed")
        self.assertEqual(up.metric("upkeep_upstream_connections_closed_total", reason="error"), 0)

    # -- trailers ----------------------------------------------------------------------
    def test_http11_trailers_reach_the_client(self):
        o = self.start_origin()
        up = self.upkeep_for(o)
        for te in ([("TE", "trailers")], []):
            with self.subTest(te=te):
                with Conn(up.port, timeout=15) as c:
                    c.request("GET", url("/trailers?size=5000"), te)
                    r = c.read_response()
                self.assert_ok(r, 5000)
                self.assertIn("chunked", (r.header("transfer-encoding") or "").lower())
                self.assertIn(("X-Trailer-Check", "done-5000"), r.trailers)
        # Still one connection: the trailer section ended the exchange cleanly.
        self.assertEqual(o.connections_total, 1)

    def test_h2_trailers_with_content_length_go_chunked_for_te_trailers(self):
        o = H2Origin()
        self.addCleanup(o.stop)
        up = self.start_upkeep({"routes": [self.route(HOST, o.port)]})
        want = hashlib.sha256(patterns.pattern(3000)).hexdigest()
        with Conn(up.port, timeout=15) as c:
            c.request("GET", url("/trailers?size=3000&cl=1"), [("TE", "trailers")])
            r = c.read_response()
            self.assert_ok(r, 3000)
            self.assertIsNone(r.header("content-length"))
            self.assertIn("chunked", (r.header("transfer-encoding") or "").lower())
            self.assertIn(("x-checksum", want), [(k.lower(), v) for k, v in r.trailers])
            # Without TE: trailers the length is kept (and the trailers cannot follow).
            c.request("GET", url("/trailers?size=3000&cl=1"))
            r = c.read_response()
            self.assert_ok(r, 3000)
            self.assertEqual(r.header("content-length"), "3000")


class IdempotencyKeyTest(UpkeepTestCase):
    """SPEC.md "Stale connections": a request carrying Idempotency-Key is retried like
    an idempotent one; without a key a POST is never sent twice."""

    def setUp(self):
        self.origin = self.start_fault()
        self.origin.drop_request_after = 1  # reads the next request, closes unanswered
        self.up = self.start_upkeep({"routes": [self.route(HOST, self.origin.port)],
                                     "upstream": {"protocols": ["http/1.1"]}})

    def post(self, tag, key):
        data = ("payload %s " % tag).encode() * 500
        headers = [("Connection", "close")]
        if key:
            headers.append(("Idempotency-Key", key))
        with Conn(self.up.port, timeout=20) as c:
            self.assertEqual(self.fetch_get(c), 200)
        with Conn(self.up.port, timeout=20) as c:
            c.request("POST", url("/echo?id=%s" % tag), headers, body=data)
            r = c.read_response()
        got = [q for q in self.origin.requests_for("/echo") if q.query.get("id") == tag]
        return r, data, got

    def fetch_get(self, c):
        c.request("GET", url("/ok?size=10"), [("Connection", "close")])
        return c.read_response().status

    def test_post_with_idempotency_key_is_retried(self):
        r, data, got = self.post("keyed", "3f1c-key")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("x-body-sha256"), hashlib.sha256(data).hexdigest())
        self.assertEqual(len(got), 2, "dropped once, then sent again on a fresh connection")
        self.assertGreaterEqual(self.up.metric("upkeep_retries_total"), 1)

    def test_post_without_key_is_not_retried(self):
        r, data, got = self.post("unkeyed", None)
        self.assertEqual(r.status, 502, r)
        self.assertEqual(len(got), 1)


if __name__ == "__main__":
    unittest.main()
