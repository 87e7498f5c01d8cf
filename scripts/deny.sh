#!/usr/bin/env bash
# cargo deny over the workspace (deny.toml): licenses, banned or duplicate-prone crates and
# sources always; advisories (RustSec) when the advisory database can be fetched. It is a git
# repository on github.com, which these machines cannot reach: then the advisory check is
# reported as NOT CHECKED, loudly, and the rest still has to pass. Installs cargo-deny into
# target/tools on first use.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=prereqs.sh
. "$root/scripts/prereqs.sh"
ensure_cargo_tool "$root" cargo-deny 0.20.2
cd "$root"
cargo deny --log-level warn check bans licenses sources
echo "cargo deny: bans, licenses, sources ok"
if fetch=$(timeout 60 cargo deny --log-level error fetch db 2>&1); then
  cargo deny --log-level warn check advisories
  echo "cargo deny: advisories ok"
else
  echo "cargo deny: advisories NOT CHECKED — the RustSec advisory database cannot be fetched from this machine: $(printf '%s' "$fetch" | tail -n 1)"
fi
