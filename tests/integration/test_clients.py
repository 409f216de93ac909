"""Real HTTP clients pointed at upkeep the way users do it: through the proxy
ENVIRONMENT VARIABLES (http_proxy / HTTP_PROXY, https_proxy / HTTPS_PROXY, no_proxy).

Each client runs as its own process with a clean environment (every inherited
*_proxy variable removed, then the test's set). Every test checks the body AND that
upkeep saw the request (its access log), so a client that silently went direct
cannot pass; the no_proxy tests check the opposite.

  curl, wget, Python urllib, Python requests (/usr/bin/python3, Debian's package),
  Node with undici's EnvHttpProxyAgent (npm package, installed on first use into
  <build dir>/node-cache), and Node >= 24 with NODE_USE_ENV_PROXY=1.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import unittest

from upkeep_test import patterns
from upkeep_test.testcase import UpkeepTestCase

PY = "/usr/bin/python3"
UNDICI = "undici@6.29.1"  # >= 6.x: EnvHttpProxyAgent; 6.x still runs on Node 18 (Debian 12)
SIZE = 1024  # nginx serves /1k

PY_URLLIB = r"""
import hashlib, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=20) as r:
    body = r.read()
print(r.status, len(body), hashlib.sha256(body).hexdigest())
"""

PY_REQUESTS = r"""
import hashlib, sys, requests
kw = {"verify": sys.argv[2]} if len(sys.argv) > 2 else {}
r = requests.get(sys.argv[1], timeout=20, **kw)
print(r.status_code, len(r.content), hashlib.sha256(r.content).hexdigest())
"""

# proxyTunnel: false makes undici send http:// URLs to the proxy as plain requests
# (absolute-form), which upkeep pools; by default undici CONNECTs even for http://.
NODE_UNDICI = r"""
const crypto = require('crypto');
const { EnvHttpProxyAgent, setGlobalDispatcher, fetch } = require('undici');
setGlobalDispatcher(new EnvHttpProxyAgent({ proxyTunnel: process.env.TEST_PROXY_TUNNEL === '1' }));
(async () => {
  const r = await fetch(process.argv[1]);
  const body = Buffer.from(await r.arrayBuffer());
  console.log(r.status, body.length, crypto.createHash('sha256').update(body).digest('hex'));
})().catch((e) => { console.error(e); process.exit(1); });
"""

NODE_GLOBAL_FETCH = r"""
const crypto = require('crypto');
(async () => {
  const r = await fetch(process.argv[1]);
  const body = Buffer.from(await r.arrayBuffer());
  console.log(r.status, body.length, crypto.createHash('sha256').update(body).digest('hex'));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.pop("NODE_USE_ENV_PROXY", None)
    env.update(extra)
    return env


def node_version():
    node = shutil.which("node")
    if not node:
        return None
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.match(r"v(\d+)", out.strip())
    return int(m.group(1)) if m else None


def undici_dir():
    """A node_modules tree holding undici, installed from the npm registry on first
    use, next to the binary under test (the build tree), reused afterwards."""
    base = os.environ.get("UPKEEP_NODE_CACHE") or os.path.join(
        os.path.dirname(os.path.abspath(os.environ["UPKEEP_BIN"])), "node-cache")
    mod = os.path.join(base, "node_modules", "undici", "package.json")
    if os.path.exists(mod):
        with open(mod) as f:
            if json.load(f).get("version") == UNDICI.split("@")[1]:
                return os.path.join(base, "node_modules")
    npm = shutil.which("npm")
    if not npm:
        raise AssertionError("npm is missing (.ci/install-deps installs it)")
    os.makedirs(base, exist_ok=True)
    r = subprocess.run([npm, "install", "--prefix", base, "--no-audit", "--no-fund",
                        "--no-package-lock", "--loglevel=error", UNDICI],
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    if r.returncode != 0 or not os.path.exists(mod):
        raise AssertionError("npm install %s failed (%d):\n%s\n%s" % (UNDICI, r.returncode, r.stdout, r.stderr))
    return os.path.join(base, "node_modules")


class ClientsTest(UpkeepTestCase):
    def setUp(self):
        self.nginx = self.start_nginx()
        self.up = self.start_upkeep({"routes": [self.route("origin.test", self.nginx.port)],
                                     "access": {"connect_ports": [self.nginx.port]}})
        self.proxy_url = "http://127.0.0.1:%d" % self.up.port
        self.want = "200 %d %s" % (SIZE, hashlib.sha256(patterns.pattern(SIZE)).hexdigest())

    # -- helpers ------------------------------------------------------------------------
    def http_env(self, **extra):
        """As users set it: both spellings, an http:// proxy URL."""
        return clean_env(http_proxy=self.proxy_url, HTTP_PROXY=self.proxy_url, **extra)

    def https_env(self, **extra):
        # http:// even in HTTPS_PROXY: the proxy itself is spoken to in plain HTTP.
        return clean_env(https_proxy=self.proxy_url, HTTPS_PROXY=self.proxy_url, **extra)

    def run_client(self, argv, env, **kw):
        r = subprocess.run(argv, env=env, capture_output=True, timeout=60, stdin=subprocess.DEVNULL, **kw)
        self.assertEqual(r.returncode, 0, "%s failed (%d):\nstdout: %r\nstderr: %s"
                         % (argv[0], r.returncode, r.stdout[-500:], r.stderr[-3000:].decode(errors="replace")))
        return r.stdout

    def url(self, tag):
        return "http://origin.test/1k?client=%s" % tag

    def assert_proxied(self, tag):
        """upkeep logged the request for this client, served from the origin over the pool."""
        rec = self.up.wait_access_log(lambda d: ("client=%s" % tag) in str(d.get("url", "")))
        self.assertEqual(str(rec.get("status")), "200", rec)
        self.assertEqual(rec.get("method"), "GET", rec)
        self.assertIn("origin.test", str(rec.get("origin")), rec)
        # nginx offers h2 and upkeep's default ALPN prefers it.
        self.assertEqual(rec.get("protocol"), "h2", rec)
        got = [r for r in self.nginx.log_records() if ("client=%s" % tag) in r.get("uri", "")]
        self.assertEqual(len(got), 1, "origin saw %r" % got)

    def assert_tunnelled(self, before):
        self.up.wait_access_log(lambda d: d.get("protocol") == "tunnel"
                                and str(d.get("url", "")).endswith(":%d" % self.nginx.port))
        self.up.wait_metric("upkeep_tunnels_total", lambda v: v >= before + 1)

    # -- plain http:// URLs through HTTP_PROXY: pooled, TLS originated by upkeep ----------
    def test_curl(self):
        body = self.run_client(["curl", "-sS", "--fail", "--max-time", "20", self.url("curl")], self.http_env())
        self.assertPattern(body, SIZE)
        self.assert_proxied("curl")

    def test_wget(self):
        body = self.run_client(["wget", "-q", "--tries=1", "--timeout=20", "-O", "-", self.url("wget")],
                               self.http_env())
        self.assertPattern(body, SIZE)
        self.assert_proxied("wget")

    def test_python_urllib(self):
        out = self.run_client([PY, "-c", PY_URLLIB, self.url("urllib")], self.http_env())
        self.assertEqual(out.decode().strip(), self.want)
        self.assert_proxied("urllib")

    def test_python_urllib_uppercase_only(self):
        env = clean_env(HTTP_PROXY=self.proxy_url)
        out = self.run_client([PY, "-c", PY_URLLIB, self.url("urllib-upper")], env)
        self.assertEqual(out.decode().strip(), self.want)
        self.assert_proxied("urllib-upper")

    def test_python_requests(self):
        out = self.run_client([PY, "-c", PY_REQUESTS, self.url("requests")], self.http_env())
        self.assertEqual(out.decode().strip(), self.want)
        self.assert_proxied("requests")

    def test_node_undici_env_http_proxy_agent(self):
        ver = node_version()
        self.assertIsNotNone(ver, "node is missing (.ci/install-deps installs nodejs)")
        env = self.http_env(NODE_PATH=undici_dir())
        out = self.run_client(["node", "-e", NODE_UNDICI, self.url("undici")], env)
        self.assertEqual(out.decode().strip(), self.want)
        self.assert_proxied("undici")

    def test_node_undici_default_tunnels_http_urls(self):
        # The trap the README warns about: undici's default (proxyTunnel: true) sends
        # CONNECT origin.test:80 even for an http:// URL; upkeep refuses CONNECT to
        # ports outside access.connect_ports, and a tunnel could not be pooled anyway.
        self.assertIsNotNone(node_version(), "node is missing (.ci/install-deps installs nodejs)")
        env = self.http_env(NODE_PATH=undici_dir(), TEST_PROXY_TUNNEL="1")
        r = subprocess.run(["node", "-e", NODE_UNDICI, self.url("undici-tunnel")], env=env,
                           capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        rec = self.up.wait_access_log(lambda d: d.get("method") == "CONNECT")
        self.assertEqual(str(rec.get("status")), "403", rec)
        self.assertEqual(rec.get("url"), "origin.test:80", rec)
        self.assertEqual(self.nginx.log_records(), [])

    def test_node_use_env_proxy(self):
        ver = node_version()
        if ver is None or ver < 24:
            self.skipTest("NODE_USE_ENV_PROXY needs Node >= 24 (this is %s)" % ver)
        env = self.http_env(NODE_USE_ENV_PROXY="1")
        out = self.run_client(["node", "-e", NODE_GLOBAL_FETCH, self.url("node-env")], env)
        self.assertEqual(out.decode().strip(), self.want)
        self.assert_proxied("node-env")

    # -- https:// URLs through HTTPS_PROXY: CONNECT, tunnelled (not pooled) ----------------
    def https_url(self, tag):
        # CONNECT goes to the address itself (routes do not apply); the test
        # certificate covers IP:127.0.0.1.
        return "https://127.0.0.1:%d/1k?client=%s" % (self.nginx.port, tag)

    def test_curl_https_connect(self):
        before = self.up.metric("upkeep_tunnels_total")
        body = self.run_client(["curl", "-sS", "--fail", "--max-time", "20", "--cacert", self.pki().ca_cert,
                                self.https_url("curl-connect")], self.https_env())
        self.assertPattern(body, SIZE)
        self.assert_tunnelled(before)

    def test_requests_https_connect(self):
        before = self.up.metric("upkeep_tunnels_total")
        out = self.run_client([PY, "-c", PY_REQUESTS, self.https_url("requests-connect"), self.pki().ca_cert],
                              self.https_env())
        self.assertEqual(out.decode().strip(), self.want)
        self.assert_tunnelled(before)

    # -- no_proxy: the listed host is fetched directly, upkeep never sees it -----------------
    def check_no_proxy(self, tag, argv_for, parse):
        direct = self.start_fault(tls=False)
        url = "http://127.0.0.1:%d/ok?size=%d&client=%s" % (direct.port, SIZE, tag)
        env = self.http_env(no_proxy="example.invalid,127.0.0.1", NO_PROXY="example.invalid,127.0.0.1")
        parse(self.run_client(argv_for(url), env))
        reqs = direct.requests_for("/ok")
        self.assertEqual(len(reqs), 1, reqs)
        self.assertNotIn("via", reqs[0].header_names(), "the request went through a proxy")
        # A proxied request from the same environment, logged after the direct one
        # finished: upkeep is alive and logging, and it never logged the bypassed URL.
        parse(self.run_client(argv_for(self.url(tag + "-marker")), env))
        self.assert_proxied(tag + "-marker")
        seen = [d for d in self.up.access_log() if ("client=%s" % tag) in str(d.get("url", ""))
                and "marker" not in str(d.get("url", ""))]
        self.assertEqual(seen, [], "upkeep saw a request for a no_proxy host")

    def test_no_proxy_curl(self):
        self.check_no_proxy("np-curl", lambda u: ["curl", "-sS", "--fail", "--max-time", "20", u],
                            lambda out: self.assertPattern(out, SIZE))

    def test_no_proxy_wget(self):
        self.check_no_proxy("np-wget", lambda u: ["wget", "-q", "--tries=1", "--timeout=20", "-O", "-", u],
                            lambda out: self.assertPattern(out, SIZE))

    def test_no_proxy_python_requests(self):
        self.check_no_proxy("np-requests", lambda u: [PY, "-c", PY_REQUESTS, u],
                            lambda out: self.assertEqual(out.decode().strip(), self.want))

    def test_no_proxy_python_urllib(self):
        self.check_no_proxy("np-urllib", lambda u: [PY, "-c", PY_URLLIB, u],
                            lambda out: self.assertEqual(out.decode().strip(), self.want))

    def test_no_proxy_node_undici(self):
        self.assertIsNotNone(node_version(), "node is missing (.ci/install-deps installs nodejs)")
        mods = undici_dir()

        def argv(u):
            return ["node", "-e", NODE_UNDICI, u]
        direct = self.start_fault(tls=False)
        url = "http://127.0.0.1:%d/ok?size=%d&client=np-node" % (direct.port, SIZE)
        env = self.http_env(no_proxy="127.0.0.1", NO_PROXY="127.0.0.1", NODE_PATH=mods)
        self.assertEqual(self.run_client(argv(url), env).decode().strip(), self.want)
        reqs = direct.requests_for("/ok")
        self.assertEqual(len(reqs), 1, reqs)
        self.assertNotIn("via", reqs[0].header_names())
        self.assertEqual(self.run_client(argv(self.url("np-node-marker")), env).decode().strip(), self.want)
        self.assert_proxied("np-node-marker")
        self.assertEqual([d for d in self.up.access_log() if "client=np-node&" in str(d.get("url", ""))
                          or str(d.get("url", "")).endswith("client=np-node")], [])


if __name__ == "__main__":
    unittest.main()
