"""The Debian package (cmake/packaging.cmake, `cpack -G DEB`), built from a Release
build and installed the way a user would: `dpkg -i` and `apt-get -f install` in a
Debian 12 minbase chroot (the base that test_image.py's image starts from), then
upkeep run there; and lintian's verdict on the file.

Registered only for builds without sanitizers (tests/CMakeLists.txt,
UPKEEP_IMAGE_TESTS).
"""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from upkeep_test.testcase import UpkeepTestCase

import test_deploy
import test_image

ROOT = test_image.ROOT
UNIT = os.path.join(ROOT, "config", "upkeep.service")


def run(cmd, timeout=300, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


class PackageTest(UpkeepTestCase):
    @classmethod
    def setUpClass(cls):
        # The Release build directory test_deploy.py's build-script test uses: one
        # compile serves both.
        build = os.environ.get("UPKEEP_DOCKER_BUILD_DIR") or os.path.join(ROOT, "build", "docker-release")
        cls.dir = tempfile.mkdtemp(prefix="upkeep-deb-")
        stage = os.path.join(cls.dir, "stage")
        r = run([os.path.join(ROOT, "docker", "build.sh"), stage], timeout=1200,
                env=dict(os.environ, UPKEEP_BUILD_DIR=build))
        if r.returncode != 0:
            shutil.rmtree(cls.dir, True)
            raise AssertionError("docker/build.sh failed:\n%s\n%s" % (r.stdout[-3000:], r.stderr[-3000:]))
        cls.version = run([os.path.join(stage, "usr/bin/upkeep"), "--version"]).stdout.split()[1]
        out = os.path.join(cls.dir, "out")
        r = run(["cpack", "-G", "DEB", "-B", out], cwd=build, timeout=600)
        if r.returncode != 0:
            shutil.rmtree(cls.dir, True)
            raise AssertionError("cpack -G DEB failed:\n%s\n%s" % (r.stdout[-3000:], r.stderr[-3000:]))
        cls.deb = os.path.join(out, "upkeep_%s_amd64.deb" % cls.version)
        print("test_package: %s" % cls.deb, flush=True)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, True)

    def field(self, name):
        r = run(["dpkg-deb", "-f", self.deb, name])
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout.strip()

    def test_file_name_and_control(self):
        self.assertTrue(os.path.isfile(self.deb), os.listdir(os.path.dirname(self.deb)))
        self.assertEqual(self.field("Package"), "upkeep")
        self.assertEqual(self.field("Version"), self.version)
        self.assertEqual(self.field("Architecture"), "amd64")
        self.assertEqual(self.field("Section"), "net")

    def test_depends_are_the_binary_libraries_packages(self):
        # Independently of dpkg-shlibdeps: the packages owning what the binary links.
        d = tempfile.mkdtemp(prefix="upkeep-deb-x-", dir=self.dir)
        self.assertEqual(run(["dpkg-deb", "-x", self.deb, d]).returncode, 0)
        ldd = run(["ldd", os.path.join(d, "usr/bin/upkeep")])
        libs = re.findall(r"=>\s*(/\S+)", ldd.stdout)
        self.assertTrue(libs, ldd.stdout)
        owners = {test_deploy.ContainerTest.owning_package(p) for p in libs}
        depends = {re.split(r"[\s(]", dep.strip())[0] for dep in self.field("Depends").split(",")}
        self.assertEqual(depends, owners, "Depends: %s" % self.field("Depends"))
        for dep in self.field("Depends").split(","):
            self.assertRegex(dep.strip(), r"^\S+ \(>= [^)]+\)$", "a versioned dependency")

    def test_file_list_conffile_and_unit(self):
        r = run(["dpkg-deb", "-c", self.deb])
        self.assertEqual(r.returncode, 0, r.stderr)
        files = {l.split()[-1].lstrip(".") for l in r.stdout.splitlines() if not l.startswith("d")}
        self.assertEqual(files, {
            "/usr/bin/upkeep", "/etc/upkeep/upkeep.yaml", "/lib/systemd/system/upkeep.service",
            "/usr/share/doc/upkeep/copyright", "/usr/share/doc/upkeep/changelog.gz"})
        for line in r.stdout.splitlines():
            self.assertIn("root/root", line, "owned by root: %s" % line)

        ctl = tempfile.mkdtemp(prefix="upkeep-deb-ctl-", dir=self.dir)
        self.assertEqual(run(["dpkg-deb", "-e", self.deb, ctl]).returncode, 0)
        with open(os.path.join(ctl, "conffiles")) as f:
            self.assertEqual(f.read().split(), ["/etc/upkeep/upkeep.yaml"])

        d = tempfile.mkdtemp(prefix="upkeep-deb-x-", dir=self.dir)
        self.assertEqual(run(["dpkg-deb", "-x", self.deb, d]).returncode, 0)
        with open(os.path.join(d, "lib/systemd/system/upkeep.service")) as f:
            unit = f.read()
        with open(UNIT) as f:
            shipped = f.read()
        # The shipped unit, with the package's binary path: nothing else differs.
        self.assertEqual(unit, shipped.replace("ExecStart=/usr/local/bin/upkeep ", "ExecStart=/usr/bin/upkeep "))
        self.assertRegex(unit, r"(?m)^StateDirectory=upkeep$")
        with open(os.path.join(d, "etc/upkeep/upkeep.yaml")) as f, \
                open(os.path.join(ROOT, "config", "upkeep.yaml")) as g:
            self.assertEqual(f.read(), g.read())

    def test_lintian_reports_no_errors(self):
        exe = shutil.which("lintian")
        self.assertTrue(exe, "lintian is missing (.ci/install-deps installs it)")
        r = run([exe, "--tag-display-limit", "0", self.deb], timeout=600)
        print("test_package: lintian (exit %d):\n%s%s" % (r.returncode, r.stdout, r.stderr), flush=True)
        errors = [l for l in r.stdout.splitlines() if l.startswith("E:")]
        self.assertEqual(errors, [])
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_installs_and_runs_in_a_debian_chroot(self):
        root = tempfile.mkdtemp(prefix="upkeep-chroot-", dir=self.dir)
        self.addCleanup(subprocess.run, ["rm", "-rf", "--one-file-system", root], timeout=300)
        test_image.DebianBase().extract(root)
        shutil.copy(self.deb, os.path.join(root, "tmp", "upkeep.deb"))
        shutil.copy("/etc/resolv.conf", os.path.join(root, "etc", "resolv.conf"))

        def chroot(*cmd, timeout=300):
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
                   "LC_ALL": "C"}
            return run(["chroot", root] + list(cmd), timeout=timeout, env=env)

        # minbase lacks upkeep's libraries (libyaml-cpp0.7 at least): dpkg leaves the
        # package unconfigured, and apt brings what Depends names.
        first = chroot("dpkg", "-i", "/tmp/upkeep.deb")
        self.assertNotEqual(first.returncode, 0, first.stdout)
        self.assertIn("dependency problems", first.stderr, first.stdout + first.stderr)
        self.assertIn("libyaml-cpp0.7", first.stderr)
        r = chroot("apt-get", "update", "-qq", timeout=600)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = chroot("apt-get", "-f", "install", "-y", "--no-install-recommends", timeout=900)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        print("test_package: apt-get -f install: %s" % " ".join(
            re.findall(r"(?m)^Setting up (\S+)", r.stdout)), flush=True)
        status = chroot("dpkg-query", "-W", "-f", "${Status} ${Version}", "upkeep")
        self.assertEqual(status.stdout, "install ok installed %s" % self.version)

        v = chroot("upkeep", "--version")
        self.assertEqual((v.returncode, v.stdout.strip()), (0, "upkeep %s" % self.version), v.stderr)
        c = chroot("upkeep", "--check-config", "/etc/upkeep/upkeep.yaml")
        self.assertEqual(c.returncode, 0, c.stderr)
        self.assertIn('listen: "127.0.0.1:3128"', c.stdout)
        conf = chroot("dpkg-query", "-W", "-f", "${Conffiles}", "upkeep")
        self.assertRegex(conf.stdout, r"/etc/upkeep/upkeep.yaml [0-9a-f]{32}")

        # A conffile: the user's edit survives reinstalling the package.
        edited = os.path.join(root, "etc/upkeep/upkeep.yaml")
        with open(edited, "a") as f:
            f.write("# edited by the admin\n")
        r = chroot("dpkg", "-i", "--force-confold", "/tmp/upkeep.deb")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        with open(edited) as f:
            self.assertTrue(f.read().endswith("# edited by the admin\n"))

        r = chroot("dpkg", "--purge", "upkeep")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertFalse(os.path.exists(os.path.join(root, "usr/bin/upkeep")))
        self.assertFalse(os.path.exists(edited), "purge removes the conffile")


if __name__ == "__main__":
    unittest.main()
