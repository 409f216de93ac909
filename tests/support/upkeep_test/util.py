"""Small helpers shared by the fixtures and the tests."""
import signal
import socket
import subprocess
import time


def wait_until(predicate, timeout=10.0, interval=0.02, message=None):
    """Poll `predicate` until it returns a truthy value or `timeout` seconds pass.

    Returns the truthy value; raises AssertionError (with `message`, or the last
    value) on timeout. This is the only way tests wait for a condition: a bounded
    poll of the condition itself, never a bare sleep.
    """
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError("%s (not true within %.1fs; last value %r)"
                                 % (message or "condition", timeout, last))
        time.sleep(interval)


def closed_port():
    """A 127.0.0.1 port with nothing listening (bound by us, then closed)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def stop_process(proc, threads=(), timeout=15.0):
    """SIGTERM, wait (bounded), then SIGKILL; join the output readers and close the
    pipes. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for t in threads:
        t.join(5)
    for f in (proc.stdout, proc.stderr):
        if f and not f.closed:
            f.close()
    return proc.returncode


def rss_kib(pid):
    """VmRSS of a process, in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)
