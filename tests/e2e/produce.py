"""Produces an NDJSON file to a Kafka topic with kafka-python (an independent protocol client).

Each line is one message. Valid JSON objects with a "tenant" field are keyed by tenant (all events
of a tenant land in one partition, as the daemon requires); other lines are keyed "unkeyed".
With --unkeyed no message has a key (for the daemon's repartition step).
Prints the number of messages acknowledged.
"""
import argparse
import json
import sys

from kafka import KafkaProducer


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--one-per-batch", action="store_true",
                    help="one message per record batch (tansu 0.6 returns nothing for a fetch that "
                         "starts inside a record batch, so a consumer resuming mid-batch would skip "
                         "the rest of it)")
    ap.add_argument("--unkeyed", action="store_true",
                    help="send every message without a key, so the client spreads a tenant's "
                         "messages over all partitions")
    args = ap.parse_args()

    producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all", linger_ms=20,
                             batch_size=0 if args.one_per_batch else 16384,
                             api_version_auto_timeout_ms=30000, request_timeout_ms=30000)
    futures = []
    with open(args.file, "rb") as f:
        for line in f:
            line = line.rstrip(b"\n")
            if not line:
                continue
            key = b"unkeyed"
            try:
                obj = json.loads(line)
                if isinstance(obj, dict) and isinstance(obj.get("tenant"), str):
                    key = obj["tenant"].encode()
            except ValueError:
                pass
            futures.append(producer.send(args.topic, key=None if args.unkeyed else key, value=line))
            # Without batching every record is its own request: keep the backlog short so
            # records do not expire in the client's queue.
            if args.one_per_batch and len(futures) % 2000 == 0:
                producer.flush(timeout=120)
    producer.flush(timeout=120)
    for fut in futures:
        fut.get(timeout=60)
    producer.close()
    print(len(futures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
