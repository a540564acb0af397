#!/bin/sh
# hello: the smallest Talus tool. Reads its parameter from $TALUS_PARAMS, prints a greeting, and
# appends one progress event and one result to $TALUS_EVENTS (DESIGN.md section 8).
set -eu
name=$(sed -n 's/.*"name"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$TALUS_PARAMS" | head -n 1)
name=${name:-world}
echo "hello, $name"
json=$(printf '%s' "$name" | sed 's/\\/\\\\/g; s/"/\\"/g')
printf '{"type":"progress","amount":1}\n' >> "$TALUS_EVENTS"
printf '{"type":"result","kind":"hello","data":{"greeting":"hello, %s"}}\n' "$json" >> "$TALUS_EVENTS"
