"""CONNECT: tunnel (default), deny, and ports outside connect_ports."""
import ssl
import unittest

from upkeep_test import patterns
from upkeep_test.client import Conn
from upkeep_test.testcase import UpkeepTestCase


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


if __name__ == "__main__":
    unittest.main()
