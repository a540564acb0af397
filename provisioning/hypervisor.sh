#!/usr/bin/env bash
# Turns a fresh Debian 12 host into a Talus hypervisor host: libvirtd + QEMU (the libvirt-qemu
# user and /dev/kvm fixed), the isolated job network and its traffic filter, the image cache and
# run directories, talus-slave with its configuration (KVM or software emulation detected), and
# its systemd unit. Idempotent: a run that finds everything in place prints "no changes".
#
#   provisioning/hypervisor.sh [options]
#     --bin DIR              Talus executables (talus-slave); default: this checkout's .build/release
#     --agent FILE           the statically linked guest agent; default: images/out/talus-agent
#                            (build it with images/build-agent.sh)
#     --api-url URL          the master's API, e.g. http://master:8420 (default http://127.0.0.1:8420)
#     --amqp-url-file FILE   the broker URL with the slave's credentials (the master's
#                            /etc/talus/secrets/amqp-slave-url); copied to /etc/talus/secrets
#     --slave-token-file F   a token of a user with the `slave` role; copied to /etc/talus/secrets
#                            (required on the first run)
#     --domain-type T        kvm or qemu; default: detected (a short KVM test boot must reach the
#                            firmware's boot menu, else qemu = software emulation)
#     --vms N                VMs run at once (default: half the CPU cores, at least 1)
#
# Works without systemd running (containers, the CI machine): the unit is installed and enabled,
# and libvirtd is started by hand for the moment it is needed (defining the network and filter),
# then stopped again. Where systemd runs, it starts libvirtd and talus-slave.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SCRIPT_NAME=hypervisor
# shellcheck source=provisioning/lib/common.sh
. "$REPO/provisioning/lib/common.sh"

BIN=$REPO/.build/release
AGENT=$REPO/images/out/talus-agent
API_URL=http://127.0.0.1:8420
AMQP_URL_FILE=
TOKEN_FILE=
DOMAIN_TYPE=
VMS=
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=$2; shift 2 ;;
    --agent) AGENT=$2; shift 2 ;;
    --api-url) API_URL=$2; shift 2 ;;
    --amqp-url-file) AMQP_URL_FILE=$2; shift 2 ;;
    --slave-token-file) TOKEN_FILE=$2; shift 2 ;;
    --domain-type) DOMAIN_TYPE=$2; shift 2 ;;
    --vms) VMS=$2; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
require_root
BIN=$(cd "$BIN" 2>/dev/null && pwd) || die "--bin: no such directory"
find_binaries "$BIN" talus-slave
[ -f "$AGENT" ] || die "$AGENT is missing: build it with images/build-agent.sh, or pass --agent FILE"
case "$DOMAIN_TYPE" in ''|kvm|qemu) ;; *) die "--domain-type: kvm or qemu" ;; esac
[ -z "$AMQP_URL_FILE" ] || [ -r "$AMQP_URL_FILE" ] || die "--amqp-url-file: cannot read $AMQP_URL_FILE"
[ -z "$TOKEN_FILE" ] || [ -r "$TOKEN_FILE" ] || die "--slave-token-file: cannot read $TOKEN_FILE"
[ -n "$VMS" ] || VMS=$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))
trap stop_temp_processes EXIT

# --- packages ---------------------------------------------------------------------------------
log "packages"
# dnsmasq-base: DHCP on the isolated job network; iptables/ebtables: libvirt's network firewall
# and the nwfilter rules.
ensure_packages "${RUNTIME_PACKAGES[@]}" "${LIBVIRT_PACKAGES[@]}" dnsmasq-base iptables ebtables file

# --- users, groups ----------------------------------------------------------------------------
log "users and groups"
ensure_libvirt_qemu_user
ensure_group talus-slave
# libvirt: the read-write libvirt socket; kvm: /dev/kvm (the KVM probe below runs as root, but
# the slave checks the device itself when libvirt.domain_type is auto).
ensure_user talus-slave talus-slave /var/lib/talus/slave libvirt kvm

# --- directories ------------------------------------------------------------------------------
log "directories"
ensure_dir /etc/talus root root 0755
ensure_dir /etc/talus/secrets root root 0751
ensure_dir /var/lib/talus root root 0755
# The cache and the run directory hold what QEMU opens (images, overlays, config ISOs): libvirt
# hands the files to libvirt-qemu, which must be able to traverse the directories (o+x).
ensure_dir /var/lib/talus/cache talus-slave talus-slave 0751
ensure_dir /var/lib/talus/run talus-slave talus-slave 0751
ensure_dir /var/lib/talus/slave talus-slave talus-slave 0750
ensure_dir /var/lib/talus/provisioning root root 0700

# --- executables, unit, documentation ---------------------------------------------------------
log "executables and unit"
ensure_installed "$BIN/talus-slave" /usr/local/bin/talus-slave 0755
ensure_installed "$AGENT" /usr/local/lib/talus/talus-agent 0755
file -L /usr/local/lib/talus/talus-agent | grep 'statically linked' >/dev/null \
  || log "warning: $AGENT is not statically linked: guests cannot run it (use images/build-agent.sh)"
ensure_installed "$REPO/docs/configuration.md" /usr/local/share/doc/talus/configuration.md 0644
ensure_unit talus-slave.service

# --- libvirt ----------------------------------------------------------------------------------
log "libvirt"
ensure_libvirtd_conf

# ensure_libvirt_object KIND NAME FILE: defines the network or nwfilter from FILE when it is
# missing or FILE changed since it was defined here (the digest is kept in
# /var/lib/talus/provisioning; libvirt 9.0 keeps no metadata on networks or filters).
ensure_libvirt_object() {
  local kind=$1 name=$2 file=$3 stamp=/var/lib/talus/provisioning/$1-$2.sha256 want exists=1
  want=$(sha256sum < "$file" | cut -d' ' -f1)
  virsh -q -c qemu:///system "$kind-dumpxml" "$name" >/dev/null 2>&1 || exists=0
  if [ "$exists" = 1 ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return 0; fi
  virsh -q -c qemu:///system "$kind-define" "$file" >/dev/null
  printf '%s\n' "$want" | ensure_file "$stamp" root root 0600
  changed "libvirt $kind $name defined from $file"
}

setup_libvirt_objects() {
  ensure_libvirt_object nwfilter talus-job "$REPO/provisioning/libvirt/talus-job.nwfilter.xml"
  ensure_libvirt_object net talus-isolated "$REPO/provisioning/libvirt/talus-isolated.network.xml"
  if ! virsh -q -c qemu:///system net-info talus-isolated | grep -E '^Autostart:[[:space:]]+yes' >/dev/null; then
    virsh -q -c qemu:///system net-autostart talus-isolated >/dev/null
    changed "libvirt network talus-isolated: autostart"
  fi
  # Start it now where an init system keeps libvirtd running; otherwise libvirtd starts it (as
  # autostart) the next time it starts.
  if have_systemd && ! virsh -q -c qemu:///system net-info talus-isolated | grep -E '^Active:[[:space:]]+yes' >/dev/null; then
    virsh -q -c qemu:///system net-start talus-isolated >/dev/null
    changed "libvirt network talus-isolated: started"
  fi
}
with_libvirtd setup_libvirt_objects

# --- secrets and configuration ----------------------------------------------------------------
log "configuration"
if [ -n "$AMQP_URL_FILE" ]; then
  ensure_file /etc/talus/secrets/amqp-url root talus-slave 0640 < "$AMQP_URL_FILE"
elif [ ! -e /etc/talus/secrets/amqp-url ]; then
  # A broker on this host (a single-host install after master.sh): the URL the master wrote.
  [ -r /etc/talus/secrets/amqp-slave-url ] \
    || die "--amqp-url-file is required (the master's /etc/talus/secrets/amqp-slave-url)"
  ensure_file /etc/talus/secrets/amqp-url root talus-slave 0640 < /etc/talus/secrets/amqp-slave-url
fi
ensure_owner_mode /etc/talus/secrets/amqp-url root talus-slave 0640
if [ -n "$TOKEN_FILE" ]; then
  ensure_file /etc/talus/secrets/slave-token root talus-slave 0640 < "$TOKEN_FILE"
elif [ ! -e /etc/talus/secrets/slave-token ]; then
  die "--slave-token-file is required: on the master, \`talus user create slaves --role slave\` and \`talus token create NAME --user slaves\` print one"
fi
ensure_owner_mode /etc/talus/secrets/slave-token root talus-slave 0640

# Probed through libvirt with the slave's CPU mode (host-passthrough): on some hosts plain QEMU
# boots under KVM while libvirt's guests abort. libvirtd already answers (with_libvirtd above).
if [ ! -e /etc/talus/slave.yaml ] && [ -z "$DOMAIN_TYPE" ]; then DOMAIN_TYPE=$(with_libvirtd detect_domain_type_libvirt); fi
ensure_config talus-slave /etc/talus/slave.yaml root talus-slave 0640 \
  --set slave.id_file=/var/lib/talus/slave/id \
  --set slave.vms="$VMS" \
  --set amqp.url_file=/etc/talus/secrets/amqp-url \
  --set api.url="$API_URL" \
  --set api.token_file=/etc/talus/secrets/slave-token \
  --set cache.dir=/var/lib/talus/cache \
  --set run.dir=/var/lib/talus/run \
  --set agent.path=/usr/local/lib/talus/talus-agent \
  --set libvirt.uri=qemu:///system \
  --set libvirt.domain_type="${DOMAIN_TYPE:-qemu}" \
  --set libvirt.isolated_network=talus-isolated

# --- services ---------------------------------------------------------------------------------
stop_temp_processes
start_units libvirtd talus-slave
finish
