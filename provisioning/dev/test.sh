#!/usr/bin/env bash
# The whole Talus test suite on a fresh Debian 12 machine, as root:
#   provisioning/dev/test.sh [swift test arguments...]
# Installs what is missing, builds, starts the real services once (SecantusDB, RabbitMQ,
# libvirtd) in a private run directory, runs every test against them, and stops exactly the
# processes it started, whatever the outcome.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
export PATH=/opt/swift/usr/bin:$PATH

RUN_DIR=${TALUS_RUN_DIR:-$(mktemp -d /tmp/talus-test.XXXXXX)}
export TALUS_RUN_DIR=$RUN_DIR
step() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }

step "install packages"
provisioning/dev/services.sh install

step "build"
mkdir -p "$RUN_DIR"
if ! swift build --build-tests > "$RUN_DIR/build.log" 2>&1; then
  grep -E 'error:' "$RUN_DIR/build.log" | head -40 || tail -40 "$RUN_DIR/build.log"
  echo "build failed (full log: $RUN_DIR/build.log)"; exit 1
fi
echo "build ok (log: $RUN_DIR/build.log)"

step "start services in $RUN_DIR"
# mktemp -d makes the directory 0700; QEMU runs as libvirt-qemu and must reach the disk images
# that tests keep in their scratch directories below it.
chmod 0755 "$RUN_DIR"
trap 'step "stop services"; provisioning/dev/services.sh stop "$RUN_DIR" || true' EXIT
provisioning/dev/services.sh start "$RUN_DIR" >/dev/null
# shellcheck disable=SC1091
source "$RUN_DIR/env.sh"

step "test"
swift test --skip-build "$@"
