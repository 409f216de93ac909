"""A unittest base class that starts fixtures and always ends them (addCleanup)."""
import os
import sys
import unittest

from . import certs, client, patterns
from .fault_origin import FaultOrigin
from .nginx import Nginx
from .proxy import Upkeep, route


# Request fields that belong to one connection (RFC 9110 §7.6.1) or to the proxy:
# sent by a client, none may reach the origin (TE only as "trailers").
HOP_BY_HOP_PROBE = [
    ("Host", "wrong.example"),
    ("Connection", "keep-alive, X-Custom-Hop"),
    ("X-Custom-Hop", "must not pass"),
    ("Proxy-Connection", "keep-alive"),
    ("Keep-Alive", "timeout=5"),
    ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
    ("TE", "trailers"),
]
HOP_BY_HOP_NAMES = ("connection", "x-custom-hop", "proxy-connection", "keep-alive",
                    "proxy-authorization", "transfer-encoding", "upgrade")


class UpkeepTestCase(unittest.TestCase):
    maxDiff = 4000

    def assertNoHopByHop(self, names, headers):
        """names: the field names the origin received; headers: for the message."""
        for hop in HOP_BY_HOP_NAMES:
            self.assertNotIn(hop, names, "hop-by-hop header %s was forwarded: %r" % (hop, headers))

    # -- fixtures, each ended by cleanup (registered at start) -------------------
    def start_nginx(self):
        n = Nginx()
        self.addCleanup(n.cleanup)
        return n

    def start_fault(self, **kw):
        o = FaultOrigin(**kw)
        self.addCleanup(o.stop)
        return o

    def start_upkeep(self, config=None, **kw):
        u = Upkeep(config, **kw)
        self.addCleanup(self._stop_upkeep, u)
        return u

    def _stop_upkeep(self, u):
        alive = u.alive()
        code = u.stop()
        if os.environ.get("UPKEEP_TEST_VERBOSE") or code != 0:
            sys.stderr.write("\n--- upkeep stderr (exit %s) ---\n%s\n" % (code, u.stderr_text()[-6000:]))
        # A crash during the test shows here even if every request looked fine.
        self.assertTrue(alive, "upkeep was not running at the end of the test (exit %s)" % code)
        self.assertEqual(code, 0, "upkeep did not exit 0 on SIGTERM")

    # -- helpers --------------------------------------------------------------------
    @staticmethod
    def pki():
        return certs.get()

    route = staticmethod(route)

    def fetch(self, up, method, url, headers=(), body=None, **kw):
        return client.fetch(up.port, method, url, headers, body, **kw)

    def assertPattern(self, body, size, msg=None):
        if len(body) != size or body != patterns.pattern(size):
            first_bad = next((i for i, (a, b) in enumerate(zip(body, patterns.pattern(size))) if a != b), None)
            self.fail("%sbody: %d bytes (want %d), first differing byte at %s"
                      % (msg + ": " if msg else "", len(body), size, first_bad))

    def assertUpkeepError(self, resp, status, reason=None, close=None, conn=None):
        """status, Upkeep-Error header (== reason when given), a one-line body."""
        self.assertEqual(resp.status, status, "want %d, got %r body=%r" % (status, resp, resp.body[:200]))
        err = resp.header("upkeep-error")
        self.assertTrue(err, "no Upkeep-Error header in %r" % resp)
        if reason is not None:
            self.assertEqual(err.strip(), reason)
        text = resp.body.decode("utf-8", "replace").strip()
        self.assertTrue(text, "error body is empty")
        self.assertNotIn("\n", text, "error body is not one line: %r" % text)
        if close and conn is not None:
            self.assertTrue(conn.closed_by_peer(5), "connection not closed after %d" % status)
