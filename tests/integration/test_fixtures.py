"""Self-test of the test fixtures (nginx, fault origin, YAML emitter, metrics parser).
Runs without upkeep, so the harness is known to work before the proxy is blamed."""
import hashlib
import os
import socket
import time
import unittest

from upkeep_test import certs, client, patterns, proxy
from upkeep_test.client import Conn
from upkeep_test.fault_origin import FaultOrigin
from upkeep_test.nginx import Nginx
from upkeep_test.util import closed_port, wait_until


def direct(origin, tls=True, **kw):
    c = Conn(origin.port, timeout=10)
    if tls:
        c.start_tls(certs.get().ca_cert, **kw)
    return c


class PatternTest(unittest.TestCase):
    def test_pattern(self):
        self.assertEqual(patterns.pattern(40), b"0000000000 upkeep-test-pattern.\n00000000")
        big = patterns.pattern(1 << 20)
        self.assertEqual(len(big), 1 << 20)
        self.assertEqual(big[32 * 1000:32 * 1000 + 10], b"0000032000")
        self.assertEqual(patterns.pattern_slice(64, 10), b"0000000064")


class YamlAndMetricsTest(unittest.TestCase):
    def test_yaml(self):
        text = proxy.to_yaml({"listen": "127.0.0.1:0", "workers": 1, "log": {"format": "json"},
                              "upstream": {"verify": False, "port_map": {80: 443}, "protocols": ["h2"],
                                           "queue": {"timeout": "300ms"}},
                              "routes": [{"host": "*.x.test", "tls": False}], "access": {"deny": []}})
        self.assertEqual(text, 'listen: "127.0.0.1:0"\nworkers: 1\nlog:\n  format: "json"\nupstream:\n'
                               '  verify: false\n  port_map:\n    80: 443\n  protocols:\n    - "h2"\n'
                               '  queue:\n    timeout: "300ms"\nroutes:\n  - {host: "*.x.test", tls: false}\n'
                               'access:\n  deny: []\n')

    def test_prometheus(self):
        m = proxy.parse_prometheus('# HELP a x\n# TYPE a counter\na_total 3\n'
                                   'b{origin="https://x:443",reason="idle_timeout"} 2.5\nc_bucket{le="+Inf"} 7\n')
        self.assertEqual(m[("a_total", frozenset())], 3)
        self.assertEqual(m[("b", frozenset({("origin", "https://x:443"), ("reason", "idle_timeout")}))], 2.5)
        self.assertEqual(m[("c_bucket", frozenset({("le", "+Inf")}))], 7)

    def test_text_log(self):
        rec = proxy.parse_text_log_line('ts=1 client=127.0.0.1:5 method=GET url="http://a/b c" status=200 error=- reused=true')
        self.assertEqual(rec["url"], "http://a/b c")
        self.assertEqual(rec["status"], "200")
        self.assertEqual(rec["reused"], "true")


class NginxFixtureTest(unittest.TestCase):
    def test_nginx(self):
        with Nginx() as n:
            self.assertEqual(n.connections_seen(), 0)
            with direct(n) as c:
                for _ in range(3):
                    c.request("GET", "/1k", [("Host", "origin.test")])
                    r = c.read_response()
                    self.assertEqual(r.body, patterns.pattern(1024))
            status, body = n.fetch("/8m")
            self.assertEqual(status, 200)
            self.assertEqual(body, patterns.pattern(8 << 20))
            self.assertEqual(n.wait_requests(4), 4)
            self.assertEqual(n.connections_seen(), 2)
            self.assertEqual(n.protocols_seen(), {"HTTP/1.1"})
            with direct(n, certfile=certs.get().client_cert, keyfile=certs.get().client_key) as c:
                c.request("GET", "/client-cert", [("Host", "origin.test"), ("Connection", "close")])
                self.assertEqual(c.read_response().status, 200)
            pid = n.proc.pid
        with self.assertRaises(ProcessLookupError):
            wait_until(lambda: os.kill(pid, 0) and False or _gone(pid), 10)
            os.kill(pid, 0)


def _gone(pid):
    try:
        os.kill(pid, 0)
        return False
    except ProcessLookupError:
        return True


class FaultOriginFixtureTest(unittest.TestCase):
    def setUp(self):
        self.o = FaultOrigin()
        self.addCleanup(self.o.stop)

    def test_basic_paths(self):
        with direct(self.o) as c:
            c.request("GET", "/ok?size=77", [("Host", "x")])
            self.assertEqual(c.read_response().body, patterns.pattern(77))
            c.request("GET", "/chunked?size=5000&chunk=333", [("Host", "x")])
            r = c.read_response()
            self.assertEqual(r.header("transfer-encoding"), "chunked")
            self.assertEqual(r.body, patterns.pattern(5000))
            data = os.urandom(10000)
            c.request("POST", "/echo", [("Host", "x"), ("Transfer-Encoding", "chunked")])
            c.send(client.chunked(data, 999))
            self.assertEqual(c.read_response().header("x-body-sha256"), hashlib.sha256(data).hexdigest())
            c.request("POST", "/echo", [("Host", "x"), ("Expect", "100-continue"), ("Content-Length", "5")])
            self.assertEqual(c.read_head().status, 100)
            c.send(b"hello")
            self.assertEqual(c.read_response().header("x-body-length"), "5")
            c.request("GET", "/status?code=304", [("Host", "x")])
            self.assertEqual(c.read_response().status, 304)
            c.request("GET", "/keepalive-timeout?s=3", [("Host", "x")])
            self.assertEqual(c.read_response().header("keep-alive"), "timeout=3")
        self.assertEqual(self.o.connections_total, 1)
        self.assertEqual(self.o.sni_names, ["origin.test"])
        self.assertEqual(len(self.o.snapshot()), 6)
        self.o.wait_open(0)

    def test_faults(self):
        with direct(self.o) as c:
            c.request("GET", "/close-after-headers?size=10000&send=100", [("Host", "x")])
            r = c.read_response()
            self.assertFalse(r.complete)
            self.assertEqual(len(r.body), 100)
        with direct(self.o) as c:
            c.request("GET", "/reset-mid-body?size=10000&send=100", [("Host", "x")])
            try:
                r = c.read_response()
                self.assertFalse(r.complete)
            except client.ConnectionClosed:
                pass
        with direct(self.o) as c:
            c.request("GET", "/close-silently", [("Host", "x")])
            self.assertTrue(c.closed_by_peer(5))
        self.o.wait_open(0)

    def test_modes(self):
        self.o.close_after_requests = 1
        with direct(self.o) as c:
            c.request("GET", "/ok?size=5", [("Host", "x")])
            r = c.read_response()
            self.assertIsNone(r.header("connection"))
            self.assertTrue(c.closed_by_peer(5))
        self.o.close_after_requests = None
        self.o.drop_request_after = 1
        with direct(self.o) as c:
            c.request("GET", "/ok?size=5", [("Host", "x")])
            c.read_response()
            c.request("GET", "/ok?size=6", [("Host", "x")])
            self.assertTrue(c.closed_by_peer(5))
        self.assertEqual(len(self.o.requests_for("/ok")), 3)
        self.o.drop_request_after = None
        self.o.close_idle_after_ms = 100
        with direct(self.o) as c:
            c.request("GET", "/ok?size=5", [("Host", "x")])
            c.read_response()
            t = time.monotonic()
            self.assertTrue(c.closed_by_peer(5))
            self.assertLess(time.monotonic() - t, 3)
        self.o.wait_open(0)
        self.assertEqual(self.o.max_open, 1)

    def test_concurrency_counter(self):
        conns = [direct(self.o) for _ in range(5)]
        try:
            wait_until(lambda: self.o.connections_open == 5, 5)
            self.assertEqual(self.o.max_open, 5)
        finally:
            for c in conns:
                c.close()
        self.o.wait_open(0)

    def test_plain_and_other_ca(self):
        plain = FaultOrigin(tls=False)
        self.addCleanup(plain.stop)
        with direct(plain, tls=False) as c:
            c.request("GET", "/ok?size=3", [("Host", "x")])
            self.assertEqual(c.read_response().body, patterns.pattern(3))
        other = FaultOrigin(cert="other")
        self.addCleanup(other.stop)
        import ssl
        with self.assertRaises(ssl.SSLCertVerificationError):
            direct(other)
        wait_until(lambda: other.tls_failures == 1, 5)

    def test_client_cert_required(self):
        o = FaultOrigin(require_client_cert=True)
        self.addCleanup(o.stop)
        pki = certs.get()
        with direct(o, certfile=pki.client_cert, keyfile=pki.client_key) as c:
            c.request("GET", "/ok?size=3", [("Host", "x")])
            self.assertEqual(c.read_response().status, 200)
        self.assertEqual(len(o.peer_certs), 1)

    def test_closed_port(self):
        port = closed_port()
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)


if __name__ == "__main__":
    unittest.main()
