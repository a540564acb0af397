#!/bin/sh
# make-config-iso.sh DIR OUT.iso: builds a Talus config ISO (volume label TALUSCFG, Rock Ridge +
# Joliet) from DIR. The test guest's boot hook runs DIR/talus-agent (or DIR/run.sh) from it;
# see images/README.md.
set -eu
[ $# -eq 2 ] && [ -d "$1" ] || { echo "usage: $0 DIR OUT.iso" >&2; exit 2; }
if command -v genisoimage >/dev/null; then
    genisoimage -quiet -V TALUSCFG -r -J -o "$2" "$1"
elif command -v xorriso >/dev/null; then
    xorriso -as mkisofs -quiet -V TALUSCFG -r -J -o "$2" "$1" 2>/dev/null
else
    echo "make-config-iso: needs genisoimage or xorriso" >&2; exit 1
fi
