#!/usr/bin/env bash
# Coverage-guided fuzzing of the decoders that read untrusted bytes (fuzz/, cargo-fuzz + libFuzzer;
# see docs/fuzzing.md).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Builds the fuzz targets and runs each for SECONDS_PER_TARGET seconds (default 60; all targets
# unless named), starting from a fresh copy of its committed seed corpus (fuzz/corpus/TARGET/seed-*)
# in fuzz/target/corpus/TARGET, so a run never adds files to the tree. Prints executions, exec/s,
# corpus size and coverage per target. Exits 1 if any target crashed, panicked, timed out or ran
# out of memory, printing the saved input (fuzz/artifacts/TARGET/...) and how to reproduce it.
#
# Toolchain route: the default toolchain (stable) with `--sanitizer none`. cargo-fuzz then passes
# rustc only stable codegen options (-Cpasses=sancov-module, -Cllvm-args=-sanitizer-coverage-*,
# --cfg fuzzing, -Cdebug-assertions), so neither a nightly toolchain nor RUSTC_BOOTSTRAP is needed.
# That route works both on a machine with only stable (a new machine, and so CI there) and on one
# that also has nightly, so every machine fuzzes the same way; the crates are safe Rust, which
# AddressSanitizer would add little to. A nightly toolchain, if present, is not used unless asked
# for: FUZZ_TOOLCHAIN=nightly FUZZ_SANITIZER=address scripts/fuzz.sh 60. Should a later cargo-fuzz
# pass -Z flags even without a sanitizer, the build is retried once with RUSTC_BOOTSTRAP=1.
#
# Environment: FUZZ_TOOLCHAIN (rustup toolchain, default: the default one), FUZZ_SANITIZER (default
# none), FUZZ_KEEP_CORPUS=1 (keep growing fuzz/target/corpus across runs instead of restarting from
# the seeds), FUZZ_ARGS (extra libFuzzer flags).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SECONDS_PER_TARGET=${1:-60}
if ! [[ $SECONDS_PER_TARGET =~ ^[0-9]+$ ]] || [ "$SECONDS_PER_TARGET" -lt 1 ]; then
  echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
  exit 2
fi
shift $(($# > 0 ? 1 : 0))
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(decode_event decode_exporter checkpoint_read)

CARGO_FUZZ_VERSION=0.13.2
log() { printf 'fuzz: %s\n' "$*" >&2; }

export PATH="$HOME/.cargo/bin:$PATH"
# cargo fuzz's own default, stated so that a CARGO_TARGET_DIR set for the main package (target/)
# is not shared with the instrumented build.
export CARGO_TARGET_DIR="$ROOT/fuzz/target"
mkdir -p "$CARGO_TARGET_DIR"

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION (about a minute on 2 cores)"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

CARGO=(cargo)
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
  CARGO=(cargo "+$FUZZ_TOOLCHAIN")
fi
SANITIZER=${FUZZ_SANITIZER:-none}
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  NIGHTLY="present"
else
  NIGHTLY="absent"
fi
RUSTC=(rustc)
[ -z "${FUZZ_TOOLCHAIN:-}" ] || RUSTC=(rustc "+$FUZZ_TOOLCHAIN")
log "$("${CARGO[@]}" fuzz --version); $("${RUSTC[@]}" --version)"
log "toolchain route: ${FUZZ_TOOLCHAIN:-default toolchain}, --sanitizer $SANITIZER (nightly toolchain $NIGHTLY)"

# The fuzz crate is its own workspace; its lock file starts from the main package's, so the fuzzed
# code is built against the same dependency versions as the daemon (cargo adds libfuzzer-sys).
SYNCED="$CARGO_TARGET_DIR/main-Cargo.lock"
if [ ! -f fuzz/Cargo.lock ] || ! cmp -s Cargo.lock "$SYNCED"; then
  cp Cargo.lock fuzz/Cargo.lock
  cp Cargo.lock "$SYNCED"
fi

# Build (the first build compiles librdkafka from source: several minutes).
BUILD_LOG="$CARGO_TARGET_DIR/build.log"
build_all() {
  if [ ${#TARGETS[@]} -eq 1 ]; then
    "${CARGO[@]}" fuzz build --sanitizer "$SANITIZER" "${TARGETS[0]}"
  else
    "${CARGO[@]}" fuzz build --sanitizer "$SANITIZER" # every target, in one cargo invocation
  fi
}
start=$(date +%s)
if ! build_all >"$BUILD_LOG" 2>&1; then
  if grep -q 'only accepted on the nightly compiler' "$BUILD_LOG" && [ -z "${RUSTC_BOOTSTRAP:-}" ]; then
    log "this cargo-fuzz needs unstable flags: retrying with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
    build_all >"$BUILD_LOG" 2>&1 || { tail -40 "$BUILD_LOG" >&2; log "build failed"; exit 1; }
  else
    tail -40 "$BUILD_LOG" >&2
    log "build failed (log: $BUILD_LOG)"
    exit 1
  fi
fi
log "build: $(($(date +%s) - start)) s"

# One run per target.
declare -a ROWS
failed=0
for t in "${TARGETS[@]}"; do
  seeds="$ROOT/fuzz/corpus/$t"
  work="$CARGO_TARGET_DIR/corpus/$t"
  runlog="$CARGO_TARGET_DIR/logs/$t.log"
  mkdir -p "$(dirname "$runlog")"
  if [ "${FUZZ_KEEP_CORPUS:-0}" != 1 ]; then
    rm -rf "$work"
  fi
  mkdir -p "$work"
  cp "$seeds"/seed-* "$work"/
  # Checkpoints are larger than events: the seed checkpoint must fit, and mutations may grow it.
  case $t in
    checkpoint_read) extra=(-max_len=65536) ;;
    *) extra=(-max_len=4096) ;;
  esac
  # Inputs that once failed run first, every time. libFuzzer adds new inputs only to the first
  # corpus directory, the working copy.
  dirs=("$work")
  [ -d "$ROOT/fuzz/regressions/$t" ] && dirs+=("$ROOT/fuzz/regressions/$t")
  [ -f "$ROOT/fuzz/$t.dict" ] && extra+=("-dict=$ROOT/fuzz/$t.dict")
  # shellcheck disable=SC2206 # FUZZ_ARGS is a list of flags
  extra+=(${FUZZ_ARGS:-})
  log "running $t for $SECONDS_PER_TARGET s (corpus $work, log $runlog)"
  t0=$(date +%s)
  set +e
  "${CARGO[@]}" fuzz run --sanitizer "$SANITIZER" "$t" "${dirs[@]}" -- \
    -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 \
    -timeout=10 -rss_limit_mb=2048 "${extra[@]}" >"$runlog" 2>&1
  rc=$?
  set -e
  # libFuzzer's own count of fuzzing seconds; the wall clock (which includes cargo's up-to-date
  # check) when it stopped on a finding.
  secs=$(sed -nE 's/^Done [0-9]+ runs in ([0-9]+) second.*/\1/p' "$runlog")
  [ -n "$secs" ] || secs=$(($(date +%s) - t0))
  # Final libFuzzer stats: `#N DONE cov: C ft: F corp: K/SIZE lim: L exec/s: E rss: R`, or the
  # last progress line when the run stopped on a finding.
  last=$(grep -E '^#[0-9]+[[:space:]]+(DONE|NEW|REDUCE|pulse|INITED|RELOAD)' "$runlog" | tail -1 || true)
  field() { sed -nE "s/.*[[:space:]]$1:? ([0-9]+).*/\\1/p" <<<"$last"; }
  execs=$(sed -nE 's/^stat::number_of_executed_units:[[:space:]]*([0-9]+)/\1/p' "$runlog")
  rate=$(sed -nE 's/^stat::average_exec_per_sec:[[:space:]]*([0-9]+)/\1/p' "$runlog")
  [ -n "$execs" ] || execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$last")
  [ -n "$rate" ] || rate=$(field 'exec/s')
  cov=$(field cov)
  ft=$(field ft)
  corp=$(sed -nE 's/.*corp: ([0-9]+\/[0-9]+[a-zA-Z]*).*/\1/p' <<<"$last")
  artifact=$(sed -nE 's/.*Test unit written to (.*)$/\1/p' "$runlog" | tail -1)
  if [ "$rc" -eq 0 ] && [ -z "$artifact" ]; then
    result="no crash"
  else
    failed=1
    result="FAILED (exit $rc)"
    reason=$(grep -m1 -E "panicked at|ERROR: libFuzzer|==[0-9]+== ERROR|deadly signal" "$runlog" || true)
    log "$t: ${reason:-fuzzer exited with $rc}"
    grep -A4 -m1 'panicked at' "$runlog" >&2 || true
    if [ -n "$artifact" ]; then
      log "$t: input saved to $artifact"
      log "  reproduce: cargo fuzz run -s $SANITIZER $t $artifact"
      log "  minimise:  cargo fuzz tmin -s $SANITIZER $t $artifact"
    else
      tail -20 "$runlog" >&2
    fi
  fi
  ROWS+=("$(printf '%-16s %8s %12s %9s %14s %6s %6s  %s' "$t" "${secs}s" \
    "${execs:-?}" "${rate:-?}" "${corp:-?}" "${cov:-?}" "${ft:-?}" "$result")")
done

printf '\n%-16s %8s %12s %9s %14s %6s %6s  %s\n' target duration executions exec/s \
  "corpus(n/size)" cov ft result
printf '%s\n' "${ROWS[@]}"
if [ "$failed" -ne 0 ]; then
  log "a fuzz target failed: see above"
  exit 1
fi
echo "fuzz: ${#TARGETS[@]} passed, 0 failed"
