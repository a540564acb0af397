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

step "build the guest artifacts (test guest, static agent)"
# Once, before the tests: many tests boot the test guest or put the agent on config ISOs, and
# would otherwise all wait on the first one that builds them.
for script in images/build-test-guest.sh images/build-agent.sh; do
  if ! "$script" >> "$RUN_DIR/guest-artifacts.log" 2>&1; then
    tail -30 "$RUN_DIR/guest-artifacts.log"
    echo "$script failed (full log: $RUN_DIR/guest-artifacts.log)"; exit 1
  fi
done
echo "guest artifacts ok (log: $RUN_DIR/guest-artifacts.log)"

step "start services in $RUN_DIR"
# mktemp -d makes the directory 0700; QEMU runs as libvirt-qemu and must reach the disk images
# that tests keep in their scratch directories below it.
chmod 0755 "$RUN_DIR"
trap 'step "stop services"; provisioning/dev/services.sh stop "$RUN_DIR" || true' EXIT
provisioning/dev/services.sh start "$RUN_DIR" >/dev/null
# shellcheck disable=SC1091
source "$RUN_DIR/env.sh"

# With arguments: exactly that `swift test` run. Without: the targets in groups, one group at a
# time, so that the tests that boot VMs or start private brokers do not starve each other of the
# machine's cores (a group's tests still run in parallel). Every group runs; the summary lists
# those that failed.
if [ $# -gt 0 ]; then
  step "test"
  swift test --skip-build "$@"
  exit
fi
groups=(
  "BSONTests|TalusModelTests|TalusCoreTests|TalusAgentTests|MongoTests|LibvirtTests"
  "TalusAPITests|TalusCLITests|TalusCodeTests"
  "AMQPTests"
  "TalusMasterTests"
  "TalusMasterImagesTests"
  "TalusSlaveTests"
  "TalusEndToEndTests"
  "OpsTests"
)
failed=()
for g in "${groups[@]}"; do
  step "test $g"
  if ! swift test --skip-build --filter "^($g)\\." 2>&1 | tee "$RUN_DIR/test-${g%%|*}.log" | grep -E --line-buffered '^(✘|✔ Suite|✔ Test run|error:)'; then :; fi
  grep -qE '^✘' "$RUN_DIR/test-${g%%|*}.log" && failed+=("$g")
  grep -qE 'Test run with .* passed' "$RUN_DIR/test-${g%%|*}.log" || failed+=("$g")
done
step "summary"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED: %s (logs: %s/test-*.log)\n' "$(printf '%s ' "${failed[@]}" | tr ' ' '\n' | sort -u | tr '\n' ' ')" "$RUN_DIR"
  exit 1
fi
echo "all test groups passed"
