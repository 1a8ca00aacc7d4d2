#!/usr/bin/env bash
# Compares the in-process throughput of two builds of trainspotter: runs `BIN_A bench` and
# `BIN_B bench` alternately, RUNS times each, with the same arguments (after `--`; default
# `--rounds 13`), and prints for each build every run's steady-rounds rate and yardstick, the
# median and quartiles of all their single steady rounds, the medians of those without an
# evaluation and of those with one or more, and how long an evaluation took. A shared machine's
# speed drifts by tens of percent within an hour, so a step is judged by alternating runs and by
# the median of many rounds, not by one run against another (BENCHMARKS.md, "The design steps,
# measured").
#
# Usage: scripts/compare.sh RUNS BIN_A BIN_B [-- BENCH_ARGS...]
#   e.g. cp target/release/trainspotter /tmp/before; (change, build)
#        scripts/compare.sh 4 /tmp/before target/release/trainspotter
set -euo pipefail

if [ $# -lt 3 ]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
runs=$1
a=$2
b=$3
shift 3
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || set -- --rounds 13
for bin in "$a" "$b"; do
  [ -x "$bin" ] || { echo "compare.sh: $bin is not an executable" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "compare.sh: python3 is missing" >&2; exit 1; }

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for i in $(seq 1 "$runs"); do
  for side in a b; do
    bin=$a
    [ "$side" = b ] && bin=$b
    echo "run $i of $runs: $bin" >&2
    "$bin" bench --json "$dir/$side-$i.json" "$@" >/dev/null
  done
done

python3 - "$dir" "$runs" "$a" "$b" <<'EOF'
import json, statistics, sys

folder, runs, names = sys.argv[1], int(sys.argv[2]), {"a": sys.argv[3], "b": sys.argv[4]}
medians = {}
for side in ("a", "b"):
    outcomes = [json.load(open(f"{folder}/{side}-{i}.json"))["in_process"] for i in range(1, runs + 1)]
    rounds = sorted(r for o in outcomes for r in o["round_events_per_s"])
    q = statistics.quantiles(rounds, n=4) if len(rounds) > 1 else rounds * 3
    medians[side] = q[1]
    print(f"{side}: {names[side]}")
    print("   runs (steady rounds):", ", ".join(f"{o['steady_events_per_s'] / 1e6:.2f}M" for o in outcomes))
    print("   yardstick:", ", ".join(f"{o['serde_decode_ns_per_event']:.0f} ns" for o in outcomes))
    print(f"   single steady rounds: median {q[1] / 1e6:.2f}M, quartiles {q[0] / 1e6:.2f}M to {q[2] / 1e6:.2f}M ({len(rounds)} rounds)")
    # Builds older than the per-round evaluation counts do not report them.
    pairs = [(r, e) for o in outcomes for r, e in zip(o["round_events_per_s"], o.get("round_evaluations", []))]
    for label, part in (("without", [r for r, e in pairs if e == 0]), ("with", [r for r, e in pairs if e > 0])):
        if part:
            print(f"   of them {label} an evaluation: median {statistics.median(part) / 1e6:.2f}M ({len(part)} rounds)")
    means = [o["evaluation_mean_s"] for o in outcomes if o.get("evaluations")]
    if means:
        print(f"   evaluations: median of the runs' means {1000 * statistics.median(means):.0f} ms ({min(means) * 1000:.0f} to {max(means) * 1000:.0f} ms)")
print(f"b against a, median of the single rounds: {100 * (medians['b'] / medians['a'] - 1):+.1f}%")
EOF
