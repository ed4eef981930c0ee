#!/bin/sh
# Render templates/*.template into OUT_DIR (default: /etc/nginx/conf.d) from VLLAMA_PROXY_*
# environment variables, with the defaults below. Only ${VLLAMA_PROXY_*} is substituted:
# Nginx's own $variables pass through. Used as it is by compose (mounted into
# /docker-entrypoint.d/ of the official image), by Ansible and by the tests.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-/etc/nginx/conf.d}
templates=${VLLAMA_PROXY_TEMPLATES:-$here/templates}

: "${VLLAMA_PROXY_HOSTNAME:=localhost}"
: "${VLLAMA_PROXY_BIND:=0.0.0.0}"
: "${VLLAMA_PROXY_HTTP_PORT:=80}"
: "${VLLAMA_PROXY_HTTPS_PORT:=443}"
# ":PORT" when clients reach HTTPS on a port other than 443 (the redirect's target).
: "${VLLAMA_PROXY_REDIRECT_PORT:=}"
: "${VLLAMA_PROXY_TLS_CERT:=/etc/vllama/tls/cert.pem}"
: "${VLLAMA_PROXY_TLS_KEY:=/etc/vllama/tls/key.pem}"
: "${VLLAMA_PROXY_UPSTREAM:=127.0.0.1:11434}"
# Façades taken out of rotation (a rolling upgrade drains them), from VLLAMA_PROXY_UPSTREAM.
: "${VLLAMA_PROXY_DRAINING:=}"
# Passive checks and retries (the Caddyfile reads the same names).
: "${VLLAMA_PROXY_FAIL_DURATION:=10s}"
: "${VLLAMA_PROXY_RETRY_DURATION:=10s}"
: "${VLLAMA_PROXY_RETRY_TRIES:=3}"
: "${VLLAMA_PROXY_MONITORING_CIDRS:=127.0.0.1/32}"
: "${VLLAMA_PROXY_TRUSTED_PROXIES:=127.0.0.1/32}"
: "${VLLAMA_PROXY_MAX_BODY_BYTES:=33554432}"
: "${VLLAMA_PROXY_RATE_LIMIT:=10r/s}"
: "${VLLAMA_PROXY_RATE_BURST:=20}"
: "${VLLAMA_PROXY_RETRY_AFTER:=1}"
: "${VLLAMA_PROXY_CONN_LIMIT:=64}"
: "${VLLAMA_PROXY_READ_TIMEOUT:=3600s}"
: "${VLLAMA_PROXY_ACCESS_LOG:=/var/log/nginx/vllama-access.log}"
: "${VLLAMA_PROXY_METRICS_BIND:=0.0.0.0}"
: "${VLLAMA_PROXY_METRICS_PORT:=2020}"

# Lists (comma or space separated) become one Nginx statement per entry.
VLLAMA_PROXY_UPSTREAM_SERVERS=""
draining=" $(echo "$VLLAMA_PROXY_DRAINING" | tr ',' ' ') "
for server in $(echo "$VLLAMA_PROXY_UPSTREAM" | tr ',' ' '); do
  line="server $server max_fails=1 fail_timeout=$VLLAMA_PROXY_FAIL_DURATION"
  case "$draining" in *" $server "*) line="$line down" ;; esac
  VLLAMA_PROXY_UPSTREAM_SERVERS="$VLLAMA_PROXY_UPSTREAM_SERVERS    $line;
"
done
VLLAMA_PROXY_UPSTREAM_SERVERS=${VLLAMA_PROXY_UPSTREAM_SERVERS%?}  # no newline after the last
VLLAMA_PROXY_MONITORING_GEO=""
VLLAMA_PROXY_REAL_IP_FROM=""
for cidr in $(echo "$VLLAMA_PROXY_MONITORING_CIDRS" | tr ',' ' '); do
  VLLAMA_PROXY_MONITORING_GEO="$VLLAMA_PROXY_MONITORING_GEO $cidr 1;"
done
for cidr in $(echo "$VLLAMA_PROXY_TRUSTED_PROXIES" | tr ',' ' '); do
  VLLAMA_PROXY_REAL_IP_FROM="$VLLAMA_PROXY_REAL_IP_FROM set_real_ip_from $cidr;"
done
export VLLAMA_PROXY_HOSTNAME VLLAMA_PROXY_BIND VLLAMA_PROXY_HTTP_PORT VLLAMA_PROXY_HTTPS_PORT \
  VLLAMA_PROXY_TLS_CERT VLLAMA_PROXY_TLS_KEY VLLAMA_PROXY_UPSTREAM VLLAMA_PROXY_MAX_BODY_BYTES \
  VLLAMA_PROXY_RATE_LIMIT VLLAMA_PROXY_RATE_BURST VLLAMA_PROXY_RETRY_AFTER \
  VLLAMA_PROXY_CONN_LIMIT VLLAMA_PROXY_READ_TIMEOUT VLLAMA_PROXY_ACCESS_LOG \
  VLLAMA_PROXY_METRICS_BIND VLLAMA_PROXY_METRICS_PORT VLLAMA_PROXY_REDIRECT_PORT \
  VLLAMA_PROXY_MONITORING_GEO VLLAMA_PROXY_REAL_IP_FROM VLLAMA_PROXY_UPSTREAM_SERVERS \
  VLLAMA_PROXY_RETRY_TRIES VLLAMA_PROXY_RETRY_DURATION

# An explicit list: envsubst must leave $host, $request_id... alone.
vars=$(env | sed -n 's/^\(VLLAMA_PROXY_[A-Z_]*\)=.*/${\1}/p' | tr '\n' ' ')
mkdir -p "$out"
for t in "$templates"/*.template; do
  name=$(basename "$t" .template)
  envsubst "$vars" <"$t" >"$out/$name"
done
echo "vllama proxy: rendered templates into $out"
