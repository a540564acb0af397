#!/usr/bin/env bash
# A complete single-host Talus on loopback, running its main job — the README's first command.
#
#   provisioning/quickstart.sh [--dir DIR]          install, build, start, import, run a job
#   provisioning/quickstart.sh stop [--dir DIR]     stop everything it started (also: --stop)
#
# Run as root on Debian 12 from a clone of the repository. It installs what is missing
# (provisioning/dev/services.sh install), builds the daemons (debug, into this checkout's .build,
# the one the tests use) plus the test guest and the guest agent (images/), then starts in the
# state directory DIR (default /var/lib/talus-quickstart, or $TALUS_QUICKSTART_DIR):
#   SecantusDB (replica set), RabbitMQ and libvirtd   (provisioning/dev/services.sh start DIR/services)
#   talus-api, talus-master and one talus-slave       (configuration files in DIR/etc)
# creates the admin and a slave token (DIR/secrets, mode 0600), the code repository
# (DIR/code.git, with the template pushed and recorded by its hooks; a clone in DIR/code), logs the
# CLI in (DIR/cli/talus/config.json), imports the test guest as the image `quickstart-guest`,
# creates the task `toyfuzz-quickstart` and runs a job of it, and prints the crash buckets found and
# how to use and stop the instance.
#
# Every process it starts is recorded by pid in DIR (DIR/run/*.pid, DIR/services/pids); `stop`
# ends exactly those. Running it again reuses what runs, what is built and what is imported, and
# runs one more job. Ports are chosen once (free loopback ports, the API prefers 8420) and kept in
# DIR/ports.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SCRIPT_NAME=quickstart
# shellcheck source=provisioning/lib/common.sh
. "$REPO/provisioning/lib/common.sh"
umask 022
export PATH=/opt/swift/usr/bin:$PATH

STATE=${TALUS_QUICKSTART_DIR:-/var/lib/talus-quickstart}
ACTION=start
while [ $# -gt 0 ]; do
  case "$1" in
    stop|--stop) ACTION=stop; shift ;;
    --dir) STATE=${2:?--dir needs a directory}; shift 2 ;;
    --dir=*) STATE=${1#*=}; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) sed -n '2,24p' "$0" >&2; die "unknown argument: $1" ;;
  esac
done
case "$STATE" in /*) ;; *) STATE=$PWD/$STATE ;; esac

T0=$SECONDS
phase() { printf '[quickstart %s +%ss] %s\n' "$(date -u +%H:%M:%S)" $((SECONDS - T0)) "$*"; }
CURRENT_PHASE=
step() { CURRENT_PHASE=$*; phase "$*"; }

require_root

# --- processes by pid --------------------------------------------------------------------------------

# alive PIDFILE EXECUTABLE: the recorded process runs (not a zombie) and is that executable.
alive() {
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" != Z ] || return 1
  [ -z "${2:-}" ] || [ "$(readlink "/proc/$pid/exe" 2>/dev/null | sed 's/ (deleted)$//')" = "$(readlink -f "$2")" ]
}

# stop_pid NAME PIDFILE SECONDS: SIGTERM, then SIGKILL after SECONDS.
stop_pid() {
  local name=$1 file=$2 wait=$3 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if alive "$file"; then
    phase "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + wait))
    while alive "$file"; do
      if [ $SECONDS -ge $deadline ]; then kill -KILL "$pid" 2>/dev/null || true; break; fi
      sleep 0.2
    done
  fi
  rm -f "$file"
}

DAEMONS=(talus-slave talus-master talus-api)

stop_everything() {
  local d
  for d in "${DAEMONS[@]}"; do
    # The slave lets running parts go on for shutdown.grace (10 s here), then requeues them.
    stop_pid "$d" "$STATE/run/$d.pid" 30
  done
  if [ -f "$STATE/services/pids" ]; then
    phase "stopping SecantusDB, RabbitMQ (and libvirtd if the quickstart started it)"
    provisioning/dev/services.sh stop "$STATE/services" 2>&1 | sed 's/^/    /'
  fi
}

if [ "$ACTION" = stop ]; then
  [ -d "$STATE" ] || { phase "nothing to stop: $STATE does not exist"; exit 0; }
  stop_everything
  phase "stopped; state (database, images, tokens) kept in $STATE (remove it to start afresh)"
  exit 0
fi

mkdir -p "$STATE"/{etc,secrets,run,logs,ports,cli}
chmod 0700 "$STATE"/{etc,secrets,cli}
chmod 0600 "$STATE"/secrets/* "$STATE"/etc/* 2>/dev/null || true
# QEMU runs as libvirt-qemu and must reach the image store and the slave's cache below STATE.
chmod 0755 "$STATE"
LOGS=$STATE/logs
trap 'rc=$?; [ $rc -eq 0 ] || printf "[quickstart] FAILED (exit %s) during: %s\n[quickstart] logs: %s\n" "$rc" "$CURRENT_PHASE" "$LOGS" >&2' EXIT

# --- 1. packages ---------------------------------------------------------------------------------------

step "installing what is missing (Debian and PyPI packages)"
provisioning/dev/services.sh install 2>&1 | sed 's/^\[services\] /    /'
command -v swift >/dev/null || die "swift is not installed (expected in /opt/swift/usr/bin or on PATH): install the Swift 6 toolchain for Debian 12 from swift.org, then run this again"

# --- 2. build -------------------------------------------------------------------------------------------

step "building talus-api, talus-master, talus-slave, talus-code and talus (debug, log: $LOGS/build.log)"
: > "$LOGS/build.log"
for product in talus-api talus-master talus-slave talus-code talus; do
  if ! swift build --product "$product" >> "$LOGS/build.log" 2>&1; then
    grep -E 'error:' "$LOGS/build.log" | head -20 >&2 || tail -20 "$LOGS/build.log" >&2
    die "building $product failed (full log: $LOGS/build.log)"
  fi
done
BIN=$(swift build --show-bin-path)
step "building the guest agent and the test guest (images/, log: $LOGS/images.log)"
AGENT=$(images/build-agent.sh 2>>"$LOGS/images.log" | tail -n1) || die "images/build-agent.sh failed (see $LOGS/images.log)"
GUEST=$(images/build-test-guest.sh 2>>"$LOGS/images.log" | tail -n1) || die "images/build-test-guest.sh failed (see $LOGS/images.log)"
[ -x "$AGENT" ] && [ -f "$GUEST" ] || die "the guest artifacts are missing (see $LOGS/images.log)"

# --- 3. services ----------------------------------------------------------------------------------------

services_alive() {
  [ -f "$STATE/services/pids" ] && [ -f "$STATE/services/env.sh" ] || return 1
  local name pid
  while read -r name pid; do
    kill -0 "$pid" 2>/dev/null && [ "$(ps -o stat= -p "$pid" | cut -c1)" != Z ] || return 1
  done < "$STATE/services/pids"
  # shellcheck disable=SC1091
  (. "$STATE/services/env.sh"
   tcp_open 127.0.0.1 "$(echo "$TALUS_TEST_MONGO_URI" | sed -E 's#.*:([0-9]+)/.*#\1#')" &&
   tcp_open 127.0.0.1 "$(echo "$TALUS_TEST_AMQP_URL" | sed -E 's#.*:([0-9]+)/.*#\1#')")
}

if services_alive; then
  step "SecantusDB, RabbitMQ and libvirtd: running (reused)"
else
  step "starting SecantusDB (replica set), RabbitMQ and libvirtd on loopback (log: $LOGS/services.log)"
  [ -f "$STATE/services/pids" ] && provisioning/dev/services.sh stop "$STATE/services" >> "$LOGS/services.log" 2>&1
  provisioning/dev/services.sh start "$STATE/services" >> "$LOGS/services.log" 2>&1 \
    || { tail -20 "$LOGS/services.log" >&2; die "the services did not start (see $LOGS/services.log)"; }
fi
# shellcheck disable=SC1091
. "$STATE/services/env.sh"
MONGO_URI=$TALUS_TEST_MONGO_URI
AMQP_URL=$TALUS_TEST_AMQP_URL

# --- 4. configuration -----------------------------------------------------------------------------------

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# port NAME PREFERRED PIDFILE EXE: the port kept for NAME. A new one is chosen when none is kept
# yet, or when the kept one is taken while our daemon (PIDFILE) does not run.
port() {
  local name=$1 preferred=$2 pidfile=$3 exe=$4 p=
  [ -f "$STATE/ports/$name" ] && p=$(cat "$STATE/ports/$name")
  if [ -n "$p" ] && ! alive "$pidfile" "$exe" && tcp_open 127.0.0.1 "$p"; then
    log "port $p of $name is taken by another program: choosing another one"
    p=
  fi
  if [ -z "$p" ]; then
    if [ -n "$preferred" ] && ! tcp_open 127.0.0.1 "$preferred"; then p=$preferred; else p=$(free_port); fi
    echo "$p" > "$STATE/ports/$name"
  fi
  echo "$p"
}
API_PORT=$(port api 8420 "$STATE/run/talus-api.pid" "$BIN/talus-api")
MASTER_METRICS=$(port master-metrics "" "$STATE/run/talus-master.pid" "$BIN/talus-master")
SLAVE_METRICS=$(port slave-metrics "" "$STATE/run/talus-slave.pid" "$BIN/talus-slave")
API_URL=http://127.0.0.1:$API_PORT

# kvm where a KVM guest really boots, qemu (software emulation) otherwise; detected once.
if [ ! -s "$STATE/domain-type" ]; then
  step "detecting KVM (a short test boot)"
  detect_domain_type_libvirt > "$STATE/domain-type"
fi
DOMAIN_TYPE=$(cat "$STATE/domain-type")

# write_config NAME: stdin → DIR/etc/NAME.yaml (0600), replaced only when it differs.
write_config() {
  local f=$STATE/etc/$1.yaml
  cat > "$f.new"
  chmod 0600 "$f.new"
  if [ -f "$f" ] && cmp -s "$f" "$f.new"; then rm -f "$f.new"; else mv -f "$f.new" "$f"; fi
}
mkdir -p "$STATE"/{uploads,images,bundles,cache,slave-run}
write_config api <<EOF
# talus-api of the quickstart (written by provisioning/quickstart.sh; every key: docs/configuration.md)
http:
  listen: "127.0.0.1:$API_PORT"
mongo:
  uri: "$MONGO_URI"
  database: "talus"
storage:
  uploads: "$STATE/uploads"
  images: "$STATE/images"
code:
  repository: "$STATE/code.git"
  bundle_cache: "$STATE/bundles"
EOF
write_config master <<EOF
# talus-master of the quickstart (written by provisioning/quickstart.sh)
mongo:
  uri: "$MONGO_URI"
  database: "talus"
amqp:
  url: "$AMQP_URL"
metrics:
  listen: "127.0.0.1:$MASTER_METRICS"
images:
  store: "$STATE/images"
  vm_memory_mb: "256"
  vm_cpus: "1"
storage:
  uploads: "$STATE/uploads"
libvirt:
  domain_type: "$DOMAIN_TYPE"
EOF
write_config slave <<EOF
# talus-slave of the quickstart (written by provisioning/quickstart.sh)
slave:
  id_file: "$STATE/slave-id"
  vms: "2"
amqp:
  url: "$AMQP_URL"
api:
  url: "$API_URL"
  token_file: "$STATE/secrets/slave-token"
cache:
  dir: "$STATE/cache"
run:
  dir: "$STATE/slave-run"
agent:
  path: "$AGENT"
libvirt:
  domain_type: "$DOMAIN_TYPE"
metrics:
  listen: "127.0.0.1:$SLAVE_METRICS"
shutdown:
  grace: "10s"
EOF
write_config code <<EOF
# talus-code (the code repository's hooks) of the quickstart (written by provisioning/quickstart.sh)
mongo:
  uri: "$MONGO_URI"
  database: "talus"
code:
  repository: "$STATE/code.git"
  bundle_cache: "$STATE/bundles"
EOF

# --- 5. daemons -----------------------------------------------------------------------------------------

wait_http() { # URL SECONDS WHAT PIDFILE
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; do
    alive "$4" || { tail -20 "$LOGS/$3.log" >&2; die "$3 exited (log: $LOGS/$3.log)"; }
    [ $SECONDS -lt $deadline ] || die "$3 did not answer on $1 within $2 s (log: $LOGS/$3.log)"
    sleep 0.3
  done
}

# ensure_daemon NAME HEALTH_URL: runs BIN/NAME serve --config DIR/etc/<short>.yaml, restarted when
# its configuration or its executable changed since it started.
ensure_daemon() {
  local name=$1 health=$2
  local exe=$BIN/$name pidfile=$STATE/run/$name.pid cfg=$STATE/etc/${1#talus-}.yaml
  local stamp; stamp=$(cat "$cfg" "$exe" | sha256sum | cut -c1-16)
  if alive "$pidfile" "$exe" && [ "$(cat "$STATE/run/$name.stamp" 2>/dev/null)" = "$stamp" ]; then
    phase "$name: running (pid $(cat "$pidfile"), reused)"
  else
    if alive "$pidfile"; then stop_pid "$name (configuration or executable changed)" "$pidfile" 30; fi
    step "starting $name (log: $LOGS/$name.log)"
    setsid "$exe" serve --config "$cfg" >> "$LOGS/$name.log" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    echo "$stamp" > "$STATE/run/$name.stamp"
  fi
  wait_http "$health" 60 "$name" "$pidfile"
}

talus() { XDG_CONFIG_HOME=$STATE/cli "$BIN/talus" "$@"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# The code repository: created once with the template pushed through its hooks (which record the
# tools in the database). Needs only the database.
if [ ! -d "$STATE/code.git" ]; then
  step "creating the code repository $STATE/code.git (template pushed, recorded by the hooks)"
  "$BIN/talus-code" init --config "$STATE/etc/code.yaml" --template "$REPO/code-template" \
    --hook-executable "$BIN/talus-code" >> "$LOGS/code.log" 2>&1 \
    || { rm -rf "$STATE/code.git"; tail -20 "$LOGS/code.log" >&2; die "talus-code init failed (log: $LOGS/code.log)"; }
  git clone -q "$STATE/code.git" "$STATE/code" >> "$LOGS/code.log" 2>&1
else
  phase "code repository $STATE/code.git: exists (reused)"
fi

ensure_daemon talus-api "$API_URL/healthz"

# The admin: its token in DIR/secrets/admin-token (0600). A token that no longer works (a new
# database) is replaced.
step "admin user and CLI login ($STATE/cli/talus/config.json)"
if [ ! -s "$STATE/secrets/admin-token" ] || \
   ! TALUS_URL=$API_URL TALUS_TOKEN=$(cat "$STATE/secrets/admin-token") "$BIN/talus" user show me >/dev/null 2>&1; then
  "$BIN/talus-api" bootstrap-admin --config "$STATE/etc/api.yaml" --name admin --force --json \
    2>> "$LOGS/talus-api.log" | json 'd["token"]' > "$STATE/secrets/admin-token.new"
  chmod 0600 "$STATE/secrets/admin-token.new"
  mv -f "$STATE/secrets/admin-token.new" "$STATE/secrets/admin-token"
  phase "created the admin token ($STATE/secrets/admin-token)"
fi
talus login "$API_URL" < "$STATE/secrets/admin-token" > /dev/null

# The slave's user (role slave) and token. A slave token may not read users: any answer but 401
# means the API still knows it.
token_known() {
  [ -s "$1" ] || return 1
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(cat "$1")" "$API_URL/api/v1/users/me")" != 401 ]
}
if ! token_known "$STATE/secrets/slave-token"; then
  talus user show quickstart-slave >/dev/null 2>&1 || talus user create quickstart-slave --role slave > /dev/null
  talus token create "quickstart-slave-$(date +%s)" --user quickstart-slave --json | json 'd["token"]' \
    > "$STATE/secrets/slave-token.new"
  chmod 0600 "$STATE/secrets/slave-token.new"
  mv -f "$STATE/secrets/slave-token.new" "$STATE/secrets/slave-token"
  phase "created the slave token ($STATE/secrets/slave-token)"
fi

ensure_daemon talus-master "http://127.0.0.1:$MASTER_METRICS/healthz"
ensure_daemon talus-slave "http://127.0.0.1:$SLAVE_METRICS/healthz"

# --- 6. image -------------------------------------------------------------------------------------------

IMAGE=quickstart-guest
talus os show test-linux >/dev/null 2>&1 || talus os create test-linux --family linux > /dev/null
status=$(talus image show "$IMAGE" --json 2>/dev/null | json 'd.get("status",{}).get("name","")' 2>/dev/null || true)
case "$status" in
  ready) phase "image $IMAGE: ready (reused)" ;;
  error)
    step "image $IMAGE ended in error before: deleting it to import it again"
    talus image delete "$IMAGE" > /dev/null
    deadline=$((SECONDS + 120))
    while talus image show "$IMAGE" >/dev/null 2>&1; do
      [ $SECONDS -lt $deadline ] || die "image $IMAGE was not deleted within 120 s (log: $LOGS/talus-master.log)"
      sleep 1
    done
    status= ;;
  '') ;;
  *) step "image $IMAGE: $status (an earlier import still runs): waiting"
     talus image show "$IMAGE" --wait ;;
esac
if [ -z "$status" ] || [ "$status" = error ]; then
  step "importing the test guest as image $IMAGE (it powers itself off 5 s after booting)"
  # A copy: the guest reads its power-off delay from its own disk (images/README.md).
  cp "$GUEST" "$STATE/quickstart-guest.qcow2"
  images/set-poweroff-after.sh "$STATE/quickstart-guest.qcow2" 5
  talus image import "$STATE/quickstart-guest.qcow2" --os test-linux --name "$IMAGE" --cpus 1 --memory-mb 256 \
    2>&1 | tr '\r' '\n' | grep -v '^ *$' | sed 's/^/    /'
  rm -f "$STATE/quickstart-guest.qcow2"
fi

# --- 7. the job -----------------------------------------------------------------------------------------

TASK=toyfuzz-quickstart
if ! talus task show "$TASK" >/dev/null 2>&1; then
  step "creating task $TASK (tool toyfuzz, image $IMAGE)"
  talus task create "$TASK" --tool toyfuzz --image "$IMAGE" --param iterations=30 --limit 60 \
    --cpus 1 --memory-mb 256 > /dev/null
fi
step "running a job of $TASK (2 parts of 30 iterations, each in a fresh VM)"
JOB=$(talus job create "$TASK" --json | json 'd["_id"]')
talus job watch "$JOB" 2>&1 | tr '\r' '\n' | grep -v '^ *$' | sed 's/^/    /' || true
JOB_STATUS=$(talus job show "$JOB" --json | json 'd.get("status",{}).get("name","")')
[ "$JOB_STATUS" = finished ] || die "job $JOB ended $JOB_STATUS: talus job show $JOB (logs: $LOGS/talus-slave.log, $LOGS/talus-master.log)"

# --- 8. what a new user needs ---------------------------------------------------------------------------

CURRENT_PHASE="summary"
phase "done in $((SECONDS - T0)) s"
cat <<EOF

Crash buckets found by job $JOB:
$(talus crash list --job "$JOB" | sed 's/^/  /')

Talus runs on this host (loopback only):
  API          $API_URL   (OpenAPI: $API_URL/openapi.yaml)
  admin token  $STATE/secrets/admin-token   (mode 0600; the user is "admin")
  state        $STATE   (configuration in etc/, logs in logs/, pids in run/ and services/pids)
  code         $STATE/code   (a clone of $STATE/code.git: edit tools/, git push to record them)

Use the CLI against it:
  export PATH=$BIN:\$PATH
  export TALUS_URL=$API_URL TALUS_TOKEN=\$(cat $STATE/secrets/admin-token)
  talus job list; talus crash list; talus crash show CRASH
  talus job create $TASK --watch
(or save the login for your user: talus login $API_URL < $STATE/secrets/admin-token)

Stop everything it started:   $REPO/provisioning/quickstart.sh stop$( [ "$STATE" = /var/lib/talus-quickstart ] || printf ' --dir %s' "$STATE")
Run it again (reuses all of it): $REPO/provisioning/quickstart.sh$( [ "$STATE" = /var/lib/talus-quickstart ] || printf ' --dir %s' "$STATE")
EOF
