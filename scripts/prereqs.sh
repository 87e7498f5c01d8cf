# Sourced by scripts/test.sh and bench/run.sh: installs what they need on a fresh machine.
# Debian packages come from apt (as root, or through sudo); Python tools go into a venv.

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# apt_install_missing "command:package" ...: installs the packages whose command is missing.
apt_install_missing() {
  local missing=() pair cmd pkg
  for pair in "$@"; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    if [ "${cmd#/}" != "$cmd" ]; then
      [ -x "$cmd" ] || missing+=("$pkg")
    else
      command -v "$cmd" >/dev/null || missing+=("$pkg")
    fi
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
}

# ensure_test_venv ROOT: target/test-venv with tests/requirements.txt (nx-27017, ...);
# exports NX_27017_BIN and TEST_VENV.
ensure_test_venv() {
  local venv="$1/target/test-venv"
  if [ ! -x "$venv/bin/pip" ]; then
    python3 -m venv "$venv" || {
      as_root apt-get update -qq
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
      python3 -m venv "$venv"
    }
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$1/tests/requirements.txt"
  export TEST_VENV="$venv"
  export NX_27017_BIN="$venv/bin/nx-27017"
  "$NX_27017_BIN" --help > /dev/null
}

# ensure_cargo_tool ROOT CRATE VERSION: the cargo subcommand CRATE at VERSION, built once per
# machine from crates.io into WEAPP_TOOLS_DIR (default ~/.cache/weapp/tools, so that the next
# clone on this machine finds it; the version is checked every time), put first on PATH. Built
# unoptimized: these tools do seconds of work per run, and a debug build takes a quarter of the
# time to compile (cargo-deny: under 1 min against 3–4 min on 2 cores). ROOT is unused since
# the tools left target/; kept so callers need not change.
ensure_cargo_tool() {
  local tools="${WEAPP_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/weapp/tools}"
  mkdir -p "$tools"
  # "cargo-deny 0.20.2", "cargo-fuzz 0.13.2", or just "0.9.2" (cargo-machete).
  if ! "$tools/bin/$2" --version 2>/dev/null | grep -qE "(^| )$3\$"; then
    echo "==> installing $2 $3 into $tools (built from crates.io, once)"
    cargo install --quiet --debug --locked --root "$tools" "$2" --version "$3"
  fi
  export PATH="$tools/bin:$PATH"
}
