#!/usr/bin/env bash
# Runs the whole weapp stack locally: the WeChat sandbox, session-svc (embedded store, and its
# open-API proxy), gateway-svc, the example business backend (examples/node-backend, behind
# /api/) and a container written for WeChat Cloud Run (examples/cloudrun-container, behind
# /cloudrun/), as processes linked by gRPC over loopback. Ctrl-C stops them all.
#
# Environment (all optional):
#   WEAPP_STACK_DIR        state: AppSecret file, session store   (default: ./.stack)
#   WEAPP_GATEWAY_LISTEN   gateway HTTP address                    (default: 0.0.0.0:8765)
#   WEAPP_SESSION_LISTEN   session-svc gRPC address                (default: 127.0.0.1:50051)
#   SANDBOX_LISTEN         WeChat sandbox address                  (default: 127.0.0.1:9870)
#   EXAMPLE_LISTEN         example backend address (behind /api/)  (default: 127.0.0.1:9000)
#   CLOUDRUN_LISTEN        Cloud Run example (behind /cloudrun/)   (default: 127.0.0.1:9001)
#   WEAPP_OPENAPI_LISTEN   session-svc's open-API proxy            (default: 127.0.0.1:8081)
#   WEAPP_STACK_PROFILE    cargo profile: dev or release           (default: dev)
#   RUST_LOG               log filter                              (default: info)
#   WEAPP_MONGODB_URI      keep sessions in MongoDB instead of the embedded store
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=prereqs.sh
. scripts/prereqs.sh
apt_install_missing openssl:openssl

stack_dir=${WEAPP_STACK_DIR:-$root/.stack}
gateway_listen=${WEAPP_GATEWAY_LISTEN:-0.0.0.0:8765}
session_listen=${WEAPP_SESSION_LISTEN:-127.0.0.1:50051}
sandbox_listen=${SANDBOX_LISTEN:-127.0.0.1:9870}
example_listen=${EXAMPLE_LISTEN:-127.0.0.1:9000}
cloudrun_listen=${CLOUDRUN_LISTEN:-127.0.0.1:9001}
openapi_listen=${WEAPP_OPENAPI_LISTEN:-127.0.0.1:8081}
profile=${WEAPP_STACK_PROFILE:-dev}
app_id=${WEAPP_APP_ID:-wxweapplocal0001}

case "$profile" in
  dev) target_dir=debug ;;
  release) target_dir=release ;;
  *) echo "WEAPP_STACK_PROFILE must be dev or release" >&2; exit 2 ;;
esac

echo "==> building (cargo build --profile $profile)"
cargo build --profile "$profile" --bins --quiet
for example in node-backend cloudrun-container; do
  [ -d "examples/$example/node_modules" ] ||
    npm ci --prefix "examples/$example" --no-audit --no-fund --loglevel=error
done
bin="${CARGO_TARGET_DIR:-$root/target}/$target_dir"

mkdir -p "$stack_dir/data"
chmod 700 "$stack_dir"
secret_file="$stack_dir/app_secret"
random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
if [ ! -s "$secret_file" ]; then
  # A fresh random AppSecret shared by the sandbox and session-svc; never committed.
  (umask 077 && random_hex 16 > "$secret_file")
fi
# API keys for session-svc's gRPC: the gateway's (its scopes only) and an admin key for you
# (grpcurl, your backends). Made once, kept in the stack directory.
keys_dir=$stack_dir/keys
mkdir -p "$keys_dir"
for key in gateway admin example-backend; do
  [ -s "$keys_dir/$key.key" ] || (umask 077 && random_hex 32 > "$keys_dir/$key.key")
done
# The key that signs identity assertions (README, "Verifiable identity").
if [ ! -s "$keys_dir/identity.pem" ]; then
  (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$keys_dir/identity.pem" 2>/dev/null)
fi
# The key that seals session_keys and the access_token at rest (README, "WeChat's server APIs").
if [ ! -s "$keys_dir/data.key" ]; then
  (umask 077 && openssl rand -base64 32 > "$keys_dir/data.key")
fi
cat > "$keys_dir/api-keys.toml" <<'KEYS'
[[key]]
name = "gateway"
file = "gateway.key"
scopes = ["validate", "login", "follow", "wechat.phone"]

[[key]]
name = "admin"
file = "admin.key"
scopes = ["validate", "login", "follow", "admin", "push", "wechat.token", "wechat.phone", "wechat.user_data"]

[[key]]
name = "example-backend"
file = "example-backend.key"
scopes = ["push", "wechat.openapi"]
openapi = ["/wxa/msg_sec_check", "/wxa/getwxacodeunlimit", "/cgi-bin/message/subscribe/send", "/wxa/generate_urllink"]
KEYS

pids=()
stop() {
  trap - INT TERM EXIT
  if [ "${#pids[@]}" -gt 0 ]; then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

port_of() { echo "${1##*:}"; }
host_of() {
  local host=${1%:*}
  [ "$host" = 0.0.0.0 ] && host=127.0.0.1
  echo "$host"
}
wait_for() { # name host port pid
  for _ in $(seq 1 100); do
    if ! kill -0 "$4" 2>/dev/null; then
      echo "$1 exited during start-up (see its log above)" >&2
      return 1
    fi
    if (exec 3<>"/dev/tcp/$2/$3") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$1 did not start listening on $2:$3" >&2
  return 1
}

export WEAPP_APP_ID=$app_id WEAPP_APP_SECRET_FILE=$secret_file

SANDBOX_LISTEN=$sandbox_listen "$bin/wechat-sandbox" &
pids+=($!)
wait_for "WeChat sandbox" "$(host_of "$sandbox_listen")" "$(port_of "$sandbox_listen")" "$!"

WEAPP_SESSION_LISTEN=$session_listen \
WEAPP_DATA_DIR=$stack_dir/data \
WEAPP_API_KEYS_FILE=$keys_dir/api-keys.toml \
WEAPP_IDENTITY_KEY_FILES=$keys_dir/identity.pem \
WEAPP_DATA_KEY_FILES=$keys_dir/data.key \
WEAPP_WECHAT_BASE_URL="http://$(host_of "$sandbox_listen"):$(port_of "$sandbox_listen")/" \
WEAPP_OPENAPI_LISTEN=$openapi_listen \
WEAPP_OPENAPI_TRUSTED_NETWORKS=127.0.0.1 \
WEAPP_OPENAPI_TRUSTED_PATHS=/wxa/msg_sec_check,/wxa/generate_urllink \
  "$bin/session-svc" &
pids+=($!)
wait_for "session-svc" "$(host_of "$session_listen")" "$(port_of "$session_listen")" "$!"

# The example backend's routes (README, "Put your API behind weapp").
cat > "$stack_dir/routes.toml" <<ROUTES
[[route]]
prefix = "/api/"
upstream = "http://$(host_of "$example_listen"):$(port_of "$example_listen")"
session = "required"

# A container written for WeChat Cloud Run, unchanged (README, "Coming from Cloud Run").
[[route]]
prefix = "/cloudrun/"
upstream = "http://$(host_of "$cloudrun_listen"):$(port_of "$cloudrun_listen")"
session = "required"
strip_prefix = true
identity_headers = "cloudrun"
websocket = true
ROUTES

WEAPP_GATEWAY_LISTEN=$gateway_listen \
WEAPP_ROUTES_FILE=$stack_dir/routes.toml \
WEAPP_SESSION_SVC_KEY_FILE=$keys_dir/gateway.key \
WEAPP_SESSION_SVC_URL="http://$(host_of "$session_listen"):$(port_of "$session_listen")" \
  "$bin/gateway-svc" &
pids+=($!)
wait_for "gateway-svc" "$(host_of "$gateway_listen")" "$(port_of "$gateway_listen")" "$!"

gw="http://$(host_of "$gateway_listen"):$(port_of "$gateway_listen")"
PORT=$(port_of "$example_listen") \
WEAPP_JWKS_URL="$gw/.well-known/jwks.json" \
WEAPP_SESSION_SVC="$(host_of "$session_listen"):$(port_of "$session_listen")" \
WEAPP_API_KEY_FILE=$keys_dir/example-backend.key \
  node examples/node-backend/server.js &
pids+=($!)
wait_for "example backend" "$(host_of "$example_listen")" "$(port_of "$example_listen")" "$!"

# Its calls to http://api.weixin.qq.com go to the open-API proxy: axios takes HTTP_PROXY (in
# docker-compose the name itself points there).
PORT=$(port_of "$cloudrun_listen") \
HTTP_PROXY="http://$(host_of "$openapi_listen"):$(port_of "$openapi_listen")" \
  node examples/cloudrun-container/server.js &
pids+=($!)
wait_for "Cloud Run example" "$(host_of "$cloudrun_listen")" "$(port_of "$cloudrun_listen")" "$!"

sb="http://$(host_of "$sandbox_listen"):$(port_of "$sandbox_listen")"
cat <<EOF

weapp is running (Ctrl-C stops it):
  gateway-svc   $gw          (HTTP: /login, /me, /ws; /api/ goes to the example backend,
                                          /cloudrun/ to the Cloud Run example container)
  session-svc   $session_listen    (gRPC; API keys in $keys_dir)
                open-API proxy at http://$openapi_listen (WeChat's APIs without a token)
                operator commands, e.g.: $bin/session-svc admin token \\
                  --url http://$session_listen --key-file $keys_dir/admin.key
                (revoke-user <openId>, sessions <id>..., force-refresh --reason …, publish)
  WeChat sandbox $sb

Log in as a mini-program would (the sandbox plays wx.login + wx.getUserInfo):
  curl -s -X POST '$sb/sandbox/mint?format=headers' > /tmp/weapp-login.headers
  curl -s -H @/tmp/weapp-login.headers $gw/login
Then, with the "id" and "skey" it answers:
  curl -s -H 'X-WX-Id: <id>' -H 'X-WX-Skey: <skey>' $gw/me
  curl -s -H 'X-WX-Id: <id>' -H 'X-WX-Skey: <skey>' $gw/api/hello        (your API, verified identity)
  curl -s -H 'X-WX-Id: <id>' -H 'X-WX-Skey: <skey>' -d 'hi' $gw/api/push  (pushes to that user's /ws)
  npx wscat -c 'ws://$(host_of "$gateway_listen"):$(port_of "$gateway_listen")/ws?X-WX-Id=<id>&X-WX-Skey=<skey>'
A phone number (the sandbox plays the getPhoneNumber button):
  curl -s -X POST $sb/sandbox/phone-code -H 'Content-Type: application/json' -d '{}'
  curl -s -H 'X-WX-Id: <id>' -H 'X-WX-Skey: <skey>' -H 'X-WX-Phone-Code: <code>' -X POST $gw/phone-number
WeChat's APIs without a token, through the open-API proxy (a backend with a key):
  curl -s -H "Authorization: Bearer \$(cat $keys_dir/example-backend.key)" \\
    -d '{"scene":"id=1","page":"pages/index/index"}' http://$openapi_listen/wxa/getwxacodeunlimit > code.png
The Cloud Run example, as the mini-program calls it:
  curl -s -H 'X-WX-Id: <id>' -H 'X-WX-Skey: <skey>' $gw/cloudrun/api/wx_openid
The app's access_token, as your backends get it:
  grpcurl -plaintext -H "authorization: Bearer \$(cat $keys_dir/admin.key)" \\
    $session_listen weapp.session.v1.SessionService/GetAccessToken
EOF

# Stay up while all of them run; if one dies, stop the others and fail.
set +e
wait -n "${pids[@]}"
status=$?
echo "a weapp process exited (status $status); stopping the stack" >&2
exit "$status"
