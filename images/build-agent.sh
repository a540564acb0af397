#!/usr/bin/env bash
# Builds the guest agent as a fully static Linux executable (DESIGN §7: the slave puts it on each
# part's config ISO) and prints its path on the last line of stdout.
#   images/build-agent.sh [--out DIR]      (default DIR: images/out)
# The build uses its own scratch directory (.build-agent) because static linking flags differ
# from the rest of the package; a second run only relinks if sources changed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=images/out
[ "${1:-}" = "--out" ] && OUT=$2
export PATH=/opt/swift/usr/bin:$PATH
mkdir -p "$OUT"
swift build -c release --product talus-agent --static-swift-stdlib -Xswiftc -static-executable \
  --scratch-path .build-agent >"$OUT/build-agent.log" 2>&1 || { tail -30 "$OUT/build-agent.log" >&2; exit 1; }
bin=.build-agent/release/talus-agent
# Stripped copy: 25 MB → ~14 MB on every config ISO.
if [ ! -f "$OUT/talus-agent" ] || [ "$bin" -nt "$OUT/talus-agent" ]; then
  strip -o "$OUT/talus-agent.tmp" "$bin" && mv "$OUT/talus-agent.tmp" "$OUT/talus-agent"
fi
file "$OUT/talus-agent" | grep -q 'statically linked' || { echo "talus-agent is not static" >&2; exit 1; }
echo "$(cd "$OUT" && pwd)/talus-agent"
