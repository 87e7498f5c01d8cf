#!/bin/sh
# First start only: a self-signed certificate for local use, so HTTPS/WSS work out of the box.
# For production, put a real certificate in the `tls` volume (fullchain.pem, privkey.pem).
set -eu
if [ -s /tls/fullchain.pem ] && [ -s /tls/privkey.pem ]; then
  echo "certificate present; keeping it"
  exit 0
fi
apk add --no-cache openssl >/dev/null
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -days 825 \
  -subj "/CN=${TLS_COMMON_NAME:-localhost}" \
  -addext "subjectAltName=DNS:${TLS_COMMON_NAME:-localhost},DNS:localhost,IP:127.0.0.1" \
  -keyout /tls/privkey.pem -out /tls/fullchain.pem
chmod 644 /tls/fullchain.pem
echo "self-signed certificate for ${TLS_COMMON_NAME:-localhost} created"
