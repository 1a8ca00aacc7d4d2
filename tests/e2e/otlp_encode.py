"""Encodes OTLP/JSON ExportMetricsServiceRequests (one per line) as OTLP protobuf with the official
generated classes (PyPI opentelemetry-proto), writing each message with a 4-byte big-endian length
prefix. Used to check trainspotter's protobuf decoder against the official schema.

usage: otlp_encode.py INPUT.ndjson OUTPUT.bin
"""
import struct
import sys

from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)


def main() -> int:
    src, dst = sys.argv[1], sys.argv[2]
    n = 0
    with open(src, "rb") as f, open(dst, "wb") as out:
        for line in f:
            line = line.strip()
            if not line:
                continue
            msg = json_format.Parse(line, ExportMetricsServiceRequest())
            data = msg.SerializeToString()
            out.write(struct.pack(">I", len(data)))
            out.write(data)
            n += 1
    print(n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
