"""Process life cycle: graceful SIGTERM, SIGHUP reload, `upkeep healthcheck`, and the
hint logged when a client speaks TLS to the plain listener."""
import os
import signal
import ssl
import socket
import subprocess
import time
import unittest

from upkeep_test import proxy
from upkeep_test.client import Conn
from upkeep_test.testcase import UpkeepTestCase
from upkeep_test.util import closed_port, wait_until


class LifecycleTest(UpkeepTestCase):
    def setUp(self):
        self.origin = self.start_fault()

    def test_sigterm_finishes_in_flight_then_exits_0(self):
        up = proxy.Upkeep({"shutdown_grace": "10s",
                           "routes": [self.route("fault.origin.test", self.origin.port)]})
        self.addCleanup(up.stop)
        with Conn(up.port, timeout=20) as c:
            c.request("GET", "http://fault.origin.test/delay-headers?ms=1500&size=50")
            wait_until(lambda: self.origin.requests_for("/delay-headers"), 10, message="request at the origin")
            up.proc.send_signal(signal.SIGTERM)
            # Draining: /readyz turns 503 while the in-flight request finishes.
            def readyz():
                try:
                    return up.admin_get("/readyz", timeout=2)[0] == 503
                except OSError:
                    return False
            ready_503 = wait_until(readyz, 5, interval=0.05, message="/readyz 503 while draining")
            self.assertTrue(ready_503)
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertPattern(r.body, 50)
        try:
            code = up.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.fail("upkeep still running 10s after SIGTERM with nothing in flight")
        self.assertEqual(code, 0)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", up.port), timeout=2).close()

    def test_second_signal_exits_at_once(self):
        up = proxy.Upkeep({"shutdown_grace": "30s",
                           "routes": [self.route("fault.origin.test", self.origin.port)]})
        self.addCleanup(up.stop)
        with Conn(up.port, timeout=20) as c:
            c.request("GET", "http://fault.origin.test/delay-headers?ms=20000&size=10")
            wait_until(lambda: self.origin.requests_for("/delay-headers"), 10, message="request at the origin")
            up.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: "shutting down" in up.stderr_text(), 5, message="drain started")
            self.assertIsNone(up.proc.poll(), "the first signal must wait for the in-flight request")
            t = time.monotonic()
            up.proc.send_signal(signal.SIGINT)
            try:
                code = up.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.fail("a second signal did not end upkeep at once")
            self.assertLess(time.monotonic() - t, 5)
            self.assertEqual(code, 0)

    def test_sigterm_idle_exits_quickly(self):
        up = proxy.Upkeep({"shutdown_grace": "10s",
                           "routes": [self.route("fault.origin.test", self.origin.port)]})
        self.addCleanup(up.stop)
        self.assertEqual(self.fetch(up, "GET", "http://fault.origin.test/ok").status, 200)
        t = time.monotonic()
        up.proc.send_signal(signal.SIGTERM)
        code = up.proc.wait(10)
        self.assertEqual(code, 0)
        self.assertLess(time.monotonic() - t, 5, "idle shutdown waited for the grace period")
        self.origin.wait_open(0, timeout=5)  # upstream connections closed on exit

    def test_sighup_reload(self):
        other = self.start_fault()
        up = self.start_upkeep({"routes": [self.route("fault.origin.test", self.origin.port)],
                                "access": {"allow": ["fault.origin.test"]}})
        self.assertEqual(self.fetch(up, "GET", "http://other.origin.test/ok").status, 403)
        # A good new config: the new route and allow list apply after SIGHUP.
        cfg = proxy.merge(up.config, {"routes": [self.route("fault.origin.test", self.origin.port),
                                                 self.route("other.origin.test", other.port)],
                                      "access": {"allow": ["fault.origin.test", "other.origin.test"]}})
        with open(up.config_path, "w") as f:
            f.write(proxy.to_yaml(cfg))
        up.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: self.fetch(up, "GET", "http://other.origin.test/ok").status == 200, 10,
                   interval=0.1, message="new route served after SIGHUP")
        self.assertTrue(other.requests_for("/ok"))
        # A broken config: upkeep keeps running with the last good one and says why.
        before = up.stderr_text()
        with open(up.config_path, "w") as f:
            f.write(proxy.to_yaml(cfg) + "bogus_key: 1\n")
        up.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "bogus_key" in up.stderr_text()[len(before):], 10,
                   message="reload error logged naming the key")
        self.assertTrue(up.alive())
        self.assertEqual(self.fetch(up, "GET", "http://other.origin.test/ok").status, 200)
        self.assertEqual(self.fetch(up, "GET", "http://fault.origin.test/ok").status, 200)

    def test_sighup_rebinds_listener_and_retires_only_changed_origins(self):
        b_old, b_new = self.start_fault(), self.start_fault()
        up = self.start_upkeep({"routes": [self.route("a.origin.test", self.origin.port),
                                           self.route("b.origin.test", b_old.port)]})
        old_port = up.port
        keep = Conn(old_port)
        self.addCleanup(keep.close)
        keep.request("GET", "http://a.origin.test/ok?size=10")
        self.assertEqual(keep.read_response().status, 200)
        self.assertEqual(self.fetch(up, "GET", "http://b.origin.test/ok").status, 200)
        self.assertEqual(self.origin.connections_total, 1)
        self.assertEqual(b_old.connections_total, 1)

        new_port = closed_port()
        cfg = proxy.merge(up.config, {"listen": "127.0.0.1:%d" % new_port,
                                      "routes": [self.route("a.origin.test", self.origin.port),
                                                 self.route("b.origin.test", b_new.port)]})
        with open(up.config_path, "w") as f:
            f.write(proxy.to_yaml(cfg))
        before = len(up.stderr_text())
        up.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in up.stderr_text()[before:], 10,
                   message="reload logged")
        self.assertIn("proxy=127.0.0.1:%d" % new_port, up.stderr_text()[before:])

        # The established client keeps its connection, and the unchanged origin its
        # warm upstream connection.
        keep.request("GET", "http://a.origin.test/ok?size=10")
        self.assertEqual(keep.read_response().status, 200)
        self.assertEqual(self.origin.connections_total, 1, "unchanged origin was reconnected")
        # New clients use the new listener; the old one is closed.
        up.port = new_port
        self.assertEqual(self.fetch(up, "GET", "http://b.origin.test/ok").status, 200)
        self.assertEqual(len(b_new.requests_for("/ok")), 1, "changed route not followed")
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", old_port), timeout=2).close()
        # The changed origin's idle connection is retired, and counted as such.
        up.wait_metric("upkeep_upstream_connections_closed_total", lambda v: v == 1,
                       origin="https://b.origin.test:443", reason="config_changed")
        wait_until(lambda: b_old.connections_open == 0, 10, message="old origin connection closed")

    def test_healthcheck_command(self):
        up = self.start_upkeep({"routes": [self.route("fault.origin.test", self.origin.port)]})
        bin_ = os.environ["UPKEEP_BIN"]
        r = subprocess.run([bin_, "healthcheck", "--admin", "127.0.0.1:%d" % up.admin_port],
                           capture_output=True, timeout=15)
        self.assertEqual(r.returncode, 0, r.stderr)
        port = closed_port()
        r = subprocess.run([bin_, "healthcheck", "--admin", "127.0.0.1:%d" % port], capture_output=True, timeout=15)
        self.assertEqual(r.returncode, 1, "healthcheck against nothing should fail")

    def test_tls_client_hello_on_plain_listener_logged(self):
        up = self.start_upkeep({"routes": [self.route("fault.origin.test", self.origin.port)]})
        before = len(up.stderr_text())
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", up.port), timeout=5) as raw:
            with self.assertRaises((ssl.SSLError, OSError)):
                ctx.wrap_socket(raw, server_hostname="origin.test").close()
        wait_until(lambda: any(w in up.stderr_text()[before:].lower() for w in ("tls", "https", "clienthello")),
                   10, message="a log line about TLS on the plain listener")
        self.assertEqual(self.fetch(up, "GET", "http://fault.origin.test/ok").status, 200)


if __name__ == "__main__":
    unittest.main()
