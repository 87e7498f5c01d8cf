#!/usr/bin/env bash
# The benchmark, in one command: weapp against the Node reference stack on this machine.
#   bench/run.sh            full run (~17 min on 2 cores, after a ~20 min build), writes bench/REPORT.md
#   bench/run.sh --smoke    seconds, tiny sizes, checks the harness (scripts/test.sh runs it)
# Extra arguments go to bench/run.py (e.g. --ws-connections 15000, --out FILE).
# Installs what it needs: wrk, nginx, openssl (apt), the Node reference's packages (npm ci),
# nx-27017 (PyPI), and builds weapp as shipped (scripts/build-release.sh: release profile and
# profile-guided optimisation; WEAPP_PGO=off for the release profile alone); the smoke run uses
# the debug build.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=../scripts/prereqs.sh
. scripts/prereqs.sh

profile=release
for arg in "$@"; do
  [ "$arg" = --smoke ] && profile=dev
done

apt_install_missing wrk:wrk "${NGINX_BIN:-/usr/sbin/nginx}:nginx" openssl:openssl node:nodejs npm:npm
ensure_test_venv "$root"
export NGINX_BIN="${NGINX_BIN:-/usr/sbin/nginx}"
npm ci --prefix bench/node-reference --no-audit --no-fund --loglevel=error

target_dir=${CARGO_TARGET_DIR:-$root/target}
if [ "$profile" = dev ]; then
  echo "==> building weapp (debug)"
  cargo build --quiet --bin session-svc --bin gateway-svc --bin wechat-sandbox --bin weapp-bench
  exec python3 bench/run.py --bin-dir "$target_dir/debug" --profile "$profile" --out "$target_dir/bench-smoke/REPORT.md" "$@"
fi

# The services as shipped (the Dockerfile builds them the same way), beside the harness's
# sandbox and load generator.
echo "==> building weapp as shipped (scripts/build-release.sh; WEAPP_PGO=off skips the profile)"
bin_dir=$target_dir/bench-bin
scripts/build-release.sh "$bin_dir"
cargo build --release --locked --quiet --bin wechat-sandbox --bin weapp-bench
cp "$target_dir/release/wechat-sandbox" "$target_dir/release/weapp-bench" "$bin_dir/"
[ "${WEAPP_PGO:-on}" = off ] && profile=release-no-pgo
exec python3 bench/run.py --bin-dir "$bin_dir" --profile "$profile" "$@"
