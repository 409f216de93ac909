"""Every row of SPEC.md's error table, and configuration errors.

Each error case checks the status, the Upkeep-Error header and a one-line body,
then that a normal request still succeeds on a new connection and that a bystander
client's keep-alive connection is unaffected."""
import base64
import os
import shutil
import subprocess
import tempfile
import time
import unittest

from upkeep_test import client, proxy
from upkeep_test.client import Conn
from upkeep_test.testcase import UpkeepTestCase
from upkeep_test.util import closed_port, wait_until

OK = "http://fault.origin.test/ok?size=10"


class ErrorTableTest(UpkeepTestCase):
    def setUp(self):
        self.origin = self.start_fault()
        self.other_ca_origin = self.start_fault(cert="other")
        o = self.origin.port
        self.up = self.start_upkeep({
            "limits": {"max_header_bytes": 4096},
            "routes": [
                self.route("fault.origin.test", o),
                self.route("denied.origin.test", o),
                self.route("refused.origin.test", closed_port()),
                self.route("otherca.origin.test", self.other_ca_origin.port),
                self.route("slow.origin.test", o, response_timeout="300ms"),
                self.route("queue.origin.test", o, max_connections=1, queue={"max_pending": 1, "timeout": "20s"}),
                self.route("qtimeout.origin.test", o, max_connections=1, queue={"timeout": "300ms"}),
            ],
            "access": {"allow": ["*.origin.test", "origin.test"], "deny": ["denied.origin.test"]},
        })
        self.bystander = Conn(self.up.port)
        self.addCleanup(self.bystander.close)
        self.bystander_request()

    def bystander_request(self):
        self.bystander.request("GET", "http://fault.origin.test/ok?size=33")
        r = self.bystander.read_response()
        self.assertEqual(r.status, 200, "bystander keep-alive client affected: %r" % r)
        self.assertTrue(r.complete)

    def assert_healthy(self):
        r = self.fetch(self.up, "GET", OK)
        self.assertEqual(r.status, 200, "a normal request after the error failed: %r %r" % (r, r.body[:200]))
        self.assertPattern(r.body, 10)
        self.bystander_request()
        self.assertTrue(self.up.alive())

    def send_raw(self, data, close_expected=True):
        with Conn(self.up.port, timeout=10) as c:
            c.send(data)
            r = c.read_response()
            closed = c.closed_by_peer(5) if close_expected else None
        return r, closed

    # -- 400 -------------------------------------------------------------------------------
    def check_400(self, data):
        r, closed = self.send_raw(data)
        self.assertUpkeepError(r, 400)
        self.assertTrue(closed, "connection not closed after 400 for %r" % data[:80])
        self.up.wait_access_log(lambda d: d.get("status") == "400" or d.get("status") == 400)
        self.assert_healthy()

    def test_malformed_request_line(self):
        self.check_400(b"THIS IS NOT HTTP\r\n\r\n")
        self.check_400(b"GET http://fault.origin.test/ok HTTP/1.1 extra\r\nHost: fault.origin.test\r\n\r\n")
        self.check_400(b"GET http://fault.origin.test/ok HTTP/1.1\r\nBad Header Without Colon\r\n\r\n")

    def test_content_length_and_transfer_encoding(self):
        self.check_400(b"POST http://fault.origin.test/echo HTTP/1.1\r\nHost: fault.origin.test\r\n"
                       b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        self.assertEqual(self.origin.requests_for("/echo"), [], "a smuggling attempt reached the origin")

    def test_duplicate_differing_content_length(self):
        self.check_400(b"POST http://fault.origin.test/echo HTTP/1.1\r\nHost: fault.origin.test\r\n"
                       b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
        self.check_400(b"POST http://fault.origin.test/echo HTTP/1.1\r\nHost: fault.origin.test\r\n"
                       b"Content-Length: 5, 6\r\n\r\nhello!")
        self.assertEqual(self.origin.requests_for("/echo"), [])

    def test_bad_chunk_size(self):
        self.check_400(b"POST http://fault.origin.test/echo HTTP/1.1\r\nHost: fault.origin.test\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
        for q in self.origin.requests_for("/echo"):
            self.assertFalse(q.complete, "a badly chunked body was completed upstream: %r" % q)

    def test_bad_transfer_encodings(self):
        for te in (b"chunked, identity", b"xchunked", b"identity, chunked, chunked"):
            self.check_400(b"POST http://fault.origin.test/echo HTTP/1.1\r\nHost: fault.origin.test\r\n"
                           b"Transfer-Encoding: " + te + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        self.assertEqual([q for q in self.origin.requests_for("/echo") if q.complete], [])

    # -- 431 ---------------------------------------------------------------------------------
    def test_headers_too_large(self):
        r, _ = self.send_raw(client.build_request("GET", OK, [("X-Big", "a" * 5000)]), close_expected=False)
        self.assertUpkeepError(r, 431, "header_too_large")
        self.assertEqual(len(self.origin.requests_for("/ok")), 1, "the oversized request reached the origin")
        self.assert_healthy()

    # -- 403 -----------------------------------------------------------------------------------
    def test_host_not_allowed(self):
        r = self.fetch(self.up, "GET", "http://notallowed.example/x")
        self.assertUpkeepError(r, 403, "host_denied")
        self.assert_healthy()

    def test_host_denied(self):
        r = self.fetch(self.up, "GET", "http://denied.origin.test/ok?size=1")
        self.assertUpkeepError(r, 403, "host_denied")
        self.assertEqual([q for q in self.origin.requests_for("/ok") if q.query.get("size") == "1"], [])
        self.assert_healthy()

    # -- 502 -------------------------------------------------------------------------------------
    def test_connect_refused(self):
        r = self.fetch(self.up, "GET", "http://refused.origin.test/x")
        self.assertUpkeepError(r, 502, "connect_failed")
        self.up.wait_access_log(lambda d: "connect_failed" in str(d.get("error", "")))
        self.assert_healthy()

    def test_tls_failure(self):
        r = self.fetch(self.up, "GET", "http://otherca.origin.test/ok?size=1")
        self.assertUpkeepError(r, 502, "tls_failed")
        self.assertEqual(self.other_ca_origin.requests, [], "a request went over an unverified connection")
        self.assert_healthy()

    # -- 503 -------------------------------------------------------------------------------------------
    def test_queue_full(self):
        first = Conn(self.up.port, timeout=20)
        self.addCleanup(first.close)
        first.request("GET", "http://queue.origin.test/delay-headers?ms=2000&size=10")
        wait_until(lambda: self.origin.requests_for("/delay-headers"), 10, message="first request at the origin")
        second = Conn(self.up.port, timeout=20)
        self.addCleanup(second.close)
        second.request("GET", "http://queue.origin.test/ok?size=10")
        self.up.wait_metric("upkeep_pool_pending_requests", lambda v: v >= 1)
        r = self.fetch(self.up, "GET", "http://queue.origin.test/ok?size=10")
        self.assertUpkeepError(r, 503, "queue_full")
        self.assertTrue(r.header("retry-after"), "503 without Retry-After")
        self.assertEqual(first.read_response().status, 200)
        self.assertEqual(second.read_response().status, 200)
        self.assert_healthy()

    # -- 504 -------------------------------------------------------------------------------------------
    def test_response_timeout(self):
        t = time.monotonic()
        r = self.fetch(self.up, "GET", "http://slow.origin.test/delay-headers?ms=3000")
        self.assertUpkeepError(r, 504, "response_timeout")
        self.assertLess(time.monotonic() - t, 2.5, "response_timeout 300ms not honoured")
        self.assert_healthy()

    def test_queue_timeout(self):
        first = Conn(self.up.port, timeout=20)
        self.addCleanup(first.close)
        first.request("GET", "http://qtimeout.origin.test/delay-headers?ms=2000&size=10")
        wait_until(lambda: self.origin.requests_for("/delay-headers"), 10, message="first request at the origin")
        r = self.fetch(self.up, "GET", "http://qtimeout.origin.test/ok?size=10")
        self.assertUpkeepError(r, 504, "queue_timeout")
        self.assertEqual(first.read_response().status, 200)
        self.assert_healthy()

    # -- 508 ---------------------------------------------------------------------------------------------
    def test_loop_detected(self):
        for via in ("1.1 upkeep", "1.0 fred, 1.1 upkeep"):
            r = self.fetch(self.up, "GET", OK, [("Via", via)])
            self.assertUpkeepError(r, 508, "loop_detected")
        self.assertEqual(len(self.origin.requests_for("/ok")), 1)  # the bystander's only
        self.assert_healthy()


class AccessPolicyTest(UpkeepTestCase):
    def setUp(self):
        self.origin = self.start_fault()

    def test_proxy_auth(self):
        d = tempfile.mkdtemp(prefix="upkeep-auth-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "users")
        with open(path, "w") as f:
            f.write("alice:s3cret\n")
        os.chmod(path, 0o600)
        up = self.start_upkeep({"routes": [self.route("fault.origin.test", self.origin.port)],
                                "access": {"auth": path}})
        r = self.fetch(up, "GET", OK)
        self.assertUpkeepError(r, 407, "auth_required")
        pa = r.header("proxy-authenticate") or ""
        self.assertTrue(pa.startswith("Basic realm="), "Proxy-Authenticate: %r" % pa)
        bad = "Basic " + base64.b64encode(b"alice:wrong").decode()
        r = self.fetch(up, "GET", OK, [("Proxy-Authorization", bad)])
        self.assertUpkeepError(r, 407, "auth_required")
        good = "Basic " + base64.b64encode(b"alice:s3cret").decode()
        r = self.fetch(up, "GET", OK, [("Proxy-Authorization", good)])
        self.assertEqual(r.status, 200, r)
        self.assertPattern(r.body, 10)
        reqs = self.origin.requests_for("/ok")
        self.assertEqual(len(reqs), 1, "unauthenticated requests reached the origin")
        self.assertNotIn("proxy-authorization", reqs[0].header_names())

    def test_deny_networks(self):
        up = self.start_upkeep({"routes": [self.route("fault.origin.test", self.origin.port)],
                                "access": {"deny_networks": ["127.0.0.0/8"]}})
        r = self.fetch(up, "GET", OK)
        self.assertUpkeepError(r, 403)
        self.assertEqual(self.origin.connections_total, 0, "upkeep connected to a denied network")


class ConfigErrorTest(unittest.TestCase):
    def setUp(self):
        self.bin = os.environ["UPKEEP_BIN"]
        self.dir = tempfile.mkdtemp(prefix="upkeep-cfg-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def run_upkeep(self, args, timeout=10):
        """Run to completion; a process still running at the deadline is killed and fails the test."""
        p = subprocess.Popen([self.bin] + args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate(timeout=10)
            self.fail("upkeep %s did not exit within %ds (it started?)" % (args, timeout))
        return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    def assert_rejected(self, text, key, mode="--config"):
        path = self.write("bad.yaml", text)
        code, out, err = self.run_upkeep([mode, path])
        self.assertEqual(code, 1, "exit %s for bad config; stderr %r" % (code, err))
        lines = [l for l in err.splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, "want one stderr line, got %r" % err)
        self.assertIn(key, lines[0])
        return lines[0]

    BASE = 'listen: "127.0.0.1:0"\nadmin: "127.0.0.1:0"\n'

    def test_unknown_key(self):
        line = self.assert_rejected(self.BASE + "upstream:\n  max_conections: 4\n", "max_conections")
        self.assertRegex(line, r"\b4\b", "the line (4) is not named")

    def test_unknown_top_level_key(self):
        self.assert_rejected(self.BASE + "listne: 127.0.0.1:0\n", "listne")

    def test_bad_duration(self):
        self.assert_rejected(self.BASE + "upstream:\n  idle_timeout: 5 parsecs\n", "idle_timeout")

    def test_bad_size(self):
        self.assert_rejected(self.BASE + "upstream:\n  drain: {max_bytes: lots}\n", "max_bytes")

    def test_bad_route_key(self):
        self.assert_rejected(self.BASE + 'routes:\n  - {host: "a.test", max_conections: 2}\n', "max_conections")

    def test_check_config_rejects_too(self):
        self.assert_rejected(self.BASE + "upstream:\n  idle_timeout: 5 parsecs\n", "idle_timeout", "--check-config")

    def test_non_loopback_open_proxy_refused(self):
        path = self.write("open.yaml", 'listen: "0.0.0.0:0"\nadmin: "127.0.0.1:0"\naccess:\n  allow: ["*"]\n')
        code, out, err = self.run_upkeep(["--config", path])
        self.assertEqual(code, 1, "upkeep accepted an open proxy on 0.0.0.0; stderr %r" % err)
        self.assertTrue(err.strip())

    def test_world_readable_auth_file_refused(self):
        users = self.write("users", "alice:s3cret\n")
        os.chmod(users, 0o644)
        path = self.write("auth.yaml", self.BASE + "access:\n  auth: %s\n" % proxy._scalar(users))
        code, out, err = self.run_upkeep(["--config", path])
        self.assertEqual(code, 1, "world-readable auth file accepted; stderr %r" % err)
        self.assertIn("auth", err)

    def test_bad_listen_flag(self):
        code, out, err = self.run_upkeep(["--listen", "not-an-address", "--admin", "127.0.0.1:0"])
        self.assertEqual(code, 1, err)
        self.assertTrue(err.strip())

    def test_check_config_good(self):
        path = self.write("good.yaml", proxy.to_yaml({
            "listen": "127.0.0.1:0", "admin": "127.0.0.1:0",
            "upstream": {"max_connections": 8, "idle_timeout": "90s", "drain": {"max_bytes": "2MiB"}},
            "routes": [{"host": "api.example.com", "connect_to": "127.0.0.1:8443", "max_connections": 2}],
        }))
        code, out, err = self.run_upkeep(["--check-config", path])
        self.assertEqual(code, 0, err)
        self.assertIn("max_connections", out)

    def test_print_default_config_round_trips(self):
        code, out, err = self.run_upkeep(["--print-default-config"])
        self.assertEqual(code, 0, err)
        self.assertIn("listen", out)
        path = self.write("default.yaml", out)
        code, out2, err = self.run_upkeep(["--check-config", path])
        self.assertEqual(code, 0, "the printed default does not load: %s" % err)

    def test_version(self):
        code, out, err = self.run_upkeep(["--version"])
        self.assertEqual(code, 0)
        self.assertTrue((out + err).strip(), "--version printed nothing")


if __name__ == "__main__":
    unittest.main()
