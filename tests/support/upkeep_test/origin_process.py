"""The process side of the test origins built from C++ (h2_origin.py, tls_origin.py): the
binary, found through an environment variable, run as a child process on 127.0.0.1
port 0 with the test PKI (certs.py), its stdout read on a background thread as one JSON
event a line, its stderr kept for messages.

A subclass sets NAME (the binary's name, "h2_origin") and BIN_ENV, passes its
command-line options to __init__, and may override _reset_state() (called once, before
the process starts) and _on_event(ev) (called under the lock for each event, after it
was appended to _events and a "listening" event set .port). Every wait is woken by the
events through one condition variable (_cond), which also guards _events and _err.

The origins write an event before the bytes it describes leave (a connection's event at
accept, a request's before its response), so once a test has its response, the event is
in the pipe, but the reader thread may not have taken it yet: on a loaded machine it ran
seven events behind a sequential client. settle() closes that gap: it waits until the
pipe is empty and the reader is back in read(), so every view a test reads after a
response it holds already includes that response's events.
"""
import select
import json
import os
import subprocess
import threading
import time
import unittest

from . import certs
from .util import stop_process


def find_binary(env, name):
    """The path in $env, or SkipTest naming the variable (ctest sets it)."""
    path = os.environ.get(env)
    if not path:
        raise unittest.SkipTest("%s is not set: build the %s target and run through ctest, "
                                "or export %s=<build>/tests/%s" % (env, name, env, name))
    if not os.access(path, os.X_OK):
        raise RuntimeError("%s=%s is not an executable file" % (env, path))
    return path


class OriginProcess:
    NAME = None      # the binary, as messages name it: "h2_origin"
    BIN_ENV = None   # the variable that holds its path
    STAMP_EVENTS = False  # add "t": time.monotonic() to each event when it is read

    def __init__(self, options=(), switches=(), cert="default", start=True, timeout=10.0):
        """options: (flag, value) pairs, passed as `flag str(value)` unless value is None;
        switches: flags passed as they are; cert: "default" or "other" (the test PKI's
        second server certificate)."""
        self.bin = find_binary(self.BIN_ENV, self.NAME)
        pki = certs.get()
        cert_file, key_file = ((pki.other_server_cert, pki.other_server_key) if cert == "other"
                               else (pki.server_cert, pki.server_key))
        self.args = [self.bin, "--cert", cert_file, "--key", key_file, "--port", "0"]
        for flag, value in options:
            if value is not None:
                self.args += [flag, str(value)]
        self.args += list(switches)
        self.port = None
        self.proc = None
        self.returncode = None
        self._events = []
        self._err = []
        self._local = threading.local()  # .in_wait: this thread runs a wait_for predicate
        self._reader_idle = False  # blocked in os.read with every line before it applied
        self._cond = threading.Condition()
        self._threads = []
        self._reset_state()
        if start:
            self.start(timeout)

    def _reset_state(self):
        pass

    def _on_event(self, ev):
        pass

    # -- life cycle -------------------------------------------------------------
    def start(self, timeout=10.0):
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        thread_prefix = self.NAME.replace("_", "-")
        for target, stream in ((self._read_events, self.proc.stdout),
                               (self._read_err, self.proc.stderr)):
            t = threading.Thread(target=target, args=(stream,), daemon=True,
                                 name="%s-%s" % (thread_prefix, target.__name__))
            t.start()
            self._threads.append(t)
        with self._cond:
            ok = self._cond.wait_for(lambda: self.port is not None or self.proc.poll() is not None,
                                     timeout)
        if not ok or self.port is None:
            self.stop(check=False)
            raise RuntimeError("%s did not report its port within %.0fs (exit %s): %s"
                               % (self.NAME, timeout, self.returncode, self.stderr_text()))

    def _read_events(self, stream):
        # Raw reads, not readline: a buffered reader could hold lines that select() on the
        # descriptor no longer shows, and settle() relies on the descriptor alone.
        fd = stream.fileno()
        pending = b""
        while True:
            with self._cond:
                self._reader_idle = True
                self._cond.notify_all()
            # Wait for bytes without taking them: they stay in the pipe, where
            # settle() sees them, until the reader has left idle under the lock. (An
            # os.read here took them first, and a settle() between that read and the
            # lock returned with a request's event unapplied: test_h2 failed so.)
            select.select([fd], [], [])
            with self._cond:
                self._reader_idle = False
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                self._apply_line(raw)
        if pending:
            self._apply_line(pending)
        with self._cond:
            self._reader_idle = True
            self._cond.notify_all()

    def _apply_line(self, raw):
        line = raw.decode(errors="replace").strip()
        if not line:
            return
        try:
            ev = json.loads(line)
        except ValueError:
            ev = {"event": "unparsable", "line": line}
        if self.STAMP_EVENTS:
            ev["t"] = time.monotonic()  # when the wrapper read it
        with self._cond:
            self._events.append(ev)
            if ev.get("event") == "listening":
                self.port = ev["port"]
            self._on_event(ev)
            self._cond.notify_all()

    def settle(self, timeout=10.0):
        """Until every event the origin has written so far is applied (see the module
        text). Returns at once when the process is gone, or inside a wait_for predicate
        (that wait already re-reads on every event); AssertionError on timeout."""
        if getattr(self._local, "in_wait", False):
            return
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.proc is not None:
                if self._reader_idle:
                    readable, _, _ = select.select([self.proc.stdout.fileno()], [], [], 0)
                    if not readable:
                        return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("%s: events still unread after %.1fs"
                                         % (self.NAME.replace("_", " "), timeout))
                # No wake-up is lost: the reader takes the lock to leave idle, notifies
                # for each event it applies and again when it is back in read().
                self._cond.wait(left)

    def _read_err(self, stream):
        for raw in iter(stream.readline, b""):
            with self._cond:
                self._err.append(raw.decode(errors="replace"))

    def stop(self, check=True, timeout=10.0):
        """SIGTERM and wait; with check, a non-zero exit (a crash, a sanitizer report) fails."""
        if self.proc is None:
            return self.returncode
        self.returncode = stop_process(self.proc, self._threads, timeout)
        self.proc = None
        if check and self.returncode != 0:
            raise AssertionError("%s exited %s on SIGTERM; stderr:\n%s"
                                 % (self.NAME, self.returncode, self.stderr_text()[-4000:]))
        return self.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop(check=exc[0] is None)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stderr_text(self):
        with self._cond:
            return "".join(self._err)

    # -- waiting -----------------------------------------------------------------
    def wait_for(self, predicate, timeout=10.0, message=None):
        """Wait (woken by each event) until predicate() is truthy; it runs under the lock
        and may read the subclass's views of the events. Returns its value;
        AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                self._local.in_wait = True
                try:
                    value = predicate()
                finally:
                    self._local.in_wait = False
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("%s: %s (not true within %.1fs; last value %r; "
                                         "last events %s)"
                                         % (self.NAME.replace("_", " "), message or "condition",
                                            timeout, value, self._events[-5:]))
                self._cond.wait(left)
