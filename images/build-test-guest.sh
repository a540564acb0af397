#!/usr/bin/env bash
# Builds the Talus test guest: a tiny BIOS-bootable Linux disk image (unpartitioned FAT +
# syslinux, Debian kernel + busybox initramfs) whose /init is the Talus boot hook
# ("prebootstrap", DESIGN.md §7). Built from Debian packages only, without mounting anything,
# as root or not. See images/README.md for the boot hook contract.
#
#   images/build-test-guest.sh [--out DIR] [--poweroff-after SECONDS] [--name NAME]
#                              [--format qcow2|raw]
#
# stdout: the image path (last line). stderr: progress.
# Cached: the kernel .deb and the extracted kernel/modules live in DIR/cache (by kernel
# package); the image is rebuilt only when this script, the kernel, busybox, syslinux or the
# options change, or when the image was modified. A cached run takes ~0.1 s.
set -euo pipefail
export LC_ALL=C
export PATH="$PATH:/usr/sbin:/sbin"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self="$here/$(basename "${BASH_SOURCE[0]}")"

out="$here/out"
poweroff_after=0
name=talus-test-guest
format=qcow2

usage() {
    sed -n '2,14p' "$self" | sed 's/^# \{0,1\}//' >&2
    exit "${1:-2}"
}
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        --out=*) out=${1#*=}; shift ;;
        --poweroff-after) poweroff_after=${2:?--poweroff-after needs seconds}; shift 2 ;;
        --poweroff-after=*) poweroff_after=${1#*=}; shift ;;
        --name) name=${2:?--name needs a name}; shift 2 ;;
        --name=*) name=${1#*=}; shift ;;
        --format) format=${2:?--format needs qcow2 or raw}; shift 2 ;;
        --format=*) format=${1#*=}; shift ;;
        -h|--help) usage 0 ;;
        *) echo "build-test-guest: unknown argument: $1" >&2; usage ;;
    esac
done
case "$poweroff_after" in ''|*[!0-9]*) echo "build-test-guest: --poweroff-after wants whole seconds (0 = never)" >&2; exit 2 ;; esac
poweroff_after=$((10#$poweroff_after))
case "$format" in qcow2|raw) ;; *) echo "build-test-guest: --format is qcow2 or raw" >&2; exit 2 ;; esac
case "$name" in ''|*/*|.*) echo "build-test-guest: --name must be a plain file name" >&2; exit 2 ;; esac

log() { echo "build-test-guest: $*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$out"
out=$(cd "$out" && pwd)
cache="$out/cache"
mkdir -p "$cache"
image="$out/$name.$format"

# One build at a time per output directory (parallel test processes share it).
exec 9>"$out/.lock"
flock 9

# Modules the guest loads (modprobe names; dependencies are resolved one module at a time,
# since `modprobe --show-depends` with several names resolves only the first). Order matters a
# little: disk/CD drivers before the host adapters so that devices bind as they are found.
modules="virtio_console virtio_blk virtio_rng virtio_pci
cdrom sr_mod sd_mod isofs vfat nls_cp437 nls_ascii nls_utf8 nls_iso8859-1
ata_piix ahci evdev button"

# --- which kernel --------------------------------------------------------------------------
# `apt-cache` takes ~1.5 s here (no pkgcache.bin), so the answer is remembered until the apt
# lists change.
apt_lists_fingerprint() {
    stat -c '%n %s %Y' /var/lib/apt/lists/*_Packages* 2>/dev/null | sha256sum | cut -c1-16
}
resolve_kernel_pkg() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
fp=$(apt_lists_fingerprint)
if [ -s "$cache/resolved-$fp" ]; then
    kpkg=$(cat "$cache/resolved-$fp")
else
    kpkg=$(resolve_kernel_pkg || true)
    if [ -z "$kpkg" ] && [ "$(id -u)" = 0 ]; then
        log "linux-image-amd64 not known to apt; running apt-get update"
        apt-get update -qq >&2 || true
        fp=$(apt_lists_fingerprint)
        kpkg=$(resolve_kernel_pkg || true)
    fi
    if [ -z "$kpkg" ]; then
        # Offline or no apt lists: fall back to the newest kernel already in the cache.
        kpkg=$(ls -d "$cache"/linux-image-*/ 2>/dev/null | xargs -r -n1 basename | sort -V | tail -n1)
        [ -n "$kpkg" ] || die "cannot resolve linux-image-amd64 (run 'apt-get update' as root)"
        log "warning: apt cannot resolve linux-image-amd64; using cached $kpkg"
    else
        rm -f "$cache"/resolved-*
        echo "$kpkg" > "$cache/resolved-$fp"
    fi
fi
kdir="$cache/$kpkg"

# --- busybox (static) ----------------------------------------------------------------------
busybox=""
for b in /usr/bin/busybox /bin/busybox; do
    if [ -x "$b" ] && dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
        busybox=$b; break
    fi
done
if [ -z "$busybox" ]; then
    busybox="$cache/busybox-static/bin/busybox"
    if [ ! -x "$busybox" ]; then
        log "busybox-static is not installed; fetching the Debian package"
        rm -rf "$cache/busybox-static" && mkdir -p "$cache/busybox-static/pkg"
        (cd "$cache/busybox-static/pkg" && apt-get download busybox-static >&2) || die "apt-get download busybox-static failed"
        dpkg-deb -x "$cache"/busybox-static/pkg/busybox-static_*.deb "$cache/busybox-static/x"
        mkdir -p "$cache/busybox-static/bin"
        cp "$cache/busybox-static/x/bin/busybox" "$busybox" 2>/dev/null ||
            cp "$cache/busybox-static/x/usr/bin/busybox" "$busybox"
        rm -rf "$cache/busybox-static/x" "$cache/busybox-static/pkg"
    fi
fi

for t in mkfs.vfat mcopy mmd syslinux cpio gzip depmod modprobe dpkg-deb apt-get sha256sum flock; do
    command -v "$t" >/dev/null || die "missing tool '$t' (apt-get install -y dosfstools mtools syslinux cpio kmod)"
done
[ "$format" = raw ] || command -v qemu-img >/dev/null || die "missing qemu-img (apt-get install -y qemu-utils)"

# --- cache key of the image ------------------------------------------------------------------
# Contents only (not paths), so that a fresh clone builds the same image. The .key file also
# records the image's size and mtime: an image changed in place (booted without an overlay,
# or edited by a test) is rebuilt, not handed out again.
key=$({
    echo "v1 $kpkg $format $poweroff_after $name"
    cat "$self" "$busybox" "$(command -v syslinux)" | sha256sum
} | sha256sum | cut -c1-32)
stamp() { echo "$key $(stat -c '%s %.9Y' "$image")"; }
if [ -f "$image" ] && [ "$(cat "$image.key" 2>/dev/null)" = "$(stamp)" ]; then
    log "cached: $image ($kpkg)"
    echo "$image"
    exit 0
fi

work="$out/.build-$name.$$"
tree=""
trap 'rm -rf "$work" ${tree:+"$tree"}' EXIT
start=$(date +%s.%N)
elapsed() { awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f s", e - s }'; }

# --- kernel package, extracted once per kernel and module list (bump "format" when the
# layout of mods-*/ changes) ---------------------------------------------------------------
modhash=$(echo "format 2: $modules" | sha256sum | cut -c1-12)
kmods="$kdir/mods-$modhash"
if [ ! -f "$kmods/.done" ]; then
    mkdir -p "$kdir"
    deb=$(ls "$kdir"/"$kpkg"_*.deb 2>/dev/null | sort -V | tail -n1 || true)
    if [ -z "$deb" ]; then
        log "downloading $kpkg"
        dl() { (cd "$kdir" && apt-get download "$kpkg" 2>&1 | grep -v 'unsandboxed as root' >&2; exit "${PIPESTATUS[0]}"); }
        if ! dl; then
            [ "$(id -u)" = 0 ] && [ -z "${TALUS_GUEST_RETRIED:-}" ] ||
                die "apt-get download $kpkg failed (stale apt lists? run 'apt-get update' as root)"
            log "download failed; running apt-get update and trying again"
            apt-get update -qq >&2 || true
            rm -f "$cache"/resolved-*
            exec 9>&-
            TALUS_GUEST_RETRIED=1 exec "$self" --out "$out" --poweroff-after "$poweroff_after" --name "$name" --format "$format"
        fi
        deb=$(ls "$kdir"/"$kpkg"_*.deb | sort -V | tail -n1)
    fi
    tree="$kdir/tree.$$"
    # Unpacks the kernel, modules.* and the given module directories, runs depmod, and
    # lists the insmod order of $modules in $tree/paths. Fails if a module or one of its
    # dependencies (per each .ko's own depends= field) is missing from what was unpacked.
    unpack_and_resolve() {
        rm -rf "$tree" && mkdir -p "$tree"
        local pats=("boot/vmlinuz-*" "modules/*/modules.*") d
        for d in "$@"; do pats+=("modules/*/kernel/${d:+$d/}*"); done
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tree" --wildcards --no-anchored "${pats[@]}" ||
            return 1
        # Newer Debian packages ship /usr/lib/modules; depmod -b looks under lib/modules.
        if [ ! -d "$tree/lib/modules" ] && [ -d "$tree/usr/lib/modules" ]; then ln -s usr/lib "$tree/lib"; fi
        kver=$(ls "$tree/lib/modules" 2>/dev/null | head -n1)
        [ -n "$kver" ] && [ -f "$tree/boot/vmlinuz-$kver" ] || die "no kernel found in $deb"
        depmod -b "$tree" "$kver" || return 1
        local m p dep deps
        for m in $modules; do
            modprobe -d "$tree" -S "$kver" --show-depends "$m" 2>/dev/null || { log "module $m not found"; return 1; }
        done | awk '$1 == "insmod" { print $2 }' | awk '!seen[$0]++' > "$tree/paths" || return 1
        sed 's|.*/||; s|\.ko.*||; s|-|_|g' "$tree/paths" > "$tree/names"
        while read -r p; do
            deps=$(modinfo -F depends "$p") || return 1
            for dep in ${deps//,/ }; do
                grep -qx "${dep//-/_}" "$tree/names" || { log "$(basename "$p") needs $dep, not unpacked"; return 1; }
            done
        done < "$tree/paths"
    }
    log "unpacking $(basename "$deb") ($(elapsed))"
    # Most of the 400 MB of modules are irrelevant here; unpacking only these directories saves
    # seconds. If a dependency lives elsewhere (a future kernel), unpack everything.
    if ! unpack_and_resolve arch block crypto lib fs/isofs fs/fat fs/nls \
            drivers/virtio drivers/char drivers/block drivers/cdrom drivers/scsi drivers/ata \
            drivers/acpi drivers/input; then
        log "unpacking all modules instead ($(elapsed))"
        unpack_and_resolve "" || die "cannot resolve the guest's modules in $deb"
    fi
    rm -rf "$kmods.new" && mkdir -p "$kmods.new/lib"
    cp "$tree/boot/vmlinuz-$kver" "$kmods.new/vmlinuz"
    echo "$kver" > "$kmods.new/kver"
    : > "$kmods.new/load.list"
    while read -r p; do
        base=$(basename "$p")
        case "$base" in
            *.ko.xz) base=${base%.xz}; xz -dc "$p" > "$kmods.new/lib/$base" ;;
            *.ko.zst) base=${base%.zst}; zstd -qdc "$p" > "$kmods.new/lib/$base" ;;
            *.ko.gz) base=${base%.gz}; gzip -dc "$p" > "$kmods.new/lib/$base" ;;
            *) cp "$p" "$kmods.new/lib/$base" ;;
        esac
        case "$p" in */kernel/arch/*) base="?$base" ;; esac
        echo "$base" >> "$kmods.new/load.list"
    done < "$tree/paths"
    touch "$kmods.new/.done"
    rm -rf "$kmods" "$tree"
    tree=""
    mv "$kmods.new" "$kmods"
    # Older kernels and module selections are not needed any more.
    for d in "$cache"/linux-image-*; do [ "$d" = "$kdir" ] || rm -rf "$d"; done
    for d in "$kdir"/mods-*; do [ "$d" = "$kmods" ] || rm -rf "$d"; done
fi
kver=$(cat "$kmods/kver")

# --- initramfs ---------------------------------------------------------------------------------
rm -rf "$work"
mkdir -p "$work/root"/{bin,dev,proc,sys,run,tmp,root,etc/acpi/PWRF,talus/cfg,talus/boot,lib/modules}
ln -s bin "$work/root/sbin"
ln -s . "$work/root/usr"
cp "$busybox" "$work/root/bin/busybox"
for a in $("$busybox" --list); do
    [ "$a" = busybox ] || ln -s busybox "$work/root/bin/$a"
done
cp "$kmods"/lib/*.ko "$work/root/lib/modules/"
cp "$kmods/load.list" "$work/root/lib/modules/load.list"
echo "$kver" > "$work/root/etc/talus-kernel"

# ACPI power button (libvirt virDomainShutdown): busybox acpid maps KEY_POWER to the action
# "PWRF/00000080" and runs that file relative to /etc/acpi.
cat > "$work/root/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
printf '\nTALUS-GUEST poweroff reason=acpi uptime=%s\n' "$(cut -d' ' -f1 /proc/uptime)" > /dev/console
sleep 0.2
poweroff -f
EOF
chmod 755 "$work/root/etc/acpi/PWRF/00000080"

cat > "$work/root/init" <<'INIT'
#!/bin/sh
# Talus test guest /init: the Talus boot hook ("prebootstrap"). Written by
# images/build-test-guest.sh; contract in images/README.md.
export PATH=/bin HOME=/root TERM=linux
PORT_NAME=org.talus.agent.0
CFG_LABEL=TALUSCFG
BOOT_LABEL=TALUSBOOT
CFG=/talus/cfg
BOOT=/talus/boot

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/virtio-ports
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp

up() { read -r u _ < /proc/uptime; echo "$u"; }
say() { echo "TALUS-GUEST $* uptime=$(up)"; }
halt_now() {
    echo   # a shell prompt may be on the line
    say poweroff "reason=$1"
    sleep 0.2   # let the serial line drain
    poweroff -f
    sleep 10
}

say boot "kernel=$(uname -r)"

# load.list: insmod order; "?" marks CPU-specific variants that may not load (e.g.
# crct10dif-pclmul without PCLMULQDQ under TCG); a generic module covers for them.
while read -r m; do
    case "$m" in
        \?*) insmod "/lib/modules/${m#?}" 2>/dev/null ;;
        *) insmod "/lib/modules/$m" 2>/dev/null || say insmod-failed "module=$m" ;;
    esac
done < /lib/modules/load.list
say modules-loaded

# /dev/virtio-ports/NAME links (what udev would make). The port name arrives from the host
# a little after the device, so look again until every port has one.
link_ports() {
    missing=0
    for d in /sys/class/virtio-ports/*; do
        [ -e "$d/name" ] || continue
        read -r n < "$d/name" 2>/dev/null || n=""
        if [ -z "$n" ]; then missing=1; continue; fi
        dev=${d##*/}
        if [ ! -L "/dev/virtio-ports/$n" ]; then
            ln -sf "../$dev" "/dev/virtio-ports/$n"
            say port "name=$n" "dev=/dev/$dev"
        fi
    done
    return $missing
}
i=0
until link_ports || [ $i -ge 20 ]; do sleep 0.1; i=$((i + 1)); done

# ACPI power button -> poweroff (handler: /etc/acpi/PWRF/00000080).
acpid -c /etc/acpi -l /run/acpid.log 2>/dev/null || say acpid-failed

# The config ISO: volume label TALUSCFG, normally an IDE/SATA CD (/dev/sr*). busybox has no
# blkid: read the ISO 9660 volume id at byte 32808 of every CD, then ask findfs (which also
# finds the ISO attached as a disk). Drivers finish probing before insmod returns, so two more
# looks over half a second are only a safety net. (An empty drive reports a size and takes
# ~0.15 s to refuse the open under TCG, so the looks are not free.)
iso_label() { dd if="$1" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' \000'; }
find_cfg() {
    for d in /dev/sr*; do
        [ -b "$d" ] && [ "$(iso_label "$d")" = "$CFG_LABEL" ] && { echo "$d"; return 0; }
    done
    return 1
}
cfgdev=$(find_cfg) || { sleep 0.2; cfgdev=$(find_cfg); } || { sleep 0.3; cfgdev=$(find_cfg); } ||
    cfgdev=$(findfs "LABEL=$CFG_LABEL" 2>/dev/null) || cfgdev=""

if [ -n "$cfgdev" ]; then
    say cfg "dev=$cfgdev"
    if ! mount -t iso9660 -o ro "$cfgdev" "$CFG" 2>/dev/null && ! mount -o ro "$cfgdev" "$CFG"; then
        say cfg-mount-failed "dev=$cfgdev"
        halt_now cfg-mount-failed
    fi
    export TALUS_CFG="$CFG" TALUS_PORT="/dev/virtio-ports/$PORT_NAME"
    i=0
    while [ ! -e "$TALUS_PORT" ] && [ $i -lt 50 ]; do sleep 0.1; link_ports; i=$((i + 1)); done
    [ -e "$TALUS_PORT" ] || say port-missing "name=$PORT_NAME"
    cd /tmp
    if [ -f "$CFG/talus-agent" ]; then
        agent="$CFG/talus-agent"
        if [ ! -x "$agent" ]; then cp "$agent" /run/talus-agent && chmod 755 /run/talus-agent && agent=/run/talus-agent; fi
        say run "what=agent" "path=$agent"
        "$agent" --config "$CFG/config.json" --port "$TALUS_PORT"
        rc=$?
        say exit "what=agent" "rc=$rc"
        halt_now agent-exited
    elif [ -f "$CFG/run.sh" ]; then
        say run "what=run.sh" "path=$CFG/run.sh"
        sh "$CFG/run.sh"
        rc=$?
        say exit "what=run.sh" "rc=$rc"
        halt_now run.sh-exited
    else
        say cfg-empty
        halt_now cfg-empty
    fi
fi

# No config ISO: import/configure session. Stay up; power off after talus.poweroff_after
# seconds (kernel command line), overridden by /talus/poweroff_after on the boot disk.
say no-cfg
delay=0
src=default
for arg in $(cat /proc/cmdline); do
    case "$arg" in talus.poweroff_after=*) delay=${arg#*=}; src=cmdline ;; esac
done
bootdev=$(findfs "LABEL=$BOOT_LABEL" 2>/dev/null) || bootdev=""
if [ -z "$bootdev" ]; then
    for d in /dev/vd? /dev/sd? /dev/hd?; do
        [ -b "$d" ] || continue
        if mount -t vfat -o ro "$d" "$BOOT" 2>/dev/null; then
            [ -f "$BOOT/syslinux.cfg" ] && bootdev=$d
            umount "$BOOT"
            [ -n "$bootdev" ] && break
        fi
    done
fi
if [ -n "$bootdev" ] && mount -t vfat -o ro "$bootdev" "$BOOT" 2>/dev/null; then
    if [ -f "$BOOT/talus/poweroff_after" ]; then
        v=$(tr -cd '0-9' < "$BOOT/talus/poweroff_after")
        [ -n "$v" ] && { delay=$v; src=disk; }
    fi
    umount "$BOOT"
else
    say bootdisk-not-found
fi
case "$delay" in ''|*[!0-9]*) delay=0 ;; esac
delay=$((10#$delay))
say "poweroff-after=$delay" "source=$src" "bootdev=${bootdev:-none}"
if [ "$delay" -gt 0 ]; then
    ( sleep "$delay"; halt_now timer ) &
fi

banner="Talus test guest ($(uname -r)). No TALUSCFG config ISO: interactive session."
[ "$delay" -gt 0 ] && banner="$banner Powers off in $delay s."
banner="$banner 'poweroff -f' ends it."
# A shell on the VGA console too (VNC), and one on the serial console.
( while :; do
    echo "$banner" > /dev/tty1 2>/dev/null
    setsid -c sh -l < /dev/tty1 > /dev/tty1 2>&1
    sleep 1
  done ) &
say ready mode=interactive
while :; do
    setsid cttyhack sh -l
    sleep 1
done
INIT
chmod 755 "$work/root/init"

# Reproducible archive: fixed mtimes, sorted names, numeric root owner.
find "$work/root" -exec touch -h -d @0 {} +
(cd "$work/root" && find . | sort | cpio -o -H newc -R 0:0 --reproducible --quiet) | gzip -6 -n > "$work/initrd.gz"

# --- boot disk: unpartitioned FAT + syslinux, no mount ---------------------------------------
cat > "$work/syslinux.cfg" <<EOF
SERIAL 0 115200
DEFAULT talus
PROMPT 0
TIMEOUT 0
LABEL talus
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND console=tty0 console=ttyS0,115200 panic=-1 quiet talus.poweroff_after=$poweroff_after
EOF
cat > "$work/README.txt" <<EOF
Talus test guest. Kernel $kver ($kpkg).
Built by images/build-test-guest.sh (key $key), poweroff-after default $poweroff_after s.
Put a number of seconds in /talus/poweroff_after to override talus.poweroff_after
(0 = stay up). See images/README.md in the Talus repository.
EOF
kib=$(( ( $(stat -c %s "$kmods/vmlinuz") + $(stat -c %s "$work/initrd.gz") ) / 1024 ))
mib=$(( (kib + 2047) / 1024 + 2 ))   # ~2 MiB spare for marker files and tests
truncate -s "${mib}M" "$work/disk.raw"
volid=$(echo "$key" | cut -c1-8)
mkfs.vfat --invariant -i "$volid" -n TALUSBOOT "$work/disk.raw" >/dev/null
# Fixed timestamps (FAT cannot store 1970) so that the same inputs give the same image.
export MTOOLS_SKIP_CHECK=1 SOURCE_DATE_EPOCH=946684800
cp "$kmods/vmlinuz" "$work/vmlinuz"
touch -d "@$SOURCE_DATE_EPOCH" "$work/vmlinuz" "$work/initrd.gz" "$work/syslinux.cfg" "$work/README.txt"
mcopy -m -i "$work/disk.raw" "$work/vmlinuz" ::/vmlinuz
mcopy -m -i "$work/disk.raw" "$work/initrd.gz" ::/initrd.gz
mcopy -m -i "$work/disk.raw" "$work/syslinux.cfg" ::/syslinux.cfg
mmd -i "$work/disk.raw" ::/talus
mcopy -m -i "$work/disk.raw" "$work/README.txt" ::/talus/README.txt
syslinux --install "$work/disk.raw"

if [ "$format" = qcow2 ]; then
    qemu-img convert -f raw -O qcow2 "$work/disk.raw" "$work/disk.out"
else
    mv "$work/disk.raw" "$work/disk.out"
fi
mv -f "$work/disk.out" "$image"
stamp > "$image.key"
log "built $image ($(stat -c %s "$image") bytes, kernel $kver, initrd $(stat -c %s "$work/initrd.gz") bytes) in $(elapsed)"
echo "$image"
