"""CONNECT: tunnel (default), deny, and ports outside connect_ports."""
import signal
import socket
import ssl
import subprocess
import time
import unittest

from upkeep_test import patterns, proxy
from upkeep_test.client import Conn
from upkeep_test.testcase import UpkeepTestCase
from upkeep_test.util import wait_until


class TunnelTest(UpkeepTestCase):
    def setUp(self):
        self.origin = self.start_fault()
        self.target = "127.0.0.1:%d" % self.origin.port

    def connect(self, up):
        c = Conn(up.port, timeout=10)
        self.addCleanup(c.close)
        c.send(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (self.target, self.target)).encode())
        return c, c.read_head()

    def test_tunnel(self):
        up = self.start_upkeep({"access": {"connect_ports": [self.origin.port]}})
        c, head = self.connect(up)
        self.assertEqual(head.status, 200, head)
        self.assertFalse(c.buf, "bytes after the 200 Connection established head")
        # End-to-end TLS through the tunnel, straight to the origin.
        ctx = ssl.create_default_context(cafile=self.pki().ca_cert)
        ctx.set_alpn_protocols(["http/1.1"])
        c.sock = ctx.wrap_socket(c.sock, server_hostname="origin.test")
        for size in (10, 100000):
            c.request("GET", "/ok?size=%d" % size, [("Host", "origin.test")])
            r = c.read_response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, patterns.pattern(size))
        rec = self.origin.requests_for("/ok")[0]
        self.assertNotIn("via", rec.header_names(), "a tunnel must relay bytes blindly")
        c.close()
        up.wait_metric("upkeep_tunnels_total", lambda v: v >= 1)
        up.wait_access_log(lambda d: d.get("protocol") == "tunnel")

    def test_port_not_in_connect_ports(self):
        up = self.start_upkeep()  # connect_ports: [443]
        c, head = self.connect(up)
        self.assertEqual(head.status, 403, head)
        self.assertEqual(head.header("upkeep-error"), "connect_denied")
        self.assertEqual(self.origin.connections_total, 0)

    def test_connect_deny(self):
        up = self.start_upkeep({"access": {"connect": "deny", "connect_ports": [self.origin.port]}})
        c, head = self.connect(up)
        self.assertEqual(head.status, 403, head)
        self.assertEqual(head.header("upkeep-error"), "connect_denied")
        self.assertEqual(self.origin.connections_total, 0)

    def test_denied_host_and_network(self):
        up = self.start_upkeep({"access": {"allow": ["only.example.test"],
                                           "connect_ports": [self.origin.port]}})
        c, head = self.connect(up)
        self.assertEqual(head.status, 403, head)
        self.assertEqual(head.header("upkeep-error"), "host_denied")
        up2 = self.start_upkeep({"access": {"deny_networks": ["127.0.0.0/8"],
                                            "connect_ports": [self.origin.port]}})
        c2, head2 = self.connect(up2)
        self.assertEqual(head2.status, 403, head2)
        self.assertEqual(head2.header("upkeep-error"), "network_denied")
        self.assertEqual(self.origin.connections_total, 0)

    def _tls_through(self, c):
        ctx = ssl.create_default_context(cafile=self.pki().ca_cert)
        ctx.set_alpn_protocols(["http/1.1"])
        c.sock = ctx.wrap_socket(c.sock, server_hostname="origin.test")

    def test_tunnel_lives_through_shutdown_grace(self):
        up = proxy.Upkeep({"shutdown_grace": "10s", "access": {"connect_ports": [self.origin.port]}})
        self.addCleanup(up.stop)
        c, head = self.connect(up)
        self.assertEqual(head.status, 200, head)
        self._tls_through(c)
        up.proc.send_signal(signal.SIGTERM)
        # Draining: no new clients, but the open tunnel keeps carrying traffic.
        def refused():
            try:
                socket.create_connection(("127.0.0.1", up.port), timeout=1).close()
                return False
            except OSError:
                return True
        wait_until(refused, 5, interval=0.05, message="listener closed while draining")
        c.request("GET", "/ok?size=1000", [("Host", "origin.test")])
        r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, patterns.pattern(1000))
        self.assertIsNone(up.proc.poll(), "upkeep exited with a tunnel still in use")
        # Once the client ends the tunnel, upkeep has nothing left and exits well
        # before the grace period.
        t = time.monotonic()
        c.close()
        code = up.proc.wait(8)
        self.assertEqual(code, 0)
        self.assertLess(time.monotonic() - t, 5)

    def test_tunnel_cut_after_shutdown_grace(self):
        up = proxy.Upkeep({"shutdown_grace": "1s", "access": {"connect_ports": [self.origin.port]}})
        self.addCleanup(up.stop)
        c, head = self.connect(up)
        self.assertEqual(head.status, 200, head)
        t = time.monotonic()
        up.proc.send_signal(signal.SIGTERM)
        try:
            code = up.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.fail("an idle tunnel held upkeep past shutdown_grace")
        self.assertEqual(code, 0)
        self.assertGreaterEqual(time.monotonic() - t, 0.9, "the tunnel was cut before the grace ended")
        self.assertTrue(c.closed_by_peer(5), "the tunnel's client side was not closed")


if __name__ == "__main__":
    unittest.main()
