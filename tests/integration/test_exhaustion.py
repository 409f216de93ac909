"""Resource exhaustion is ordinary (issue 13): upkeep runs with a low RLIMIT_NOFILE
and the tests use up its descriptors with held client connections.

- The accept loop survives EMFILE: clients already connected keep being served,
  the process does not spin (CPU time read from /proc/PID/stat over the EMFILE
  period) and backs off between attempts (50 ms in proxy/server.cpp), and the
  connections waiting in the kernel's backlog are accepted and served once
  descriptors free up.
- A request that needs a new upstream connection while descriptors are exhausted
  is a counted connect failure (502 `connect_failed`,
  upkeep_upstream_connect_errors_total) and leaves the pool unharmed: once
  descriptors free up the same origin is served normally.
- EADDRNOTAVAIL: in a private network namespace (unshare -rn) with a one-port
  ephemeral range, whose only port the test takes for the origin's address, the
  next upstream connect fails with "Cannot assign requested address"; the same
  checks as for EMFILE. Skipped where no user+network namespace can be made.

The limit is not guessed: each test counts upkeep's descriptors at rest
(/proc/PID/fd) and opens exactly as many client connections as the limit leaves,
one at a time, each seen taken before the next.

    python3 test_exhaustion.py --netns-child   (internal: the EADDRNOTAVAIL half,
                                               run by the test inside the namespace)
"""
import errno
import fcntl
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import unittest

from upkeep_test.client import Conn
from upkeep_test.testcase import UpkeepTestCase
from upkeep_test.util import wait_until

NOFILE = 64  # RLIMIT_NOFILE for upkeep: low, but well above what it uses at rest
# UBSan's vptr check probes memory through a pipe(2) (GCC 12's libsanitizer) and, with
# no descriptor free, reports a false "object has invalid vptr" and aborts. A
# sanitizer artefact, not upkeep's: the EMFILE tests run on ASan-only builds.
UBSAN = any(s in os.environ.get("UPKEEP_SANITIZED", "") for s in ("undefined", "vptr"))
UBSAN_SKIP = "UBSan's vptr check needs a free descriptor (pipe) for each type lookup"
LIMITS = {"client_header_timeout": "60s", "client_idle_timeout": "60s"}  # held clients stay held


def fd_numbers(pid):
    return {int(n) for n in os.listdir("/proc/%d/fd" % pid)}


def cpu_seconds(pid):
    """utime + stime of a process, from /proc/PID/stat."""
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


class ExhaustionCase(UpkeepTestCase):
    def start_proxy(self, routes, **kw):
        up = self.start_upkeep({"limits": LIMITS, "routes": routes}, nofile=NOFILE, **kw)
        self.pid = up.proc.pid
        return up

    def keepalive(self, up):
        c = Conn(up.port, timeout=15)
        self.addCleanup(c.close)
        return c

    def get_ok(self, conn, host, size):
        conn.request("GET", "http://%s/ok?size=%d" % (host, size))
        r = conn.read_response()
        self.assertEqual(r.status, 200, "%r %r" % (r, r.body[:200]))
        self.assertTrue(r.complete, r)
        self.assertPattern(r.body, size)
        return r

    def exhaust(self, up):
        """Hold client connections until every descriptor number below the limit is
        in use in upkeep; returns them (raw sockets, nothing sent)."""
        at_rest = fd_numbers(self.pid)
        self.assertLess(max(at_rest), NOFILE - 8, "upkeep uses %d descriptors at rest" % len(at_rest))
        held = []
        while True:
            fds = fd_numbers(self.pid)
            if len(fds) >= NOFILE:
                break
            s = socket.create_connection(("127.0.0.1", up.port), timeout=10)
            self.addCleanup(s.close)
            held.append(s)
            # Accepted by upkeep (one more descriptor) before the next one connects.
            want = len(fds) + 1
            wait_until(lambda: len(fd_numbers(self.pid)) >= want, 10, interval=0.002,
                       message="upkeep accepted held client %d" % len(held))
        self.assertEqual(fd_numbers(self.pid), set(range(NOFILE)),
                         "upkeep's descriptors are not exactly 0..%d" % (NOFILE - 1))
        self.assertEqual(len(held), NOFILE - len(at_rest))
        return held

    def accept_failures(self, up):
        return sum(1 for line in up.stderr_text().splitlines()
                   if " accept failed " in line or " accept still failing " in line)

    def wait_log(self, up, pattern):
        """upkeep's log (read by a thread of the fixture) gets a line matching pattern."""
        wait_until(lambda: re.search(pattern, up.stderr_text()), 10, message="upkeep logs %r" % pattern)

    def pool_settles(self, up, origin, **want):
        """/stats shows origin's pool with these values (gauges are published after
        the pool's actions ran, which may be just after the client got its answer)."""
        last = {}

        def check():
            last["pool"] = up.stats()["origins"][origin]
            return all(last["pool"][k] == v for k, v in want.items())
        try:
            wait_until(check, 10)
        except AssertionError:
            self.fail("pool %s did not settle at %r within 10s: %r" % (origin, want, last.get("pool")))

    def free(self, held, n):
        """Close n of the held clients (upkeep's ends close when it reads the EOF)."""
        for s in held[:n]:
            s.close()
        del held[:n]


@unittest.skipIf(UBSAN, UBSAN_SKIP)
class AcceptUnderEmfileTest(ExhaustionCase):
    def test_accept_survives_emfile(self):
        origin = self.start_fault()
        # One upstream connection at most: the waiting clients' requests, which arrive
        # together, must not take the freed descriptors for connections of their own.
        up = self.start_proxy([self.route("fault.origin.test", origin.port, max_connections=1)])
        served = [self.keepalive(up) for _ in range(2)]
        for i, c in enumerate(served):
            self.get_ok(c, "fault.origin.test", 100 + i)  # one idle upstream connection now
        held = self.exhaust(up)
        held_total = len(held)

        # New clients: the kernel completes their handshakes (backlog), upkeep cannot
        # accept them. Their requests are sent at once and wait in the socket buffer.
        waiting = []
        for i in range(3):
            c = Conn(up.port, timeout=15)
            self.addCleanup(c.close)
            c.request("GET", "http://fault.origin.test/ok?size=%d" % (5000 + i))
            waiting.append(c)

        # The EMFILE period: upkeep logs the first failed accept, then once a second how
        # many retries (one per 50 ms back-off) failed since: the count is the check.
        self.wait_log(up, r"accept failed .*retry_ms=50")
        cpu0, t0 = cpu_seconds(self.pid), time.monotonic()
        still = re.compile(r"accept still failing .*failures=(\d+) over_ms=(\d+)")
        wait_until(lambda: still.search(up.stderr_text()), 10,
                   message="upkeep logs 'accept still failing' a second later")
        cpu, elapsed = cpu_seconds(self.pid) - cpu0, time.monotonic() - t0
        failures, over_ms = (int(g) for g in still.search(up.stderr_text()).groups())
        lines = self.accept_failures(up)
        print("\nEMFILE: %d failed accepts over %d ms, %d log lines; upkeep used %.3fs CPU in %.2fs "
              "(limit %d, %d held clients)" % (failures, over_ms, lines, cpu, elapsed, NOFILE, len(held)))
        self.assertGreaterEqual(over_ms, 1000, "the repeat was logged before a second had passed")
        self.assertGreaterEqual(failures, 5, "upkeep stopped retrying the accept")
        self.assertLessEqual(failures, over_ms / 50.0 + 3, "more failed accepts than a 50 ms back-off allows")
        self.assertLessEqual(lines, 2, "the log repeats every failed accept")
        self.assertLess(cpu, 0.25 * elapsed + 0.05, "upkeep spins while out of descriptors")
        self.assertIn("Too many open files", up.stderr_text())

        # Clients already connected are served throughout, byte-exact.
        for rnd in range(3):
            for i, c in enumerate(served):
                self.get_ok(c, "fault.origin.test", (1, 70000, 200000)[rnd] + i)
        self.assertTrue(up.alive())
        self.assertEqual(len(fd_numbers(self.pid)), NOFILE)
        for c in waiting:  # still in the backlog: nothing answered them
            c.sock.setblocking(False)
            with self.assertRaises(BlockingIOError, msg="a client in the backlog was answered"):
                c.sock.recv(1)
            c.sock.settimeout(15)

        # Descriptors free up: the waiting clients are accepted and served, in full.
        self.free(held, len(waiting) + 2)
        for i, c in enumerate(waiting):
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertPattern(r.body, 5000 + i)
            self.get_ok(c, "fault.origin.test", 300 + i)  # and keep-alive works on them
        self.wait_log(up, r"accepting again .*failed_accepts=\d+")
        self.get_ok(served[0], "fault.origin.test", 7)
        r = self.fetch(up, "GET", "http://fault.origin.test/ok?size=11")
        self.assertEqual(r.status, 200, r)
        self.assertPattern(r.body, 11)
        self.assertEqual(up.metric("upkeep_downstream_connections_total"),
                         len(served) + held_total + len(waiting) + 1)
        # One upstream connection served everything: exhaustion cost no connection.
        self.assertEqual(up.metric("upkeep_upstream_connections_opened_total"), 1)
        self.assertEqual(up.metric("upkeep_upstream_connect_errors_total"), 0)


@unittest.skipIf(UBSAN, UBSAN_SKIP)
class UpstreamConnectUnderEmfileTest(ExhaustionCase):
    def test_new_upstream_connection_fails_counted_pool_unharmed(self):
        origin = self.start_fault()
        up = self.start_proxy([self.route("fault.origin.test", origin.port),
                               self.route("fresh.origin.test", origin.port)])
        fresh = "https://fresh.origin.test:443"
        a, b, c3 = self.keepalive(up), self.keepalive(up), self.keepalive(up)
        self.get_ok(a, "fault.origin.test", 10)  # fault.origin.test has an idle connection
        held = self.exhaust(up)

        # fresh.origin.test has none: its connect needs a socket, and there is none.
        for c in (a, b):
            started = time.monotonic()
            c.request("GET", "http://fresh.origin.test/ok?size=10")
            r = c.read_response()
            self.assertUpkeepError(r, 502, "connect_failed")
            self.assertLess(time.monotonic() - started, 3, "the connect failure took a connect_timeout")
            # The client connection survives the 502 and its next request is served.
            self.get_ok(c, "fault.origin.test", 1000)
        # Three at once (each its own connect attempt): all fail fast, none is left queued.
        for c in (a, b, c3):
            c.request("GET", "http://fresh.origin.test/ok?size=10")
        for c in (a, b, c3):
            self.assertUpkeepError(c.read_response(), 502, "connect_failed")
        self.get_ok(c3, "fault.origin.test", 1001)
        self.assertEqual(origin.connections_total, 1)
        up.wait_access_log(lambda d: "connect_failed" in str(d.get("error", "")))
        self.wait_log(up, r"upstream connect failed .*Too many open files")
        self.assertTrue(up.alive())

        # Descriptors free up: the failures were counted, and nothing is stuck.
        self.free(held, 4)
        wait_until(lambda: len(fd_numbers(self.pid)) <= NOFILE - 4, 10, message="upkeep closed freed clients")
        self.assertEqual(up.metric("upkeep_upstream_connect_errors_total", origin=fresh), 5)
        self.assertEqual(up.metric("upkeep_upstream_connections_opened_total", origin=fresh), 0)
        self.pool_settles(up, fresh, connecting=0, connections_active=0, pending_requests=0, busy=0)
        self.assertEqual(up.metric("upkeep_upstream_connections_active", origin=fresh), 0)
        self.assertEqual(up.metric("upkeep_pool_pending_requests", origin=fresh), 0)

        # The same origin is served normally, on one new connection.
        self.get_ok(b, "fresh.origin.test", 12345)
        self.get_ok(a, "fresh.origin.test", 54321)
        self.pool_settles(up, fresh, idle=1, connecting=0, connections_active=1, pending_requests=0,
                          connections_opened_total=1, connect_errors_total=5)
        self.assertEqual(up.metric("upkeep_upstream_connect_errors_total", origin="https://fault.origin.test:443"), 0)


# -- EADDRNOTAVAIL, in a network namespace of its own ------------------------------

PORT_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"


def _loopback_up():
    """`ip link set lo up` by ioctl (a new network namespace starts with lo down)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, req))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 1))  # SIOCSIFFLAGS, IFF_UP
    finally:
        s.close()


class _AddrNotAvailChecks:
    """Mixed into a test case only by --netns-child, inside `unshare -rn`; not a
    TestCase itself, so the loader does not collect it."""

    def set_range(self, text):
        with open(PORT_RANGE, "w") as f:
            f.write(text)

    def test_eaddrnotavail_is_a_counted_connect_failure(self):
        origin = self.start_fault()
        other = self.start_fault()
        up = self.start_proxy([self.route("fault.origin.test", origin.port),
                               self.route("blocked.origin.test", origin.port),
                               self.route("other.origin.test", other.port)])
        blocked = "https://blocked.origin.test:443"
        a = self.keepalive(up)
        self.get_ok(a, "fault.origin.test", 10)  # an idle connection to origin's address
        b = self.keepalive(up)  # every client connects before the range shrinks

        with open(PORT_RANGE) as f:
            wide = f.read().strip()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # a free port (nothing else lives in this namespace)
        probe.close()
        try:
            self.set_range("%d %d" % (port, port))
        except OSError as e:  # a kernel whose port range is not per namespace
            self.skipTest("cannot set %s in the namespace: %s" % (PORT_RANGE, e))
        self.addCleanup(self.set_range, wide)
        # The test takes the only ephemeral port for origin's address.
        blocker = socket.create_connection(("127.0.0.1", origin.port), timeout=10)
        self.addCleanup(blocker.close)
        self.assertEqual(blocker.getsockname()[1], port)
        s = socket.socket()
        try:
            with self.assertRaises(OSError) as cm:
                s.connect(("127.0.0.1", origin.port))
            self.assertEqual(cm.exception.errno, errno.EADDRNOTAVAIL)
        finally:
            s.close()

        for c in (a, b):
            c.request("GET", "http://blocked.origin.test/ok?size=10")
            r = c.read_response()
            self.assertUpkeepError(r, 502, "connect_failed")
            self.get_ok(c, "fault.origin.test", 2000)  # the idle connection still serves
        # Another address needs a new connection too, and gets one (the same port: the
        # exhaustion is per destination).
        self.get_ok(b, "other.origin.test", 3000)
        self.wait_log(up, r"upstream connect failed .*Cannot assign requested address")
        up.wait_access_log(lambda d: "connect_failed" in str(d.get("error", "")))

        # Ports free up (the range is wide again; the admin client needs them too).
        self.set_range(wide)
        self.assertEqual(up.metric("upkeep_upstream_connect_errors_total", origin=blocked), 2)
        self.pool_settles(up, blocked, connecting=0, connections_active=0, pending_requests=0, busy=0,
                          connections_opened_total=0)
        self.get_ok(a, "blocked.origin.test", 4321)
        self.get_ok(b, "blocked.origin.test", 1234)
        self.pool_settles(up, blocked, idle=1, connecting=0, connections_active=1, pending_requests=0,
                          connections_opened_total=1, connect_errors_total=2)
        print("EADDRNOTAVAIL: 2 requests answered 502 connect_failed with ephemeral range %d-%d, "
              "then served on one new connection" % (port, port))


def _netns_child():
    _loopback_up()
    case = type("AddrNotAvailInNamespace", (_AddrNotAvailChecks, ExhaustionCase), {})
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(case)
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    if not result.wasSuccessful():
        return 1
    return SKIPPED if result.skipped else 0


SKIPPED = 77


class AddrNotAvailTest(unittest.TestCase):
    def test_eaddrnotavail_in_private_network_namespace(self):
        unshare = shutil.which("unshare")
        if not unshare:
            self.skipTest("no unshare(1)")
        probe = subprocess.run([unshare, "-rn", "true"], capture_output=True, timeout=30)
        if probe.returncode != 0:
            self.skipTest("cannot create a user+network namespace: %s"
                          % probe.stderr.decode(errors="replace").strip())
        p = subprocess.run([unshare, "-rn", sys.executable, os.path.abspath(__file__), "--netns-child"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        out = p.stdout.decode(errors="replace")
        if p.returncode == SKIPPED:
            self.skipTest("inside the namespace: " + out.strip().splitlines()[0])
        self.assertEqual(p.returncode, 0, "the test inside the namespace failed:\n" + out[-8000:])
        for line in out.splitlines():
            if "EADDRNOTAVAIL:" in line:
                print("\n" + line[line.index("EADDRNOTAVAIL:"):])


if __name__ == "__main__":
    if sys.argv[1:] == ["--netns-child"]:
        sys.exit(_netns_child())
    unittest.main()
