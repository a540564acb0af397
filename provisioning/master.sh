#!/usr/bin/env bash
# Turns a fresh Debian 12 host into a Talus master host: talus-api, talus-master, the code
# repository, RabbitMQ (a dedicated vhost and users), libvirtd (image builds), and SecantusDB as
# the embedded database unless a MongoDB replica set is given. Idempotent: run it again after an
# upgrade or a change of options; a run that finds everything in place prints "no changes".
#
#   provisioning/master.sh [options]
#     --bin DIR           Talus executables to install (talus-api, talus-master, talus-code, talus);
#                         default: this checkout's .build/release (build it first with
#                         `swift build -c release --static-swift-stdlib`)
#     --mongo-uri URI     use this MongoDB replica set instead of the embedded SecantusDB
#                         (written to /etc/talus/secrets/mongo-uri, mode 0640)
#     --listen ADDR       address the API (port 8420) and RabbitMQ (port 5672) listen on;
#                         default 127.0.0.1. Hypervisor hosts need an address they can reach.
#     --public-host NAME  how hypervisor hosts reach this host (default: --listen, or the host
#                         name when listening on a wildcard address)
#
# Works without systemd running (containers, the CI machine): units are installed and enabled,
# and services the script needs for a moment (SecantusDB, to record the code repository's first
# commit) are started by hand and stopped again. Where systemd runs, it starts everything.
#
# What it writes (all documented in docs/configuration.md):
#   /etc/talus/{api,master,code}.yaml       every key, set or commented out with its default
#   /etc/talus/secrets/                     generated secrets (0640, readable by the daemon's group)
#   /etc/talus/secantusd.toml               the embedded database (if used)
#   /etc/rabbitmq/{rabbitmq-env.conf,conf.d/50-talus.conf,talus-definitions.json}
#   /etc/libvirt/libvirtd.conf              group `libvirt` may use the socket (no polkit needed)
#   /var/lib/talus/{images,uploads,code.git,api,master,secantusdb}, /var/cache/talus/bundles
#   /usr/local/bin/talus*, /usr/local/share/talus/code-template, /usr/local/share/doc/talus
#   /etc/systemd/system/talus-{api,master,secantusdb}.service (enabled)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SCRIPT_NAME=master
# shellcheck source=provisioning/lib/common.sh
. "$REPO/provisioning/lib/common.sh"

BIN=$REPO/.build/release
MONGO_URI=
LISTEN=127.0.0.1
PUBLIC_HOST=
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=$2; shift 2 ;;
    --mongo-uri) MONGO_URI=$2; shift 2 ;;
    --listen) LISTEN=$2; shift 2 ;;
    --public-host) PUBLIC_HOST=$2; shift 2 ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
require_root
BIN=$(cd "$BIN" 2>/dev/null && pwd) || die "--bin: no such directory"
find_binaries "$BIN" talus-api talus-master talus-code talus
if [ -z "$PUBLIC_HOST" ]; then
  case "$LISTEN" in 0.0.0.0|::|'[::]') PUBLIC_HOST=$(hostname -f 2>/dev/null || hostname) ;; *) PUBLIC_HOST=$LISTEN ;; esac
fi
EMBEDDED_DB=$([ -z "$MONGO_URI" ] && echo 1 || echo 0)
trap stop_temp_processes EXIT

# --- packages ---------------------------------------------------------------------------------
log "packages"
ensure_packages "${RUNTIME_PACKAGES[@]}" "${LIBVIRT_PACKAGES[@]}" rabbitmq-server
[ "$EMBEDDED_DB" = 1 ] && ensure_packages python3 python3-venv

# --- users, groups ----------------------------------------------------------------------------
# talus: the group the API and the master share files through (uploads, image store, configs).
# talus-code: may read (and, for tool authors' git-shell accounts, push to) the code repository.
log "users and groups"
ensure_libvirt_qemu_user
ensure_group talus
ensure_group talus-code
ensure_user talus-api talus /var/lib/talus/api talus-code
ensure_user talus-master talus /var/lib/talus/master libvirt kvm
if [ "$EMBEDDED_DB" = 1 ]; then
  ensure_group talus-db
  ensure_user talus-db talus-db /var/lib/talus/secantusdb
fi

# --- directories --------------------------------------------------------------------------------
log "directories"
ensure_dir /etc/talus root root 0755
ensure_dir /etc/talus/secrets root root 0751
ensure_dir /var/lib/talus root root 0755
# The image store: written by the master, read by the API (group talus, setgid so new files keep
# it) and traversed by QEMU (libvirt-qemu; libvirt gives it the disk files while a VM runs).
ensure_dir /var/lib/talus/images talus-master talus 2751
# Uploads: written by the API, consumed (read, then removed) by the master.
ensure_dir /var/lib/talus/uploads talus-api talus 2770
ensure_dir /var/lib/talus/api talus-api talus 0750
ensure_dir /var/lib/talus/master talus-master talus 0750
ensure_dir /var/cache/talus root root 0755
ensure_dir /var/cache/talus/bundles talus-api talus 0750
[ "$EMBEDDED_DB" = 1 ] && ensure_dir /var/lib/talus/secantusdb talus-db talus-db 0700

# --- executables, units, documentation ----------------------------------------------------------
log "executables and units"
for b in talus-api talus-master talus-code talus; do ensure_installed "$BIN/$b" "/usr/local/bin/$b" 0755; done
ensure_tree "$REPO/code-template" /usr/local/share/talus/code-template
ensure_installed "$REPO/docs/configuration.md" /usr/local/share/doc/talus/configuration.md 0644
ensure_unit talus-api.service
ensure_unit talus-master.service

# --- database -----------------------------------------------------------------------------------
if [ "$EMBEDDED_DB" = 1 ]; then
  log "SecantusDB (embedded database)"
  ensure_secantusdb_venv /opt/talus/secantusdb
  ensure_file /etc/talus/secantusd.toml root talus-db 0640 <<EOF
# SecantusDB for Talus (written by provisioning/master.sh; see talus-secantusdb.service).
# A MongoDB-compatible server presenting itself as a one-node replica set named "secantus".
[server]
host = "127.0.0.1"
port = $SECANTUS_PORT
storage_path = "/var/lib/talus/secantusdb/data"
log_level = "WARNING"

[oplog]
# The master resumes its change stream from a stored token: keep a day of history, and write a
# heartbeat entry every 10 s so an idle stream's token stays inside it.
retention_seconds = 86400
noop_heartbeat_seconds = 10
EOF
  ensure_unit talus-secantusdb.service
  MONGO_URI="mongodb://127.0.0.1:$SECANTUS_PORT/?replicaSet=secantus"
fi
# The URI may carry credentials: it lives in a secret file the daemons' group can read.
printf '%s\n' "$MONGO_URI" | ensure_file /etc/talus/secrets/mongo-uri root talus 0640

# --- RabbitMQ -----------------------------------------------------------------------------------
log "RabbitMQ"
ensure_secret /etc/talus/secrets/amqp-master-password root root 0600
ensure_secret /etc/talus/secrets/amqp-slave-password root root 0600
AMQP_MASTER_PASSWORD=$(cat /etc/talus/secrets/amqp-master-password)
AMQP_SLAVE_PASSWORD=$(cat /etc/talus/secrets/amqp-slave-password)
AMQP_HOST=$LISTEN; case "$AMQP_HOST" in 0.0.0.0|::|'[::]') AMQP_HOST=127.0.0.1 ;; esac
printf 'amqp://talus-master:%s@%s:5672/talus\n' "$AMQP_MASTER_PASSWORD" "$AMQP_HOST" \
  | ensure_file /etc/talus/secrets/amqp-url root talus 0640
# For the hypervisor hosts (copy it to each one; see hypervisor.sh --amqp-url-file).
printf 'amqp://talus-slave:%s@%s:5672/talus\n' "$AMQP_SLAVE_PASSWORD" "$PUBLIC_HOST" \
  | ensure_file /etc/talus/secrets/amqp-slave-url root root 0600
ensure_rabbitmq_config "$LISTEN" \
  "talus-master:$AMQP_MASTER_PASSWORD" "talus-slave:$AMQP_SLAVE_PASSWORD"

# --- libvirt (image builds) ---------------------------------------------------------------------
log "libvirt"
ensure_libvirtd_conf

# --- configuration files ------------------------------------------------------------------------
log "configuration"
API_LISTEN_HOST=$LISTEN; case "$API_LISTEN_HOST" in ::|'[::]') API_LISTEN_HOST='[::]' ;; esac
ensure_config talus-api /etc/talus/api.yaml root talus 0640 \
  --set http.listen="$API_LISTEN_HOST:8420" \
  --set mongo.uri_file=/etc/talus/secrets/mongo-uri \
  --set storage.uploads=/var/lib/talus/uploads \
  --set storage.images=/var/lib/talus/images \
  --set code.repository=/var/lib/talus/code.git \
  --set code.bundle_cache=/var/cache/talus/bundles
ensure_config talus-master /etc/talus/master.yaml root talus 0640 \
  --set mongo.uri_file=/etc/talus/secrets/mongo-uri \
  --set amqp.url_file=/etc/talus/secrets/amqp-url \
  --set images.store=/var/lib/talus/images \
  --set storage.uploads=/var/lib/talus/uploads \
  --set libvirt.uri=qemu:///system
# The hooks run as the pushing user (group talus-code): this file and the URI file it names must
# be readable by that group. With an external MongoDB, replace the URI in code-mongo-uri by a
# user that may only write the `code` collection and the `state` document `code.head`.
printf '%s\n' "$MONGO_URI" | ensure_file_once /etc/talus/secrets/code-mongo-uri root talus-code 0640
ensure_config talus-code /etc/talus/code.yaml root talus-code 0640 \
  --set mongo.uri_file=/etc/talus/secrets/code-mongo-uri \
  --set code.repository=/var/lib/talus/code.git \
  --set code.bundle_cache=/var/cache/talus/bundles

# --- the code repository ------------------------------------------------------------------------
log "code repository"
# Readers that are not the owner (the API, tool authors) must not trip over git's ownership check.
if ! git config --system --get-all safe.directory 2>/dev/null | grep -x /var/lib/talus/code.git >/dev/null; then
  git config --system --add safe.directory /var/lib/talus/code.git
  changed "git: safe.directory /var/lib/talus/code.git"
fi
if [ ! -f /var/lib/talus/code.git/HEAD ]; then
  ensure_dir /var/lib/talus/code.git root talus-code 2775
  # The first commit is recorded in the database by the post-receive hook: it must answer.
  with_database /usr/local/bin/talus-code init --config /etc/talus/code.yaml \
    --template /usr/local/share/talus/code-template /var/lib/talus/code.git
  chgrp -R talus-code /var/lib/talus/code.git
  changed "created the code repository /var/lib/talus/code.git"
else
  ensure_owner_mode /var/lib/talus/code.git root talus-code 2775
fi
if ! grep -qF /usr/local/bin/talus-code /var/lib/talus/code.git/hooks/post-receive; then
  /usr/local/bin/talus-code install-hooks --config /etc/talus/code.yaml /var/lib/talus/code.git
  changed "code repository hooks"
fi

# --- services -----------------------------------------------------------------------------------
stop_temp_processes
units=(libvirtd rabbitmq-server)
[ "$EMBEDDED_DB" = 1 ] && units+=(talus-secantusdb)
units+=(talus-api talus-master)
start_units "${units[@]}"
finish

cat >&2 <<EOF

Master host ready. Next:
  - the first admin (prints its token once):
      sudo -u talus-api talus-api bootstrap-admin --name admin
  - a slave token for the hypervisor hosts:
      talus login http://$PUBLIC_HOST:8420
      talus user create slaves --role slave && talus token create hypervisors --user slaves
  - each hypervisor host (copy /etc/talus/secrets/amqp-slave-url and the token there first):
      provisioning/hypervisor.sh --api-url http://$PUBLIC_HOST:8420 \\
        --amqp-url-file amqp-slave-url --slave-token-file slave-token
EOF
