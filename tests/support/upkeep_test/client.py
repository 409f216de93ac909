"""Raw-socket HTTP/1.1 client helpers, for tests that need every byte under control."""
import socket
import time
import urllib.parse


class Response:
    def __init__(self, version, status, reason, headers, raw_head):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # [(name, value)]
        self.raw_head = raw_head
        self.body = b""
        self.interim = []       # 1xx responses that came before this one
        self.complete = True    # False when the body ended early (connection closed)
        self.trailers = []      # (name, value) after the last chunk

    def header(self, name, default=None):
        n = name.lower()
        for k, v in self.headers:
            if k.lower() == n:
                return v
        return default

    def headers_all(self, name):
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    def __repr__(self):
        return "<Response %d %s %r body=%d bytes%s>" % (
            self.status, self.reason, self.headers, len(self.body), "" if self.complete else " TRUNCATED")


class ConnectionClosed(Exception):
    pass


def build_request(method, target, headers=(), body=None, version="HTTP/1.1", host=True):
    """Request bytes. host=True adds a Host header from an absolute target unless present."""
    hdrs = list(headers.items()) if isinstance(headers, dict) else list(headers)
    names = {k.lower() for k, _ in hdrs}
    if host and "host" not in names and "://" in target:
        hdrs.insert(0, ("Host", urllib.parse.urlsplit(target).netloc))
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        hdrs.append(("Content-Length", str(len(body))))
    head = "%s %s %s\r\n" % (method, target, version)
    head += "".join("%s: %s\r\n" % kv for kv in hdrs) + "\r\n"
    return head.encode("latin-1") + (body or b"")


def chunked(data, size=1000):
    out = bytearray()
    for i in range(0, len(data), size):
        piece = data[i:i + size]
        out += b"%x\r\n%s\r\n" % (len(piece), piece)
    return bytes(out) + b"0\r\n\r\n"


class Conn:
    """One client TCP connection to the proxy, with a read buffer."""

    def __init__(self, port, timeout=15.0, host="127.0.0.1", rcvbuf=None):
        """rcvbuf: a small receive buffer (set before connecting, so the window stays
        small) makes the sender block instead of parking a whole body in the kernel;
        tests of "the client stopped reading" need that to be deterministic."""
        if rcvbuf is None:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self):
        """Close with RST (SO_LINGER 0), like a client killed mid-transfer."""
        import struct
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def start_tls(self, cafile, server_hostname="origin.test", certfile=None, keyfile=None):
        """Wrap the socket in TLS (for talking to the test origins directly)."""
        import ssl
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.set_alpn_protocols(["http/1.1"])
        if certfile:
            ctx.load_cert_chain(certfile, keyfile)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        return self

    def send(self, data):
        self.sock.sendall(data)

    def request(self, method, target, headers=(), body=None, version="HTTP/1.1", host=True):
        self.send(build_request(method, target, headers, body, version, host))

    # -- reading ----------------------------------------------------------------
    def _fill(self):
        if self.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError):
            data = b""
        except OSError as e:  # ssl.SSLError subclasses OSError: a TLS-level reset/truncation
            if e.__class__.__name__.startswith("SSL"):
                data = b""
            else:
                raise
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_exact(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionClosed("closed after %d of %d bytes" % (len(self.buf), n))
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return out
            if not self._fill():
                raise ConnectionClosed("closed mid-line: %r" % bytes(self.buf[:200]))

    def read_until_close(self, limit=64 << 20):
        while len(self.buf) < limit and self._fill():
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def read_head(self):
        """One response head (1xx included) -> Response without body."""
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                raw = bytes(self.buf[:i + 4])
                del self.buf[:i + 4]
                break
            if not self._fill():
                raise ConnectionClosed("closed before a full response head; got %r" % bytes(self.buf[:300]))
        lines = raw.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/") or not code.isdigit():
            raise ValueError("malformed response head (stray bytes from a previous response?): %r" % raw[:200])
        headers = []
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers.append((k.strip(), v.strip()))
        return Response(version, int(code), reason, headers, raw)

    def read_response(self, method="GET"):
        """The next final response (1xx heads are collected in .interim), with its body."""
        interim = []
        while True:
            resp = self.read_head()
            if 100 <= resp.status < 200 and resp.status != 101:
                interim.append(resp)
                continue
            break
        resp.interim = interim
        self.read_body(resp, method)
        return resp

    def read_body(self, resp, method="GET"):
        if method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200:
            return resp
        te = resp.header("transfer-encoding")
        cl = resp.header("content-length")
        if te and "chunked" in te.lower():
            body = bytearray()
            resp.trailers = []
            try:
                while True:
                    size = int(self.read_line().split(b";")[0].strip(), 16)
                    if size == 0:
                        while True:
                            line = self.read_line()
                            if line == b"":
                                break
                            k, _, v = line.decode("latin-1").partition(":")
                            resp.trailers.append((k.strip(), v.strip()))
                        break
                    body += self.read_exact(size)
                    if self.read_exact(2) != b"\r\n":
                        raise ValueError("bad chunk terminator")
            except ConnectionClosed:
                resp.complete = False
                body += self.buf
                self.buf.clear()
            resp.body = bytes(body)
        elif cl is not None:
            n = int(cl)
            while len(self.buf) < n and self._fill():
                pass
            take = min(n, len(self.buf))
            resp.body = bytes(self.buf[:take])
            del self.buf[:take]
            resp.complete = take == n
        else:
            resp.body = self.read_until_close()
        return resp

    def closed_by_peer(self, timeout=5.0):
        """True if the peer closes (EOF or reset) within timeout with no further bytes."""
        if self.eof:
            return not self.buf
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return not self.buf
        except socket.timeout:
            return False
        if data:
            self.buf += data
            return False
        self.eof = True
        return not self.buf


def fetch(port, method, target, headers=(), body=None, version="HTTP/1.1", timeout=15.0):
    """One request on a new connection (Connection: close added unless given)."""
    hdrs = list(headers.items()) if isinstance(headers, dict) else list(headers)
    if not any(k.lower() == "connection" for k, _ in hdrs):
        hdrs.append(("Connection", "close"))
    with Conn(port, timeout) as c:
        c.request(method, target, hdrs, body, version)
        return c.read_response(method)
