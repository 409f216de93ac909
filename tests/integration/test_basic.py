"""Basic forwarding through upkeep: curl, keep-alive, pipelining, methods, bodies,
hop-by-hop rules, admin endpoints and the access log."""
import hashlib
import json
import os
import time
import select
import subprocess
import unittest

from upkeep_test import client, patterns
from upkeep_test.client import Conn
from upkeep_test.testcase import HOP_BY_HOP_PROBE, UpkeepTestCase
from upkeep_test.util import wait_until

METRIC_NAMES = [
    "upkeep_downstream_connections_total", "upkeep_downstream_requests_total",
    "upkeep_upstream_connections_opened_total", "upkeep_upstream_connections_closed_total",
    "upkeep_upstream_connections_active", "upkeep_upstream_requests_total",
    "upkeep_upstream_requests_reused_total", "upkeep_pool_pending_requests",
    "upkeep_pool_wait_seconds", "upkeep_drained_bytes_total", "upkeep_drain_aborted_total",
    "upkeep_retries_total", "upkeep_tunnels_total", "upkeep_upstream_requests_per_connection",
    "upkeep_build_info",
]


class BasicTest(UpkeepTestCase):
    def setUp(self):
        self.nginx = self.start_nginx()
        self.origin = self.start_fault()
        self.routes = [self.route("origin.test", self.nginx.port),
                       self.route("fault.origin.test", self.origin.port)]

    def upkeep(self, **config):
        cfg = {"routes": self.routes}
        cfg.update(config)
        return self.start_upkeep(cfg)

    def curl(self, args, env=None):
        e = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "all_proxy")}
        e.update(env or {})
        r = subprocess.run(["curl", "-sS", "--max-time", "20"] + args, capture_output=True, env=e, timeout=30)
        self.assertEqual(r.returncode, 0, "curl %s failed: %s" % (args, r.stderr.decode(errors="replace")))
        return r.stdout

    # -- curl ---------------------------------------------------------------------
    def test_curl_with_proxy_flag(self):
        up = self.upkeep()
        body = self.curl(["-x", "http://127.0.0.1:%d" % up.port, "http://origin.test/1k"])
        self.assertPattern(body, 1024)
        body = self.curl(["-x", "http://127.0.0.1:%d" % up.port, "http://origin.test/1m"])
        self.assertPattern(body, 1 << 20)

    def test_curl_with_http_proxy_env(self):
        up = self.upkeep()
        body = self.curl(["http://origin.test/64k"], env={"http_proxy": "http://127.0.0.1:%d" % up.port})
        self.assertPattern(body, 64 * 1024)

    # -- keep-alive and routing ---------------------------------------------------
    def test_keepalive_reuses_one_upstream_connection(self):
        up = self.upkeep()
        with Conn(up.port) as c:
            for i in range(20):
                c.request("GET", "http://origin.test/1k")
                r = c.read_response()
                self.assertEqual(r.status, 200, "request %d: %r" % (i, r))
                self.assertPattern(r.body, 1024, "request %d" % i)
        self.assertEqual(self.nginx.wait_requests(20), 20)
        self.assertEqual(self.nginx.connections_seen(), 1,
                         "20 sequential requests used %d upstream connections" % self.nginx.connections_seen())
        self.assertGreaterEqual(up.metric("upkeep_upstream_requests_reused_total"), 19)
        self.assertGreaterEqual(up.metric("upkeep_downstream_requests_total"), 20)

    def test_new_client_connection_per_request_reuses_upstream(self):
        up = self.upkeep()
        for i in range(20):
            r = self.fetch(up, "GET", "http://origin.test/1k")
            self.assertEqual(r.status, 200)
            self.assertPattern(r.body, 1024)
        self.assertEqual(self.nginx.wait_requests(20), 20)
        self.assertEqual(self.nginx.connections_seen(), 1)
        self.assertGreaterEqual(up.metric("upkeep_downstream_connections_total"), 20)

    def test_many_hosts_on_one_client_connection(self):
        up = self.upkeep()
        with Conn(up.port) as c:
            for i in range(6):
                c.request("GET", "http://origin.test/1k")
                r = c.read_response()
                self.assertEqual(r.status, 200)
                self.assertPattern(r.body, 1024)
                self.assertNotEqual(r.header("server"), "upkeep-fault-origin")
                c.request("GET", "http://fault.origin.test/ok?size=777")
                r = c.read_response()
                self.assertEqual(r.status, 200)
                self.assertEqual(r.header("server"), "upkeep-fault-origin")
                self.assertPattern(r.body, 777)
        self.assertEqual(len(self.origin.requests_for("/ok")), 6)
        self.assertEqual(self.origin.connections_total, 1)
        self.assertEqual(self.nginx.wait_requests(6), 6)
        self.assertEqual(self.nginx.connections_seen(), 1)

    def test_origin_form_with_host(self):
        up = self.upkeep()
        with Conn(up.port) as c:
            c.request("GET", "/1k", [("Host", "origin.test")])
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertPattern(r.body, 1024)
            c.request("GET", "/ok?size=5", [("Host", "fault.origin.test")])
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertPattern(r.body, 5)
        rec = self.origin.requests_for("/ok")[0]
        self.assertEqual(rec.header("host"), ["fault.origin.test"])

    def test_pipelining(self):
        up = self.upkeep()
        with Conn(up.port) as c:
            c.send(client.build_request("GET", "http://origin.test/64k")
                   + client.build_request("GET", "http://fault.origin.test/ok?size=333")
                   + client.build_request("GET", "http://origin.test/1k"))
            sizes = []
            for _ in range(3):
                r = c.read_response()
                self.assertEqual(r.status, 200, r)
                sizes.append(len(r.body))
                self.assertPattern(r.body, len(r.body))
            self.assertEqual(sizes, [64 * 1024, 333, 1024], "responses out of order")
            # The connection is still usable afterwards.
            c.request("GET", "http://origin.test/1k")
            self.assertPattern(c.read_response().body, 1024)

    def test_head_completed_by_a_later_read(self):
        # The second head arrives partly with the first request and is only finished
        # after the first response has been read: the proxy must hold the part it
        # already parsed and go on with the rest (here cut inside a header name, and
        # once more between CR and LF).
        up = self.upkeep()
        second = client.build_request("GET", "http://fault.origin.test/ok?size=77",
                                      [("X-Split-Here", "1")])
        cut = second.index(b"Split") + 2
        with Conn(up.port) as c:
            c.send(client.build_request("GET", "http://origin.test/1k") + second[:cut])
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertPattern(r.body, 1024)
            c.send(second[cut:-1])
            c.send(second[-1:])
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertPattern(r.body, 77)
        rec = self.origin.requests_for("/ok")[0]
        self.assertEqual(rec.header("x-split-here"), ["1"])

    def test_http10_client(self):
        up = self.upkeep()
        with Conn(up.port) as c:
            c.request("GET", "http://origin.test/1k", version="HTTP/1.0", host=False)
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertPattern(r.body, 1024)
            self.assertTrue(c.closed_by_peer(5), "HTTP/1.0 request without keep-alive: client connection not closed")
        # The upstream connection outlives the HTTP/1.0 client.
        r = self.fetch(up, "GET", "http://origin.test/1k", version="HTTP/1.0")
        self.assertEqual(r.status, 200)
        self.assertEqual(self.nginx.wait_requests(2), 2)
        self.assertEqual(self.nginx.connections_seen(), 1)

    def test_head(self):
        up = self.upkeep()
        with Conn(up.port) as c:
            c.request("HEAD", "http://origin.test/1m")
            r = c.read_response("HEAD")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.header("content-length"), str(1 << 20))
            c.request("GET", "http://origin.test/1k")  # no body bytes may sit in between
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertPattern(r.body, 1024)

    def test_204_and_304(self):
        up = self.upkeep()
        with Conn(up.port) as c:
            for code in (204, 304, 204):
                c.request("GET", "http://fault.origin.test/status?code=%d" % code)
                r = c.read_response()
                self.assertEqual(r.status, code, r)
                self.assertEqual(r.body, b"")
            c.request("GET", "http://fault.origin.test/ok?size=50")
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertPattern(r.body, 50)
        self.assertEqual(self.origin.connections_total, 1)

    # -- bodies -----------------------------------------------------------------------
    def _check_echo(self, r, data):
        digest = hashlib.sha256(data).hexdigest()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("x-body-sha256"), digest)
        self.assertEqual(r.header("x-body-length"), str(len(data)))
        self.assertEqual(r.body, ("%s %d\n" % (digest, len(data))).encode())

    def test_content_length_upload(self):
        up = self.upkeep()
        data = os.urandom(300 * 1024)
        with Conn(up.port) as c:
            c.request("POST", "http://fault.origin.test/echo", [("Content-Type", "application/octet-stream")], data)
            self._check_echo(c.read_response(), data)
            c.request("PUT", "http://fault.origin.test/echo", [], b"")
            self._check_echo(c.read_response(), b"")

    def test_chunked_upload(self):
        up = self.upkeep()
        data = os.urandom(200 * 1024 + 17)
        with Conn(up.port) as c:
            c.request("POST", "http://fault.origin.test/echo", [("Transfer-Encoding", "chunked")])
            c.send(client.chunked(data, 7000))
            self._check_echo(c.read_response(), data)
            # and the connection is in sync for the next request
            c.request("GET", "http://fault.origin.test/ok?size=10")
            self.assertPattern(c.read_response().body, 10)
        rec = self.origin.requests_for("/echo")[0]
        self.assertEqual(rec.body_len, len(data))

    def test_chunked_response(self):
        up = self.upkeep()
        with Conn(up.port) as c:
            c.request("GET", "http://fault.origin.test/chunked?size=100000&chunk=999")
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertTrue(r.complete)
            self.assertPattern(r.body, 100000)
            c.request("GET", "http://fault.origin.test/chunked?size=0")
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.body, b"")

    def test_expect_100_continue(self):
        up = self.upkeep()
        data = os.urandom(5000)
        with Conn(up.port, timeout=10) as c:
            c.request("POST", "http://fault.origin.test/echo",
                      [("Expect", "100-continue"), ("Content-Length", str(len(data)))])
            interim = c.read_head()  # no body sent yet: this must be the 100
            self.assertEqual(interim.status, 100, "expected 100 Continue before the body, got %r" % interim)
            c.send(data)
            self._check_echo(c.read_response(), data)

    def test_expect_100_continue_origin_ignores_expect(self):
        # The origin never sends 100: upkeep must not hold the body back until
        # response_timeout; like curl, it sends it after a short wait.
        self.origin.ignore_expect = True
        up = self.upkeep()
        data = os.urandom(5000)
        with Conn(up.port, timeout=10) as c:
            t = time.monotonic()
            c.request("POST", "http://fault.origin.test/echo",
                      [("Expect", "100-continue"), ("Content-Length", str(len(data)))])
            # A client that got no 100 sends its body anyway after waiting (curl: 1s).
            ready, _, _ = select.select([c.sock], [], [], 1.0)
            self.assertFalse(ready, "nothing can come back before the origin has the body")
            c.send(data)
            self._check_echo(c.read_response(), data)
            self.assertLess(time.monotonic() - t, 8)
        self.assertEqual(self.origin.requests_for("/echo")[0].header("expect"), ["100-continue"])

    # -- header rules ---------------------------------------------------------------
    def test_via_added_and_hop_by_hop_removed(self):
        up = self.upkeep()
        with Conn(up.port) as c:
            c.request("GET", "http://fault.origin.test/headers?x=1",
                      HOP_BY_HOP_PROBE + [("X-End-To-End", "kept")])
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
        rec = self.origin.requests_for("/headers")[0]
        names = rec.header_names()
        self.assertNoHopByHop(names, rec.headers)
        for te in rec.header("te"):
            self.assertEqual(te.strip().lower(), "trailers")
        self.assertEqual(rec.header("host"), ["fault.origin.test"], "Host not regenerated from the URL")
        self.assertEqual(rec.header("x-end-to-end"), ["kept"])
        self.assertTrue(any("1.1 upkeep" in v for v in rec.header("via")), "no Via: 1.1 upkeep in %r" % rec.headers)
        self.assertEqual(rec.target, "/headers?x=1")

    def test_client_connection_close_keeps_upstream(self):
        up = self.upkeep()
        with Conn(up.port) as c:
            c.request("GET", "http://fault.origin.test/ok?size=10", [("Connection", "close")])
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertTrue(c.closed_by_peer(5), "client asked Connection: close but stays open")
        rec = self.origin.requests_for("/ok")[0]
        self.assertNotIn("connection", rec.header_names())
        self.assertEqual(self.origin.connections_total, 1)
        self.assertEqual(self.origin.connections_open, 1, "upstream closed because the client did")
        r = self.fetch(up, "GET", "http://fault.origin.test/ok?size=20")
        self.assertEqual(r.status, 200)
        self.assertPattern(r.body, 20)
        self.assertEqual(self.origin.connections_total, 1, "second request dialed a new upstream connection")

    # -- admin and logs -----------------------------------------------------------------
    def test_admin_endpoints(self):
        up = self.upkeep()
        r = self.fetch(up, "GET", "http://origin.test/1k")
        self.assertEqual(r.status, 200)
        for path in ("/livez", "/healthz", "/readyz"):
            status, _, body = up.admin_get(path)
            self.assertEqual(status, 200, path)
        text = up.metrics_text()
        for name in METRIC_NAMES:
            self.assertIn(name, text, "metric %s missing from /metrics" % name)
        m = up.metrics()  # parses
        self.assertGreaterEqual(up.metric("upkeep_upstream_connections_opened_total"), 1)
        self.assertGreaterEqual(up.metric("upkeep_upstream_requests_total"), 1)
        self.assertTrue(any(n == "upkeep_build_info" for n, _ in m))
        stats = up.stats()
        self.assertIsInstance(stats, dict)
        self.assertTrue(stats)

    def test_access_log_text(self):
        up = self.upkeep()
        r = self.fetch(up, "GET", "http://origin.test/1k")
        self.assertEqual(r.status, 200)
        rec = up.wait_access_log(lambda d: d.get("status") == "200")
        for key in ("status", "protocol", "reused", "error"):
            self.assertIn(key, rec, "access log line lacks %s=: %r" % (key, rec))
        self.assertIn(rec["protocol"], ("h2", "http/1.1"))
        r = self.fetch(up, "GET", "http://fault.origin.test/status?code=404")
        self.assertEqual(r.status, 404)
        up.wait_access_log(lambda d: d.get("status") == "404")

    def test_access_log_json(self):
        up = self.upkeep(log={"format": "json"})
        r = self.fetch(up, "GET", "http://origin.test/1k")
        self.assertEqual(r.status, 200)
        wait_until(lambda: up.stdout_lines(), 10, message="an access log line")
        rec = up.wait_access_log(lambda d: str(d.get("status")) == "200")
        line = [l for l in up.stdout_lines() if l.strip()][0]
        self.assertIsInstance(json.loads(line), dict, "access log line is not a JSON object: %r" % line)
        self.assertIn("protocol", rec)

    # -- upstream protocol selection --------------------------------------------------
    def test_h2_preferred_then_http11_only(self):
        up = self.upkeep()
        self.assertEqual(self.fetch(up, "GET", "http://origin.test/1k").status, 200)
        self.nginx.wait_requests(1)
        self.assertEqual(self.nginx.protocols_seen(), {"HTTP/2.0"}, "default ALPN offer should pick h2 with nginx")
        self.nginx.mark()
        up2 = self.start_upkeep({"routes": self.routes, "upstream": {"protocols": ["http/1.1"]}})
        r = self.fetch(up2, "GET", "http://origin.test/64k")
        self.assertPattern(r.body, 64 * 1024)
        self.nginx.wait_requests(1)
        self.assertEqual(self.nginx.protocols_seen(), {"HTTP/1.1"})
        rec = up2.wait_access_log(lambda d: d.get("status") == "200")
        self.assertEqual(rec.get("protocol"), "http/1.1")


if __name__ == "__main__":
    unittest.main()
