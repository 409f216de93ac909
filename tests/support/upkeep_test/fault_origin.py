"""upkeep's own fault-injecting origin: asyncio (+ ssl), HTTP/1.1 keep-alive, run in a
background thread of the test process, bound to 127.0.0.1 port 0.

Behaviour by request path (query parameters in brackets, with defaults):
  /ok [size=100]                  200, Content-Length, deterministic body (patterns.py)
  /chunked [size=100000, chunk=1000]  200, Transfer-Encoding: chunked
  /echo                           reads the request body (Content-Length or chunked);
                                  answers X-Body-Sha256 / X-Body-Length headers and
                                  "<sha256hex> <length>\\n" as the body
  /status [code=200]              that status; 204 and 304 carry no body
  /delay-headers [ms=1000, size=100]  waits, then as /ok
  /close-after-headers [size=100000, send=1000]  headers (Content-Length: size), `send`
                                  body bytes, then a clean close mid-body
  /reset-mid-body [size=100000, send=1000]  same, then RST (SO_LINGER 0)
  /close-silently                 closes without any response
  /keepalive-timeout [s=1, size=100]  as /ok plus "Keep-Alive: timeout=s"
  /slow-body [size=100000, chunk=1000, ms=50]  Content-Length body sent in chunks, pausing
  /headers                        body = the request headers as JSON
  anything else                   404
A request with `Expect: 100-continue` and a body gets "100 Continue" before the body
is read.

Server-wide modes (attributes, settable at any time from the test thread):
  close_idle_after_ms  close a keep-alive connection that stays idle this long
                       (like a server with a short keepalive_timeout), silently
  close_after_requests after the Nth response on a connection, close it WITHOUT
                       announcing `Connection: close` (the stale-connection trap)
  drop_request_after   after N responses on a connection, read the next request
                       (recorded) and close without answering: the race where a
                       server's close crosses the client's next request, made
                       deterministic
  drop_first_request_on  a set of connection ids (1 = the first accepted) whose first
                       request is read and then dropped the same way: a server that
                       closed an idle connection just as the client reused it

Counters: connections_total, connections_open, max_open (peak concurrently open,
counted from TCP accept to close), requests (a list of Request records), sni_names,
peer_certs.
"""
import asyncio
import hashlib
import json
import os
import socket
import ssl
import struct
import threading
import time
import urllib.parse

from . import certs, patterns
from .util import wait_until

REASONS = {100: "Continue", 200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified",
           400: "Bad Request", 404: "Not Found", 500: "Internal Server Error",
           502: "Bad Gateway", 503: "Service Unavailable"}


class Request:
    """One request as the origin received it."""

    def __init__(self, conn_id, method, target, version, headers):
        self.conn_id = conn_id
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers  # [(name, value)] in arrival order
        u = urllib.parse.urlsplit(target)
        self.path = u.path
        self.query = dict(urllib.parse.parse_qsl(u.query))
        self.body_len = None     # set once the body was read completely
        self.body_sha256 = None
        self.complete = False    # the whole request (head + body) arrived
        self.time = time.monotonic()

    def header(self, name):
        """All values of header `name` (case-insensitive)."""
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    def header_names(self):
        return [k.lower() for k, _ in self.headers]

    def __repr__(self):
        return "<Request c%d %s %s %s>" % (self.conn_id, self.method, self.target, self.headers)


class _Closed(Exception):
    pass


class FaultOrigin:
    def __init__(self, tls=True, cert="default", require_client_cert=False,
                 alpn=("http/1.1",), start=True):
        self.tls = tls
        self.pki = certs.get() if tls else None
        self.cert = cert
        self.require_client_cert = require_client_cert
        self.alpn = list(alpn)
        self.close_idle_after_ms = None
        self.close_after_requests = None
        self.drop_request_after = None
        self.drop_first_request_on = set()
        self._lock = threading.Lock()
        self.connections_total = 0
        self.connections_open = 0
        self.max_open = 0
        self.ignore_expect = False  # an origin that never answers Expect: 100-continue
        self.requests = []
        self.sni_names = []
        self.peer_certs = []
        self.tls_failures = 0
        self.port = None
        self._loop = None
        self._thread = None
        self._writers = set()
        if start:
            self.start()

    # -- life cycle -------------------------------------------------------------
    def _ssl_context(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # UPKEEP_TEST_ORIGIN_TLS_MAX=1.2: the same tests against a TLS 1.2-only origin
        # (real servers speak 1.3 by default, which sends session tickets after the
        # handshake; 1.2 does not).
        if os.environ.get("UPKEEP_TEST_ORIGIN_TLS_MAX") == "1.2":
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        if self.cert == "other":
            ctx.load_cert_chain(self.pki.other_server_cert, self.pki.other_server_key)
        else:
            ctx.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        if self.alpn:
            ctx.set_alpn_protocols(self.alpn)
        if self.require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.pki.ca_cert)

        def on_sni(sslobj, name, _ctx):
            with self._lock:
                self.sni_names.append(name)
        ctx.sni_callback = on_sni
        return ctx

    def start(self, timeout=10.0):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._ctx = self._ssl_context() if self.tls else None
        ready = threading.Event()
        errors = []

        def run():
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                sock.listen(1024)
                sock.setblocking(False)
                self._accept_task = loop.create_task(self._accept_loop(sock))
            except Exception as e:  # reported to start()
                errors.append(e)
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                sock.close()
                loop.close()

        self._thread = threading.Thread(target=run, name="fault-origin-%d" % self.port, daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or errors:
            raise RuntimeError("fault origin did not start: %r" % errors)

    async def _accept_loop(self, lsock):
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(lsock)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Counted at TCP accept, so a connection still in its TLS handshake counts.
            with self._lock:
                self.connections_total += 1
                self.connections_open += 1
                self.max_open = max(self.max_open, self.connections_open)
                conn_id = self.connections_total
            loop.create_task(self._handle(conn, conn_id))

    def stop(self):
        if self._thread is None:
            return
        loop = self._loop

        async def shutdown():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            for w in list(self._writers):
                w.transport.abort()
            if tasks:
                await asyncio.wait(tasks, timeout=3)  # let the handlers finish their cleanup

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- what tests read ---------------------------------------------------------
    def snapshot(self):
        with self._lock:
            return list(self.requests)

    def requests_for(self, path=None, method=None):
        return [r for r in self.snapshot()
                if (path is None or r.path == path) and (method is None or r.method == method)]

    def wait_open(self, n, timeout=10.0):
        """Poll until exactly n connections are open."""
        return wait_until(lambda: self.connections_open == n, timeout,
                          message="fault origin open connections == %d (now %d)"
                          % (n, self.connections_open))

    def wait_requests(self, n, timeout=10.0):
        return wait_until(lambda: len(self.snapshot()) >= n, timeout,
                          message="fault origin saw %d requests" % n)

    def reset_counters(self):
        with self._lock:
            self.connections_total = 0
            self.max_open = self.connections_open
            self.requests = []
            self.sni_names = []

    # -- the server -------------------------------------------------------------
    async def _handle(self, conn, conn_id):
        loop = asyncio.get_running_loop()
        writer = None
        abort = False
        try:
            reader = asyncio.StreamReader(limit=1 << 20, loop=loop)
            protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
            try:
                if self.tls:
                    transport, _ = await loop.connect_accepted_socket(
                        lambda: protocol, conn, ssl=self._ctx, ssl_handshake_timeout=10,
                        ssl_shutdown_timeout=2)
                else:
                    transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn)
            except (ssl.SSLError, OSError, asyncio.TimeoutError, ConnectionError):
                with self._lock:
                    self.tls_failures += 1
                conn.close()
                return
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            self._writers.add(writer)
            if self.tls:
                peer = writer.get_extra_info("peercert")
                if peer:
                    with self._lock:
                        self.peer_certs.append(peer)
            abort = await self._serve(reader, writer, conn, conn_id)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, OSError,
                asyncio.LimitOverrunError, _Closed):
            abort = True
        finally:
            # Counted closed as soon as either side has ended it (EOF read or our close
            # decided); the TLS close_notify exchange below may take a moment longer.
            with self._lock:
                self.connections_open -= 1
            try:
                if writer is not None:
                    self._writers.discard(writer)
                    if abort:
                        writer.transport.abort()
                    else:
                        writer.close()
                        try:
                            await asyncio.wait_for(writer.wait_closed(), 3)
                        except (asyncio.TimeoutError, ConnectionError, ssl.SSLError, OSError):
                            writer.transport.abort()
            except Exception:
                pass

    async def _read_head(self, reader, idle_timeout):
        try:
            if idle_timeout is not None:
                data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), idle_timeout)
            else:
                data = await reader.readuntil(b"\r\n\r\n")
        except asyncio.TimeoutError:
            return None
        except asyncio.IncompleteReadError:
            return None
        return data

    async def _serve(self, reader, writer, raw_sock, conn_id):
        """Returns True when the connection should be aborted rather than closed."""
        served = 0
        while True:
            idle = self.close_idle_after_ms
            head = await self._read_head(reader, idle / 1000.0 if idle is not None else None)
            if head is None:
                return False  # EOF, or idle too long: close silently
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                await self._send(writer, 400, [], b"bad request line\n", close=True)
                return False
            method, target, version = parts
            headers = []
            for line in lines[1:]:
                if not line:
                    continue
                k, _, v = line.partition(":")
                headers.append((k.strip(), v.strip()))
            req = Request(conn_id, method, target, version, headers)
            with self._lock:
                self.requests.append(req)

            body = await self._read_body(reader, writer, req)
            if body is None:
                return True  # EOF mid-body: the client gave up on the upload
            req.body_len = len(body)
            req.body_sha256 = hashlib.sha256(body).hexdigest()
            req.complete = True

            if self.drop_request_after is not None and served >= self.drop_request_after:
                return False
            if served == 0 and conn_id in self.drop_first_request_on:
                return False  # read it, answer nothing, close

            conn_tokens = {t.strip().lower() for v in req.header("connection") for t in v.split(",")}
            client_close = "close" in conn_tokens or (version == "HTTP/1.0" and "keep-alive" not in conn_tokens)
            outcome = await self._respond(reader, writer, raw_sock, req, body, client_close)
            if outcome == "abort":
                return True
            if outcome == "close":
                return False
            served += 1
            if client_close:
                return False
            if self.close_after_requests is not None and served >= self.close_after_requests:
                return False

    async def _read_body(self, reader, writer, req):
        te = ",".join(req.header("transfer-encoding")).lower()
        cl = req.header("content-length")
        chunked = "chunked" in te
        length = int(cl[0]) if cl and not chunked else 0
        expects = any(v.lower() == "100-continue" for v in req.header("expect"))
        if expects and (chunked or length > 0) and not self.ignore_expect:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        try:
            if chunked:
                body = bytearray()
                while True:
                    line = await reader.readuntil(b"\r\n")
                    size = int(line.split(b";")[0].strip(), 16)
                    if size == 0:
                        while (await reader.readuntil(b"\r\n")) != b"\r\n":
                            pass  # trailers
                        return bytes(body)
                    body += await reader.readexactly(size)
                    if await reader.readexactly(2) != b"\r\n":
                        raise _Closed()
            return await reader.readexactly(length) if length else b""
        except asyncio.IncompleteReadError:
            return None
        except ValueError:
            raise _Closed()

    async def _send(self, writer, status, headers, body=b"", close=False, content_length=True):
        out = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Status"))]
        out += ["%s: %s" % kv for kv in headers]
        if content_length and status not in (204, 304) and not (100 <= status < 200):
            out.append("Content-Length: %d" % len(body))
        if close:
            out.append("Connection: close")
        writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
        await self._write_body(writer, body)

    async def _write_body(self, writer, body, chunk=65536):
        for i in range(0, len(body), chunk):
            writer.write(body[i:i + chunk])
            await writer.drain()
        await writer.drain()

    async def _respond(self, reader, writer, raw_sock, req, body, client_close):
        """Returns "ok", "close" (clean close now) or "abort"."""
        q = req.query
        p = req.path
        size = int(q.get("size", 100))
        base = [("Server", "upkeep-fault-origin"), ("X-Conn-Id", str(req.conn_id))]
        if p == "/ok":
            await self._send(writer, 200, base, patterns.pattern(size), close=client_close)
        elif p == "/chunked":
            size = int(q.get("size", 100000))
            step = int(q.get("chunk", 1000))
            data = patterns.pattern(size)
            writer.write(("HTTP/1.1 200 OK\r\nServer: upkeep-fault-origin\r\nX-Conn-Id: %d\r\n"
                          "Transfer-Encoding: chunked\r\n%s\r\n"
                          % (req.conn_id, "Connection: close\r\n" if client_close else "")).encode())
            for i in range(0, len(data), step):
                piece = data[i:i + step]
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        elif p == "/echo":
            digest = hashlib.sha256(body).hexdigest()
            await self._send(writer, 200, base + [("X-Body-Sha256", digest), ("X-Body-Length", str(len(body)))],
                             ("%s %d\n" % (digest, len(body))).encode(), close=client_close)
        elif p == "/status":
            code = int(q.get("code", 200))
            extra = [("ETag", '"upkeep"')] if code == 304 else []
            payload = b"" if code in (204, 304) else ("status %d\n" % code).encode()
            await self._send(writer, code, base + extra, payload, close=client_close)
        elif p == "/delay-headers":
            await asyncio.sleep(int(q.get("ms", 1000)) / 1000.0)
            await self._send(writer, 200, base, patterns.pattern(size), close=client_close)
        elif p in ("/close-after-headers", "/reset-mid-body"):
            size = int(q.get("size", 100000))
            send = int(q.get("send", 1000))
            writer.write(("HTTP/1.1 200 OK\r\nServer: upkeep-fault-origin\r\nContent-Length: %d\r\n\r\n"
                          % size).encode())
            writer.write(patterns.pattern(send))
            await writer.drain()
            if p == "/reset-mid-body":
                raw_sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return "abort"
            return "close"
        elif p == "/close-silently":
            return "close"
        elif p == "/keepalive-timeout":
            s = int(q.get("s", 1))
            await self._send(writer, 200, base + [("Connection", "keep-alive"), ("Keep-Alive", "timeout=%d" % s)],
                             patterns.pattern(size), close=client_close)
        elif p == "/slow-body":
            size = int(q.get("size", 100000))
            step = int(q.get("chunk", 1000))
            pause = int(q.get("ms", 50)) / 1000.0
            writer.write(("HTTP/1.1 200 OK\r\nServer: upkeep-fault-origin\r\nContent-Length: %d\r\n\r\n"
                          % size).encode())
            data = patterns.pattern(size)
            for i in range(0, size, step):
                writer.write(data[i:i + step])
                await writer.drain()
                await asyncio.sleep(pause)
        elif p == "/headers":
            await self._send(writer, 200, base + [("Content-Type", "application/json")],
                             json.dumps(req.headers).encode(), close=client_close)
        else:
            await self._send(writer, 404, base, b"no such fault\n", close=client_close)
        return "close" if client_close else "ok"
