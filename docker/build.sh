#!/usr/bin/env bash
# Builds upkeep for the container image and stages what the runtime stage copies:
#
#   docker/build.sh STAGE_DIR
#
#   STAGE_DIR/usr/bin/upkeep              Release build, stripped
#   STAGE_DIR/etc/upkeep/upkeep.yaml      the container config (docker/upkeep.yaml)
#
# The Dockerfile's builder stage runs it (then docker/rootfs.sh);
# tests/integration/test_deploy.py runs it too (no Docker engine needed). Build
# dependencies must already be installed (.ci/install-deps --run-only).
#
# Environment:
#   UPKEEP_BUILD_DIR  CMake build directory to use (default: a fresh directory
#                     STAGE_DIR.build). Pass an existing one to rebuild
#                     incrementally; ccache is used when installed.
#   UPKEEP_JOBS       parallel compile jobs (default: number of CPUs)
set -euo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: docker/build.sh STAGE_DIR" >&2
  exit 2
fi
src=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
stage=$(cd "$1" && pwd)
build=${UPKEEP_BUILD_DIR:-$stage.build}
jobs=${UPKEEP_JOBS:-$(nproc)}

cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF >/dev/null
cmake --build "$build" -j"$jobs" --target upkeep

install -D -m 0755 "$build/upkeep" "$stage/usr/bin/upkeep"
strip --strip-unneeded "$stage/usr/bin/upkeep"
install -D -m 0644 "$src/docker/upkeep.yaml" "$stage/etc/upkeep/upkeep.yaml"

# The staged binary must run and accept the staged config.
"$stage/usr/bin/upkeep" --version
"$stage/usr/bin/upkeep" --check-config "$stage/etc/upkeep/upkeep.yaml" >/dev/null
echo "staged: $stage/usr/bin/upkeep $stage/etc/upkeep/upkeep.yaml"
