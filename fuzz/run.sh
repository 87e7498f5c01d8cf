#!/usr/bin/env bash
# Runs every cargo fuzz (libFuzzer) target for a bounded time, starting from the committed seed
# corpus (fuzz/seeds/<target>), and fails if any target finds a crash. Installs cargo-fuzz
# into target/tools on first use. The fuzzer needs nightly compiler flags: on the stable
# toolchain they are enabled with RUSTC_BOOTSTRAP=1, for this build only.
#
#   fuzz/run.sh [seconds per target]    (default 60; scripts/test.sh uses 20)
#
# Findings land in fuzz/artifacts/<target>/ (crash-*, with the input); the grown corpus in
# target/fuzz-corpus/<target>/, kept between runs on this machine.
set -euo pipefail

seconds=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../scripts/prereqs.sh
. "$root/scripts/prereqs.sh"
ensure_cargo_tool "$root" cargo-fuzz 0.13.2
export RUSTC_BOOTSTRAP=1
cd "$root/fuzz"
cargo fuzz build 2>&1 | { grep -Ev "^ *(Compiling|Downloaded|Downloading) " || true; }
summary=()
for target in $(cargo fuzz list); do
  corpus="$root/target/fuzz-corpus/$target"
  mkdir -p "$corpus"
  log="$root/target/fuzz-corpus/$target.log"
  echo "==> fuzzing $target for ${seconds}s"
  if ! cargo fuzz run "$target" "$corpus" "seeds/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 > "$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: $target FAILED — the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo '?')
  cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -n 1 | grep -Eo '[0-9]+' || echo '?')
  summary+=("$target: $runs executions in ${seconds}s, coverage $cov edges, $(find "$corpus" -type f | wc -l) corpus inputs, no crash")
done
printf 'fuzz: %s\n' "${summary[@]}"
