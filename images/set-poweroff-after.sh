#!/bin/sh
# set-poweroff-after.sh IMAGE SECONDS|clear
# Writes (or removes) /talus/poweroff_after on the test guest's FAT boot disk, without mounting
# anything. Booted without a config ISO, the guest powers itself off after SECONDS (0 = never);
# the file overrides the talus.poweroff_after default baked in by build-test-guest.sh.
# IMAGE may be raw or qcow2 (a qcow2 image is converted to raw and back; it must have no
# backing file). Do it on a copy of the built image, not on the cached one.
set -eu
[ $# -eq 2 ] || { echo "usage: $0 IMAGE SECONDS|clear" >&2; exit 2; }
img=$1 secs=$2
case "$secs" in clear) ;; ''|*[!0-9]*) echo "set-poweroff-after: SECONDS must be a whole number or 'clear'" >&2; exit 2 ;; esac
export MTOOLS_SKIP_CHECK=1
tmp=$(mktemp -d "${TMPDIR:-/tmp}/poweroff-after.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fmt=$(qemu-img info --output=json "$img" | sed -n 's/.*"format": *"\([a-z0-9]*\)".*/\1/p' | head -n1)
case "$fmt" in
    raw) raw=$img ;;
    qcow2) raw=$tmp/disk.raw; qemu-img convert -f qcow2 -O raw "$img" "$raw" ;;
    *) echo "set-poweroff-after: $img is '$fmt', not raw or qcow2" >&2; exit 1 ;;
esac
if [ "$secs" = clear ]; then
    mdel -i "$raw" ::/talus/poweroff_after 2>/dev/null || true
else
    echo "$secs" > "$tmp/poweroff_after"
    mmd -i "$raw" ::/talus 2>/dev/null || true
    mcopy -o -i "$raw" "$tmp/poweroff_after" ::/talus/poweroff_after
fi
if [ "$fmt" = qcow2 ]; then
    qemu-img convert -f raw -O qcow2 "$raw" "$tmp/disk.qcow2"
    mv -f "$tmp/disk.qcow2" "$img"
fi
