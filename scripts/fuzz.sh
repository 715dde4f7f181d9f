#!/usr/bin/env bash
# Coverage-guided fuzzing with cargo-fuzz (libFuzzer) of the five input paths in
# src/fuzzing.rs: PEM/X.509 validation, the manifests parser, the SotW and Delta stream
# state machines, and the gRPC framing of requests.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Each target starts from the committed seeds (fuzz/seeds/<target>) and known crashers
# (fuzz/regressions/<target>), grows a local corpus in fuzz/corpus/<target> (not committed),
# and stops after the time given (default 15 s). A crash fails the script; libFuzzer leaves
# the input in fuzz/artifacts/<target>/: commit it to fuzz/regressions/<target>/ with the fix,
# and tests/robustness.rs replays it on every test run.
#
# Runs on the stable toolchain: no sanitizer (the crate forbids unsafe code), a dev build
# by default because it compiles in half the time; FUZZ_RELEASE=1 builds optimised for
# long runs.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${1:-15}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(pem manifests sotw delta frames)
CARGO_FUZZ_VERSION=0.13.2

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
MODE=(--dev)
[ "${FUZZ_RELEASE:-0}" = 1 ] && MODE=(-O)
FLAGS=("${MODE[@]}" --sanitizer none)

echo "==> cargo fuzz build ${FLAGS[*]}"
cargo fuzz build "${FLAGS[@]}"
for target in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  echo "==> fuzz $target for ${SECONDS_PER_TARGET}s"
  # -timeout: one input may take at most 10 s; -rss_limit_mb bounds memory. The full log
  # goes to a file and its status is cargo fuzz's own (a filter in a pipeline would hide it).
  log="fuzz/artifacts/$target.log"
  mkdir -p fuzz/artifacts
  status=0
  cargo fuzz run "${FLAGS[@]}" "$target" \
    "fuzz/corpus/$target" "fuzz/seeds/$target" "fuzz/regressions/$target" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
    -max_len=65536 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|INFO: seed corpus|.*(panicked|ERROR|crash|deadly|SUMMARY))" "$log" || true
  if [ "$status" -ne 0 ]; then
    echo "fuzz target $target failed (exit $status); last lines of $log:" >&2
    tail -n 40 "$log" >&2
    echo "the failing input is in fuzz/artifacts/$target/: fix the bug and commit the input to fuzz/regressions/$target/" >&2
    exit 1
  fi
done
echo "==> fuzzing found nothing"
