"""A TLS HTTP/1.1 origin that controls what OpenSSL sends, and when: the tls_origin binary
(tests/support/tls_origin), run as a child process on 127.0.0.1 port 0, with its events
read on a background thread.

    with TlsOrigin(ticket_delay_ms=300) as o:
        ... o.port, o.wait_event("ticket_sent", conn=1), o.handshakes(), o.connections_total

The binary's path comes from $UPKEEP_TLS_ORIGIN_BIN (ctest sets it); when it is not set
the test is skipped with a message saying so. TLS uses the test PKI (certs.py): the
server certificate is for localhost / 127.0.0.1, signed by the test CA. ALPN: the origin
selects "http/1.1" or takes a client that offers none; an offer without http/1.1 (h2
only) fails the handshake with a no_application_protocol alert.

Modes (constructor argument -> flag):
  tls_min / tls_max="1.2"|"1.3"   protocol range (default 1.2 .. 1.3)
  tickets=N            TLS 1.3 tickets sent with the handshake (OpenSSL default 2; 0 = none)
  ticket_delay_ms=N    TLS 1.3: no ticket with the handshake; exactly one NewSessionTicket
                       N ms after it, whatever the connection is doing ("ticket_sent").
                       Overrides tickets. Nothing happens on a TLS 1.2 connection.
  key_update_ms=N      TLS 1.3: N ms after each response, if the connection is still idle
                       (no request begun), a KeyUpdate(update_not_requested) record
                       ("key_update_sent"). A request in between cancels that one.
  close_notify_after=N after the Nth response on a connection, close_notify goes out in the
                       SAME send() as the response's last bytes, and no FIN follows (the
                       hypercorn behaviour). The connection then stays open: what the peer
                       sends is decrypted and dropped ("discarded"); it ends when the peer
                       closes (close_notify -> our FIN; or its FIN).
  idle_close_ms=N      a keep-alive connection idle N ms (since its handshake or its last
                       response) is closed: close_notify, then FIN.
Sessions resume (TLS 1.3 tickets, TLS 1.2 tickets or session ids); see "resumed".

Paths (query arguments; size defaults to 100, chunk to 4096). Every response has
X-Conn: <conn> and X-Request: <n>; bodies are patterns.pattern(size) unless noted.
  /ok?size=N                 200, Content-Length
  /chunked?size=N&chunk=K    200, Transfer-Encoding: chunked, chunks of K bytes
  /trailers?size=N&chunk=K   as /chunked plus "Trailer: X-Trailer-Check", and after the
                             last chunk "X-Trailer-Check: done-<N>"
  /upgrade-advert?size=N     as /ok plus "Connection: Upgrade" and "Upgrade: h2" (Apache
                             mod_http2 style); the connection stays open
  /close?size=N              as /ok plus "Connection: close"; then close_notify (in its own
                             send) and FIN
  /echo                      reads the body (Content-Length or chunked), answers
                             "<sha256 hex> <length>\\n" with Content-Length
  anything else              404 "no such path\\n"
HEAD gets the headers only. A request with "Connection: close" (or HTTP/1.0 without
keep-alive) is answered, then closed like /close. A malformed request (bad request line
or header line, Content-Length and Transfer-Encoding both, a transfer-encoding other
than chunked, a bad chunk) gets a 400 with Connection: close, then close_notify + FIN.
Pipelined requests are answered in order.

Events (one JSON object a line; all but listening/exit carry "conn"):
  listening        port
  accepted         (TCP accept; counted by connections_total)
  handshake        version ("TLSv1.3"), alpn ("http/1.1" or null), resumed (bool)
  tls_failed       reason (OpenSSL's error text); a "closed" follows
  tls_error        what (a TLS failure after the handshake)
  request          method, path (no query), target (as sent), version, n (Kth on the
                   connection), headers ([[name, value], ...] as received)
  response_done    n, status, body_bytes (the last byte is queued; it may still be in
                   flight)
  ticket_sent      bytes (ciphertext bytes of the ticket record)
  key_update_sent  bytes
  close_notify_sent  reason ("close_notify_after", "connection_close", "idle",
                   "bad_request", "reply" = answering the peer's close_notify),
                   with_response_bytes (bytes that left in the same send() before the
                   alert: > 0 means response and alert shared one write)
  discarded        bytes (application data received after our close_notify_after alert)
  bad_request      reason
  closed           by ("peer" | "server"), reason ("eof", "close_notify", "reset",
                   "send_error", "connection_close", "idle", "bad_request", "tls_failed",
                   "tls_error", "shutdown"), requests. A graceful server close is
                   reported once its FIN has been sent.
  exit             after SIGTERM, once every connection is reported closed
"""
from .origin_process import OriginProcess, find_binary

BIN_ENV = "UPKEEP_TLS_ORIGIN_BIN"


def binary():
    """The tls_origin path, or SkipTest naming the variable (ctest sets it)."""
    return find_binary(BIN_ENV, "tls_origin")


class TlsOrigin(OriginProcess):
    NAME = "tls_origin"
    BIN_ENV = BIN_ENV
    STAMP_EVENTS = True

    def __init__(self, tls_max=None, tls_min=None, tickets=None, ticket_delay_ms=None,
                 key_update_ms=None, close_notify_after=None, idle_close_ms=None,
                 cert="default", start=True, timeout=10.0):
        super().__init__(
            options=(("--tls-max", tls_max), ("--tls-min", tls_min),
                     ("--tickets", tickets), ("--ticket-delay-ms", ticket_delay_ms),
                     ("--key-update-ms", key_update_ms),
                     ("--close-notify-after", close_notify_after),
                     ("--idle-close-ms", idle_close_ms)),
            cert=cert, start=start, timeout=timeout)

    # -- what tests read ---------------------------------------------------------
    def _matching(self, name, predicate, match):
        return [e for e in self._events
                if (name is None or e.get("event") == name)
                and all(e.get(k) == v for k, v in match.items())
                and (predicate is None or predicate(e))]

    def events(self, name=None, predicate=None, **match):
        """Events (dicts, plus "t": time.monotonic() when read) named `name` (all when
        None) whose fields equal every keyword, and that satisfy predicate(event)."""
        self.settle()
        with self._cond:
            return self._matching(name, predicate, match)

    def wait_event(self, name, predicate=None, timeout=10.0, count=1, **match):
        """Until `count` events match (as in events()); returns the count-th one."""
        found = self.wait_for(
            lambda: (lambda evs: evs[count - 1] if len(evs) >= count else None)(
                self._matching(name, predicate, match)),
            timeout, "%d %s event(s) matching %r" % (count, name, match))
        return found

    @property
    def connections_total(self):
        """Connections accepted (TCP), handshake or not."""
        return len(self.events("accepted"))

    @property
    def open_connections(self):
        """Accepted and not yet reported closed."""
        self.settle()
        with self._cond:
            closed = {e["conn"] for e in self._matching("closed", None, {})}
            return sum(1 for e in self._matching("accepted", None, {}) if e["conn"] not in closed)

    def handshakes(self, **match):
        return self.events("handshake", **match)

    def requests(self, path=None, **match):
        if path is not None:
            match["path"] = path
        return self.events("request", **match)

    def closed(self, conn):
        """The "closed" event of a connection, or None while it is open."""
        evs = self.events("closed", conn=conn)
        return evs[0] if evs else None
