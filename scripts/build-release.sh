#!/usr/bin/env bash
# The shipped binaries, session-svc and gateway-svc, built as the Dockerfile and bench/run.sh
# build them: the release profile (fat LTO, one codegen unit) plus profile-guided optimisation
# on a profile of their own hot paths.
#
#   scripts/build-release.sh OUT_DIR     writes OUT_DIR/session-svc and OUT_DIR/gateway-svc
#   WEAPP_PGO=off scripts/build-release.sh OUT_DIR     the release profile alone (faster to build)
#
# How (~20 minutes on 2 cores, three times a plain release build's link):
#  1. wechat-sandbox and weapp-bench, plain release: the training's WeChat and its clients.
#  2. Both services instrumented (-Cprofile-generate), in target/pgo/instrumented.
#  3. Training (scripts/pgo-train.sh): the sandbox, the instrumented session-svc (embedded
#     store) and gateway-svc (a business route to weapp-bench's hello server) on loopback,
#     driven by `weapp-bench train`: logins, /me, the forwarded route, WebSocket echoes.
#     Stopped with SIGTERM, they write their counts.
#  4. llvm-profdata merges the counts. It comes from rustup's llvm-tools component, so its LLVM
#     is rustc's own (a profile from another LLVM version is refused or, worse, ignored);
#     LLVM_PROFDATA names another.
#  5. Both services again with -Cprofile-use, in target/pgo/optimised, copied to OUT_DIR.
# Measured on the login path: ~20% less CPU per login for the stack (bench/README.md).
set -euo pipefail

out=${1:?usage: scripts/build-release.sh OUT_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mkdir -p "$out"
target=${CARGO_TARGET_DIR:-$root/target}
services=(-p session-svc -p gateway-svc --bins)

if [ "${WEAPP_PGO:-on}" = off ]; then
  echo "==> release build without profile-guided optimisation (WEAPP_PGO=off)"
  cargo build --release --locked --quiet "${services[@]}"
  cp "$target/release/session-svc" "$target/release/gateway-svc" "$out/"
  exit 0
fi

host=$(rustc -vV | sed -n 's/^host: //p')
profdata=${LLVM_PROFDATA:-"$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"}
if [ ! -x "$profdata" ]; then
  if ! command -v rustup > /dev/null; then
    echo "no llvm-profdata at $profdata and no rustup to add llvm-tools: set LLVM_PROFDATA to an" \
      "llvm-profdata of rustc's LLVM ($(rustc -vV | sed -n 's/^LLVM version: //p')), or WEAPP_PGO=off" >&2
    exit 1
  fi
  echo "==> installing rustup's llvm-tools (llvm-profdata of rustc's own LLVM)"
  rustup component add llvm-tools
fi

pgo=$target/pgo
# A fresh training store and logs every build (the raw counts are cleared before training).
rm -rf "$pgo/train"

echo "==> 1/5 the training's sandbox and load generator (release)"
cargo build --release --locked --quiet --bin wechat-sandbox --bin weapp-bench
tools=$target/release

echo "==> 2/5 instrumented services"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$pgo/raw" \
  cargo build --release --locked --quiet --target-dir "$pgo/instrumented" "${services[@]}"
instrumented=$pgo/instrumented/release

echo "==> 3/5 training"
# Build scripts and proc macros were instrumented too, and those that ran left counts here:
# only the services' own count.
rm -rf "$pgo/raw"
mkdir -p "$pgo/raw"
scripts/pgo-train.sh "$instrumented" "$tools" "$pgo/train"

echo "==> 4/5 merging the profiles"
shopt -s nullglob
raw=("$pgo"/raw/*.profraw)
if [ "${#raw[@]}" -ne 2 ]; then
  echo "expected one profile from each service in $pgo/raw, found ${#raw[@]}" >&2
  exit 1
fi
"$profdata" merge -o "$pgo/merged.profdata" "${raw[@]}"
# The profile's content names it, so that cargo rebuilds every crate when it changes (cargo
# sees RUSTFLAGS, not the file they point to).
sum=$(sha256sum "$pgo/merged.profdata" | cut -c1-16)
profile=$pgo/profiles/$sum.profdata
rm -rf "$pgo/profiles"
mkdir -p "$pgo/profiles"
mv "$pgo/merged.profdata" "$profile"

echo "==> 5/5 optimised services"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$profile" \
  cargo build --release --locked --quiet --target-dir "$pgo/optimised" "${services[@]}"
cp "$pgo/optimised/release/session-svc" "$pgo/optimised/release/gateway-svc" "$out/"
echo "==> $out/session-svc and $out/gateway-svc (profile $profile)"
