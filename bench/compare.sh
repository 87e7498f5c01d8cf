#!/usr/bin/env bash
# /me on the working tree against another commit, in one run: bench/compare.sh REV [ARGS...]
# (ARGS go to bench/compare.py, e.g. --rounds 5). Builds REV in a temporary git worktree into
# target/baseline/, this tree into target/release, then runs both side by side.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=../scripts/prereqs.sh
. scripts/prereqs.sh
rev=${1:?usage: bench/compare.sh REV [ARGS...]}
shift
apt_install_missing wrk:wrk

target_dir=${CARGO_TARGET_DIR:-$root/target}
worktree=$(mktemp -d)
trap 'git worktree remove --force "$worktree" 2>/dev/null || true' EXIT
git worktree add --detach --quiet "$worktree" "$rev"
echo "==> building $rev (release) into $target_dir/baseline"
(cd "$worktree" && CARGO_TARGET_DIR="$target_dir/baseline" cargo build --release --quiet \
  --bin session-svc --bin gateway-svc)
echo "==> building this tree (release)"
cargo build --release --quiet --bin session-svc --bin gateway-svc --bin wechat-sandbox --bin weapp-bench
python3 bench/compare.py --bin-dir "$target_dir/release" \
  --baseline-bin-dir "$target_dir/baseline/release" --baseline-name "$(git rev-parse --short "$rev")" "$@"
