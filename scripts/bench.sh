#!/usr/bin/env bash
# The fleet-scale benchmark behind BENCHMARKS.md, in one command:
#
#   scripts/bench.sh [RUNS] [-- extra `trainspotter bench` options]
#
# Builds the release binary, starts a tansu broker on loopback (scripts/broker.sh, in-memory
# storage), and runs `trainspotter bench --brokers ...` RUNS times (default 3), each on a new
# 2-partition topic, under /usr/bin/time -v for the peak RSS the OS saw. Each run prints the
# in-process table (1M devices / 200k jobs / 100k tenants by default) and the Kafka catch-up table
# (10M events, the daemon against a bare rdkafka consumer); the outcomes are also written as JSON
# to target/bench/run-N.json. Without extra options, each run then measures the pipeline in
# process again at the throughput target's own cadence, every device once a second (121 rounds
# of 1 s: 120 steady rounds and two evaluations of every job, one a minute as in a 1M-device
# fleet sampled every second), written to target/bench/run-N-1s.json. Needs tansu
# (scripts/deps.sh) and about 8 GiB of memory.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${1:-3}
shift || true
[ "${1:-}" = "--" ] && shift
port=${BENCH_BROKER_PORT:-19392}
dir=$PWD/target/bench
mkdir -p "$dir"

cargo build --release --locked --bin trainspotter
command -v /usr/bin/time >/dev/null || { echo "bench.sh: /usr/bin/time is missing (apt-get install time)" >&2; exit 1; }

scripts/broker.sh start "$port" "$dir/broker" trainspotter-alerts:1 trainspotter-dead-letter:1
trap 'scripts/broker.sh stop "$dir/broker"' EXIT

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
for i in $(seq 1 "$runs"); do
  topic=bench-usage-$i-$$
  tansu topic create "$topic" --partitions 2 --broker "tcp://127.0.0.1:$port" >/dev/null
  echo "## run $i of $runs"
  /usr/bin/time -v -o "$dir/run-$i.time" target/release/trainspotter bench \
    --brokers "127.0.0.1:$port" --topic "$topic" --json "$dir/run-$i.json" "$@"
  awk -F': ' '/Maximum resident set size/ {printf "peak RSS (OS, whole run including the Kafka part): %.0f MiB\n", $2/1024}
              /Elapsed \(wall clock\)/ {print "wall clock: " $2}' "$dir/run-$i.time"
  if [ $# -eq 0 ]; then
    echo "## run $i of $runs, in process at the target's cadence: every device once a second"
    target/release/trainspotter bench --interval 1s --rounds 121 --json "$dir/run-$i-1s.json"
  fi
done
