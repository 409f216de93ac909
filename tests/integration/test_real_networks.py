"""Real networks (SPEC.md "Real networks"): a real parent proxy (squid) with and without
credentials, a parent that refuses, upstream TLS session resumption against nginx,
and warm connections. Happy Eyeballs is tested against real listeners in
tests/unit/dial_test.cpp (a name with two loopback addresses needs /etc/hosts)."""
import concurrent.futures
import socket
import unittest

from upkeep_test import client, patterns
from upkeep_test.proxy import Upkeep
from upkeep_test.squid import Squid
from upkeep_test.testcase import UpkeepTestCase
from upkeep_test.util import wait_until

HOST = "fault.origin.test"
NGINX_HOST = "origin.test"


def url(path, host=HOST):
    return "http://%s%s" % (host, path)


def note(msg):
    print("\n" + msg, flush=True)


class ParentProxyTest(UpkeepTestCase):
    def setUp(self):
        self.origin = self.start_fault()

    def start_squid(self, **kw):
        s = Squid(**kw)
        self.addCleanup(s.cleanup)
        return s

    def get(self, up, path, **kw):
        return self.fetch(up, "GET", url(path), **kw)

    def test_pool_through_squid_keeps_the_bound(self):
        squid = self.start_squid()
        # Stopped by the test itself (squid logs a tunnel when it ends).
        up = Upkeep({"routes": [self.route(HOST, self.origin.port, max_connections=2,
                                           proxy=squid.url)]})
        self.addCleanup(up.stop)
        n = 40

        def one(i):
            size = 200 + i
            r = client.fetch(up.port, "GET", url("/delay-headers?ms=20&size=%d" % size), timeout=30)
            if r.status != 200 or r.body != patterns.pattern(size):
                return "request %d: %r" % (i, r)
            return None

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            failures = [f for f in pool.map(one, range(n), timeout=120) if f]
        self.assertFalse(failures, failures[:3])
        self.assertEqual(len(self.origin.requests_for("/delay-headers")), n)
        self.assertLessEqual(self.origin.max_open, 2)
        opened = self.origin.connections_total
        # Every origin connection came through squid: its tunnels are logged when they
        # end, so upkeep stops first (closing its pooled connections).
        self.assertEqual(up.stop(), 0)
        squid.wait_connects(opened)
        target = "127.0.0.1:%d" % self.origin.port
        self.assertEqual(squid.connects(), [(target, 200)] * opened)
        note("parent proxy: %d requests through squid, origin connections %d (peak %d)"
             % (n, opened, self.origin.max_open))

    def test_parent_credentials_from_the_url(self):
        squid = self.start_squid(user="upkeep", password="p@ss:word")
        good = "http://upkeep:p%40ss%3Aword@127.0.0.1:" + str(squid.port)
        bad = "http://upkeep:wrong@127.0.0.1:" + str(squid.port)
        up = self.start_upkeep({"routes": [
            self.route(HOST, self.origin.port, proxy=good),
            self.route("bad." + HOST, self.origin.port, proxy=bad),
        ]})
        r = self.get(up, "/ok?size=321")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, patterns.pattern(321))

        r = self.fetch(up, "GET", url("/ok", "bad." + HOST))
        self.assertUpkeepError(r, 502, "parent_proxy_failed")
        self.assertIn(b"407", r.body, "the parent's status belongs in the body")
        self.assertEqual(len(self.origin.requests_for("/ok")), 1)

    def test_parent_that_refuses_connections(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there now
        up = self.start_upkeep({"routes": [self.route(HOST, self.origin.port,
                                                      proxy="http://127.0.0.1:%d" % port)]})
        r = self.get(up, "/ok")
        self.assertUpkeepError(r, 502, "parent_proxy_failed")
        self.assertEqual(self.origin.connections_total, 0)
        # A route may go direct while the default goes through the parent.
        up2 = self.start_upkeep({"upstream": {"proxy": "http://127.0.0.1:%d" % port},
                                 "routes": [self.route(HOST, self.origin.port, proxy="")]})
        self.assertEqual(self.get(up2, "/ok").status, 200)


class ResumptionTest(UpkeepTestCase):
    def test_reconnects_resume_the_tls_session(self):
        nginx = self.start_nginx()
        # max_requests_per_connection 1: every request needs a new upstream connection.
        up = self.start_upkeep({"routes": [self.route(NGINX_HOST, nginx.port, max_requests_per_connection=1,
                                                      protocols=["http/1.1"])]})
        n = 6
        for i in range(n):
            r = self.fetch(up, "GET", url("/1k", NGINX_HOST))
            self.assertEqual(r.status, 200, r)
        nginx.wait_requests(n)
        records = nginx.log_records()
        self.assertEqual(len({rec["conn"] for rec in records}), n, "one connection per request")
        reused = [rec.get("reused") for rec in records]
        note("TLS resumption: nginx saw reused=%s" % "".join(reused))
        self.assertEqual(reused[0], ".", "the first connection has nothing to resume")
        self.assertEqual(reused[1:], ["r"] * (n - 1))
        self.assertEqual(up.metric("upkeep_upstream_tls_resumed_total", origin="https://%s:443" % NGINX_HOST)
                         or up.metric("upkeep_upstream_tls_resumed_total"), n - 1)


class WarmConnectionsTest(UpkeepTestCase):
    def test_warm_connections_open_at_start_and_are_kept(self):
        origin = self.start_fault()
        # Like a server with a short keepalive_timeout: idle connections go after 1.5 s.
        origin.close_idle_after_ms = 1500
        up = self.start_upkeep({"routes": [self.route(HOST, origin.port, max_connections=3,
                                                      warm_connections=2, idle_timeout="1s")]})
        origin.wait_open(2)
        self.assertEqual(origin.requests, [])
        before = origin.connections_total
        r = self.fetch(up, "GET", url("/ok?size=10"))
        self.assertEqual(r.status, 200)
        self.assertLessEqual(origin.requests[0].conn_id, before,
                             "the request waited for a new connection, not a warm one")

        # The server closes them: upkeep opens new ones to stay at 2.
        wait_until(lambda: origin.connections_total >= before + 2, timeout=20)
        origin.close_idle_after_ms = None  # connections from now on stay
        wait_until(lambda: origin.connections_open == 2
                   and up.metric("upkeep_upstream_connections_closed_total",
                                 reason="server_closed") >= 2, timeout=20)
        self.assertLessEqual(origin.max_open, 3)
        note("warm connections: %d opened in all, %d open now, peak %d"
             % (origin.connections_total, origin.connections_open, origin.max_open))
    def test_a_warm_connection_found_closed_is_retried_on_a_new_one(self):
        # A warm connection never carried a request, but it waited idle: when the
        # server's close crosses its first request, that request is retried, as on
        # any reused connection, rather than answered 502.
        origin = self.start_fault()
        origin.drop_first_request_on = {1}
        up = self.start_upkeep({"routes": [self.route(HOST, origin.port, max_connections=2,
                                                      warm_connections=1)]})
        # Counted once the handshake is done and the connection is in the pool, idle.
        wait_until(lambda: up.metric("upkeep_upstream_connections_opened_total") >= 1, timeout=10)
        r = self.fetch(up, "GET", url("/ok?size=10"))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, patterns.pattern(10))
        self.assertEqual([q.conn_id for q in origin.requests], [1, 2])
        self.assertEqual(up.metric("upkeep_retries_total"), 1)

if __name__ == "__main__":
    unittest.main()
