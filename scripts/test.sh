#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need (curl, nginx, wrk,
# docker-compose and systemd-analyze from apt; nx-27017 from PyPI; the SDK from npm;
# cargo-machete, cargo-deny and cargo-fuzz from crates.io), checks formatting, lints and unused
# dependencies, runs every Rust test (unit, store conformance, end-to-end on both
# stores, real nginx, faults injected into the real binaries under load), fuzzes every parser
# of outside input for a bounded time, checks dependencies with cargo deny, checks the
# deployment files, then starts the local stack exactly as the
# README does and drives it with curl and with the unmodified wafer-client-sdk, and finally
# runs the release build's training load and the benchmark harness for a few seconds so that
# neither can rot.
# Fails loudly: any failing step fails the run, and nothing is skipped silently.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
log_dir=$(mktemp -d)
stack_pid=
front_pids=()
cleanup() {
  if [ "${#front_pids[@]}" -gt 0 ]; then
    kill -TERM "${front_pids[@]}" 2>/dev/null || true
    wait "${front_pids[@]}" 2>/dev/null || true
    front_pids=()
  fi
  if [ -n "$stack_pid" ]; then
    kill -TERM "$stack_pid" 2>/dev/null || true
    wait "$stack_pid" 2>/dev/null || true
  fi
}
trap 'cleanup; print_timings' EXIT

# Each step's name and start, for the timings printed at the end (also when a step fails).
step_names=()
step_starts=()
step() {
  step_names+=("$*")
  step_starts+=("$(date +%s)")
  printf '\n==> %s\n' "$*"
}
print_timings() {
  local now i end n=${#step_names[@]}
  [ "$n" -gt 0 ] || return 0
  now=$(date +%s)
  echo "step times (total $((now - step_starts[0])) s):"
  for ((i = 0; i < n; i++)); do
    end=${step_starts[i + 1]:-$now}
    printf '  %5d s  %s\n' "$((end - step_starts[i]))" "${step_names[i]}"
  done
}
# shellcheck source=prereqs.sh
. scripts/prereqs.sh

# A fresh clone builds everything once: incremental compilation would only add its caches
# (2.3 GB of target/debug/incremental, measured on a cold build) and slow the build down.
export CARGO_INCREMENTAL=0

step "prerequisites"
apt_install_missing curl:curl "${NGINX_BIN:-/usr/sbin/nginx}:nginx" docker-compose:docker-compose \
  systemd-analyze:systemd node:nodejs npm:npm wrk:wrk openssl:openssl \
  /usr/bin/prometheus:prometheus /usr/bin/promtool:prometheus
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
npm ci --prefix tests/sdk-compat --no-audit --no-fund --loglevel=error
npm ci --prefix examples/node-backend --no-audit --no-fund --loglevel=error
npm ci --prefix examples/cloudrun-container --no-audit --no-fund --loglevel=error
# nx-27017, the MongoDB-wire server the MongoDB store tests start (one per test).
ensure_test_venv "$root"
venv=$TEST_VENV
export NGINX_BIN="${NGINX_BIN:-/usr/sbin/nginx}"
"$NGINX_BIN" -v

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo machete: no unused dependency"
ensure_cargo_tool "$root" cargo-machete 0.9.2
cargo machete

step "cargo test (unit, store conformance on both stores, end-to-end on the embedded store)"
WEAPP_FAULT_FIGURES="$log_dir/faults.txt" cargo test --workspace 2>&1 | tee "$log_dir/cargo-test.log"
echo "fault tests, what the clients saw (docs/RELIABILITY.md):"
sed 's/^/  /' "$log_dir/faults.txt"

step "end-to-end suite again, on MongoDB (nx-27017)"
# --workspace, as above: `-p` would unify features differently and rebuild a score of crates.
# The HTTP edge's own tests (framing, smuggling, the two paths' agreement, abuse, limits) do not
# touch the store: once is enough.
WEAPP_TEST_STORE=mongodb cargo test --workspace --test e2e -- --skip conformance:: --skip mongo_store:: \
  --skip smuggling:: --skip agreement:: --skip abuse:: --skip fast_path:: --skip limits:: \
  2>&1 | tee -a "$log_dir/cargo-test.log"

step "cargo fuzz: every target for 20 s from its seed corpus (fuzz/run.sh)"
fuzz/run.sh 20 2>&1 | tee "$log_dir/fuzz.log"

step "cargo deny: licenses, bans, sources; advisories when the database can be fetched"
scripts/deny.sh 2>&1 | tee "$log_dir/deny.log"

step "deployment files: docker-compose config, Dockerfile, systemd-analyze verify"
"$venv/bin/python" tests/deploy/check_deploy.py | tee "$log_dir/deploy.log"

step "local stack (scripts/stack.sh) driven as the README says"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
gw_port=$(free_port); session_port=$(free_port); sandbox_port=$(free_port); example_port=$(free_port)
cloudrun_port=$(free_port); openapi_port=$(free_port)
WEAPP_STACK_DIR="$log_dir/stack" \
WEAPP_GATEWAY_LISTEN="127.0.0.1:$gw_port" \
WEAPP_SESSION_LISTEN="127.0.0.1:$session_port" \
SANDBOX_LISTEN="127.0.0.1:$sandbox_port" \
EXAMPLE_LISTEN="127.0.0.1:$example_port" \
CLOUDRUN_LISTEN="127.0.0.1:$cloudrun_port" \
WEAPP_OPENAPI_LISTEN="127.0.0.1:$openapi_port" \
  scripts/stack.sh > "$log_dir/stack.log" 2>&1 &
stack_pid=$!
for _ in $(seq 1 600); do
  grep -q "weapp is running" "$log_dir/stack.log" && break
  kill -0 "$stack_pid" 2>/dev/null || { cat "$log_dir/stack.log"; echo "the stack failed to start" >&2; exit 1; }
  sleep 0.5
done
grep -q "weapp is running" "$log_dir/stack.log" || { cat "$log_dir/stack.log"; echo "the stack did not start in time" >&2; exit 1; }

gw="http://127.0.0.1:$gw_port"
sb="http://127.0.0.1:$sandbox_port"
curl -fsS -X POST "$sb/sandbox/mint?format=headers" > "$log_dir/login.headers"
login=$(curl -fsS -H @"$log_dir/login.headers" "$gw/login")
id=$(printf '%s' "$login" | python3 -c 'import json,sys; print(json.load(sys.stdin)["session"]["id"])')
skey=$(printf '%s' "$login" | python3 -c 'import json,sys; print(json.load(sys.stdin)["session"]["skey"])')
me=$(curl -fsS -H "X-WX-Id: $id" -H "X-WX-Skey: $skey" "$gw/me")
printf '%s' "$me" | python3 -c 'import json,sys; me=json.load(sys.stdin); assert me["nickName"]=="Sandbox User", me; print("curl flow: /me answers", me["openId"])'
hello=$(curl -fsS -H "X-WX-Id: $id" -H "X-WX-Skey: $skey" "$gw/api/hello")
printf '%s\n%s' "$me" "$hello" | python3 -c 'import json,sys; me,hello=[json.loads(l) for l in sys.stdin]; assert hello["openId"]==me["openId"], hello; print("curl flow: the example backend verified", hello["openId"])'
phone_code=$(curl -fsS -X POST "$sb/sandbox/phone-code" -H 'Content-Type: application/json' -d '{"purePhoneNumber":"13800138000"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["code"])')
phone=$(curl -fsS -X POST -H "X-WX-Id: $id" -H "X-WX-Skey: $skey" -H "X-WX-Phone-Code: $phone_code" "$gw/phone-number")
printf '%s' "$phone" | python3 -c 'import json,sys; p=json.load(sys.stdin); assert p["purePhoneNumber"]=="13800138000", p; print("curl flow: /phone-number answers the number WeChat verified")'

step "wafer-client-sdk (unmodified) against the running stack: directly"
WEAPP_GATEWAY_URL=$gw WEAPP_SANDBOX_URL=$sb \
  node --test tests/sdk-compat/ 2>&1 | tee "$log_dir/sdk.log"

# The same SDK run through real nginx: the shipped site, and the tutorial's own ssl.conf
# unchanged (it proxies WebSocket upgrades as HTTP/1.0), as a team that migrates keeps it.
cargo build --quiet -p weapp-tests --bin nginx-front
for site in shipped tutorial; do
  step "wafer-client-sdk (unmodified) through nginx with the $site site"
  "${CARGO_TARGET_DIR:-$root/target}/debug/nginx-front" --site "$site" \
    --gateway "127.0.0.1:$gw_port" --cert-out "$log_dir/nginx-$site.pem" \
    > "$log_dir/nginx-$site.url" 2> "$log_dir/nginx-$site.log" &
  front_pids+=($!)
  for _ in $(seq 1 100); do [ -s "$log_dir/nginx-$site.url" ] && break; sleep 0.1; done
  [ -s "$log_dir/nginx-$site.url" ] || { cat "$log_dir/nginx-$site.log"; echo "nginx ($site) did not start" >&2; exit 1; }
  NODE_EXTRA_CA_CERTS="$log_dir/nginx-$site.pem" WEAPP_GATEWAY_URL=$(cat "$log_dir/nginx-$site.url") \
    WEAPP_SANDBOX_URL=$sb node --test tests/sdk-compat/ 2>&1 | tee -a "$log_dir/sdk.log"
done

cleanup
stack_pid=

step "the shipped build's training run (scripts/pgo-train.sh), small, on the debug build"
# scripts/build-release.sh trains the release build's profile with it (bench/run.sh and the
# Dockerfile build that way); this keeps the run itself from rotting in ~10 s, not the 20 min
# build.
cargo build --quiet --bin session-svc --bin gateway-svc --bin wechat-sandbox --bin weapp-bench
debug_bin="${CARGO_TARGET_DIR:-$root/target}/debug"
scripts/pgo-train.sh "$debug_bin" "$debug_bin" "$log_dir/pgo-train" --users 50 --ws-users 5 \
  > "$log_dir/pgo-train.log" 2>&1 || { cat "$log_dir/pgo-train.log"; echo "the training run failed" >&2; exit 1; }
tail -n 1 "$log_dir/pgo-train.log"

step "benchmark harness, smoke run (bench/run.sh --smoke: every scenario, tiny sizes)"
bench/run.sh --smoke > "$log_dir/bench.log" 2>&1 || { cat "$log_dir/bench.log"; echo "the benchmark harness failed" >&2; exit 1; }
tail -n 3 "$log_dir/bench.log"

# One closing line for the whole suite.
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log_dir/cargo-test.log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$log_dir/cargo-test.log" | awk '{s+=$1} END {print s+0}')
node_pass=$(awk '/^# pass /{s+=$3} END {print s+0}' "$log_dir/sdk.log")
node_fail=$(awk '/^# fail /{s+=$3} END {print s+0}' "$log_dir/sdk.log")
deploy_pass=$(awk '/^deploy: /{print $2}' "$log_dir/deploy.log")
deploy_fail=$(awk '/^deploy: /{print $4}' "$log_dir/deploy.log")
fuzz_pass=$(grep -c ', no crash$' "$log_dir/fuzz.log" || true)
passed=$((passed + ${node_pass:-0} + ${deploy_pass:-0} + ${fuzz_pass:-0} + 4)) # +4: cargo deny, the curl flow, the training run, the bench smoke run
failed=$((failed + ${node_fail:-0} + ${deploy_fail:-0}))
if [ "$passed" -lt 2 ]; then echo "no tests ran" >&2; exit 1; fi
echo
echo "suite: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
