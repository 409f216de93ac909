"""TLS origination: verification on by default, SNI, verify: false, plain routes,
client certificates."""
import unittest

from upkeep_test.testcase import UpkeepTestCase

OK = "http://%s/ok?size=64"


class TlsTest(UpkeepTestCase):
    def test_verification_on_by_default(self):
        origin = self.start_fault()
        # No ca_file: the system store does not trust the test CA.
        up = self.start_upkeep({"routes": [self.route("origin.test", origin.port)]}, ca_file=False)
        r = self.fetch(up, "GET", OK % "origin.test")
        self.assertUpkeepError(r, 502, "tls_failed")
        self.assertEqual(origin.requests, [])
        up.wait_access_log(lambda d: "tls_failed" in str(d.get("error", "")))

    def test_ca_file_trusts_test_ca(self):
        origin = self.start_fault()
        up = self.start_upkeep({"routes": [self.route("origin.test", origin.port)]})
        r = self.fetch(up, "GET", OK % "origin.test")
        self.assertEqual(r.status, 200, r)
        self.assertPattern(r.body, 64)
        self.assertEqual(origin.sni_names, ["origin.test"], "SNI should be the origin host")

    def test_host_name_checked(self):
        """A trusted certificate for other names is refused (host-name verification)."""
        origin = self.start_fault()
        up = self.start_upkeep({"routes": [self.route("wrong-name.test", origin.port)]})
        r = self.fetch(up, "GET", OK % "wrong-name.test")
        self.assertUpkeepError(r, 502, "tls_failed")
        self.assertEqual(origin.requests, [])

    def test_sni_override(self):
        origin = self.start_fault()
        up = self.start_upkeep({"routes": [self.route("origin.test", origin.port, sni="custom.origin.test")]})
        r = self.fetch(up, "GET", OK % "origin.test")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(origin.sni_names, ["custom.origin.test"])
        self.assertEqual(origin.requests[0].header("host"), ["origin.test"], "sni must not change Host")

    def test_verify_false(self):
        other = self.start_fault(cert="other")
        up = self.start_upkeep({"routes": [self.route("origin.test", other.port, verify=False)]})
        r = self.fetch(up, "GET", OK % "origin.test")
        self.assertEqual(r.status, 200, r)
        self.assertPattern(r.body, 64)
        # and the same origin with verification on is refused
        up2 = self.start_upkeep({"routes": [self.route("origin.test", other.port)]})
        r = self.fetch(up2, "GET", OK % "origin.test")
        self.assertUpkeepError(r, 502, "tls_failed")

    def test_plain_route(self):
        plain = self.start_fault(tls=False)
        up = self.start_upkeep({"routes": [self.route("plain.origin.test", plain.port, tls=False)]})
        for _ in range(3):
            r = self.fetch(up, "GET", OK % "plain.origin.test")
            self.assertEqual(r.status, 200, r)
            self.assertPattern(r.body, 64)
        self.assertEqual(plain.connections_total, 1)
        rec = up.wait_access_log(lambda d: d.get("status") in ("200", 200))
        self.assertEqual(rec.get("protocol"), "http/1.1")

    def test_client_certificate(self):
        pki = self.pki()
        origin = self.start_fault(require_client_cert=True)
        up = self.start_upkeep({"routes": [
            self.route("origin.test", origin.port, client_cert=pki.client_cert, client_key=pki.client_key),
            self.route("nocert.origin.test", origin.port),
        ]})
        r = self.fetch(up, "GET", OK % "origin.test")
        self.assertEqual(r.status, 200, r)
        self.assertPattern(r.body, 64)
        self.assertTrue(origin.peer_certs, "origin saw no client certificate")
        subject = dict(x[0] for x in origin.peer_certs[0]["subject"])
        self.assertEqual(subject.get("commonName"), "upkeep test client")
        r = self.fetch(up, "GET", OK % "nocert.origin.test")
        self.assertEqual(r.status, 502, r)
        self.assertEqual(len(origin.requests_for("/ok")), 1, "a request went through without a client cert")

    def test_nginx_client_cert_h2(self):
        pki = self.pki()
        nginx = self.start_nginx()
        up = self.start_upkeep({"routes": [
            self.route("origin.test", nginx.port, client_cert=pki.client_cert, client_key=pki.client_key),
            self.route("nocert.origin.test", nginx.port),
        ]})
        r = self.fetch(up, "GET", "http://origin.test/client-cert")
        self.assertEqual(r.status, 200, r)
        self.assertIn(b"upkeep test client", r.body)
        r = self.fetch(up, "GET", "http://nocert.origin.test/client-cert")
        self.assertEqual(r.status, 403, r)  # nginx: ssl_verify_client optional


if __name__ == "__main__":
    unittest.main()
