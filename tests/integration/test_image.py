"""The container image, built and run the way a user would: docker/Dockerfile on a
Debian 12 base, in a Docker engine of the test's own.

The engine is a dockerd started for this module (its own --data-root, --exec-root
and socket in a temp dir, --bridge=none --iptables=false: the machine's bridges and
firewall rules are left alone, and build and run use --network host). The base
image debian:12-slim is made offline-style, as no registry is reachable: debootstrap
--variant=minbase bookworm, cached as a tarball (DebianBase), then `docker import`.

Registered only for builds without sanitizers (tests/CMakeLists.txt,
UPKEEP_IMAGE_TESTS): a cold run costs a few minutes of build. Skipped, saying why,
when dockerd cannot start on the machine.
"""
import datetime
import fcntl
import glob
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import unittest

from upkeep_test import certs, client
from upkeep_test.proxy import route, to_yaml
from upkeep_test.testcase import UpkeepTestCase
from upkeep_test.util import wait_until

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CACHE = os.environ.get("UPKEEP_TEST_CACHE", "/var/cache/upkeep-test")
IMAGE = "upkeep:test"
MAX_IMAGE_BYTES = 25 * 1000 * 1000
UID = 65532


def log(msg):
    print("test_image: " + msg, flush=True)


def debian_mirror():
    """The Debian mirror apt already uses here (the machine reaches no other)."""
    texts = []
    for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*")):
        try:
            with open(path) as f:
                texts.append(f.read())
        except OSError:
            pass
    for text in texts:
        for m in re.finditer(r"(?m)^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(https?://\S+/debian)/?\s*$", text):
            return m.group(1)
        for m in re.finditer(r"(?m)^deb\s+(?:\[[^\]]*\]\s+)?(https?://\S+/debian)/?\s+bookworm\b", text):
            return m.group(1)
    return "http://deb.debian.org/debian"


class DebianBase:
    """A Debian 12 minbase root filesystem as a tarball, made by debootstrap once a
    month (security fixes arrive that often) and kept in CACHE, where this machine
    keeps it between CI runs; older ones are removed."""

    def __init__(self):
        self.key = datetime.date.today().strftime("%Y%m")
        self.tar = os.path.join(CACHE, "debian-bookworm-minbase-%s.tar" % self.key)

    def get(self):
        os.makedirs(CACHE, exist_ok=True)
        with open(os.path.join(CACHE, "lock"), "w") as lock:
            # Two checkouts testing at once make it once between them.
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.exists(self.tar):
                self._make()
        return self.tar

    def _make(self):
        exe = shutil.which("debootstrap")
        if not exe:
            raise AssertionError("debootstrap is missing (.ci/install-deps installs it)")
        work = tempfile.mkdtemp(prefix="debootstrap-", dir=CACHE)
        try:
            rootfs = os.path.join(work, "rootfs")
            t0 = time.monotonic()
            r = subprocess.run(["nice", "-n", "10", exe, "--variant=minbase", "bookworm", rootfs,
                                debian_mirror()], capture_output=True, text=True, timeout=900)
            if r.returncode != 0:
                raise AssertionError("debootstrap failed:\n%s\n%s" % (r.stdout[-3000:], r.stderr[-3000:]))
            # No caches or logs in the base image.
            for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for p in glob.glob(os.path.join(rootfs, sub, "*")):
                    if os.path.isfile(p):
                        os.unlink(p)
            partial = self.tar + ".partial"
            subprocess.run(["tar", "-C", rootfs, "--numeric-owner", "-cf", partial, "."],
                           check=True, timeout=600)
            os.replace(partial, self.tar)
            log("debootstrap bookworm minbase: %.0fs -> %s" % (time.monotonic() - t0, self.tar))
        finally:
            subprocess.run(["rm", "-rf", "--one-file-system", work], timeout=300)
        for old in glob.glob(os.path.join(CACHE, "debian-bookworm-minbase-*.tar")):
            if old != self.tar:
                os.unlink(old)

    def extract(self, dest):
        subprocess.run(["tar", "-C", dest, "--numeric-owner", "-xf", self.get()], check=True, timeout=600)


class DockerDaemon:
    """A dockerd of the test's own, started and stopped by its PID."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="upkeep-dockerd-")
        os.chmod(self.dir, 0o711)
        self.sock = os.path.join(self.dir, "docker.sock")
        self.host = "unix://" + self.sock
        self.log_path = os.path.join(self.dir, "dockerd.log")
        self.proc = None
        # Debian's client, matching the daemon's API (another client may be on PATH).
        self.cli = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else shutil.which("docker")

    def start(self, timeout=60.0):
        """None once the engine answers, else the reason it could not start."""
        exe = shutil.which("dockerd")
        if not exe or not self.cli:
            raise AssertionError("dockerd or docker is missing (.ci/install-deps installs docker.io)")
        self._log = open(self.log_path, "w")
        # nice: the image build compiles upkeep on a machine others share.
        self.proc = subprocess.Popen(
            ["nice", "-n", "10", exe,
             "--data-root", os.path.join(self.dir, "data"),
             "--exec-root", os.path.join(self.dir, "exec"),
             "--pidfile", os.path.join(self.dir, "dockerd.pid"),
             "-H", self.host,
             "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return "dockerd exited %s:\n%s" % (self.proc.returncode, self.log_tail())
            if os.path.exists(self.sock):
                r = self.run("info", "--format", "{{.ServerVersion}}", check=False, timeout=10)
                if r.returncode == 0:
                    return None
            time.sleep(0.2)
        return "dockerd did not answer within %.0fs:\n%s" % (timeout, self.log_tail())

    def log_tail(self, n=3000):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def run(self, *args, check=True, timeout=120, text=True):
        r = subprocess.run([self.cli, "-H", self.host] + list(args), capture_output=True,
                           timeout=timeout, text=text)
        if check and r.returncode != 0:
            err = r.stderr if text else r.stderr.decode(errors="replace")
            raise AssertionError("docker %s failed (%d): %s" % (" ".join(args), r.returncode, err[-3000:]))
        return r

    def inspect(self, *names):
        return json.loads(self.run("inspect", *names).stdout)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            # Containers first, while the engine can still stop them cleanly.
            ids = self.run("ps", "-aq", check=False, timeout=30).stdout.split()
            if ids:
                self.run("rm", "-f", *ids, check=False, timeout=120)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        if self.proc is not None:
            self._log.close()
        # dockerd unmounts its overlays on a clean stop; after a kill some remain.
        for mnt in reversed(self.mounts()):
            subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=30)
        subprocess.run(["rm", "-rf", "--one-file-system", self.dir], capture_output=True, timeout=300)

    def mounts(self):
        out = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mnt = line.split()[4].replace("\\040", " ")
                if mnt == self.dir or mnt.startswith(self.dir + "/"):
                    out.append(mnt)
        return out


def context_tar(path):
    """The build context: the source tree as it is, without build directories and
    git (docker/Dockerfile.dockerignore says the same to BuildKit; the classic
    builder reads only a .dockerignore at the context root)."""
    def keep(info):
        parts = info.name.split("/")
        top = parts[1] if len(parts) > 1 else ""
        if top == ".git" or top.startswith("build") or "__pycache__" in parts:
            return None
        return info
    # GNU format: from a tar in Python's default (PAX) format the classic builder
    # fails to parse docker/Dockerfile.
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as t:
        t.add(ROOT, arcname=".", filter=keep)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ImageTest(UpkeepTestCase):
    docker = None

    @classmethod
    def setUpClass(cls):
        cls.docker = DockerDaemon()
        try:
            why = cls.docker.start()
        except BaseException:
            cls.docker.stop()
            raise
        if why:
            cls.docker.stop()
            raise unittest.SkipTest("dockerd cannot start on this machine: " + why)
        try:
            cls.build()
        except BaseException:
            engine_log = cls.docker.log_tail()
            cls.docker.stop()
            log("dockerd log:\n" + engine_log)
            raise

    @classmethod
    def build(cls):
        d = cls.docker
        base = DebianBase().get()
        t0 = time.monotonic()
        with open(base, "rb") as f:
            r = subprocess.run([d.cli, "-H", d.host, "import", "-", "debian:12-slim"], stdin=f,
                               capture_output=True, timeout=600)
        if r.returncode != 0:
            raise AssertionError("docker import failed: %s" % r.stderr.decode(errors="replace"))
        log("docker import debian:12-slim: %.1fs" % (time.monotonic() - t0))
        ctx = os.path.join(d.dir, "context.tar")
        context_tar(ctx)
        t0 = time.monotonic()
        with open(ctx, "rb") as f:
            r = subprocess.run([d.cli, "-H", d.host, "build", "--network", "host",
                                "--build-arg", "UPKEEP_JOBS=2", "-f", "docker/Dockerfile",
                                "-t", IMAGE, "-"], stdin=f, capture_output=True, timeout=1500,
                               env=dict(os.environ, DOCKER_BUILDKIT="0"))
        cls.build_seconds = time.monotonic() - t0
        out = (r.stdout + r.stderr).decode(errors="replace")
        if r.returncode != 0:
            raise AssertionError("docker build failed (%d):\n%s" % (r.returncode, out[-6000:]))
        log("docker build -f docker/Dockerfile: %.0fs" % cls.build_seconds)

    @classmethod
    def tearDownClass(cls):
        if cls.docker:
            cls.docker.stop()

    # -- the image ----------------------------------------------------------------
    def image_files(self):
        """{path: tarinfo} of the image's filesystem (docker export of a container)."""
        cid = self.docker.run("create", IMAGE).stdout.strip()
        self.addCleanup(self.docker.run, "rm", "-f", cid, check=False)
        out = os.path.join(self.docker.dir, "export-%s.tar" % cid[:12])
        self.addCleanup(lambda: os.path.exists(out) and os.unlink(out))
        self.docker.run("export", "-o", out, cid)
        with tarfile.open(out) as t:
            return {"/" + m.name.rstrip("/"): m for m in t.getmembers()}

    def test_image_is_small_and_holds_upkeep_only(self):
        info = self.docker.inspect(IMAGE)[0]
        size = info["Size"]
        log("image size: %d bytes (%.1f MB)" % (size, size / 1e6))
        self.assertLessEqual(size, MAX_IMAGE_BYTES, "image is %.1f MB" % (size / 1e6))
        cfg = info["Config"]
        self.assertEqual(cfg["User"], "%d:%d" % (UID, UID))
        self.assertEqual(cfg["Entrypoint"], ["/usr/bin/upkeep"])
        self.assertEqual(cfg["Healthcheck"]["Test"],
                         ["CMD", "/usr/bin/upkeep", "healthcheck", "--config", "/etc/upkeep/upkeep.yaml"])
        self.assertIn("/var/lib/upkeep", cfg["Volumes"])
        self.assertEqual(cfg["StopSignal"], "SIGTERM")

        files = self.image_files()
        regular = {p for p, m in files.items() if m.isfile()}
        libs = {p for p in regular if re.match(r"^/usr/lib(64)?/", p) and ".so" in p}
        rest = regular - libs
        # What the engine adds to every container's filesystem (/dev/console is the
        # empty file it mounts the console over).
        engine = {"/.dockerenv", "/etc/hostname", "/etc/hosts", "/etc/resolv.conf",
                  "/dev/console"}
        self.assertEqual(rest - engine, {
            "/usr/bin/upkeep", "/etc/upkeep/upkeep.yaml", "/etc/ssl/certs/ca-certificates.crt",
            "/etc/passwd", "/etc/group", "/etc/nsswitch.conf"})
        for p in ("/bin/sh", "/usr/bin/sh", "/bin/bash", "/usr/bin/apt-get", "/usr/bin/dpkg"):
            self.assertNotIn(p, files, "the runtime image has %s" % p)
        # Exactly the libraries upkeep links (its NEEDED closure) and the loader.
        needed = self.needed_closure(files)
        self.assertEqual({os.path.basename(p) for p in libs}, needed)
        state = files["/var/lib/upkeep"]
        self.assertTrue(state.isdir())
        self.assertEqual((state.uid, state.gid, state.mode & 0o777), (UID, UID, 0o700))

    def needed_closure(self, files):
        """Sonames upkeep needs, transitively, read from the exported files' ELF
        headers (objdump -p), plus the loader named in PT_INTERP."""
        out = os.path.join(self.docker.dir, "elf")
        os.makedirs(out, exist_ok=True)
        cid = self.docker.run("create", IMAGE).stdout.strip()
        self.addCleanup(self.docker.run, "rm", "-f", cid, check=False)
        libs = {os.path.basename(p): p for p, m in files.items() if m.isfile() and ".so" in p}

        def copy(path):
            dest = os.path.join(out, os.path.basename(path))
            self.docker.run("cp", "%s:%s" % (cid, path), dest)
            return dest

        def needed(path):
            r = subprocess.run(["objdump", "-p", path], capture_output=True, text=True, timeout=30,
                               check=True)
            return re.findall(r"^\s+NEEDED\s+(\S+)$", r.stdout, re.M)

        binary = copy("/usr/bin/upkeep")
        interp = subprocess.run(["readelf", "-l", binary], capture_output=True, text=True,
                                check=True, timeout=30).stdout
        loader = os.path.basename(re.search(r"interpreter: (\S+)\]", interp).group(1))
        seen, todo = {loader}, needed(binary)
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            self.assertIn(name, libs, "upkeep needs %s, which the image lacks" % name)
            todo += needed(copy(libs[name]))
        return seen

    # -- the container -------------------------------------------------------------
    def run_container(self, config, *extra, args=()):
        d = tempfile.mkdtemp(prefix="upkeep-container-")
        self.addCleanup(shutil.rmtree, d, True)
        os.chmod(d, 0o755)
        path = os.path.join(d, "upkeep.yaml")
        with open(path, "w") as f:
            f.write(to_yaml(config))
        os.chmod(path, 0o644)
        name = "upkeep-test-%d-%d" % (os.getpid(), int(time.monotonic() * 1000))
        self.docker.run("run", "-d", "--name", name, "--network", "host",
                        "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                        "-v", "%s:/etc/upkeep/upkeep.yaml:ro" % path,
                        "-v", "%s:/etc/upkeep/test-ca.crt:ro" % certs.get().ca_cert,
                        *extra, IMAGE, *args)
        self.addCleanup(self.docker.run, "rm", "-f", name, check=False)
        return name

    def state(self, name):
        return self.docker.inspect(name)[0]["State"]

    def logs(self, name):
        r = self.docker.run("logs", name, check=False)
        return r.stdout + r.stderr

    def test_container_serves_turns_healthy_and_drains(self):
        origin = self.start_fault()
        port, admin = free_port(), free_port()
        max_conn, grace = 2, 5
        name = self.run_container({
            "listen": "127.0.0.1:%d" % port,
            "admin": "127.0.0.1:%d" % admin,
            "shutdown_grace": "%ds" % grace,
            "log": {"format": "json"},
            "upstream": {"ca_file": "/etc/upkeep/test-ca.crt", "max_connections": max_conn},
            "routes": [route("fault.origin.test", origin.port)],
        })
        started = time.monotonic()

        # Locked down as run: uid, capabilities and root filesystem seen from the host.
        wait_until(lambda: self.state(name)["Running"] or self.state(name)["Status"] == "exited", 30,
                   message="container running")
        st = self.state(name)
        self.assertTrue(st["Running"], "container exited: %s\n%s" % (st, self.logs(name)))
        with open("/proc/%d/status" % st["Pid"]) as f:
            status = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
        self.assertEqual(status["Uid"].split()[:2], [str(UID)] * 2)
        self.assertEqual(int(status["CapEff"], 16), 0, "capabilities left: %s" % status["CapEff"])
        self.assertEqual(int(status["CapBnd"], 16), 0)
        with open("/proc/%d/mountinfo" % st["Pid"]) as f:
            root = [l.split() for l in f if l.split()[4] == "/"][0]
        self.assertIn("ro", root[5].split(","), "root filesystem mounted %s" % root[5])

        # HEALTHCHECK: the image's own probe (upkeep healthcheck) turns it healthy.
        def health():
            h = self.state(name).get("Health") or {}
            return h.get("Status")
        wait_until(lambda: health() == "healthy", 60,
                   message="container healthy (now %s)" % health())
        healthy_after = time.monotonic() - started
        log("container healthy after %.1fs" % healthy_after)

        # Requests through the container to the origin on the host: under the bound.
        results, errors = [], []

        def one(i):
            try:
                r = client.fetch(port, "GET", "http://fault.origin.test/ok?size=%d" % (1000 + i), timeout=30)
                results.append((r.status, len(r.body)))
            except Exception as e:  # reported below with the rest
                errors.append(repr(e))
        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(sorted(results), sorted((200, 1000 + i) for i in range(12)))
        self.assertGreaterEqual(origin.connections_total, 1)
        self.assertLessEqual(origin.max_open, max_conn)

        # docker stop: SIGTERM to upkeep (PID 1) drains the request in flight, exit 0
        # within shutdown_grace.
        slow = {}

        def in_flight():
            slow["r"] = client.fetch(port, "GET", "http://fault.origin.test/delay-headers?ms=1500&size=500",
                                     timeout=30)
        t = threading.Thread(target=in_flight)
        t.start()
        wait_until(lambda: origin.requests_for("/delay-headers"), 10, message="slow request at origin")
        t0 = time.monotonic()
        self.docker.run("stop", "-t", "30", name, timeout=60)
        stopped_in = time.monotonic() - t0
        t.join(30)
        self.assertEqual((slow["r"].status, len(slow["r"].body)), (200, 500))
        st = self.state(name)
        self.assertEqual(st["ExitCode"], 0, self.logs(name)[-3000:])
        self.assertFalse(st["OOMKilled"])
        self.assertLess(stopped_in, grace + 2, "docker stop took %.1fs" % stopped_in)
        log("docker stop with a request in flight: %.1fs, exit %d" % (stopped_in, st["ExitCode"]))
        self.assertIn("shutting down", self.logs(name))

    def test_intercept_ca_lives_in_the_state_volume(self):
        # The image's own config (state_dir /var/lib/upkeep) and a named volume there:
        # the CA one container makes is the one the next container finds.
        vol = "upkeep-state-%d" % os.getpid()
        self.docker.run("volume", "create", vol)
        self.addCleanup(self.docker.run, "volume", "rm", "-f", vol, check=False)
        ca = ["run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL",
              "-v", "%s:/var/lib/upkeep" % vol, IMAGE, "ca"]
        first = self.docker.run(*ca, "init", "--config", "/etc/upkeep/upkeep.yaml")
        self.assertEqual(first.stdout.strip(), "/var/lib/upkeep/ca.pem")
        self.assertIn("created a new interception CA", first.stderr)
        cert, key = self.volume_file(vol, "ca.pem"), self.volume_file(vol, "ca-key.pem")
        self.assertIn(b"BEGIN CERTIFICATE", cert[0])
        self.assertEqual(key[1:], (UID, 0o600), "the CA key: owner uid and mode")

        again = self.docker.run(*ca, "init", "--config", "/etc/upkeep/upkeep.yaml")
        self.assertNotIn("created", again.stderr)
        self.assertEqual(self.volume_file(vol, "ca.pem"), cert, "a new container kept the CA")
        self.assertEqual(self.volume_file(vol, "ca-key.pem"), key)

    def volume_file(self, vol, name):
        """(bytes, uid, mode) of a file in the volume, read through a container."""
        cid = self.docker.run("create", "-v", "%s:/var/lib/upkeep" % vol, IMAGE).stdout.strip()
        try:
            r = self.docker.run("cp", "%s:/var/lib/upkeep/%s" % (cid, name), "-", text=False)
            with tarfile.open(fileobj=io.BytesIO(r.stdout)) as t:
                m = t.getmembers()[0]
                return t.extractfile(m).read(), m.uid, m.mode & 0o777
        finally:
            self.docker.run("rm", "-f", cid, check=False)


if __name__ == "__main__":
    unittest.main()
