#!/usr/bin/env bash
# Starts or stops a tansu Kafka-protocol broker on loopback, for tests and local experiments.
#
#   scripts/broker.sh start PORT DIR [TOPIC:PARTITIONS ...]   start, wait until it answers, create topics
#   scripts/broker.sh stop DIR                                 stop the broker started with DIR
#
# DIR holds the broker's pid file and log. Storage is in memory (tansu's memory:// engine), so every
# start is a fresh cluster, unless BROKER_STORAGE=sqlite: then topics, messages and committed
# offsets live in DIR/tansu.db and survive a stop and a new start with the same DIR and PORT (the
# database path is relative to DIR, the broker's working directory; tansu mangles absolute paths).
# The memory engine of tansu 0.6.0 raises a partition's high watermark before it stores the record
# batch: a fetch that runs while two producers write to one partition can skip a record. It is fine
# for reading a topic loaded beforehand (the benchmark); the tests use sqlite, which stores both in
# one transaction.
# Exits non-zero, with the broker log, when the broker cannot be started: then the broker it
# launched is stopped again. A port something already listens on (such as another run's broker,
# whose pid file a second start in the same DIR would replace) is refused before anything starts.
set -euo pipefail

# Stops the broker whose pid is in DIR/broker.pid, if any.
stop_broker() {
  local dir=$1 pid
  if [ -f "$dir/broker.pid" ]; then
    pid=$(cat "$dir/broker.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/broker.pid"
  fi
}

cmd=${1:-}; shift || true
case "$cmd" in
  start)
    port=$1; dir=$2; shift 2
    mkdir -p "$dir"
    command -v tansu >/dev/null || { echo "broker.sh: tansu is not installed (run scripts/deps.sh)" >&2; exit 1; }
    url="tcp://127.0.0.1:$port"
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "broker.sh: something already listens on 127.0.0.1:$port (another broker still running?); not starting" >&2
      exit 1
    fi
    # Reports why the start failed and stops the broker it launched.
    fail() { echo "broker.sh: $1" >&2; cat "$dir/broker.log" >&2; stop_broker "$dir"; exit 1; }
    case "${BROKER_STORAGE:-memory}" in
      memory) storage=memory://tansu/ ;;
      sqlite) storage=sqlite://tansu.db ;;
      *) echo "broker.sh: BROKER_STORAGE must be memory or sqlite" >&2; exit 2 ;;
    esac
    (cd "$dir" && exec tansu broker --storage-engine "$storage" \
        --listener-url "$url" --advertised-listener-url "$url" >>"$dir/broker.log" 2>&1) &
    echo $! >"$dir/broker.pid"
    for _ in $(seq 1 100); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        for spec in "$@"; do
          name=${spec%%:*}; parts=${spec##*:}
          ok=""
          for _ in $(seq 1 20); do
            if tansu topic create "$name" --partitions "$parts" --broker "$url" >>"$dir/broker.log" 2>&1; then ok=1; break; fi
            sleep 0.5
          done
          [ -n "$ok" ] || fail "cannot create topic $name"
        done
        exit 0
      fi
      if ! kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null; then
        fail "tansu exited during start-up"
      fi
      sleep 0.1
    done
    fail "tansu did not listen on port $port within 10 s"
    ;;
  stop)
    stop_broker "$1"
    ;;
  *)
    echo "usage: broker.sh start PORT DIR [TOPIC:PARTITIONS ...] | stop DIR" >&2; exit 2 ;;
esac
