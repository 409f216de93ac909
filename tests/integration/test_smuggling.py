"""Request smuggling and malformed-input corpus, against the real binary.

Every vector is raw bytes sent on a fresh client connection. Expectations, per vector:

  REJECT (status)  upkeep answers `status` itself (Upkeep-Error header, one-line body),
                   closes the connection, and the fault origin records NO request.
  REJECT_BODY      the head is valid and forwarded (bodies stream, SPEC "Bodies stream
                   both ways"), the body framing is broken: upkeep answers 400 and
                   closes, and the origin never receives a COMPLETE request (its
                   upstream connection is closed mid-body, so no origin can read the
                   bytes that follow as a second request).
  FORWARD          unambiguous after normalisation: forwarded once, with exactly the
                   expected method and body; the upstream head carries at most one of
                   Content-Length / Transfer-Encoding.

Decisions (RFC 9110/9112; nginx, HAProxy and Envoy behave the same unless noted):
  - Any Transfer-Encoding other than exactly one "chunked" (lists, unknown codings,
    repeats, CTLs, a space before the colon), CL+TE, and any Content-Length that is not
    plain digits is a 400: RFC 9112 §6.3 and §5.1 ("MUST respond with 400" for
    whitespace between name and colon).
  - OWS around a value (" chunked", "chunked\\t") is legal (RFC 9110 §5.5) and so is
    the name in any case ("Transfer-encoding"): these are FORWARD with a chunked body,
    since upkeep regenerates Transfer-Encoding for the upstream the next hop cannot
    read them differently.
  - Bare LF line endings: 400. RFC 9112 §2.2 allows a server to accept them, but they
    are exactly what front/back parsers disagree about, and upkeep is a front.
  - obs-fold (a line starting with SP/HTAB): RFC 9112 §5.2 lets a server either
    reject it (400; nginx, HAProxy) or replace each fold with SP before interpreting
    the value. Beast does the latter and upkeep re-serialises each field on one line,
    so the next hop reads exactly what upkeep read: REJECT_OR_FORWARD, where FORWARD
    must frame the body as upkeep's reading of the unfolded value says.
  - Lowercase "get" is a valid extension-method token (methods are case-sensitive,
    RFC 9110 §9.1): a proxy forwards methods it does not know, so it is FORWARD with
    the method byte-for-byte "get" (never normalised to GET).
  - Router-level 400s (bad URL, userinfo, bad port, unknown scheme) close the
    connection like every other 400 (SPEC error table: "400, then close").
  - A byte outside RFC 3986 (obs-text 0x80-0xFF) in the request-target is a 400:
    it is not a valid request-target, and forwarding it raw leaves its meaning to
    whatever the next hop guesses.
  - A fragment in the request-target is not part of the HTTP/1.1 grammar
    (absolute-URI has none): 400; accepting it and stripping the fragment would also
    be safe, so the vector only forbids forwarding a '#'.
  - HTTP/2.0 (and the h2 prior-knowledge preface) and HTTP/3.0 on the plain port:
    505 (RFC 9110 §15.6.6) or 400 -- upkeep speaks 1.x downstream only. HTTP/1.2:
    RFC 9112 §2.3 says SHOULD be processed as 1.1 (and answered as HTTP/1.1, RFC 9110
    §2.5); Beast's parser refuses it (400), which is harmless. Allowed: 400, 505, or
    processed with an HTTP/1.1 response -- never a response claiming HTTP/1.2.
  - HTTP/0.9 request lines ("GET /"): 400.
"""
import os
import socket
import unittest

from upkeep_test.client import Conn, ConnectionClosed
from upkeep_test.testcase import UpkeepTestCase

HOST = b"fault.origin.test"
URL = b"http://fault.origin.test"
OK = "http://fault.origin.test/ok?size=10"

REJECT, REJECT_BODY, FORWARD, REJECT_OR_FORWARD, VERSION = (
    "reject", "reject_body", "forward", "reject_or_forward", "version")


def post(headers, body, target=URL + b"/echo", method=b"POST", version=b"HTTP/1.1"):
    return (method + b" " + target + b" " + version + b"\r\nHost: " + HOST + b"\r\n"
            + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body)


def get(target=URL + b"/ok?size=10", headers=(), version=b"HTTP/1.1", method=b"GET"):
    return post(list(headers), b"", target=target, method=method, version=version)


CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"
SMUGGLED = b"GET http://fault.origin.test/ok?size=1&smuggled=1 HTTP/1.1\r\nHost: fault.origin.test\r\n\r\n"

# (name, bytes, kind, detail) -- detail: allowed statuses for REJECT/VERSION, or
# (method, body) that must reach the origin for FORWARD.
VECTORS = [
    # -- CL / TE combinations -------------------------------------------------------------
    ("cl_te", post([b"Content-Length: 6", b"Transfer-Encoding: chunked"], b"0\r\n\r\n" + SMUGGLED), REJECT, {400}),
    ("te_cl", post([b"Transfer-Encoding: chunked", b"Content-Length: 4"], b"5c\r\n" + SMUGGLED + b"\r\n0\r\n\r\n"), REJECT, {400}),
    ("te_te_second_bogus", post([b"Transfer-Encoding: chunked", b"Transfer-Encoding: x"], CHUNKED_HELLO), REJECT, {400}),
    ("te_duplicated_chunked", post([b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"], CHUNKED_HELLO), REJECT, {400}),
    ("te_chunked_identity", post([b"Transfer-Encoding: chunked, identity"], CHUNKED_HELLO), REJECT, {400}),
    ("te_identity_chunked_cl", post([b"Transfer-Encoding: identity, chunked", b"Content-Length: 3"], CHUNKED_HELLO), REJECT, {400}),
    ("te_gzip_chunked", post([b"Transfer-Encoding: gzip, chunked"], CHUNKED_HELLO), REJECT, {400}),
    ("te_xchunked", post([b"Transfer-Encoding: xchunked"], CHUNKED_HELLO), REJECT, {400}),
    ("te_chunked_param", post([b"Transfer-Encoding: chunked;q=1"], CHUNKED_HELLO), REJECT, {400}),
    ("te_quoted", post([b'Transfer-Encoding: "chunked"'], CHUNKED_HELLO), REJECT, {400}),
    ("te_space_before_colon", post([b"Transfer-Encoding : chunked"], CHUNKED_HELLO), REJECT, {400}),
    ("te_vtab_value", post([b"Transfer-Encoding:\x0bchunked"], CHUNKED_HELLO), REJECT, {400}),
    ("te_ff_value", post([b"Transfer-Encoding: chunked\x0c"], CHUNKED_HELLO), REJECT, {400}),
    ("te_nul_value", post([b"Transfer-Encoding: chunked\x00"], CHUNKED_HELLO), REJECT, {400}),
    ("te_obs_fold", post([b"Transfer-Encoding:", b" chunked"], CHUNKED_HELLO), REJECT_OR_FORWARD, ("POST", b"hello")),
    # Folded into X-Pad's value: no Transfer-Encoding at all, so an empty body; the
    # chunked bytes that follow are then a (malformed) next request.
    ("te_folded_into_previous", post([b"X-Pad: a", b" Transfer-Encoding: chunked"], CHUNKED_HELLO), REJECT_OR_FORWARD, ("POST", b"")),
    ("te_casing_with_cl", post([b"Content-Length: 6", b"Transfer-encoding: chunked"], b"0\r\n\r\n" + SMUGGLED), REJECT, {400}),
    ("te_leading_space_value", post([b"Transfer-Encoding:  chunked"], CHUNKED_HELLO), FORWARD, ("POST", b"hello")),
    ("te_trailing_tab_value", post([b"Transfer-Encoding: chunked\t"], CHUNKED_HELLO), FORWARD, ("POST", b"hello")),
    ("te_casing_alone", post([b"Transfer-encoding: CHUNKED"], CHUNKED_HELLO), FORWARD, ("POST", b"hello")),
    ("te_http10", post([b"Transfer-Encoding: chunked"], CHUNKED_HELLO, version=b"HTTP/1.0"), REJECT, {400}),
    # -- Content-Length -----------------------------------------------------------------------
    ("cl_negative", post([b"Content-Length: -5"], b"hello"), REJECT, {400}),
    ("cl_plus", post([b"Content-Length: +5"], b"hello"), REJECT, {400}),
    ("cl_space_inside", post([b"Content-Length: 1 2"], b"hello world!"), REJECT, {400}),
    ("cl_hex", post([b"Content-Length: 0x5"], b"hello"), REJECT, {400}),
    ("cl_list_equal", post([b"Content-Length: 5, 5"], b"hello"), REJECT, {400}),
    ("cl_duplicate_equal", post([b"Content-Length: 5", b"Content-Length: 5"], b"hello"), REJECT, {400}),
    ("cl_duplicate_differing", post([b"Content-Length: 5", b"Content-Length: 6"], b"hello!"), REJECT, {400}),
    ("cl_overflow", post([b"Content-Length: 99999999999999999999999"], b"hello"), REJECT, {400}),
    ("cl_empty", post([b"Content-Length: "], b"hello"), REJECT, {400}),
    ("cl_space_before_colon", post([b"Content-Length : 5"], b"hello"), REJECT, {400}),
    # -- chunked bodies (head forwarded, body refused) -----------------------------------------
    ("chunk_size_overflow", post([b"Transfer-Encoding: chunked"], b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"), REJECT_BODY, {400}),
    ("chunk_size_2pow64", post([b"Transfer-Encoding: chunked"], b"10000000000000000\r\nhello\r\n0\r\n\r\n"), REJECT_BODY, {400}),
    ("chunk_size_junk", post([b"Transfer-Encoding: chunked"], b"5x\r\nhello\r\n0\r\n\r\n"), REJECT_BODY, {400}),
    ("chunk_size_0x", post([b"Transfer-Encoding: chunked"], b"0x5\r\nhello\r\n0\r\n\r\n"), REJECT_BODY, {400}),
    ("chunk_size_negative", post([b"Transfer-Encoding: chunked"], b"-5\r\nhello\r\n0\r\n\r\n"), REJECT_BODY, {400}),
    ("chunk_size_space_inside", post([b"Transfer-Encoding: chunked"], b"5 5\r\nhello\r\n0\r\n\r\n"), REJECT_BODY, {400}),
    ("chunk_ext_ctl", post([b"Transfer-Encoding: chunked"], b"5;a=\x01\r\nhello\r\n0\r\n\r\n"), REJECT_BODY, {400}),
    ("chunk_ext_bare_lf", post([b"Transfer-Encoding: chunked"], b"5;a\nhello\r\n0\r\n\r\n"), REJECT_BODY, {400}),
    ("chunk_data_too_long", post([b"Transfer-Encoding: chunked"], b"3\r\nhello\r\n0\r\n\r\n" + SMUGGLED), REJECT_BODY, {400}),
    ("chunk_missing_crlf", post([b"Transfer-Encoding: chunked"], b"5\r\nhelloXX0\r\n\r\n"), REJECT_BODY, {400}),
    ("chunk_bare_lf_terminator", post([b"Transfer-Encoding: chunked"], b"5\nhello\n0\n\n" + SMUGGLED), REJECT_BODY, {400}),
    # -- line endings, control bytes ------------------------------------------------------------
    ("bare_lf_everywhere", get().replace(b"\r\n", b"\n"), REJECT, {400}),
    ("bare_lf_in_header", post([b"X-A: 1\nTransfer-Encoding: chunked"], CHUNKED_HELLO), REJECT, {400}),
    ("bare_cr_in_header", get(headers=[b"X-A: 1\rX-B: 2"]), REJECT, {400}),
    ("nul_in_value", get(headers=[b"X-A: a\x00b"]), REJECT, {400}),
    ("nul_in_name", get(headers=[b"X-\x00A: b"]), REJECT, {400}),
    ("ctl_in_value", get(headers=[b"X-A: a\x01b"]), REJECT, {400}),
    ("del_in_value", get(headers=[b"X-A: a\x7fb"]), REJECT, {400}),
    ("esc_in_value", get(headers=[b"X-A: \x1b[31mred"]), REJECT, {400}),
    ("ctl_in_name", get(headers=[b"X-\x01A: b"]), REJECT, {400}),
    ("space_in_name", get(headers=[b"X A: b"]), REJECT, {400}),
    ("empty_name", get(headers=[b": b"]), REJECT, {400}),
    ("obs_fold_generic", get(headers=[b"X-A: a", b"\tb"]), REJECT_OR_FORWARD, ("GET", b"")),
    ("host_duplicate", get(headers=[b"Host: other.origin.test"]), REJECT, {400}),
    ("host_with_space", b"GET /ok HTTP/1.1\r\nHost: fault.origin.test x\r\n\r\n", REJECT, {400}),
    ("host_missing_origin_form", b"GET /ok HTTP/1.1\r\nX-A: 1\r\n\r\n", REJECT, {400}),
    # -- methods ---------------------------------------------------------------------------------
    ("method_with_space", b"G ET " + URL + b"/ok HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n", REJECT, {400}),
    ("method_with_ctl", get(method=b"GE\x01T"), REJECT, {400}),
    ("method_empty", b" " + URL + b"/ok HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n", REJECT, {400}),
    ("method_non_token", get(method=b"GET("), REJECT, {400}),
    ("method_lowercase_get", get(method=b"get"), FORWARD, ("get", b"")),
    # -- request targets ---------------------------------------------------------------------------
    ("target_double_space", b"GET  " + URL + b"/ok HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n", REJECT, {400}),
    ("target_with_space", get(target=URL + b"/ok x"), REJECT, {400}),
    ("target_with_tab", get(target=URL + b"/ok\tx"), REJECT, {400}),
    ("target_with_ctl", get(target=URL + b"/ok\x01"), REJECT, {400}),
    ("target_with_del", get(target=URL + b"/ok\x7f"), REJECT, {400}),
    ("target_with_nul", get(target=URL + b"/ok\x00"), REJECT, {400}),
    ("target_obs_text", get(target=URL + b"/ok\xff"), REJECT, {400}),
    ("target_empty_host", get(target=b"http:///ok"), REJECT, {400}),
    ("target_scheme_only", get(target=b"http://"), REJECT, {400}),
    ("target_userinfo", get(target=b"http://a@fault.origin.test/ok"), REJECT, {400}),
    ("target_userinfo_confusion", get(target=b"http://fault.origin.test@evil.test/ok"), REJECT, {400}),
    ("target_bad_port", get(target=b"http://fault.origin.test:99999/ok"), REJECT, {400}),
    ("target_nonnumeric_port", get(target=b"http://fault.origin.test:x/ok"), REJECT, {400}),
    ("target_fragment", get(target=URL + b"/ok?size=10#frag"), REJECT_OR_FORWARD, ("GET", b"")),
    ("target_unknown_scheme", get(target=b"ftp://fault.origin.test/ok"), REJECT, {400}),
    ("target_relative", get(target=b"ok?size=10"), REJECT, {400}),
    # -- versions --------------------------------------------------------------------------------------
    ("http09", b"GET /ok\r\n\r\n", REJECT, {400}),
    ("http09_absolute", b"GET " + URL + b"/ok\r\n", REJECT, {400}),
    ("version_lowercase", get(version=b"http/1.1"), REJECT, {400}),
    ("version_missing_minor", get(version=b"HTTP/1"), REJECT, {400}),
    ("version_two_digits", get(version=b"HTTP/1.10"), REJECT, {400}),
    ("version_http2", get(version=b"HTTP/2.0"), REJECT, {400, 505}),
    ("version_http3", get(version=b"HTTP/3.0"), REJECT, {400, 505}),
    ("h2_preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", REJECT, {400, 505}),
    ("version_http12", get(version=b"HTTP/1.2"), VERSION, {400, 505}),
    ("version_trailing_junk", get(version=b"HTTP/1.1 x"), REJECT, {400}),
]


class SmugglingTest(UpkeepTestCase):
    def setUp(self):
        self.origin = self.start_fault()
        self.up = self.start_upkeep({
            "limits": {"max_header_bytes": 8192},
            "routes": [self.route("fault.origin.test", self.origin.port),
                       self.route("other.origin.test", self.origin.port)],
            "access": {"allow": ["*.origin.test"]},
        })

    # -- helpers -------------------------------------------------------------------------------
    def exchange(self, data):
        """Send raw bytes on a new connection -> (Response or None, closed_after)."""
        with Conn(self.up.port, timeout=10) as c:
            try:
                c.send(data)
            except OSError:
                pass  # upkeep may answer and close before taking every byte
            try:
                r = c.read_response()
            except ConnectionClosed:
                return None, True
            except OSError:
                return None, True
            try:
                closed = c.closed_by_peer(3)
            except OSError:
                closed = True
            return r, closed

    def assert_healthy(self, name):
        r = self.fetch(self.up, "GET", OK)
        self.assertEqual(r.status, 200, "%s: a normal request afterwards failed: %r" % (name, r))
        self.assertPattern(r.body, 10, name)
        self.assertTrue(self.up.alive(), "%s: upkeep died" % name)

    def origin_requests(self, since):
        return [q for q in self.origin.snapshot()[since:] if q.query.get("health") is None]

    def check_reject(self, name, r, closed, statuses, new, body_level):
        self.assertIsNotNone(r, "%s: connection closed without a response (want %s)" % (name, sorted(statuses)))
        self.assertIn(r.status, statuses, "%s: status %d (want %s) %r body=%r"
                      % (name, r.status, sorted(statuses), r, r.body[:200]))
        self.assertTrue(r.header("upkeep-error"), "%s: the %d did not come from upkeep: %r" % (name, r.status, r))
        self.assertTrue(closed, "%s: connection not closed after %d" % (name, r.status))
        if body_level:
            complete = [q for q in new if q.complete]
            self.assertEqual(complete, [], "%s: the origin received a complete request: %r" % (name, complete))
        else:
            self.assertEqual(new, [], "%s: a rejected request reached the origin: %r" % (name, new))

    def check_forward(self, name, r, new, method, body):
        self.assertIsNotNone(r, "%s: connection closed without a response" % name)
        self.assertEqual(r.status, 200, "%s: want the origin's 200, got %r body=%r" % (name, r, r.body[:200]))
        self.assertIsNone(r.header("upkeep-error"), "%s: %r" % (name, r))
        self.assertEqual(len(new), 1, "%s: origin requests: %r" % (name, new))
        q = new[0]
        self.assertEqual(q.method, method, "%s: method forwarded as %r" % (name, q.method))
        self.assertNotIn("#", q.target, "%s: fragment forwarded: %r" % (name, q.target))
        self.assertTrue(q.complete, "%s: %r" % (name, q))
        self.assertEqual(q.body_len, len(body), "%s: body length at the origin" % name)
        framing = [k for k in q.header_names() if k in ("content-length", "transfer-encoding")]
        self.assertLessEqual(len(framing), 1, "%s: ambiguous framing upstream: %r" % (name, q.headers))
        if "transfer-encoding" in framing:
            self.assertEqual([v.lower() for v in q.header("transfer-encoding")], ["chunked"], name)

    def run_vector(self, name, data, kind, detail):
        since = len(self.origin.snapshot())
        r, closed = self.exchange(data)
        # A forwarded request is recorded by the origin before it answers, so the
        # snapshot is complete once the response has been read.
        new = self.origin_requests(since)
        if kind == REJECT:
            self.check_reject(name, r, closed, detail, new, body_level=False)
        elif kind == REJECT_BODY:
            self.check_reject(name, r, closed, detail, new, body_level=True)
        elif kind == FORWARD:
            self.check_forward(name, r, new, *detail)
        elif kind == REJECT_OR_FORWARD:
            if r is not None and r.header("upkeep-error"):
                self.check_reject(name, r, closed, {400}, new, body_level=False)
            else:
                self.check_forward(name, r, new, *detail)
        elif kind == VERSION:
            # 505 from upkeep, or handled as HTTP/1.1 and answered as HTTP/1.1.
            if r is not None and r.header("upkeep-error"):
                self.check_reject(name, r, closed, detail, new, body_level=False)
            else:
                self.assertIsNotNone(r, "%s: closed without a response" % name)
                self.assertEqual(r.status, 200, "%s: %r" % (name, r))
                self.assertEqual(r.version, "HTTP/1.1",
                                 "%s: upkeep answered with version %r (RFC 9110 §2.5: its own, HTTP/1.1)"
                                 % (name, r.version))
                self.assertEqual(len(new), 1, name)
        self.assert_healthy(name)

    def run_group(self, prefixes):
        ran = 0
        for name, data, kind, detail in VECTORS:
            if not name.startswith(prefixes):
                continue
            ran += 1
            with self.subTest(vector=name):
                self.run_vector(name, data, kind, detail)
        self.assertGreater(ran, 0)

    # -- the corpus, in groups so a failure names its area ---------------------------------------
    def test_transfer_encoding_and_content_length(self):
        self.run_group(("cl_te", "te_"))

    def test_content_length_values(self):
        self.run_group(("cl_negative", "cl_plus", "cl_space", "cl_hex", "cl_list", "cl_dup", "cl_overflow", "cl_empty"))

    def test_chunk_framing(self):
        self.run_group(("chunk_",))

    def test_line_endings_and_control_bytes(self):
        self.run_group(("bare_", "nul_", "ctl_", "del_", "esc_", "space_in_name", "empty_name", "obs_fold", "host_"))

    def test_methods(self):
        self.run_group(("method_",))

    def test_targets(self):
        self.run_group(("target_",))

    def test_versions(self):
        self.run_group(("http09", "version_", "h2_preface"))

    def test_every_vector_is_in_a_group(self):
        groups = ("cl_te", "te_", "cl_", "chunk_", "bare_", "nul_", "ctl_", "del_", "esc_", "space_in_name",
                  "empty_name", "obs_fold", "host_", "method_", "target_", "http09", "version_", "h2_preface")
        self.assertEqual([n for n, *_ in VECTORS if not n.startswith(groups)], [])
        self.assertEqual(len({n for n, *_ in VECTORS}), len(VECTORS), "duplicate vector names")

    def test_pipelined_smuggle_after_valid_request(self):
        """A valid request followed on the same connection by a CL.TE vector: the first is
        answered, the second refused, and the origin never sees the smuggled GET."""
        since = len(self.origin.snapshot())
        with Conn(self.up.port, timeout=10) as c:
            c.send(get(target=URL + b"/ok?size=5")
                   + post([b"Content-Length: 6", b"Transfer-Encoding: chunked"], b"0\r\n\r\n" + SMUGGLED))
            first = c.read_response()
            self.assertEqual(first.status, 200)
            second = c.read_response()
            self.assertUpkeepError(second, 400)
            self.assertTrue(c.closed_by_peer(3), "connection not closed after the 400")
        new = self.origin_requests(since)
        self.assertEqual([q.query for q in new], [{"size": "5"}], "origin saw: %r" % new)
        self.assert_healthy("pipelined")


if __name__ == "__main__":
    unittest.main()
