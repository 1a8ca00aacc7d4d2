#!/usr/bin/env bash
# The test command: installs what the tests need (scripts/deps.sh), fuzzes the decoders that read
# untrusted bytes for a bounded time, then runs the whole suite, including the end-to-end tests
# against a real tansu broker, Prometheus and Alertmanager.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
export TRAINSPOTTER_PYTHON="$PWD/.venv/bin/python"
# A bounded fuzzing run of the decoders and the checkpoint reader (docs/fuzzing.md), on full runs
# only (not when a test filter is given).
[ "$#" -gt 0 ] || scripts/fuzz.sh 60
cargo test --locked "$@"
