"""A test PKI made at test time with the `openssl` CLI, cached per test process.

  ca        the test CA (ca.crt)                      -> upstream.ca_file
  server    cert signed by the test CA, SAN DNS:localhost, DNS:origin.test,
            DNS:*.origin.test, IP:127.0.0.1
  other_ca  a DIFFERENT CA, and other_server: same SAN, signed by other_ca
  client    a client certificate signed by the test CA (for client_cert routes)
"""
import atexit
import os
import shutil
import subprocess
import tempfile
import threading

_lock = threading.Lock()
_pki = None

SAN = "DNS:localhost,DNS:origin.test,DNS:*.origin.test,IP:127.0.0.1"


class Pki:
    def __init__(self, directory):
        self.dir = directory
        p = lambda n: os.path.join(directory, n)
        self.ca_cert, self.ca_key = p("ca.crt"), p("ca.key")
        self.server_cert, self.server_key = p("server.crt"), p("server.key")
        self.other_ca_cert, self.other_ca_key = p("other-ca.crt"), p("other-ca.key")
        self.other_server_cert, self.other_server_key = p("other-server.crt"), p("other-server.key")
        self.client_cert, self.client_key = p("client.crt"), p("client.key")


def _run(args, cwd):
    r = subprocess.run(["openssl"] + args, cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed (%d): %s" % (" ".join(args), r.returncode, r.stderr))


def _make_ca(d, name, cn):
    _run(["req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
          "-nodes", "-keyout", name + ".key", "-out", name + ".crt", "-days", "30",
          "-subj", "/CN=" + cn,
          "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign",
          "-addext", "subjectKeyIdentifier=hash"], d)


def _make_leaf(d, name, ca, cn, ext_lines):
    _run(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
          "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + cn], d)
    ext = os.path.join(d, name + ".ext")
    with open(ext, "w") as f:
        f.write("\n".join(["basicConstraints=critical,CA:FALSE",
                           "subjectKeyIdentifier=hash",
                           "authorityKeyIdentifier=keyid,issuer"] + ext_lines) + "\n")
    _run(["x509", "-req", "-in", name + ".csr", "-CA", ca + ".crt", "-CAkey", ca + ".key",
          "-CAcreateserial", "-out", name + ".crt", "-days", "30", "-sha256", "-extfile", ext], d)


def get():
    """The process-wide test PKI (created on first use, removed at exit)."""
    global _pki
    with _lock:
        if _pki is None:
            d = tempfile.mkdtemp(prefix="upkeep-pki-")
            atexit.register(shutil.rmtree, d, True)
            _make_ca(d, "ca", "upkeep test CA")
            _make_ca(d, "other-ca", "upkeep OTHER test CA")
            server_ext = ["keyUsage=critical,digitalSignature,keyEncipherment",
                          "extendedKeyUsage=serverAuth", "subjectAltName=" + SAN]
            _make_leaf(d, "server", "ca", "origin.test", server_ext)
            _make_leaf(d, "other-server", "other-ca", "origin.test", server_ext)
            _make_leaf(d, "client", "ca", "upkeep test client",
                       ["keyUsage=critical,digitalSignature", "extendedKeyUsage=clientAuth"])
            for f in os.listdir(d):
                if f.endswith(".key"):
                    os.chmod(os.path.join(d, f), 0o600)
            _pki = Pki(d)
        return _pki
