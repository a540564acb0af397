#!/usr/bin/env python3
"""The pika reference for `talus-bench amqp`.

Publishes COUNT persistent JSON messages of about SIZE bytes to a fresh durable queue with a
BlockingConnection in confirm mode (pika confirms each message synchronously: basic_publish
returns once the broker acked it -- what pika users get), then consumes and acks them with
basic_qos(prefetch_count=PREFETCH) on a second connection, then deletes the queue.

Prints one JSON object: {"publish_per_s": ..., "consume_per_s": ..., ...}.
Messages are built exactly like the Swift side builds them (see make_body).
"""

import argparse
import json
import sys
import time
import uuid

import pika


def make_body(index: int, size: int) -> bytes:
    """A part-like JSON message padded to `size` bytes (same layout as AMQPBench.swift)."""
    head = (
        '{"v":1,"job":"65f0c0ffee0000000000beef","idx":%d,"attempt":0,'
        '"tool":{"name":"fuzz","commit":"0123456789abcdef"},"pad":"' % index
    )
    tail = '"}'
    pad = max(size - len(head) - len(tail), 0)
    return (head + "x" * pad + tail).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--prefetch", type=int, default=200)
    parser.add_argument("--queue", default="talus-bench-pika-" + uuid.uuid4().hex[:12])
    args = parser.parse_args()

    params = pika.URLParameters(args.url)
    publisher = pika.BlockingConnection(params)
    channel = publisher.channel()
    channel.queue_declare(queue=args.queue, durable=True)
    channel.queue_purge(queue=args.queue)
    channel.confirm_delivery()
    properties = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    bodies = [make_body(i, args.size) for i in range(args.count)]

    start = time.perf_counter()
    for body in bodies:
        channel.basic_publish(exchange="", routing_key=args.queue, body=body, properties=properties)
    publish_seconds = time.perf_counter() - start

    consumer = pika.BlockingConnection(params)
    consume_channel = consumer.channel()
    consume_channel.basic_qos(prefetch_count=args.prefetch)
    received = 0

    def on_message(ch, method, _properties, _body):
        nonlocal received
        ch.basic_ack(delivery_tag=method.delivery_tag)
        received += 1
        if received >= args.count:
            ch.stop_consuming()

    consume_channel.basic_consume(queue=args.queue, on_message_callback=on_message)
    start = time.perf_counter()
    consume_channel.start_consuming()
    consume_seconds = time.perf_counter() - start

    consumer.close()
    channel.queue_delete(queue=args.queue)
    publisher.close()
    json.dump(
        {
            "count": args.count,
            "size": len(bodies[0]) if bodies else 0,
            "publish_seconds": publish_seconds,
            "publish_per_s": args.count / publish_seconds,
            "consume_seconds": consume_seconds,
            "consume_per_s": received / consume_seconds,
            "pika": pika.__version__,
        },
        sys.stdout,
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
