#!/usr/bin/env bash
# The training run of profile-guided optimisation (scripts/build-release.sh): the WeChat sandbox,
# session-svc (embedded store) and gateway-svc (with a business route to weapp-bench's hello
# server) on loopback, driven by `weapp-bench train` (logins, /me, the forwarded route,
# WebSocket echoes), then stopped with SIGTERM so that instrumented services write their
# counts. scripts/test.sh runs it on the debug build, small, so that it cannot rot.
#
#   scripts/pgo-train.sh SERVICES_DIR TOOLS_DIR WORK_DIR [weapp-bench train options]
# SERVICES_DIR holds session-svc and gateway-svc, TOOLS_DIR wechat-sandbox and weapp-bench;
# WORK_DIR gets the keys, the store and each process's log.
set -euo pipefail

services=${1:?usage: scripts/pgo-train.sh SERVICES_DIR TOOLS_DIR WORK_DIR [train options]}
tools=${2:?usage: scripts/pgo-train.sh SERVICES_DIR TOOLS_DIR WORK_DIR [train options]}
work=${3:?usage: scripts/pgo-train.sh SERVICES_DIR TOOLS_DIR WORK_DIR [train options]}
shift 3
mkdir -p "$work"
pids=()
stop_all() {
  # SIGTERM: the services shut down gracefully and write their profiles on the way out.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap stop_all EXIT

# The address in the first line of LOG that holds MESSAGE: `addr=HOST:PORT` as the services and
# the sandbox log it, or `listening on HOST:PORT` as weapp-bench's hello server prints it.
address_in() {
  local log=$1 message=$2 addr=""
  for _ in $(seq 300); do
    addr=$(grep -F "$message" "$log" 2>/dev/null | head -1 | grep -oE '(addr=|listening on )[0-9.]+:[0-9]+' \
      | grep -oE '[0-9.]+:[0-9]+' || true)
    [ -n "$addr" ] && { echo "$addr"; return 0; }
    sleep 0.1
  done
  echo "no \"$message\" with an address in $log:" >&2
  cat "$log" >&2
  return 1
}

secret() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
umask 077
secret > "$work/app_secret"
secret > "$work/gateway.key"
printf '[[key]]\nname = "gateway"\nfile = "gateway.key"\nscopes = ["validate", "login", "follow"]\n' \
  > "$work/api-keys.toml"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/identity.pem" 2>/dev/null
app_id=wxpgotraining0001

"$tools/wechat-sandbox" --listen 127.0.0.1:0 --app-id "$app_id" --app-secret-file "$work/app_secret" \
  > "$work/sandbox.log" 2>&1 &
pids+=($!)
sandbox=http://$(address_in "$work/sandbox.log" "WeChat sandbox listening")

"$tools/weapp-bench" hello --listen 127.0.0.1:0 > "$work/upstream.log" 2>&1 &
pids+=($!)
upstream=http://$(address_in "$work/upstream.log" "listening on")
printf '[[route]]\nprefix = "/api/"\nupstream = "%s"\nsession = "required"\n' "$upstream" > "$work/routes.toml"

WEAPP_SESSION_LISTEN=127.0.0.1:0 WEAPP_METRICS_LISTEN=127.0.0.1:0 WEAPP_DATA_DIR="$work/data" \
  WEAPP_API_KEYS_FILE="$work/api-keys.toml" WEAPP_IDENTITY_KEY_FILES="$work/identity.pem" \
  WEAPP_APP_ID=$app_id WEAPP_APP_SECRET_FILE="$work/app_secret" WEAPP_WECHAT_BASE_URL="$sandbox/" \
  "$services/session-svc" > "$work/session-svc.log" 2>&1 &
session_pid=$!
pids+=("$session_pid")
session=http://$(address_in "$work/session-svc.log" "gRPC listening")

WEAPP_GATEWAY_LISTEN=127.0.0.1:0 WEAPP_METRICS_LISTEN=127.0.0.1:0 WEAPP_SESSION_SVC_URL=$session \
  WEAPP_SESSION_SVC_KEY_FILE="$work/gateway.key" WEAPP_ROUTES_FILE="$work/routes.toml" \
  WEAPP_LOGIN_RATE_PER_ADDRESS=0 \
  "$services/gateway-svc" > "$work/gateway-svc.log" 2>&1 &
gateway_pid=$!
pids+=("$gateway_pid")
gateway=http://$(address_in "$work/gateway-svc.log" "gateway-svc listening")

"$tools/weapp-bench" train --base "$gateway" --sandbox "$sandbox" --forward-path /api/hello "$@"

# The services first, each checked: one that does not shut down cleanly writes no profile.
for name in gateway session; do
  pid_var=${name}_pid
  kill -TERM "${!pid_var}"
  if ! wait "${!pid_var}"; then
    echo "$name-svc did not shut down cleanly on SIGTERM; its log: $work/$name-svc.log" >&2
    exit 1
  fi
done
stop_all
trap - EXIT
