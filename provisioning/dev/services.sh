#!/usr/bin/env bash
# Development and test services for Talus: installs what a fresh Debian 12 machine lacks and
# starts/stops a private SecantusDB (MongoDB wire protocol, replica set), a private RabbitMQ
# broker and libvirtd (+ virtlogd), all on loopback, in one run directory.
#
#   provisioning/dev/services.sh install            install Debian and PyPI packages (idempotent)
#   provisioning/dev/services.sh start [RUN_DIR]    start everything, wait until ready, print env
#   provisioning/dev/services.sh stop  [RUN_DIR]    stop exactly the processes `start` started
#   provisioning/dev/services.sh env   [RUN_DIR]    print the environment of a running set
#
# RUN_DIR defaults to $TALUS_RUN_DIR or /tmp/talus-dev. `start` writes RUN_DIR/env.sh with:
#   TALUS_TEST_MONGO_URI            replica-set URI (change streams work)
#   TALUS_TEST_MONGO_STANDALONE_URI a standalone server (no change streams) for error-path tests
#   TALUS_TEST_AMQP_URL             amqp://guest:guest@127.0.0.1:PORT/
#   TALUS_TEST_AMQP_MGMT            "NODE HOME" for rabbitmqctl
#   TALUS_TEST_LIBVIRT_URI          qemu:///system
#   TALUS_TEST_RUN_DIR              RUN_DIR
#   TALUS_SECANTUSD                 path of the secantusd-py launcher (tests start private servers)
#   TALUS_RABBITMQ_SERVER           path of rabbitmq-server (tests start private brokers)
# Every process started is recorded in RUN_DIR/pids ("name pid" lines); `stop` kills only those.
set -euo pipefail

cmd=${1:-}
RUN_DIR=${2:-${TALUS_RUN_DIR:-/tmp/talus-dev}}

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (libvirtd and apt need it)"

APT_PACKAGES=(
  # C libraries the Swift package links
  libvirt-dev librabbitmq-dev libmongoc-dev libbson-dev
  # services
  rabbitmq-server libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients tini
  # QEMU and image tools
  qemu-system-x86 qemu-utils genisoimage xorriso
  # the test guest (images/build-test-guest.sh)
  dosfstools mtools syslinux syslinux-common busybox-static cpio kmod gzip
  # misc used by scripts and tests
  git curl python3 python3-venv procps iproute2 ca-certificates
)
PIP_PACKAGES=(secantusdb pika pymongo schemathesis jsonschema)

python() { command -v python3; }

install_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep 'install ok installed' >/dev/null || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || apt-get update
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "Debian packages: all present"
  fi
  local pymissing=()
  for p in "${PIP_PACKAGES[@]}"; do
    "$(python)" -m pip show -q "$p" >/dev/null 2>&1 || pymissing+=("$p")
  done
  if [ ${#pymissing[@]} -gt 0 ]; then
    log "pip install ${pymissing[*]}"
    "$(python)" -m pip install -q --root-user-action=ignore "${pymissing[@]}" >/dev/null 2>&1 \
      || "$(python)" -m pip install -q --break-system-packages "${pymissing[@]}"
  else
    log "PyPI packages: all present"
  fi
  # The Debian package's postinst does not create these on minimal containers.
  getent group kvm >/dev/null || groupadd --system kvm
  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
  # Members of `libvirt` may use libvirtd's read-write socket (as on provisioned hosts).
  getent group libvirt >/dev/null || groupadd --system libvirt
  getent passwd libvirt-qemu >/dev/null || useradd --system --gid kvm --home-dir /var/lib/libvirt \
      --no-create-home --shell /usr/sbin/nologin libvirt-qemu
}

secantusd_bin() {
  local b
  b=$(command -v secantusd-py 2>/dev/null || true)
  [ -n "$b" ] || b=$("$(python)" -c 'import sys,os;print(os.path.join(os.path.dirname(sys.executable),"secantusd-py"))')
  [ -x "$b" ] || die "secantusd-py not found; run: $0 install"
  echo "$b"
}

free_port() {
  "$(python)" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

wait_tcp() { # host port seconds what
  local deadline=$((SECONDS + $3))
  until "$(python)" -c "import socket,sys;socket.create_connection(('$1',$2),0.5)" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "$4 did not listen on $1:$2 within $3 s (see $RUN_DIR)"
    sleep 0.2
  done
}

record() { echo "$1 $2" >> "$RUN_DIR/pids"; }

start_secantus() { # name port extra-args...
  local name=$1 port=$2; shift 2
  mkdir -p "$RUN_DIR/$name"
  setsid "$(secantusd_bin)" --host 127.0.0.1 --port "$port" --storage-path "$RUN_DIR/$name/data" \
    --log-level WARNING "$@" > "$RUN_DIR/$name/stdout.log" 2>&1 < /dev/null &
  record "$name" $!
  wait_tcp 127.0.0.1 "$port" 60 "SecantusDB ($name)"
}

start_rabbit() { # name port
  local name=$1 port=$2 dist
  dist=$(free_port)
  local D=$RUN_DIR/rmq-$name
  mkdir -p "$D/mnesia" "$D/log"; : > "$D/rabbitmq-env.conf"
  # consumer_timeout: slaves ack a part only when it ends, and a part may run for days (the
  # broker's default closes a channel after 30 minutes without an ack). 8 days > the longest VM.
  printf 'listeners.tcp.default = 127.0.0.1:%s\nloopback_users.guest = true\nconsumer_timeout = 691200000\n' "$port" > "$D/rabbitmq.conf"
  printf '[].\n' > "$D/enabled_plugins"
  # Its own (empty) conf.d: the host's /etc/rabbitmq/conf.d (provisioning/master.sh writes one
  # with listeners on 5672) must not leak into a private broker.
  mkdir -p "$D/conf.d"
  (
    export HOME=$D RABBITMQ_CONF_ENV_FILE=$D/rabbitmq-env.conf RABBITMQ_CONFIG_FILE=$D/rabbitmq RABBITMQ_CONFIG_FILES=$D/conf.d \
      RABBITMQ_ENABLED_PLUGINS_FILE=$D/enabled_plugins RABBITMQ_NODENAME=$name@localhost \
      RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$port RABBITMQ_DIST_PORT=$dist \
      RABBITMQ_MNESIA_BASE=$D/mnesia RABBITMQ_LOG_BASE=$D/log RABBITMQ_PID_FILE=$D/pid \
      ERL_EPMD_ADDRESS=127.0.0.1 \
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    setsid /usr/lib/rabbitmq/bin/rabbitmq-server > "$D/stdout.log" 2>&1 < /dev/null &
    echo $! > "$D/launcher.pid"
    # await_startup fails at once while the node is not yet registered with epmd: retry.
    local deadline=$((SECONDS + 90))
    until HOME=$D /usr/lib/rabbitmq/bin/rabbitmqctl -q -n "$name@localhost" await_startup \
        --timeout 30 >/dev/null 2>&1; do
      kill -0 "$(cat "$D/launcher.pid")" 2>/dev/null || { cat "$D/stdout.log" >&2; exit 1; }
      [ $SECONDS -lt $deadline ] || { cat "$D/stdout.log" >&2; exit 1; }
      sleep 0.5
    done
  ) || die "RabbitMQ ($name) did not start"
  record "rabbitmq-$name" "$(cat "$D/pid")"
  # epmd is started by the first Erlang node if none runs; remember it if we started it.
  if [ ! -f "$RUN_DIR/epmd.preexisting" ]; then
    local e; e=$(pgrep -x epmd | head -n1 || true)
    [ -n "$e" ] && record epmd "$e"
  fi
  wait_tcp 127.0.0.1 "$port" 30 "RabbitMQ ($name)"
}

start_libvirt() {
  # libvirtd checks /dev/kvm as libvirt-qemu; with the container default (root:root 0600) every
  # call finds "KVM was enabled when probing, but not available now" and re-probes QEMU (tens of
  # seconds per define). udev would set this on a normal host. Guests still use type='qemu'.
  if [ -c /dev/kvm ]; then chgrp kvm /dev/kvm && chmod 0660 /dev/kvm || true; fi
  if virsh -q -c qemu:///system version >/dev/null 2>&1; then
    log "libvirtd already running: using it (not ours to stop)"
    return
  fi
  mkdir -p "$RUN_DIR/libvirt"
  if ! pgrep -x virtlogd >/dev/null; then
    setsid virtlogd > "$RUN_DIR/libvirt/virtlogd.log" 2>&1 < /dev/null &
    record virtlogd $!
  fi
  # The socket policy of provisioned hosts (provisioning/hypervisor.sh writes the same into
  # /etc/libvirt/libvirtd.conf): the `libvirt` group may use the read-write socket, no polkit
  # (which needs D-Bus). Tests run the slave as its own user against it.
  getent group libvirt >/dev/null || groupadd --system libvirt
  printf 'unix_sock_group = "libvirt"\nunix_sock_rw_perms = "0770"\nauth_unix_rw = "none"\n' \
    > "$RUN_DIR/libvirt/libvirtd.conf"
  # Under tini as a child subreaper: libvirt daemonizes QEMU, so QEMU's parent is whoever reaps
  # orphans. Where that is a container init that reaps late (here ~2 s), libvirt's destroy waits
  # for the zombie to go (it polls kill(pid, 0)), and every part's teardown takes that long.
  local reaper=(tini -s --)
  command -v tini >/dev/null || { reaper=(); log "tini is not installed (services.sh install): each VM destroy may take ~2 s"; }
  setsid "${reaper[@]}" libvirtd -f "$RUN_DIR/libvirt/libvirtd.conf" > "$RUN_DIR/libvirt/libvirtd.log" 2>&1 < /dev/null &
  record libvirtd $!
  local deadline=$((SECONDS + 90))
  until virsh -q -c qemu:///system version >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "libvirtd did not answer within 90 s (see $RUN_DIR/libvirt)"
    sleep 0.3
  done
  # First start probes QEMU capabilities (~8 s); do it now rather than in the first test.
  virsh -q -c qemu:///system domcapabilities --virttype qemu >/dev/null 2>&1 || true
}

write_env() {
  cat > "$RUN_DIR/env.sh" <<EOF
export TALUS_TEST_MONGO_URI='mongodb://127.0.0.1:$MONGO_PORT/?replicaSet=secantus'
export TALUS_TEST_MONGO_STANDALONE_URI='mongodb://127.0.0.1:$MONGO_SA_PORT/'
export TALUS_TEST_AMQP_URL='amqp://guest:guest@127.0.0.1:$AMQP_PORT/'
export TALUS_TEST_AMQP_MGMT='talusdev$AMQP_PORT@localhost $RUN_DIR/rmq-talusdev$AMQP_PORT'
export TALUS_TEST_LIBVIRT_URI='qemu:///system'
export TALUS_TEST_RUN_DIR='$RUN_DIR'
export TALUS_SECANTUSD='$(secantusd_bin)'
export TALUS_RABBITMQ_SERVER='/usr/lib/rabbitmq/bin/rabbitmq-server'
EOF
}

stop_all() {
  [ -f "$RUN_DIR/pids" ] || { log "nothing recorded in $RUN_DIR/pids"; return 0; }
  local name pid
  # Reverse order: last started, first stopped.
  tac "$RUN_DIR/pids" | while read -r name pid; do
    if kill -0 "$pid" 2>/dev/null; then
      log "stopping $name ($pid)"
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  local deadline=$((SECONDS + 30))
  while read -r name pid; do
    while kill -0 "$pid" 2>/dev/null; do
      # A zombie (no init reaps orphans here) counts as stopped.
      [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" = Z ] && break
      if [ $SECONDS -ge $deadline ]; then kill -KILL "$pid" 2>/dev/null || true; break; fi
      sleep 0.2
    done
  done < "$RUN_DIR/pids"
  rm -f "$RUN_DIR/pids" "$RUN_DIR/env.sh"
}

# Sourced (provisioning/quickstart.sh): the functions above only.
[[ "${BASH_SOURCE[0]}" != "$0" ]] && return 0

case "$cmd" in
  install) install_packages ;;
  start)
    mkdir -p "$RUN_DIR"
    [ -f "$RUN_DIR/pids" ] && die "$RUN_DIR/pids exists: a set is already running (stop it first)"
    : > "$RUN_DIR/pids"
    pgrep -x epmd >/dev/null && touch "$RUN_DIR/epmd.preexisting" || rm -f "$RUN_DIR/epmd.preexisting"
    MONGO_PORT=$(free_port); MONGO_SA_PORT=$(free_port); AMQP_PORT=$(free_port)
    log "starting SecantusDB on 127.0.0.1:$MONGO_PORT (replica set) and :$MONGO_SA_PORT (standalone)"
    start_secantus mongo "$MONGO_PORT" &
    p1=$!
    start_secantus mongo-standalone "$MONGO_SA_PORT" --standalone &
    p2=$!
    log "starting RabbitMQ on 127.0.0.1:$AMQP_PORT"
    start_rabbit "talusdev$AMQP_PORT" "$AMQP_PORT" &
    p3=$!
    log "starting libvirtd"
    start_libvirt
    wait $p1 || die "SecantusDB failed"; wait $p2 || die "SecantusDB standalone failed"
    wait $p3 || die "RabbitMQ failed"
    write_env
    log "ready; environment in $RUN_DIR/env.sh"
    cat "$RUN_DIR/env.sh"
    ;;
  stop) stop_all ;;
  env) [ -f "$RUN_DIR/env.sh" ] && cat "$RUN_DIR/env.sh" || die "no running set in $RUN_DIR" ;;
  *) sed -n '2,22p' "$0"; exit 2 ;;
esac
