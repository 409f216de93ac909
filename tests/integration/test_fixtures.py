"""Self-test of the test fixtures (nginx, fault origin, YAML emitter, metrics parser).
Runs without upkeep, so the harness is known to work before the proxy is blamed."""
import hashlib
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import time
import unittest

from upkeep_test import certs, client, patterns, proxy
from upkeep_test.client import Conn
from upkeep_test.fault_origin import FaultOrigin
from upkeep_test.h2_origin import H2Origin
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


class RawH2:
    """Just enough HTTP/2 to send frames the command-line clients never send (PING)."""

    def __init__(self, port, alpn=("h2",)):
        ctx = ssl.create_default_context(cafile=certs.get().ca_cert)
        ctx.set_alpn_protocols(list(alpn))
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname="origin.test")
        self.buf = b""
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + self.frame(4, 0, 0, b""))

    @staticmethod
    def frame(ftype, flags, stream, payload):
        return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload

    def send(self, ftype, flags, stream, payload):
        self.sock.sendall(self.frame(ftype, flags, stream, payload))

    def get(self, path):
        """A GET on stream 1: HPACK literals without indexing or Huffman coding."""
        block = b""
        for k, v in ((":method", "GET"), (":scheme", "https"), (":authority", "origin.test"), (":path", path)):
            block += b"\x00" + bytes([len(k)]) + k.encode() + bytes([len(v)]) + v.encode()
        self.send(1, 0x5, 1, block)  # HEADERS, END_STREAM | END_HEADERS

    def read_frame(self):
        while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed")
            self.buf += data
        n = int.from_bytes(self.buf[:3], "big")
        ftype, flags = self.buf[3], self.buf[4]
        stream = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
        payload, self.buf = self.buf[9:9 + n], self.buf[9 + n:]
        if ftype == 4 and not flags & 1:
            self.send(4, 1, 0, b"")  # SETTINGS ACK
        return ftype, flags, stream, payload

    def close(self):
        self.sock.close()


def _need(tool):
    if not shutil.which(tool):
        raise unittest.SkipTest("%s not installed (Debian package nghttp2-client)" % tool)


def _run(args, timeout=60):
    r = subprocess.run(args, capture_output=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr.decode(errors="replace")


class H2OriginFixtureTest(unittest.TestCase):
    """h2_origin driven by nghttp2's own clients (nghttp, h2load) and a raw frame writer."""

    def start(self, **kw):
        o = H2Origin(**kw)
        self.addCleanup(o.stop)
        return o

    def url(self, o, path):
        return "https://127.0.0.1:%d%s" % (o.port, path)

    def test_paths_with_nghttp(self):
        _need("nghttp")
        o = self.start()
        code, out, err = _run(["nghttp", self.url(o, "/ok?size=100000")])
        self.assertEqual(code, 0, err)
        self.assertEqual(out, patterns.pattern(100000))
        code, out, err = _run(["nghttp", "-v", self.url(o, "/trailers?size=5000")])
        self.assertEqual(code, 0, err)
        self.assertIn(b"x-checksum: " + hashlib.sha256(patterns.pattern(5000)).hexdigest().encode(), out)
        self.assertIn(b"x-conn: 2", out)
        self.assertNotIn(b"content-length", out)
        code, out, err = _run(["nghttp", "-v", self.url(o, "/rst?after=1000")])
        self.assertIn(b"recv RST_STREAM", out)
        self.assertIn(b"INTERNAL_ERROR", out)
        upload = os.urandom(300000)
        path = os.path.join(certs.get().dir, "upload-%d.bin" % os.getpid())
        with open(path, "wb") as f:
            f.write(upload)
        self.addCleanup(os.remove, path)
        code, out, err = _run(["nghttp", "-d", path, self.url(o, "/echo?id=up")])
        self.assertEqual(code, 0, err)
        self.assertEqual(out, upload)
        code, out, err = _run(["nghttp", "-H", "x-test: yes", self.url(o, "/headers?q=1")])
        self.assertEqual(code, 0, err)
        headers = json.loads(out)
        self.assertIn([":path", "/headers?q=1"], headers)
        self.assertIn(["x-test", "yes"], headers)
        t = time.monotonic()
        code, out, err = _run(["nghttp", self.url(o, "/delay?ms=300&size=10")])
        self.assertEqual((code, out), (0, patterns.pattern(10)), err)
        self.assertGreaterEqual(time.monotonic() - t, 0.3)

        o.wait_open(0)
        self.assertEqual(o.connections_total, 6)
        (echo,) = o.requests_for("/echo")
        self.assertEqual((echo.method, echo.query, echo.body_bytes), ("POST", {"id": "up"}, 300000))
        (ok,) = o.requests_for("/ok")
        self.assertEqual((ok.scheme, ok.authority), ("https", "127.0.0.1:%d" % o.port))
        self.assertEqual(o.stream_of(ok)["sent_bytes"], 100000)
        (rst,) = o.requests_for("/rst")
        self.assertEqual((o.stream_of(rst)["error_code"], o.stream_of(rst)["sent_bytes"]), (2, 1000))
        self.assertEqual(o.max_open_streams(), 1)
        self.assertEqual(o.invalid_frames, [])

    def test_max_concurrent_streams_with_h2load(self):
        _need("h2load")
        o = self.start(max_concurrent_streams=2)
        code, out, err = _run(["h2load", "-n", "100", "-c", "1", "-m", "10", self.url(o, "/ok?size=1000")])
        self.assertEqual(code, 0, err)
        self.assertIn(b"100 done", out, out)
        o.wait_open(0)
        self.assertEqual(o.connections_total, 1)
        self.assertEqual(o.max_open_streams(), 2, "h2load -m 10 against a limit of 2")
        self.assertEqual(o.events_of("conn_close")[0]["max_open_streams"], 2)
        # h2load may open streams before our SETTINGS reach it; those over the limit are
        # refused (and reported) by nghttp2, never processed, and never after the ACK.
        early = o.invalid_frames
        self.assertEqual(len(o.requests) + len(early), 100)
        self.assertIn(b"%d succeeded" % len(o.requests), out, out)
        self.assertFalse([e for e in early if e["settings_acked"]], early)

    def test_goaway_and_refused_with_h2load(self):
        _need("h2load")
        o = self.start(goaway_after=5)
        code, out, err = _run(["h2load", "-n", "5", "-c", "1", "-m", "1", self.url(o, "/ok?size=10")])
        self.assertIn(b"5 succeeded", out, out)
        (goaway,) = o.wait_event("goaway_sent")
        self.assertEqual(goaway["last_stream_id"], 9)
        o.wait_open(0)  # the origin closes once the streams below last-stream-id are done

        o = self.start(refuse_every=3)
        code, out, err = _run(["h2load", "-n", "6", "-c", "1", "-m", "1", self.url(o, "/ok?size=10")])
        self.assertIn(b"4 succeeded", out, out)
        self.assertEqual([e["stream"] for e in o.refused], [5, 11])
        self.assertEqual(len(o.requests), 4, "a refused stream was reported as processed")
        o.wait_event("rst_sent", count=2, error_code=7)

    def test_ping_ack_and_no_ack(self):
        for no_ack in (False, True):
            o = self.start(no_ping_ack=no_ack)
            c = RawH2(o.port)
            try:
                c.send(6, 0, 0, b"12345678")  # PING
                c.get("/ok?size=10")
                acked, ended = False, False
                while not ended:
                    ftype, flags, stream, payload = c.read_frame()
                    if ftype == 6 and flags & 1:
                        self.assertEqual(payload, b"12345678")
                        acked = True
                    ended = stream == 1 and bool(flags & 1)
                # An ACK is queued ahead of responses, so by the end of the stream it is
                # there, or it never comes.
                self.assertEqual(acked, not no_ack)
            finally:
                c.close()
            (ping,) = o.wait_event("ping")
            self.assertEqual(ping["acked"], not no_ack)
            o.wait_open(0)

    def test_alpn_h2_only(self):
        o = self.start()
        with self.assertRaises((ssl.SSLError, ConnectionResetError)):
            RawH2(o.port, alpn=("http/1.1",))
        (fail,) = o.wait_event("tls_failed")
        self.assertIn("no application protocol", fail["reason"])
        o.wait_open(0)
        self.assertEqual(o.requests, [])


if __name__ == "__main__":
    unittest.main()
