#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time (FUZZ_SECONDS each, default 20).
# Needs the nightly toolchain (libFuzzer's sanitizer flags); installs cargo-fuzz when missing.
# A crash fails the run and leaves the input in fuzz/artifacts/<target>/.
#
# By default the targets are built with the dev profile and no sanitizer (FUZZ_ARGS="--dev -s
# none"): a cold build takes about 2 min instead of about 8 with release + AddressSanitizer, and the
# parsers are safe Rust, so what we hunt is panics and failed assertions, which both builds catch.
# For a long hunt use FUZZ_ARGS="" (release, ASan).
#
#   hack/fuzz.sh              all targets, 20 s each
#   FUZZ_SECONDS=300 FUZZ_ARGS="" hack/fuzz.sh parsers
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SECONDS_EACH=${FUZZ_SECONDS:-20}
read -r -a BUILD_ARGS <<<"${FUZZ_ARGS---dev -s none}"

die() { echo "fuzz: $*" >&2; exit 1; }

command -v rustup >/dev/null || die "rustup not found: fuzzing needs the nightly toolchain (rustup toolchain install nightly)"
rustup run nightly rustc --version >/dev/null 2>&1 \
  || die "the nightly toolchain is missing: install it with 'rustup toolchain install nightly' (fuzzing is not skipped)"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (cargo install --locked cargo-fuzz)" >&2
  cargo install --locked cargo-fuzz >&2 || die "installing cargo-fuzz failed"
fi

if (($# > 0)); then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi
((${#targets[@]} > 0)) || die "no fuzz targets in fuzz/"

for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  echo "fuzz: $t for ${SECONDS_EACH}s" >&2
  # -max_total_time bounds the run; a crash or a panic exits non-zero and saves the input. The
  # output goes to a file first, so the exit status is the fuzzer's own (a pipe into grep would
  # report grep's, and `|| true` would hide both).
  log="fuzz/artifacts/$t.log"
  mkdir -p fuzz/artifacts
  status=0
  cargo +nightly fuzz run "${BUILD_ARGS[@]}" ${CARGO_TARGET_DIR:+--target-dir "$CARGO_TARGET_DIR/fuzz"} "$t" \
    -- -max_total_time="$SECONDS_EACH" -print_final_stats=1 >"$log" 2>&1 \
    || status=$?
  grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss|==[0-9]+==|SUMMARY|thread .* panicked|.*Test unit written)' \
    "$log" >&2 || true
  if ((status != 0)); then
    tail -n 30 "$log" >&2
    die "$t failed (exit $status); the crashing input is in fuzz/artifacts/$t/, the full output in $log"
  fi
done
echo "fuzz: all ${#targets[@]} target(s) ran ${SECONDS_EACH}s without a crash" >&2
