#!/usr/bin/env bash
# The test command: installs what the tests need (scripts/deps.sh), then runs the whole suite,
# including the end-to-end tests against a real tansu broker and promtool checks.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
export TRAINSPOTTER_PYTHON="$PWD/.venv/bin/python"
cargo test --locked "$@"
