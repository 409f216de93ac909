"""Shipped deployment files: the systemd unit (verified by systemd-analyze, and the
sd_notify protocol spoken for real), the journald log format, the container build
script and image layout, and the compose / Kubernetes examples."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import unittest
from unittest import mock

from upkeep_test import proxy
from upkeep_test.testcase import UpkeepTestCase
from upkeep_test.util import wait_until

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
UNIT = os.path.join(ROOT, "config", "upkeep.service")
DOCKER = os.path.join(ROOT, "docker")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def parse_duration_s(text):
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|min)?\s*", text)
    if not m:
        raise ValueError("duration %r" % text)
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600}[unit]


def unit_directives(text):
    """[Section] Key=Value lines -> {key: [values in order]} (all sections)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        k, _, v = line.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def config_shutdown_grace(path):
    with open(path) as f:
        m = re.search(r"^shutdown_grace:\s*(\S+)", f.read(), re.M)
    return parse_duration_s(m.group(1)) if m else 10


class NotifySocket:
    """A unix datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="upkeep-notify-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages = []

    def next(self, timeout=10.0):
        """The next datagram as {KEY: value}; AssertionError if none within timeout."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            raise AssertionError("no sd_notify message within %.0fs (so far: %r)" % (timeout, self.messages))
        msg = dict(l.partition("=")[::2] for l in data.decode().split("\n") if l)
        self.messages.append(msg)
        return msg

    def pending(self):
        """Datagrams already queued, without waiting."""
        self.sock.setblocking(False)
        out = []
        try:
            while True:
                out.append(self.sock.recv(4096))
        except BlockingIOError:
            pass
        return out

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class SystemdUnitTest(UpkeepTestCase):
    def verify(self, unit_text):
        """systemd-analyze verify on a copy of the unit -> (exit code, output)."""
        exe = shutil.which("systemd-analyze")
        self.assertTrue(exe, "systemd-analyze is missing (.ci/install-deps installs systemd)")
        d = tempfile.mkdtemp(prefix="upkeep-unit-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "upkeep.service")
        with open(path, "w") as f:
            f.write(unit_text)
        r = subprocess.run([exe, "verify", path], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER=""))
        return r.returncode, (r.stdout + r.stderr).strip()

    def unit_for_test(self):
        """The shipped unit with ExecStart pointing at the binary under test (verify
        checks that the executable exists)."""
        with open(UNIT) as f:
            text = f.read()
        self.assertIn("ExecStart=/usr/local/bin/upkeep --config /etc/upkeep/upkeep.yaml\n", text)
        return text.replace("ExecStart=/usr/local/bin/upkeep ",
                            "ExecStart=%s " % os.path.abspath(os.environ["UPKEEP_BIN"]))

    def test_systemd_analyze_verify_reports_nothing(self):
        code, out = self.verify(self.unit_for_test())
        self.assertEqual((code, out), (0, ""), "systemd-analyze verify complained")

    def test_verify_would_catch_a_bad_unit(self):
        # The check above can fail: a misspelt directive is reported.
        text = self.unit_for_test().replace("Restart=on-failure", "Restart=on-failure\nRestartt=always")
        code, out = self.verify(text)
        self.assertIn("Restartt", out)

    def test_unit_directives(self):
        with open(UNIT) as f:
            d = unit_directives(f.read())
        one = lambda k: d.get(k, [None])[-1]
        self.assertEqual(one("Type"), "notify")
        self.assertEqual(one("ExecStart"), "/usr/local/bin/upkeep --config /etc/upkeep/upkeep.yaml")
        self.assertEqual(one("ExecReload"), "/bin/kill -HUP $MAINPID")
        self.assertEqual(one("Restart"), "on-failure")
        for k in ("DynamicUser", "ProtectHome", "PrivateTmp", "NoNewPrivileges"):
            self.assertEqual(one(k), "yes", k)
        self.assertEqual(one("ProtectSystem"), "strict")
        self.assertEqual(set(one("RestrictAddressFamilies").split()), {"AF_INET", "AF_INET6", "AF_UNIX"})
        self.assertEqual(one("CapabilityBoundingSet"), "")
        self.assertIn("@system-service", d.get("SystemCallFilter", []))
        self.assertGreaterEqual(int(one("LimitNOFILE")), 65536)
        grace = config_shutdown_grace(os.path.join(ROOT, "config", "upkeep.yaml"))
        self.assertGreater(parse_duration_s(one("TimeoutStopSec")), grace,
                           "TimeoutStopSec must exceed shutdown_grace")

    # -- the notify protocol, for real ------------------------------------------------
    def start_notified(self, env):
        ns = NotifySocket()
        self.addCleanup(ns.close)
        origin = self.start_fault()
        up = proxy.Upkeep({"routes": [self.route("fault.origin.test", origin.port)]}, start=False)
        self.addCleanup(up.stop)
        with mock.patch.dict(os.environ, dict(env, NOTIFY_SOCKET=ns.path)):
            up.start()
        return ns, up, origin

    def test_ready_reloading_stopping(self):
        ns, up, origin = self.start_notified({})
        # start() returned once the listeners were logged; READY=1 follows that.
        ready = ns.next()
        self.assertEqual(ready.get("READY"), "1", ready)
        self.assertEqual(ready.get("MAINPID"), str(up.proc.pid), ready)
        # READY=1 means the proxy port already accepts and serves.
        socket.create_connection(("127.0.0.1", up.port), timeout=5).close()
        self.assertEqual(self.fetch(up, "GET", "http://fault.origin.test/ok").status, 200)
        self.assertEqual(ns.pending(), [], "more than one message before any signal")

        up.proc.send_signal(signal.SIGHUP)
        self.assertEqual(ns.next().get("RELOADING"), "1", ns.messages)
        self.assertEqual(ns.next().get("READY"), "1", ns.messages)
        wait_until(lambda: "configuration reloaded" in up.stderr_text(), 10, message="reload logged")
        self.assertEqual(self.fetch(up, "GET", "http://fault.origin.test/ok").status, 200)

        up.proc.send_signal(signal.SIGTERM)
        self.assertEqual(ns.next().get("STOPPING"), "1", ns.messages)
        self.assertEqual(up.proc.wait(15), 0)

    def test_watchdog_pings(self):
        # WATCHDOG_USEC=200ms: systemd expects WATCHDOG=1 at least that often.
        ns, up, origin = self.start_notified({"WATCHDOG_USEC": "200000"})
        msgs = [ns.next(timeout=5) for _ in range(6)]
        self.assertTrue(any(m.get("READY") == "1" for m in msgs), msgs)
        self.assertGreaterEqual(sum(1 for m in msgs if m.get("WATCHDOG") == "1"), 4, msgs)
        self.assertEqual(self.fetch(up, "GET", "http://fault.origin.test/ok").status, 200)

    # -- journald --------------------------------------------------------------------
    def diagnostic_lines(self, env, config=None):
        up = proxy.Upkeep(config, start=False)
        self.addCleanup(up.stop)
        with mock.patch.dict(os.environ, env):
            if "JOURNAL_STREAM" not in env:
                os.environ.pop("JOURNAL_STREAM", None)
            up.start()
        up.proc.send_signal(signal.SIGTERM)
        self.assertEqual(up.proc.wait(15), 0)
        wait_until(lambda: "shutting down" in up.stderr_text(), 5, message="shutdown logged")
        return [l for l in up.stderr_text().splitlines() if l.strip()]

    def test_no_timestamps_under_journald(self):
        plain = self.diagnostic_lines({})
        self.assertTrue(plain and all(TIMESTAMP.match(l) for l in plain),
                        "without JOURNAL_STREAM every line starts with a timestamp: %r" % plain)
        journal = self.diagnostic_lines({"JOURNAL_STREAM": "8:123456"})
        self.assertTrue(any("listening" in l for l in journal), journal)
        stamped = [l for l in journal if TIMESTAMP.match(l) or re.search(r"\d\d:\d\d:\d\d", l)]
        self.assertEqual(stamped, [], "timestamps under journald")

    def test_no_time_field_under_journald_json(self):
        cfg = {"log": {"format": "json"}}
        plain = [json.loads(l) for l in self.diagnostic_lines({}, cfg)]
        self.assertTrue(plain and all("time" in d for d in plain), plain)
        journal = [json.loads(l) for l in self.diagnostic_lines({"JOURNAL_STREAM": "8:123456"}, cfg)]
        self.assertTrue(any(d.get("msg") == "listening" for d in journal), journal)
        self.assertEqual([d for d in journal if "time" in d], [], "a time field under journald")


class ContainerTest(UpkeepTestCase):
    def dockerfile(self):
        with open(os.path.join(DOCKER, "Dockerfile")) as f:
            return f.read()

    def test_dockerfile_shape(self):
        text = self.dockerfile()
        # A "# syntax=" line makes BuildKit fetch a frontend image: no offline build.
        self.assertNotRegex(text, r"(?im)^#\s*syntax\s*=")
        froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
        self.assertEqual(froms, ["debian:12-slim", "scratch"], "a Debian builder, a scratch runtime")
        builder, runtime = re.split(r"^FROM .*$", text, flags=re.M)[1:]
        self.assertIn("docker/build.sh", builder)
        self.assertIn("docker/rootfs.sh", builder)
        self.assertIn(".ci/install-deps --run-only", builder)
        # scratch has no shell: every instruction that runs something is exec form.
        self.assertNotRegex(runtime, r"(?m)^RUN ")
        self.assertRegex(runtime, r"(?m)^COPY --from=builder /rootfs/ /$")
        user = re.search(r"^USER\s+(\S+)", runtime, re.M)
        self.assertTrue(user and user.group(1).split(":")[0] not in ("0", "root"), "non-root USER")
        self.assertRegex(runtime, r'(?m)^HEALTHCHECK .*\n?\s*CMD \["/usr/bin/upkeep", ?"healthcheck"')
        self.assertRegex(runtime, r"(?m)^STOPSIGNAL SIGTERM$")
        self.assertRegex(runtime, r'(?m)^ENTRYPOINT \["/usr/bin/upkeep"\]$')  # exec form: PID 1
        self.assertRegex(runtime, r"(?m)^EXPOSE .*\b3128\b")
        self.assertRegex(runtime, r'(?m)^VOLUME \["/var/lib/upkeep"\]$')
        self.assertIn("/etc/upkeep/upkeep.yaml", runtime)

    def test_build_script_stages_a_working_binary(self):
        # One persistent Release build directory for every suite (build/ is ignored by
        # git): the first run compiles (ccache helps), later runs are incremental.
        # UPKEEP_DOCKER_BUILD_DIR overrides it.
        build_dir = os.environ.get("UPKEEP_DOCKER_BUILD_DIR") or os.path.join(ROOT, "build", "docker-release")
        stage = tempfile.mkdtemp(prefix="upkeep-stage-")
        self.addCleanup(shutil.rmtree, stage, True)
        r = subprocess.run([os.path.join(DOCKER, "build.sh"), stage], capture_output=True, text=True,
                           timeout=540, env=dict(os.environ, UPKEEP_BUILD_DIR=build_dir))
        self.assertEqual(r.returncode, 0, "docker/build.sh failed:\n%s\n%s" % (r.stdout[-3000:], r.stderr[-3000:]))
        binary = os.path.join(stage, "usr/bin/upkeep")
        config = os.path.join(stage, "etc/upkeep/upkeep.yaml")
        self.assertTrue(os.access(binary, os.X_OK))
        v = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
        self.assertEqual(v.returncode, 0)
        self.assertRegex(v.stdout, r"^upkeep \d+\.\d+\.\d+")
        c = subprocess.run([binary, "--check-config", config], capture_output=True, text=True, timeout=30)
        self.assertEqual(c.returncode, 0, c.stderr)
        self.assertIn('listen: "127.0.0.1:3128"', c.stdout)
        self.assertIn('state_dir: "/var/lib/upkeep"', c.stdout, "the image's state volume")
        # Stripped: no symbol table left.
        nm = subprocess.run(["nm", binary], capture_output=True, text=True, timeout=60)
        self.assertIn("no symbols", nm.stderr)

        # The runtime image's tree (docker/rootfs.sh) runs upkeep on its own: chrooted
        # into it, where only its libraries and loader exist, the binary starts.
        rootfs = tempfile.mkdtemp(prefix="upkeep-rootfs-")
        self.addCleanup(shutil.rmtree, rootfs, True)
        r = subprocess.run([os.path.join(DOCKER, "rootfs.sh"), stage, rootfs], capture_output=True,
                           text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertFalse(os.path.exists(os.path.join(rootfs, "bin/sh")), "no shell in the image")
        if os.geteuid() == 0:
            for args in (["--version"], ["--check-config", "/etc/upkeep/upkeep.yaml"]):
                r = subprocess.run(["chroot", rootfs, "/usr/bin/upkeep"] + args, capture_output=True,
                                   text=True, timeout=30)
                self.assertEqual(r.returncode, 0, "chroot rootfs upkeep %s: %s" % (args, r.stderr))

        # The staged binary on the staged config serves probes (as HEALTHCHECK does);
        # only the listen addresses are moved to port 0.
        import yaml
        with open(config) as f:
            cfg = yaml.safe_load(f)
        cfg.pop("listen"), cfg.pop("admin")
        up = proxy.Upkeep(cfg, start=False, ca_file=False)
        up.bin = binary
        self.addCleanup(up.stop)
        up.start()
        h = subprocess.run([binary, "healthcheck", "--admin", "127.0.0.1:%d" % up.admin_port],
                           capture_output=True, timeout=15)
        self.assertEqual(h.returncode, 0, h.stderr)
        up.proc.send_signal(signal.SIGTERM)
        self.assertEqual(up.proc.wait(15), 0)

    @staticmethod
    def owning_package(path):
        cands = [path, os.path.realpath(path)]
        for p in list(cands):
            if p.startswith("/lib"):
                cands.append("/usr" + p)
            elif p.startswith("/usr/lib"):
                cands.append(p[4:])
        for p in cands:
            r = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True, timeout=30)
            if r.returncode == 0:
                return r.stdout.split(":")[0].strip()
        return "<no package for %s>" % path

    def test_compose_sidecar(self):
        import yaml
        with open(os.path.join(DOCKER, "compose.yaml")) as f:
            doc = yaml.safe_load(f)
        svc = doc["services"]
        up, app = svc["upkeep"], svc["app"]
        self.assertEqual(up["build"]["dockerfile"], "docker/Dockerfile")
        self.assertEqual(up["healthcheck"]["test"][:3], ["CMD", "/usr/bin/upkeep", "healthcheck"])
        # The interception CA outlives the container: state_dir is a named volume.
        state = [v for v in up["volumes"] if v.split(":")[1:2] == ["/var/lib/upkeep"]]
        self.assertEqual(len(state), 1, up["volumes"])
        self.assertIn(state[0].split(":")[0], doc["volumes"])
        self.assertEqual(app["network_mode"], "service:upkeep")
        self.assertEqual(app["depends_on"]["upkeep"]["condition"], "service_healthy")
        for k in ("http_proxy", "HTTP_PROXY"):
            self.assertEqual(app["environment"][k], "http://127.0.0.1:3128")
        self.assertTrue(all(v.startswith("http://") for k, v in app["environment"].items()
                            if k.lower().endswith("_proxy") and k.lower() != "no_proxy"))
        self.assertIn("healthcheck", app)
        self.assertNotIn("ports", app, "ports of a shared namespace belong to the upkeep service")
        grace = parse_duration_s(up["stop_grace_period"])
        self.assertGreater(grace, config_shutdown_grace(os.path.join(DOCKER, "upkeep.yaml")))

    def test_k8s_native_sidecar(self):
        import yaml
        with open(os.path.join(DOCKER, "k8s-sidecar.yaml")) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        by_kind = {d["kind"]: d for d in docs}
        self.assertEqual(set(by_kind), {"ConfigMap", "Pod"})
        cm, pod = by_kind["ConfigMap"], by_kind["Pod"]
        spec = pod["spec"]
        side = [c for c in spec["initContainers"] if c["name"] == "upkeep"]
        self.assertEqual(len(side), 1)
        side = side[0]
        self.assertEqual(side["restartPolicy"], "Always")
        ports = {p["name"]: p["containerPort"] for p in side["ports"]}
        self.assertEqual(ports["admin"], 9901)

        def probe(name):
            g = side[name]["httpGet"]
            port = g["port"]
            return g["path"], ports.get(port, port)
        self.assertEqual(probe("startupProbe"), ("/readyz", 9901))
        self.assertEqual(probe("readinessProbe"), ("/readyz", 9901))
        self.assertEqual(probe("livenessProbe"), ("/livez", 9901))
        sc = side["securityContext"]
        self.assertTrue(sc["runAsNonRoot"])
        self.assertTrue(sc["readOnlyRootFilesystem"])
        self.assertFalse(sc["allowPrivilegeEscalation"])
        # Config from the ConfigMap, mounted at /etc/upkeep.
        mount = [m for m in side["volumeMounts"] if m["mountPath"] == "/etc/upkeep"][0]
        vol = [v for v in spec["volumes"] if v["name"] == mount["name"]][0]
        self.assertEqual(vol["configMap"]["name"], cm["metadata"]["name"])
        self.assertIn("upkeep.yaml", cm["data"])
        # state_dir (the interception CA) on a volume: the root filesystem is read-only.
        state = [m for m in side["volumeMounts"] if m["mountPath"] == "/var/lib/upkeep"]
        self.assertEqual(len(state), 1)
        self.assertFalse(state[0].get("readOnly", False))
        self.assertIn(state[0]["name"], [v["name"] for v in spec["volumes"]])
        self.assertEqual(spec["securityContext"]["fsGroup"], 65532)
        # The ConfigMap's config is valid for upkeep, and the grace period covers it.
        d = tempfile.mkdtemp(prefix="upkeep-cm-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "upkeep.yaml")
        with open(path, "w") as f:
            f.write(cm["data"]["upkeep.yaml"])
        r = subprocess.run([os.environ["UPKEEP_BIN"], "--check-config", path], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('admin: "0.0.0.0:9901"', r.stdout, "kubelet probes reach the admin port at the pod IP")
        self.assertIn('state_dir: "/var/lib/upkeep"', r.stdout)
        self.assertGreater(spec["terminationGracePeriodSeconds"], config_shutdown_grace(path))
        app = [c for c in spec["containers"] if c["name"] == "app"][0]
        env = {e["name"]: e["value"] for e in app["env"]}
        self.assertEqual(env["http_proxy"], "http://127.0.0.1:3128")
        self.assertEqual(env["HTTP_PROXY"], "http://127.0.0.1:3128")


if __name__ == "__main__":
    unittest.main()
