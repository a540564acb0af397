#!/usr/bin/env python3
"""Change-stream delivery latency with pymongo: the reference for `talus-bench changestream`.

One client inserts a document; a thread of another client waits on a change stream of the
collection (a getMore is always pending, as in talus-bench); latency is from just before
insert_one() to the event reaching the inserting thread. Sequential: the next insert starts after
the previous event arrived. Prints one JSON line: {"impl": "pymongo ...", "events": N, "p50_ms": ...,
"latencies_ms": [...]}.

    python3 Benchmarks/changestream-pymongo.py --uri 'mongodb://127.0.0.1:27017/?replicaSet=rs0' --events 1000
"""
import argparse
import json
import os
import queue
import threading
import time
import uuid

import pymongo


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list (the same rule as talus-bench)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil(n * p / 100)
    return sorted_values[int(rank) - 1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", default=os.environ.get("TALUS_TEST_MONGO_URI", "mongodb://127.0.0.1:27017/?replicaSet=rs0"))
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--max-await-ms", type=int, default=1000)
    args = parser.parse_args()

    watcher = pymongo.MongoClient(args.uri)
    writer = pymongo.MongoClient(args.uri)
    db_name = "bench_cs_py_" + uuid.uuid4().hex[:12]
    watched = watcher[db_name]["events"]
    written = writer[db_name]["events"]
    written.insert_one({"i": -1})  # create the collection and warm both connections
    latencies = []
    arrivals = queue.Queue()
    total = args.warmup + args.events

    def watch(stream):
        for _ in range(total):
            event = stream.next()  # blocks, with a getMore pending on the server
            arrivals.put((event["fullDocument"]["i"], time.perf_counter()))

    try:
        with watched.watch(max_await_time_ms=args.max_await_ms) as stream:
            watcher_thread = threading.Thread(target=watch, args=(stream,), daemon=True)
            watcher_thread.start()
            for i in range(total):
                start = time.perf_counter()
                written.insert_one({"i": i})
                got, end = arrivals.get(timeout=60)
                if got != i:
                    raise SystemExit(f"expected event {i}, got {got}")
                if i >= args.warmup:
                    latencies.append((end - start) * 1000.0)
            watcher_thread.join()
    finally:
        writer.drop_database(db_name)
        watcher.close()
        writer.close()
    latencies.sort()
    print(json.dumps({
        "impl": "pymongo " + pymongo.version,
        "events": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "mean_ms": sum(latencies) / len(latencies),
        "min_ms": latencies[0],
        "max_ms": latencies[-1],
        "latencies_ms": latencies,  # so that talus-bench can pool rounds exactly
    }), flush=True)


if __name__ == "__main__":
    main()
