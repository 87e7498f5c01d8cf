#!/usr/bin/env bash
# The benchmark, in one command: weapp against the Node reference stack on this machine.
#   bench/run.sh            full run (~17 min on 2 cores), writes bench/REPORT.md
#   bench/run.sh --smoke    seconds, tiny sizes, checks the harness (scripts/test.sh runs it)
# Extra arguments go to bench/run.py (e.g. --ws-connections 15000, --out FILE).
# Installs what it needs: wrk, nginx, openssl (apt), the Node reference's packages (npm ci),
# nx-27017 (PyPI), and builds weapp (release; the smoke run uses the debug build).
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

echo "==> building weapp (cargo build --profile $profile)"
cargo build --profile "$profile" --quiet --bin session-svc --bin gateway-svc --bin wechat-sandbox --bin weapp-bench
target_dir=${CARGO_TARGET_DIR:-$root/target}
case "$profile" in
  dev) bin_dir=$target_dir/debug ;;
  *) bin_dir=$target_dir/$profile ;;
esac

if [ "$profile" = dev ]; then
  exec python3 bench/run.py --bin-dir "$bin_dir" --profile "$profile" --out "$target_dir/bench-smoke/REPORT.md" "$@"
fi
exec python3 bench/run.py --bin-dir "$bin_dir" --profile "$profile" "$@"
