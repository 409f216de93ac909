"""The latency relay adds the delay it claims (tests/support/latency_relay): a round trip
through it with --delay-ms 25 costs at least 50 ms and not much more, a TCP connect plus
the first exchange two round trips, bytes arrive exact and in order, a FIN passes
through after the delay and the connection then ends on its own, a reset ends both
sides, --rate-mbit caps the rate, and SIGTERM ends the process.

Everything on 127.0.0.1; each wait is on a socket read or a condition, never a sleep.
"""
import hashlib
import os
import socket
import statistics
import struct
import threading
import time
import unittest

from upkeep_test.latency_relay import LatencyRelay, binary
from upkeep_test.util import closed_port

DELAY_MS = 25
RTT = 2 * DELAY_MS / 1000.0
# How much slower than the model a round trip may be: a loaded 2-core sandbox (gVisor)
# schedules the relay, the echo server and the client late now and then.
# A sanitizer build (UPKEEP_SANITIZED) runs the relay a few times slower.
MARGIN = float(os.environ.get("UPKEEP_TEST_RELAY_MARGIN",
                              "0.080" if os.environ.get("UPKEEP_SANITIZED") else "0.040"))


class EchoServer:
    """Threaded TCP server on 127.0.0.1: echoes what it reads (or, with greet, first sends
    b"hello\\n"); on EOF it half-closes too, then closes. Records per connection how it
    ended ("eof" or "reset") under a condition."""

    def __init__(self, greet=False):
        self.greet = greet
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.cond = threading.Condition()
        self.accepted = 0
        self.ends = []
        self._stop = False
        self._conns = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="echo-accept")
        self._thread.start()

    def _accept_loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.cond:
                if self._stop:
                    c.close()
                    return
                self.accepted += 1
                self._conns.append(c)
                self.cond.notify_all()
            threading.Thread(target=self._serve, args=(c,), daemon=True, name="echo-conn").start()

    def _serve(self, c):
        how = "eof"
        try:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.greet:
                c.sendall(b"hello\n")
            while True:
                d = c.recv(262144)
                if not d:
                    c.shutdown(socket.SHUT_WR)
                    break
                c.sendall(d)
        except ConnectionResetError:
            how = "reset"
        except OSError as e:
            how = "error %s" % e
        finally:
            c.close()
            with self.cond:
                self.ends.append(how)
                self.cond.notify_all()

    def wait_ends(self, n, timeout=10.0):
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.ends) >= n, timeout):
                raise AssertionError("%d connection end(s) within %.0fs, saw %r"
                                     % (n, timeout, self.ends))
            return list(self.ends)

    def close(self):
        with self.cond:
            self._stop = True
            conns = list(self._conns)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in conns:
            try:
                c.close()
            except OSError:
                pass
        self._thread.join(5)


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        d = s.recv(n - len(buf))
        if not d:
            raise AssertionError("EOF after %d of %d bytes" % (len(buf), n))
        buf += d
    return bytes(buf)


def recv_all(s):
    buf = bytearray()
    while True:
        d = s.recv(1 << 20)
        if not d:
            return bytes(buf)
        buf += d


class LatencyRelayTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        binary()  # SkipTest when the variable is not set

    def start(self, greet=False, **kw):
        echo = EchoServer(greet=greet)
        self.addCleanup(echo.close)
        relay = LatencyRelay(to_port=echo.port, delay_ms=kw.pop("delay_ms", DELAY_MS), **kw)
        self.addCleanup(relay.cleanup)
        return echo, relay

    def connect(self, relay):
        s = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.addCleanup(s.close)
        return s

    def test_echo_round_trip_costs_two_delays(self):
        _, relay = self.start()
        s = self.connect(relay)
        s.sendall(b"0")
        recv_exact(s, 1)  # the handshake's round trip is behind us
        samples = []
        for i in range(20):
            msg = b"%02d" % i
            t0 = time.monotonic()
            s.sendall(msg)
            self.assertEqual(recv_exact(s, 2), msg)
            samples.append(time.monotonic() - t0)
        self.assertGreaterEqual(min(samples), RTT, "a round trip faster than 2 x delay: %r"
                                % samples)
        self.assertLess(statistics.median(samples), RTT + MARGIN / 2,
                        "median round trip %.1f ms" % (statistics.median(samples) * 1000))
        self.assertLess(max(samples), RTT + 5 * MARGIN,
                        "slowest round trip %.1f ms" % (max(samples) * 1000))

    def test_connect_and_first_echo_cost_two_round_trips(self):
        _, relay = self.start()
        samples = []
        for _ in range(5):
            t0 = time.monotonic()
            s = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(b"x")  # at once, as a client does after connect() returns
            self.assertEqual(recv_exact(s, 1), b"x")
            samples.append(time.monotonic() - t0)
            s.close()
        self.assertGreaterEqual(min(samples), 2 * RTT, "samples %r" % samples)
        self.assertLess(statistics.median(samples), 2 * RTT + MARGIN, "samples %r" % samples)

    def test_server_greeting_arrives_two_round_trips_after_connect(self):
        _, relay = self.start(greet=True)
        t0 = time.monotonic()
        s = self.connect(relay)
        self.assertEqual(recv_exact(s, 6), b"hello\n")
        took = time.monotonic() - t0
        self.assertGreaterEqual(took, 2 * RTT)
        self.assertLess(took, 2 * RTT + 3 * MARGIN)

    def test_order_kept_over_many_chunks(self):
        _, relay = self.start()
        s = self.connect(relay)
        n = 5000
        received = []

        def reader():
            buf = b""
            while len(received) < n:
                d = s.recv(65536)
                if not d:
                    return
                buf += d
                while len(buf) >= 4:
                    received.append(struct.unpack("!I", buf[:4])[0])
                    buf = buf[4:]

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        for i in range(n):  # one send each: many small segments, many relay reads
            s.sendall(struct.pack("!I", i))
        t.join(30)
        self.assertFalse(t.is_alive(), "reader still waiting: %d of %d" % (len(received), n))
        self.assertEqual(received, list(range(n)))

    def test_bytes_exact_for_megabytes_and_fin_ends_the_connection(self):
        echo, relay = self.start()
        s = self.connect(relay)
        size = 6 * 1024 * 1024
        data = hashlib.sha256(b"seed").digest() * (size // 32)
        # Uneven chunk sizes, sent while reading: the relay's bounded queue must not stall.
        err = []

        def writer():
            try:
                off, k = 0, 1
                while off < len(data):
                    step = (k * 7919) % 65521 + 1
                    s.sendall(data[off:off + step])
                    off += step
                    k += 1
                s.shutdown(socket.SHUT_WR)
            except OSError as e:
                err.append(e)

        w = threading.Thread(target=writer, daemon=True)
        w.start()
        got = recv_all(s)  # ends with the echo server's FIN, passed on by the relay
        w.join(30)
        self.assertEqual(err, [])
        self.assertEqual(len(got), len(data))
        self.assertEqual(hashlib.sha256(got).hexdigest(), hashlib.sha256(data).hexdigest())
        self.assertEqual(echo.wait_ends(1), ["eof"])

    def test_half_close_passes_after_the_delay(self):
        echo, relay = self.start()
        s = self.connect(relay)
        s.sendall(b"a")
        recv_exact(s, 1)
        t0 = time.monotonic()
        s.shutdown(socket.SHUT_WR)
        self.assertEqual(s.recv(10), b"")  # the server's FIN answers ours
        took = time.monotonic() - t0
        self.assertGreaterEqual(took, RTT)
        self.assertLess(took, RTT + 3 * MARGIN)
        self.assertEqual(echo.wait_ends(1), ["eof"])

    def test_reset_closes_both_sides(self):
        echo, relay = self.start()
        s = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
        s.sendall(b"a")
        recv_exact(s, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # RST
        self.assertEqual(echo.wait_ends(1), ["reset"])

    def test_refused_target_closes_the_client(self):
        relay = LatencyRelay(to_port=closed_port(), delay_ms=DELAY_MS)
        self.addCleanup(relay.cleanup)
        t0 = time.monotonic()
        s = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
        self.addCleanup(s.close)
        try:
            d = s.recv(10)
        except ConnectionResetError:
            d = b""
        took = time.monotonic() - t0
        self.assertEqual(d, b"")
        self.assertGreaterEqual(took, RTT)  # a real RST comes one round trip after the SYN
        self.assertLess(took, RTT + 3 * MARGIN)

    def test_rate_cap(self):
        _, relay = self.start(rate_mbit=80)  # 10 MB/s each way
        s = self.connect(relay)
        data = b"r" * (2 * 1000 * 1000)
        t0 = time.monotonic()
        w = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)),
                             daemon=True)
        w.start()
        got = recv_all(s)
        took = time.monotonic() - t0
        w.join(10)
        self.assertEqual(len(got), len(data))
        # 2 MB at 10 MB/s is 0.2 s on the wire (the two directions overlap), plus the
        # handshake's and the data's round trips.
        self.assertGreaterEqual(took, 0.2 + 2 * RTT)
        self.assertLess(took, 2 * (0.2 + 2 * RTT) + 5 * MARGIN)

    def test_many_connections_at_once(self):
        echo, relay = self.start()
        n = 200
        socks = [self.connect(relay) for _ in range(n)]
        t0 = time.monotonic()
        for i, s in enumerate(socks):
            s.sendall(b"%04d" % i)
        for i, s in enumerate(socks):
            self.assertEqual(recv_exact(s, 4), b"%04d" % i)
        took = time.monotonic() - t0
        self.assertGreaterEqual(took, RTT)
        # Concurrent, not one after the other (that would be n round trips, 10 s); the
        # bound leaves room for the echo server's n Python threads on a loaded machine.
        self.assertLess(took, 2.0)
        for s in socks:
            s.shutdown(socket.SHUT_WR)
        for s in socks:
            self.assertEqual(s.recv(10), b"")
        self.assertEqual(echo.wait_ends(n, timeout=30), ["eof"] * n)

    def test_sigterm_ends_the_process(self):
        _, relay = self.start()
        s = self.connect(relay)  # an open connection does not hold it up
        s.sendall(b"a")
        recv_exact(s, 1)
        t0 = time.monotonic()
        self.assertEqual(relay.stop(), 0, relay.stderr_text)
        self.assertLess(time.monotonic() - t0, 5.0)
        self.assertEqual(relay.output.strip(), "exit")


if __name__ == "__main__":
    unittest.main()
