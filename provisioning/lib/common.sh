# Shared helpers of the provisioning scripts (master.sh, hypervisor.sh). Sourced, not run.
#
# Every helper is idempotent: it checks the current state first and changes only what differs,
# reporting each change on stderr as "[<script>] changed: ...". A run that finds everything in
# place prints "no changes", which is what the provisioning test checks on a second run.
# Nothing here needs systemd to be running (the CI machine and containers have no init system):
# units are installed and enabled by symlink; they are started only where systemd runs.

set -euo pipefail
# Under pipefail, `producer | grep -q` can fail although grep matched: grep exits at the first
# match and the producer dies of SIGPIPE. Pipelines here use `grep ... >/dev/null`, which reads
# all of its input.
umask 022

SCRIPT_NAME=${SCRIPT_NAME:-provisioning}
CHANGES=0
# Processes a script started itself because no init system runs (stopped by pid on exit).
TEMP_PIDS=()

log() { printf '[%s] %s\n' "$SCRIPT_NAME" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$SCRIPT_NAME" "$*" >&2; exit 1; }
changed() { CHANGES=$((CHANGES + 1)); log "changed: $*"; }

require_root() { [ "$(id -u)" = 0 ] || die "run as root"; }

# True when systemd is the running init system (not on the CI machine or in containers).
have_systemd() { [ -d /run/systemd/system ]; }

# ensure_packages PKG...: installs the Debian packages that are missing (without recommends).
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep 'install ok installed' >/dev/null || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || apt-get update
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  changed "installed packages: ${missing[*]}"
}

# ensure_group NAME: a system group.
ensure_group() {
  getent group "$1" >/dev/null && return 0
  groupadd --system "$1"
  changed "created group $1"
}

# ensure_user NAME PRIMARY_GROUP HOME [SUPPLEMENTARY_GROUP...]: a system user without a login
# shell or password, member of at least the given groups (other memberships are left alone).
ensure_user() {
  local name=$1 group=$2 home=$3; shift 3
  if ! getent passwd "$name" >/dev/null; then
    useradd --system --gid "$group" --home-dir "$home" --no-create-home \
      --shell /usr/sbin/nologin --comment "Talus ($name)" "$name"
    changed "created user $name"
  fi
  local g
  for g in "$@"; do
    id -nG "$name" | tr ' ' '\n' | grep -x "$g" >/dev/null && continue
    usermod -a -G "$g" "$name"
    changed "added $name to group $g"
  done
}

# ensure_owner_mode PATH OWNER GROUP MODE: fixes ownership and mode if they differ.
ensure_owner_mode() {
  local path=$1 owner=$2 group=$3 mode=$4 cur
  cur=$(stat -c '%U:%G %a' "$path")
  # stat prints modes without leading zeros; compare numerically (setgid dirs show 4 digits).
  if [ "${cur%% *}" != "$owner:$group" ]; then chown "$owner:$group" "$path"; changed "owner of $path: $owner:$group"; fi
  if [ "$((8#${cur##* }))" != "$((8#$mode))" ]; then chmod "$mode" "$path"; changed "mode of $path: $mode"; fi
}

# ensure_dir PATH OWNER GROUP MODE: a directory (parents are created root-owned 0755).
ensure_dir() {
  if [ ! -d "$1" ]; then
    mkdir -p "$1"
    changed "created directory $1"
  fi
  ensure_owner_mode "$@"
}

# ensure_file PATH OWNER GROUP MODE < CONTENT: the file has exactly this content (replaced
# atomically when it differs).
ensure_file() {
  local path=$1 tmp
  tmp=$(mktemp "${path}.XXXXXX.tmp" 2>/dev/null || mktemp)
  cat > "$tmp"
  if [ -f "$path" ] && cmp -s "$tmp" "$path"; then
    rm -f "$tmp"
  else
    chown "$2:$3" "$tmp"; chmod "$4" "$tmp"
    mv -f "$tmp" "$path"
    changed "wrote $path"
  fi
  ensure_owner_mode "$@"
}

# ensure_file_once PATH OWNER GROUP MODE < CONTENT: writes the file only when it does not exist
# (configuration an operator may edit afterwards); ownership and mode are always fixed.
ensure_file_once() {
  if [ -e "$1" ]; then
    cat > /dev/null
    ensure_owner_mode "$@"
  else
    ensure_file "$@"
  fi
}

# ensure_secret PATH OWNER GROUP MODE [BYTES]: a random secret (URL-safe, no padding) generated
# once; an existing one is kept (rotating it is the operator's decision).
ensure_secret() {
  local bytes=${5:-32}
  head -c "$bytes" /dev/urandom | base64 -w0 | tr '+/' '-_' | tr -d '=' | ensure_file_once "$1" "$2" "$3" "$4"
}

# ensure_installed SRC DST MODE: copies a file (binaries, units, docs) when the content differs.
ensure_installed() {
  local src=$1 dst=$2 mode=$3
  [ -f "$src" ] || die "$src does not exist"
  mkdir -p "$(dirname "$dst")"
  if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
    ensure_owner_mode "$dst" root root "$mode"
    return 0
  fi
  install -o root -g root -m "$mode" "$src" "$dst.talus-new"
  mv -f "$dst.talus-new" "$dst"
  changed "installed $dst"
  UNITS_CHANGED=1
}

# ensure_tree SRC DST: DST mirrors SRC (files 0644, executables 0755, root-owned).
ensure_tree() {
  local src=$1 dst=$2 rel
  if [ -d "$dst" ] && diff -r -q "$src" "$dst" >/dev/null 2>&1 \
     && [ -z "$(find "$dst" \( ! -user root -o ! -group root \) -print -quit)" ]; then
    return 0
  fi
  rm -rf "$dst.talus-new"
  mkdir -p "$(dirname "$dst")"
  cp -R "$src" "$dst.talus-new"
  chown -R root:root "$dst.talus-new"
  chmod -R u=rwX,go=rX "$dst.talus-new"
  rm -rf "$dst"
  mv "$dst.talus-new" "$dst"
  changed "installed $dst/"
}

UNITS_CHANGED=0
# ensure_unit NAME: installs systemd/NAME into /etc/systemd/system and enables it the way
# `systemctl enable` does for WantedBy=multi-user.target (a symlink), without needing systemd.
ensure_unit() {
  local name=$1
  ensure_installed "$REPO/systemd/$name" "/etc/systemd/system/$name" 0644
  local wants=/etc/systemd/system/multi-user.target.wants
  mkdir -p "$wants"
  if [ "$(readlink "$wants/$name" 2>/dev/null)" != "/etc/systemd/system/$name" ]; then
    ln -sfn "/etc/systemd/system/$name" "$wants/$name"
    changed "enabled $name"
  fi
}

# start_units UNIT...: where systemd runs, reloads it after changes and starts (or, after
# changes in this run, restarts) the units. Without systemd it says what to start by hand.
start_units() {
  if ! have_systemd; then
    log "systemd is not running here: units are installed and enabled, start them at boot (or by hand: $*)"
    return 0
  fi
  if [ "$CHANGES" -gt 0 ]; then systemctl daemon-reload; fi
  local u
  for u in "$@"; do
    if [ "$CHANGES" -gt 0 ] && systemctl is-active -q "$u"; then
      systemctl restart "$u"; changed "restarted $u"
    elif ! systemctl is-active -q "$u"; then
      systemctl start "$u"; changed "started $u"
    fi
  done
}

# ensure_line FILE REGEX LINE: FILE has LINE; a line matching REGEX (e.g. the commented default)
# is replaced, otherwise LINE is appended. The file must exist.
ensure_line() {
  local file=$1 regex=$2 line=$3
  grep -qxF -- "$line" "$file" && return 0
  if grep -qE -- "$regex" "$file"; then
    local tmp; tmp=$(mktemp)
    awk -v re="$regex" -v line="$line" 'done == 0 && $0 ~ re { print line; done = 1; next } { print }' "$file" > "$tmp"
    cat "$tmp" > "$file"; rm -f "$tmp"
  else
    printf '%s\n' "$line" >> "$file"
  fi
  changed "$file: $line"
}

# The libvirt-qemu user and /dev/kvm: the Debian packages expect udev and a full postinst. On
# minimal hosts and containers the QEMU user may be missing, and /dev/kvm may be root:root 0600,
# which makes libvirtd re-probe QEMU on every call ("KVM was enabled when probing, but not
# available now").
ensure_libvirt_qemu_user() {
  ensure_group kvm
  ensure_group libvirt
  ensure_group libvirt-qemu
  ensure_user libvirt-qemu kvm /var/lib/libvirt
  if [ -c /dev/kvm ]; then
    local cur; cur=$(stat -c '%G %a' /dev/kvm)
    if [ "$cur" != "kvm 660" ]; then
      chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
      changed "/dev/kvm: group kvm, mode 0660"
    fi
  fi
}

# libvirtd.conf: members of the `libvirt` group may use the read-write socket. Debian's default
# authorizes them through polkit, which needs D-Bus; the socket's group and mode say the same
# thing without it.
ensure_libvirtd_conf() {
  local conf=/etc/libvirt/libvirtd.conf
  [ -f "$conf" ] || die "$conf is missing (libvirt-daemon-system not installed?)"
  local before; before=$(sha256sum "$conf")
  ensure_line "$conf" '^#?[[:space:]]*unix_sock_group[[:space:]]*=' 'unix_sock_group = "libvirt"'
  ensure_line "$conf" '^#?[[:space:]]*unix_sock_rw_perms[[:space:]]*=' 'unix_sock_rw_perms = "0770"'
  ensure_line "$conf" '^#?[[:space:]]*auth_unix_rw[[:space:]]*=' 'auth_unix_rw = "none"'
  [ "$before" = "$(sha256sum "$conf")" ] || LIBVIRTD_CONF_CHANGED=1
}
LIBVIRTD_CONF_CHANGED=0

# with_libvirtd CMD...: runs CMD with a reachable libvirtd. Where none answers, starts one (via
# systemd, or by hand when no init system runs) and, if it started it by hand, stops it again.
with_libvirtd() {
  if ! virsh -q -c qemu:///system version >/dev/null 2>&1; then
    if have_systemd; then
      systemctl start libvirtd
    else
      pgrep -x virtlogd >/dev/null || { setsid virtlogd >/dev/null 2>&1 < /dev/null & TEMP_PIDS+=($!); }
      setsid libvirtd >/dev/null 2>&1 < /dev/null &
      TEMP_PIDS+=($!)
      log "started libvirtd for this run (pid $!; no init system)"
    fi
    local deadline=$((SECONDS + 90))
    until virsh -q -c qemu:///system version >/dev/null 2>&1; do
      [ $SECONDS -lt $deadline ] || die "libvirtd did not answer within 90 s"
      sleep 0.3
    done
  fi
  "$@"
}

stop_temp_processes() {
  local pid
  for pid in "${TEMP_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${TEMP_PIDS[@]}"; do
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && [ "$(ps -o stat= -p "$pid" | cut -c1)" != Z ]; do
      [ $SECONDS -lt $deadline ] || { kill -KILL "$pid" 2>/dev/null || true; break; }
      sleep 0.2
    done
  done
  TEMP_PIDS=()
}

# finish: the summary line the provisioning test reads.
finish() {
  if [ "$CHANGES" -eq 0 ]; then log "no changes"; else log "$CHANGES changes"; fi
}

# Where the Talus executables come from: --bin DIR, or this checkout's release build.
find_binaries() { # BIN_DIR NAMES...
  local dir=$1; shift
  local n
  for n in "$@"; do
    [ -x "$dir/$n" ] || die "$dir/$n is missing: build with \`swift build -c release --static-swift-stdlib\` in $REPO, or pass --bin DIR"
  done
}

# --- what both kinds of host need -----------------------------------------------------------------

# Shared libraries the Talus executables link, and tools they run.
RUNTIME_PACKAGES=(libvirt0 librabbitmq4 libmongoc-1.0-0 libbson-1.0-0 ca-certificates git python3 procps iproute2 curl)
# libvirtd with its units and configuration, QEMU, and the image tools (qemu-img, config ISOs).
LIBVIRT_PACKAGES=(libvirt-daemon-system libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
                  qemu-system-x86 qemu-utils genisoimage xorriso)

# ensure_config DAEMON PATH OWNER GROUP MODE [--set KEY=VALUE]...: the daemon's configuration file,
# rendered from its own `config-reference` (every key, documented; the given ones set). Written
# only when missing: an operator's edits survive later runs (remove the file to regenerate it).
ensure_config() {
  local daemon=$1 path=$2 owner=$3 group=$4 mode=$5; shift 5
  if [ -e "$path" ]; then ensure_owner_mode "$path" "$owner" "$group" "$mode"; return 0; fi
  local ref; ref=$(mktemp)
  "/usr/local/bin/$daemon" config-reference > "$ref" || die "$daemon config-reference failed"
  python3 "$REPO/provisioning/lib/talus-config.py" render "$ref" \
    --header "$path: configuration of $daemon, written by provisioning/$SCRIPT_NAME.sh.
Keys set below were chosen for this host; every other key is commented out with its default.
Environment variables (TALUS_<KEY>) override this file. Reference: docs/configuration.md
(installed as /usr/local/share/doc/talus/configuration.md)." "$@" > "$ref.yaml" \
    || die "cannot render $path"
  ensure_file "$path" "$owner" "$group" "$mode" < "$ref.yaml"
  rm -f "$ref" "$ref.yaml"
}

# detect_domain_type_libvirt (prints kvm or qemu): kvm when a KVM guest, defined through libvirt as
# the daemons define theirs (host-passthrough CPU), gets through its firmware (SeaBIOS prints
# "Booting from" on its debug port) within 10 s. Some hosts have a /dev/kvm whose guests hang, or
# where QEMU alone boots under KVM but libvirt's KVM guests abort ("failed to set MSR"). Needs a
# running libvirtd (qemu:///system).
detect_domain_type_libvirt() {
  if [ ! -c /dev/kvm ]; then log "no /dev/kvm: software emulation (qemu)"; echo qemu; return; fi
  local dir name=talus-kvm-probe-$$ result=qemu why="it did not reach the firmware's boot menu within 10 s"
  dir=$(mktemp -d)
  chmod 1777 "$dir"   # QEMU (libvirt-qemu) writes the firmware log
  cat > "$dir/probe.xml" <<XML
<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>$name</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><bios rebootTimeout='0'/></os>
  <cpu mode='host-passthrough'/><on_reboot>destroy</on_reboot>
  <devices/>
  <qemu:commandline><qemu:arg value='-chardev'/><qemu:arg value='file,id=fw,path=$dir/fw.log'/>
    <qemu:arg value='-device'/><qemu:arg value='isa-debugcon,iobase=0x402,chardev=fw'/></qemu:commandline>
</domain>
XML
  if virsh -q -c qemu:///system create "$dir/probe.xml" > "$dir/virsh.log" 2>&1; then
    local deadline=$((SECONDS + 10))
    while [ $SECONDS -lt $deadline ]; do
      if grep -qE 'Booting from|No bootable device' "$dir/fw.log" 2>/dev/null; then result=kvm; break; fi
      sleep 0.2
    done
    virsh -q -c qemu:///system destroy "$name" >/dev/null 2>&1 || true
  else
    why="libvirt could not start it: $(grep -m1 -oE 'qemu-system[^:]*: [^(]*' "$dir/virsh.log" || head -c 200 "$dir/virsh.log")"
  fi
  if [ "$result" = kvm ]; then log "KVM works under libvirt: domain type kvm"
  else log "/dev/kvm is present but a KVM guest failed ($why): software emulation (qemu)"; fi
  rm -rf "$dir"
  echo "$result"
}
# --- the embedded database (SecantusDB) -------------------------------------------------------------

SECANTUSDB_VERSION=0.7.0b3
SECANTUS_PORT=27017
SECANTUS_VENV=/opt/talus/secantusdb

# ensure_secantusdb_venv DIR: SecantusDB from PyPI in its own virtual environment (Debian's
# python3; nothing installed into the system Python).
ensure_secantusdb_venv() {
  local dir=$1
  if [ ! -x "$dir/bin/python3" ]; then
    mkdir -p "$(dirname "$dir")"
    /usr/bin/python3 -m venv "$dir"
    changed "created the virtual environment $dir"
  fi
  # Captured first: `grep -q` would stop reading early, and under pipefail pip's broken pipe
  # would count as "not installed".
  local shown
  shown=$("$dir/bin/python3" -m pip show secantusdb 2>/dev/null || true)
  if ! grep -qx "Version: $SECANTUSDB_VERSION" <<<"$shown"; then
    "$dir/bin/python3" -m pip install -q --disable-pip-version-check "secantusdb==$SECANTUSDB_VERSION" >&2
    changed "installed secantusdb $SECANTUSDB_VERSION into $dir"
  fi
}

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# with_database CMD...: runs CMD with the database answering. The embedded one is started when it
# does not (through systemd, or by hand as talus-db when no init system runs, stopped at exit).
with_database() {
  if [ "${EMBEDDED_DB:-0}" = 1 ] && ! tcp_open 127.0.0.1 "$SECANTUS_PORT"; then
    if have_systemd; then
      systemctl start talus-secantusdb
    else
      setsid setpriv --reuid talus-db --regid talus-db --init-groups \
        env HOME=/var/lib/talus/secantusdb "$SECANTUS_VENV/bin/secantusd-py" --config /etc/talus/secantusd.toml \
        > /var/lib/talus/secantusdb/provisioning.log 2>&1 < /dev/null &
      TEMP_PIDS+=($!)
      log "started SecantusDB for this run (pid $!; no init system)"
    fi
    local deadline=$((SECONDS + 60))
    until tcp_open 127.0.0.1 "$SECANTUS_PORT"; do
      [ $SECONDS -lt $deadline ] || die "SecantusDB did not listen on 127.0.0.1:$SECANTUS_PORT within 60 s"
      sleep 0.2
    done
  fi
  "$@"
}

# --- RabbitMQ ---------------------------------------------------------------------------------------

# ensure_rabbitmq_config LISTEN USER:PASSWORD...: the broker listens on LISTEN:5672, keeps
# consumers that hold a message for days (a part is acked when it ends), and creates the vhost
# `talus` and the given users (full rights on that vhost only) from a definitions file at boot —
# no running broker needed, and the users survive a reset of the node's database.
ensure_rabbitmq_config() {
  local listen=$1; shift
  local listener="$listen:5672"
  case "$listen" in 0.0.0.0|::|'[::]') listener=5672 ;; esac
  ensure_dir /etc/rabbitmq/conf.d root root 0755
  ensure_file /etc/rabbitmq/conf.d/50-talus.conf root rabbitmq 0640 <<RMQEOF
# Talus (written by provisioning/master.sh).
listeners.tcp.default = $listener
# The default user guest/guest: loopback only (it is not created when definitions are loaded).
loopback_users.guest = true
# Slaves ack a part only when it ends, and a part may run for days: the default (30 minutes
# without an ack) would close their channels. 8 days, longer than any VM deadline.
consumer_timeout = 691200000
# The vhost, users and permissions (password hashes, not passwords).
load_definitions = /etc/rabbitmq/talus-definitions.json
RMQEOF
  local defs; defs=$(mktemp)
  python3 - "$@" > "$defs" <<'PY'
import base64, hashlib, json, sys
users, perms = [], []
for arg in sys.argv[1:]:
    name, _, password = arg.partition(":")
    # rabbit_password_hashing_sha256: base64(salt + sha256(salt + password)). The salt is derived
    # from the user and password so the file is the same on every run (idempotent provisioning).
    salt = hashlib.sha256(f"talus-salt:{name}:{password}".encode()).digest()[:4]
    digest = hashlib.sha256(salt + password.encode()).digest()
    users.append({"name": name, "password_hash": base64.b64encode(salt + digest).decode(),
                  "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""})
    perms.append({"user": name, "vhost": "talus", "configure": ".*", "write": ".*", "read": ".*"})
json.dump({"users": users, "vhosts": [{"name": "talus"}], "permissions": perms}, sys.stdout, indent=2, sort_keys=True)
print()
PY
  ensure_file /etc/rabbitmq/talus-definitions.json root rabbitmq 0640 < "$defs"
  rm -f "$defs"
}
