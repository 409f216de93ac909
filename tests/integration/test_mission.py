"""The mission: a client that opens a NEW connection for every request and reads only
the first 100 bytes of a 1 MiB body costs the origin a handful of connections."""
import concurrent.futures
import threading
import time
import unittest

from upkeep_test import patterns
from upkeep_test.client import Conn
from upkeep_test.testcase import UpkeepTestCase

REQUESTS = 2000
THREADS = 16
DEADLINE_S = 150.0
PREFIX = 100
MAX_CONNECTIONS = 4


class MissionTest(UpkeepTestCase):
    def run_mission(self, protocols):
        nginx = self.start_nginx()
        upstream = {"max_connections": MAX_CONNECTIONS}
        if protocols:
            upstream["protocols"] = protocols
        up = self.start_upkeep({"routes": [self.route("origin.test", nginx.port)], "upstream": upstream})
        want = patterns.pattern(PREFIX)
        start = time.monotonic()
        deadline = start + DEADLINE_S
        stop = threading.Event()
        failures = []

        def one(i):
            if stop.is_set() or time.monotonic() > deadline:
                return "skipped"
            try:
                with Conn(up.port, timeout=20) as c:
                    c.request("GET", "http://origin.test/1m")
                    head = c.read_head()
                    if head.status != 200:
                        return "request %d: status %d %r" % (i, head.status, head.headers)
                    got = c.read_exact(PREFIX)
                    if got != want:
                        return "request %d: first %d bytes differ: %r" % (i, PREFIX, got)
                    # close with unread body bytes pending: the kernel resets the connection
                return None
            except Exception as e:  # reported below with the request number
                return "request %d: %r" % (i, e)

        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            for result in pool.map(one, range(REQUESTS)):
                if result is not None:
                    failures.append(result)
                    if len(failures) >= 20:
                        stop.set()
        elapsed = time.monotonic() - start
        self.assertFalse(failures, "%d failures, first: %s" % (len(failures), failures[:5]))

        # Every request reached nginx (logged when nginx finishes or cancels it).
        seen = nginx.wait_requests(REQUESTS, timeout=30)
        distinct = nginx.connections_seen()
        print("\nmission[%s]: %d requests (new client connection each, %d-byte reads of 1 MiB) "
              "in %.1fs; nginx logged %d requests on %d distinct connections (%s)"
              % (",".join(protocols or ["default"]), REQUESTS, PREFIX, elapsed, seen, distinct,
                 "/".join(sorted(nginx.protocols_seen()))), flush=True)
        self.assertGreaterEqual(seen, REQUESTS, "nginx logged only %d of %d requests" % (seen, REQUESTS))
        self.assertLessEqual(distinct, MAX_CONNECTIONS,
                             "nginx accepted %d distinct connections (max_connections %d)"
                             % (distinct, MAX_CONNECTIONS))

        # And the pool is healthy afterwards: one full 1 MiB body, byte for byte.
        with Conn(up.port, timeout=30) as c:
            c.request("GET", "http://origin.test/1m")
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertPattern(r.body, 1 << 20, "full body after the run")
        self.assertLessEqual(nginx.connections_seen(), MAX_CONNECTIONS)
        return elapsed, distinct

    def test_mission_default_protocols(self):
        """Default ALPN offer (h2 with nginx): abandoned streams are cancelled."""
        self.run_mission(None)

    def test_mission_http11(self):
        """HTTP/1.1 upstream: abandoned bodies are drained (1 MiB fits drain.max_bytes)."""
        self.run_mission(["http/1.1"])


if __name__ == "__main__":
    unittest.main()
