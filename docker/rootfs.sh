#!/usr/bin/env bash
# Assembles the root filesystem of the runtime image (a FROM scratch stage) from
# what docker/build.sh staged:
#
#   docker/rootfs.sh STAGE_DIR ROOTFS_DIR
#
#   ROOTFS_DIR/usr/bin/upkeep                        the binary
#   ROOTFS_DIR/usr/lib/...                           exactly the shared libraries
#                                                    `ldd` resolves, and the loader
#   ROOTFS_DIR/lib, /lib64                           -> usr/lib, usr/lib64 (the
#                                                    binary's PT_INTERP is /lib64/...)
#   ROOTFS_DIR/etc/ssl/certs/ca-certificates.crt     the system roots; OpenSSL's
#                                                    default file (/usr/lib/ssl/cert.pem)
#                                                    points at it
#   ROOTFS_DIR/etc/upkeep/upkeep.yaml                the container config
#   ROOTFS_DIR/etc/passwd, group, nsswitch.conf      the non-root uid 65532; /etc/hosts
#                                                    before DNS
#   ROOTFS_DIR/var/lib/upkeep                        state_dir (a volume in the image)
#
# No shell, no package manager: the image can run upkeep and nothing else. Runs in
# the Dockerfile's builder stage, and in tests/integration/test_deploy.py, which
# chroots into the result to prove the library set is complete.
set -euo pipefail

if [ $# -ne 2 ] || [ -z "$1" ] || [ -z "$2" ]; then
  echo "usage: docker/rootfs.sh STAGE_DIR ROOTFS_DIR" >&2
  exit 2
fi
stage=$(cd "$1" && pwd)
mkdir -p "$2"
root=$(cd "$2" && pwd)
bin=$stage/usr/bin/upkeep

# Debian is merged-/usr: /lib is usr/lib. The libraries go where the loader's
# built-in search path finds them without an ld.so.cache.
mkdir -p "$root/usr/bin" "$root/usr/lib" "$root/usr/lib64"
ln -sfn usr/lib "$root/lib"
ln -sfn usr/lib64 "$root/lib64"
install -m 0755 "$bin" "$root/usr/bin/upkeep"

# ldd lines: "libx.so => /path (addr)", or "/lib64/ld-linux-x86-64.so.2 (addr)";
# linux-vdso has no file.
ldd_out=$(ldd "$bin")
if grep -q "not found" <<<"$ldd_out"; then
  echo "rootfs.sh: unresolved libraries:" >&2
  echo "$ldd_out" >&2
  exit 1
fi
while read -r path; do
  dest=$path
  case $dest in
    /lib/* | /lib64/*) dest=/usr$dest ;;
  esac
  install -D -m 0644 "$(readlink -f "$path")" "$root$dest"
done < <(sed -nE 's/.*=> (\/[^ ]+) .*/\1/p; s/^[[:space:]]*(\/[^ ]+) \(.*/\1/p' <<<"$ldd_out")
# The loader is executable (the kernel maps it as the binary's interpreter).
interp=$(sed -nE 's/^[[:space:]]*(\/[^ ]+) \(.*/\1/p' <<<"$ldd_out")
case $interp in
  /lib/* | /lib64/*) chmod 0755 "$root/usr$interp" ;;
  *) chmod 0755 "$root$interp" ;;
esac

install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
openssl_dir=$(openssl version -d 2>/dev/null | sed -nE 's/^OPENSSLDIR: "(.*)"$/\1/p')
openssl_dir=${openssl_dir:-/usr/lib/ssl}
mkdir -p "$root$openssl_dir"
ln -sfn /etc/ssl/certs/ca-certificates.crt "$root$openssl_dir/cert.pem"

install -D -m 0644 "$stage/etc/upkeep/upkeep.yaml" "$root/etc/upkeep/upkeep.yaml"
printf 'root:x:0:0:root:/root:/nonexistent\nupkeep:x:65532:65532:upkeep:/var/lib/upkeep:/nonexistent\n' \
  >"$root/etc/passwd"
printf 'root:x:0:\nupkeep:x:65532:\n' >"$root/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf"
# Owned by the uid upkeep runs as: a fresh volume mounted there copies this owner
# and mode (COPY --chown in the Dockerfile does not change a directory that an
# earlier COPY already made).
install -d -m 0700 "$root/var/lib/upkeep"
if [ "$(id -u)" = 0 ]; then chown 65532:65532 "$root/var/lib/upkeep"; fi
echo "rootfs: $root ($(du -sh "$root" | cut -f1))"
