#!/usr/bin/env bash
# Change-stream latency, ours next to pymongo, on a private in-memory SecantusDB.
#
#   Benchmarks/changestream.sh [EVENTS] [ROUNDS]
#
# Builds talus-bench (release), starts secantusd-py on a free port, runs
# `talus-bench changestream` (which runs Benchmarks/changestream-pymongo.py itself, in alternating
# rounds) and stops the server. On a busy machine set NICE=-20 (root) so that both clients and
# the server are less disturbed by other work. Needs secantusd-py (TALUS_SECANTUSD or on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-1000}
ROUNDS=${2:-5}
NICE=${NICE:-0}
SECANTUSD=${TALUS_SECANTUSD:-$(command -v secantusd-py)}
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

swift build -c release --product talus-bench >&2
LOG=$(mktemp)
nice -n "$NICE" "$SECANTUSD" --host 127.0.0.1 --port "$PORT" --storage-path :memory: --log-level WARNING >"$LOG" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; rm -f "$LOG"' EXIT
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

nice -n "$NICE" .build/release/talus-bench changestream \
    --uri "mongodb://127.0.0.1:$PORT/?replicaSet=secantus" --events "$EVENTS" --rounds "$ROUNDS"
