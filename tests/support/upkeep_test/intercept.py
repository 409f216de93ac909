"""Helpers for tests of HTTPS interception (access.connect: intercept).

An intercepting upkeep keeps its own CA in a temp state_dir; clients trust it only
through what `upkeep ca env` prints, as users do.
"""
import os
import re
import shlex
import socket
import ssl
import subprocess
import tempfile

from .proxy import Upkeep, to_yaml


def intercept_config(state_dir, **intercept):
    cfg = {"access": {"connect": "intercept"}, "intercept": {"state_dir": state_dir}}
    cfg["intercept"].update(intercept)
    return cfg


def ca_command(verb, config, timeout=30):
    """Runs `upkeep ca VERB --config FILE` for a config dict; CompletedProcess (text)."""
    d = tempfile.mkdtemp(prefix="upkeep-ca-cli-")
    path = os.path.join(d, "upkeep.yaml")
    with open(path, "w") as f:
        f.write(to_yaml(config))
    return subprocess.run([os.environ["UPKEEP_BIN"], "ca", verb, "--config", path],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


_EXPORT = re.compile(r"^export ([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def parse_env_lines(text):
    """`export NAME='value'` lines -> {NAME: value}, unquoted the way a shell would."""
    out = {}
    for line in text.splitlines():
        m = _EXPORT.match(line.strip())
        if not m:
            raise AssertionError("not an export line: %r" % line)
        words = shlex.split(m.group(2))
        if len(words) != 1:
            raise AssertionError("value is not one shell word: %r" % line)
        out[m.group(1)] = words[0]
    return out


def client_env(up):
    """A clean environment with exactly what `upkeep ca env` says for this upkeep."""
    r = subprocess.run([up.bin, "ca", "env", "--config", up.config_path], capture_output=True,
                       text=True, timeout=30, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise AssertionError("upkeep ca env failed (%d): %s" % (r.returncode, r.stderr))
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and k not in
           ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")}
    exported = parse_env_lines(r.stdout)
    # The config listens on port 0: `ca env` names the configured address; the
    # running proxy's port is what the client must use.
    proxy = "http://127.0.0.1:%d" % up.port
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        if k in exported:
            exported[k] = proxy
    env.update(exported)
    return env, exported


def ca_cert_path(up):
    return os.path.join(up.config["intercept"]["state_dir"], "ca.pem")


def connect(up, host, port, timeout=10.0):
    """A raw socket through upkeep's CONNECT, after its 200."""
    s = socket.create_connection(("127.0.0.1", up.port), timeout=timeout)
    s.sendall(b"CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host.encode(), port, host.encode(), port))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            raise ConnectionError("upkeep closed before answering CONNECT: %r" % head)
        head += chunk
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        s.close()
        raise ConnectionError("CONNECT answered %d: %r" % (status, head))
    return s


def tls_through(up, host, port, sni=None, alpn=("http/1.1",), cafile=None, timeout=10.0,
                session=None):
    """A TLS connection to `sni` (default host) inside a CONNECT, trusting upkeep's CA."""
    raw = connect(up, host, port, timeout)
    ctx = ssl.create_default_context(cafile=cafile or ca_cert_path(up))
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    try:
        return ctx.wrap_socket(raw, server_hostname=sni or host, session=session)
    except Exception:
        raw.close()
        raise


def http_get(tls, host_header, path, read_body=True, headers=()):
    """One HTTP/1.1 GET on an established (TLS) socket; (status, headers, body)."""
    req = "GET %s HTTP/1.1\r\nHost: %s\r\n" % (path, host_header)
    for k, v in headers:
        req += "%s: %s\r\n" % (k, v)
    tls.sendall((req + "\r\n").encode())
    f = tls.makefile("rb")
    status_line = f.readline()
    status = int(status_line.split(b" ", 2)[1])
    hdrs = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, v = line.decode("latin-1").split(":", 1)
        hdrs[k.strip().lower()] = v.strip()
    body = b""
    if read_body:
        if "content-length" in hdrs:
            body = f.read(int(hdrs["content-length"]))
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(f.readline().split(b";")[0], 16)
                if size == 0:
                    while f.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                body += f.read(size)
                f.readline()
    return status, hdrs, body, f


def peer_cert_pem(tls):
    return ssl.DER_cert_to_PEM_cert(tls.getpeercert(binary_form=True))


def openssl_text(pem):
    r = subprocess.run(["openssl", "x509", "-noout", "-text"], input=pem, capture_output=True,
                       text=True, timeout=30)
    if r.returncode != 0:
        raise AssertionError("openssl x509 failed: %s" % r.stderr)
    return r.stdout
