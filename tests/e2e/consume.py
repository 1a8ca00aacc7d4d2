"""Reads records from a Kafka topic with kafka-python as a consumer group member.

Reads until --expect records arrived (or --timeout seconds passed) and prints one JSON object per
record: {"key", "value", "headers", "partition", "offset"}. Exits 1 when fewer records arrived.
"""
import argparse
import json
import sys
import time

from kafka import KafkaConsumer


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--expect", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=60)
    args = ap.parse_args()

    consumer = KafkaConsumer(args.topic, bootstrap_servers=args.bootstrap, group_id=args.group,
                             auto_offset_reset="earliest", enable_auto_commit=True,
                             api_version_auto_timeout_ms=30000)
    out = []
    deadline = time.time() + args.timeout
    while len(out) < args.expect and time.time() < deadline:
        for _tp, records in consumer.poll(timeout_ms=500).items():
            for r in records:
                out.append({
                    "key": r.key.decode() if r.key is not None else None,
                    "value": r.value.decode(errors="replace") if r.value is not None else None,
                    "headers": {k: v.decode(errors="replace") for k, v in (r.headers or [])},
                    "partition": r.partition,
                    "offset": r.offset,
                })
    consumer.commit()
    consumer.close()
    for o in out:
        print(json.dumps(o))
    if len(out) < args.expect:
        print(f"consume.py: {len(out)} of {args.expect} records on {args.topic}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
