#!/usr/bin/env bash
# Start-up time and memory of the edge with CERTS certificates (default 10,000)
# under --tls-certs, against the same edge without TLS.
set -euo pipefail
cd "$(dirname "$0")/.."
CERTS="${CERTS:-10000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/clickedge-ci/target}"
cargo build --release --quiet --bin clickedge --example gen_certs
bin="$CARGO_TARGET_DIR/release/clickedge"
data=/var/tmp/clickedge-loadtest
certs="$data/certs-$CERTS"
[ -d "$certs" ] || "$CARGO_TARGET_DIR/release/examples/gen_certs" "$CERTS" "$certs"

measure() {
  rm -rf "$data/spool"
  local start ready rss
  start=$(date +%s.%N)
  RUST_LOG=warn "$bin" --http 127.0.0.1:18380 --admin 127.0.0.1:19390 --spool-dir "$data/spool" "$@" 2>/dev/null &
  local edge=$!
  until curl -fsS http://127.0.0.1:19390/readyz >/dev/null 2>&1; do sleep 0.05; done
  ready=$(echo "$(date +%s.%N) - $start" | bc)
  rss=$(awk '/VmRSS/ {print $2}' /proc/$edge/status)
  kill -TERM $edge; wait $edge || true
  printf '%.2f s to ready, RSS %d MB\n' "$ready" $((rss / 1024))
}
echo "without TLS:            $(measure)"
echo "with $CERTS certificates: $(measure --https 127.0.0.1:18443 --tls-certs "$certs")"
