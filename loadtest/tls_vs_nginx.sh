#!/usr/bin/env bash
# TLS side by side with nginx: the same certificate (ECDSA P-256), the same core.
#
# For each server (pinned to core 0; clients on core 1):
#  - full handshakes per second:    examples/tls_handshakes full (a new session each
#    time, one request per connection; openssl s_time 3.0 cannot send SNI)
#  - resumed handshakes per second: examples/tls_handshakes resumed
#  - HTTPS redirects per second:    wrk, 64 keep-alive connections
# nginx answers a static `return 302`; clickedge resolves the link, sets the
# cookie and writes a click event for every redirect.
#
# wrk takes its SNI from the URL's host, so acme.sjv.io must resolve to
# 127.0.0.1: the script adds that line to /etc/hosts if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${SECONDS_EACH:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/clickedge-ci/target}"
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light; }
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
grep -q ' acme.sjv.io$' /etc/hosts || echo '127.0.0.1 acme.sjv.io' >>/etc/hosts
cargo build --release --quiet --bin clickedge --example tls_handshakes
hs="$CARGO_TARGET_DIR/release/examples/tls_handshakes"
bin="$CARGO_TARGET_DIR/release/clickedge"
work=/var/tmp/clickedge-loadtest/tls-vs-nginx
rm -rf "$work" && mkdir -p "$work/certs" "$work/nginx"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -keyout "$work/certs/acme.key" -out "$work/certs/acme.crt" -subj /CN=acme.sjv.io \
  -addext subjectAltName=DNS:acme.sjv.io 2>/dev/null

cat >"$work/nginx/nginx.conf" <<CONF
worker_processes 1;
error_log $work/nginx/error.log;
pid $work/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  ssl_session_cache shared:SSL:10m;
  ssl_session_tickets on;
  ssl_protocols TLSv1.2 TLSv1.3;
  server {
    listen 127.0.0.1:18543 ssl http2;
    server_name acme.sjv.io;
    ssl_certificate $work/certs/acme.crt;
    ssl_certificate_key $work/certs/acme.key;
    location /c/ { return 302 https://www.acme.com/summer?utm_source=impact&clickid=static; }
  }
}
CONF

measure() { # name port
  local name=$1 port=$2 new reuse rps
  new=$(taskset -c 1 "$hs" "127.0.0.1:$port" acme.sjv.io "$SECONDS_EACH" full)
  reuse=$(taskset -c 1 "$hs" "127.0.0.1:$port" acme.sjv.io "$SECONDS_EACH" resumed)
  rps=$(taskset -c 1 wrk -t1 -c64 -d"${SECONDS_EACH}s" "https://acme.sjv.io:$port/c/1234/5678/9012" 2>/dev/null \
        | awk '/Requests\/sec/ {print $2}')
  printf '%-10s full handshakes/s %8.0f   resumed/s %8.0f   HTTPS redirects/s %8.0f\n' "$name" "$new" "$reuse" "$rps"
}

pkill -f "nginx -c $work" 2>/dev/null || true
taskset -c 0 nginx -c "$work/nginx/nginx.conf"
sleep 0.5
measure nginx 18543
kill "$(cat "$work/nginx/nginx.pid")"

rm -rf "$work/spool"
RUST_LOG=warn taskset -c 0 "$bin" --http 127.0.0.1:18480 --admin 127.0.0.1:19490 --https 127.0.0.1:18443 \
  --tls-certs "$work/certs" --spool-dir "$work/spool" 2>"$work/edge.log" &
edge=$!
trap 'kill -TERM $edge 2>/dev/null || true' EXIT
until curl -fsS http://127.0.0.1:19490/readyz >/dev/null 2>&1; do sleep 0.1; done
measure clickedge 18443
kill -TERM $edge; wait $edge || true
trap - EXIT
