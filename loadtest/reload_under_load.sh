#!/usr/bin/env bash
# Redirect latency while the whole link map is reloaded again and again.
#
# The edge serves a 1M-link file (loadtest/gen_links.py). wrk (64 connections,
# one core) clicks tracking links for DURATION: once steady, once while a loop
# POSTs /admin/reload back to back (each reload parses and swaps 1M links).
# Prints both latency distributions and the reloads done.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-15s}"
LINKS="${LINKS:-1000000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/clickedge-ci/target}"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/clickedge"
data=/var/tmp/clickedge-loadtest
mkdir -p "$data" loadtest/results
file="$data/links-$LINKS.ndjson"
[ -s "$file" ] || python3 loadtest/gen_links.py "$LINKS" "$file"
out="loadtest/results/reload-$(date -u +%Y%m%dT%H%M%SZ)"
token=loadtest-token-0123456789

rm -rf "$data/spool"
RUST_LOG=warn CLICKEDGE_ADMIN_TOKEN=$token "$bin" --links "$file" --http 127.0.0.1:18280 \
  --admin 127.0.0.1:19290 --spool-dir "$data/spool" 2>"$out.edge.log" &
edge=$!
trap 'kill -TERM $edge 2>/dev/null || true' EXIT
until curl -fsS http://127.0.0.1:19290/readyz >/dev/null 2>&1; do sleep 0.1; done

run_wrk() {
  LINKS=$LINKS taskset -c 1 wrk -t1 -c64 -d"$DURATION" --latency -s loadtest/scale_clicks.lua \
    http://127.0.0.1:18280/ | tee "$out.$1.txt" | grep -E "Requests/sec|50%|90%|99%|non-redirect"
}

taskset -c 1 wrk -t1 -c64 -d3s -s loadtest/scale_clicks.lua http://127.0.0.1:18280/ >/dev/null
echo "== steady"
run_wrk steady

echo "== while reloading $LINKS links back to back"
(
  n=0
  while [ ! -e "$data/stop-reloads" ]; do
    curl -fsS -X POST -H "Authorization: Bearer $token" http://127.0.0.1:19290/admin/reload >/dev/null
    n=$((n + 1))
  done
  echo "$n" >"$data/reloads"
) &
reloader=$!
rm -f "$data/stop-reloads"
run_wrk reloading
touch "$data/stop-reloads"; wait $reloader; rm -f "$data/stop-reloads"
echo "reloads done during the run: $(cat "$data/reloads")"
kill -TERM $edge; wait $edge || true
trap - EXIT
rm -rf "$data/spool"
