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
# The targets run side by side, as many at a time as the machine has cores: each is one
# single-threaded process, so on 2 cores this halves the step's time.
jobs=$(nproc 2>/dev/null || echo 1)
status_dir=$(mktemp -d)
targets=$(cargo fuzz list)
fuzz_one() {
  local target=$1 corpus="$root/target/fuzz-corpus/$1" log="$root/target/fuzz-corpus/$1.log"
  mkdir -p "$corpus"
  echo "==> fuzzing $target for ${seconds}s"
  if cargo fuzz run "$target" "$corpus" "seeds/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 > "$log" 2>&1; then
    echo ok > "$status_dir/$target"
  else
    echo failed > "$status_dir/$target"
  fi
}
running=0
for target in $targets; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  fuzz_one "$target" &
  running=$((running + 1))
done
wait
summary=()
failed=0
for target in $targets; do
  log="$root/target/fuzz-corpus/$target.log"
  if [ "$(cat "$status_dir/$target" 2>/dev/null)" != ok ]; then
    tail -n 40 "$log"
    echo "fuzz: $target FAILED — the input is in fuzz/artifacts/$target/" >&2
    failed=1
    continue
  fi
  corpus="$root/target/fuzz-corpus/$target"
  runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo '?')
  cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -n 1 | grep -Eo '[0-9]+' || echo '?')
  summary+=("$target: $runs executions in ${seconds}s, coverage $cov edges, $(find "$corpus" -type f | wc -l) corpus inputs, no crash")
done
rm -rf "$status_dir"
[ "$failed" -eq 0 ] || exit 1
printf 'fuzz: %s\n' "${summary[@]}"
