"""The latency relay (tests/support/latency_relay): a TCP relay on 127.0.0.1 that adds a
one-way delay each way (and optionally a rate cap), a TCP handshake through it costing
one round trip, run as a child process and ended by its PID.

    with LatencyRelay(to_port=origin.port, delay_ms=25) as relay:
        ... connect to relay.port: every round trip costs >= 50 ms

The binary's path comes from $UPKEEP_LATENCY_RELAY_BIN (ctest sets it); when it is not
set the test is skipped with a message saying so. The model (what is delayed, when the
connection to the target is opened, half-close and reset) is described at the top of
latency_relay.cpp.
"""
import os
import select
import subprocess
import time

from .origin_process import find_binary
from .util import stop_process

BIN_ENV = "UPKEEP_LATENCY_RELAY_BIN"


def binary():
    """The latency_relay path, or SkipTest naming the variable (ctest sets it)."""
    return find_binary(BIN_ENV, "latency_relay")


class LatencyRelay:
    def __init__(self, to_port, delay_ms, rate_mbit=None, max_queue_kib=None,
                 to_host="127.0.0.1", start=True, timeout=10.0):
        self.bin = binary()
        self.delay_ms = delay_ms
        self.args = [self.bin, "--listen", "127.0.0.1:0", "--to", "%s:%d" % (to_host, to_port),
                     "--delay-ms", str(delay_ms)]
        if rate_mbit is not None:
            self.args += ["--rate-mbit", str(rate_mbit)]
        if max_queue_kib is not None:
            self.args += ["--max-queue-kib", str(max_queue_kib)]
        self.proc = None
        self.port = None
        self.returncode = None
        self.stderr_text = ""
        self.output = ""  # stdout after the port line, once stopped ("exit\n" after SIGTERM)
        if start:
            self.start(timeout)

    @property
    def rtt(self):
        """The round trip it adds, in seconds."""
        return 2 * self.delay_ms / 1000.0

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self, timeout=10.0):
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        line = b""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready = select.select([fd], [], [], max(0.0, left))[0] if left > 0 else []
            if not ready:
                break
            c = os.read(fd, 1)  # byte by byte: the rest of stdout stays in the pipe
            if not c:
                break
            line += c
        try:
            self.port = int(line)
        except ValueError:
            self.stop()
            raise RuntimeError("latency_relay did not print its port within %.0fs (exit %s): %r %s"
                               % (timeout, self.returncode, line, self.stderr_text))
        return self

    def stop(self, timeout=15.0):
        """SIGTERM by PID, wait, SIGKILL if it hangs; -> exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                out, err = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate(timeout=10)
        else:
            out, err = self.proc.communicate(timeout=10)
        self.output = out.decode(errors="replace")
        self.stderr_text = err.decode(errors="replace")
        self.returncode = self.proc.returncode
        stop_process(self.proc)
        return self.returncode

    def cleanup(self):
        if self.proc is not None and self.returncode is None:
            self.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False
