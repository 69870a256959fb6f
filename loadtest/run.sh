#!/usr/bin/env bash
# Redirect throughput and latency of the release binary, Kafka events included.
#
# The edge runs on core 0 with the embedded development Kafka, wrk on core 1, over
# loopback. Afterwards the edge's own counters show whether every click's event was
# queued and delivered (none dropped). Results go to loadtest/results/.
#
#   loadtest/run.sh                 # 15 s, 64 connections
#   DURATION=30s CONNECTIONS=128 loadtest/run.sh
#   OUTAGE=1 loadtest/run.sh        # the broker unreachable for the whole run:
#                                   # every event goes to the disk spool
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-15s}"
CONNECTIONS="${CONNECTIONS:-64}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/clickedge-ci/target}"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/clickedge"
mkdir -p loadtest/results
out="loadtest/results/$(date -u +%Y%m%dT%H%M%SZ)"

http=127.0.0.1:18080
admin=127.0.0.1:19090
edge_cpu=0; wrk_cpu=1
[ "$(nproc)" -ge 2 ] || wrk_cpu=0

spool=/var/tmp/clickedge-loadtest/spool
rm -rf "$spool"
kafka=()
if [ -n "${OUTAGE:-}" ]; then
  # Nothing listens on port 9 (discard): the broker is down from the start.
  kafka=(--kafka-brokers 127.0.0.1:9)
  out="$out-outage"
fi

RUST_LOG=warn taskset -c "$edge_cpu" "$bin" --http "$http" --admin "$admin" \
  --links examples/links.ndjson --spool-dir "$spool" --spool-max-bytes 4GiB \
  "${kafka[@]}" 2>"$out.edge.log" &
edge=$!
trap 'kill -TERM $edge 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fsS "http://$admin/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://$admin/readyz" >/dev/null

# Warm up, then measure.
taskset -c "$wrk_cpu" wrk -t1 -c"$CONNECTIONS" -d3s -s loadtest/clicks.lua "http://$http/" >/dev/null
taskset -c "$wrk_cpu" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s loadtest/clicks.lua \
  "http://$http/" | tee "$out.wrk.txt"

# Let the producer catch up, then read the edge's own counts.
sleep 3
curl -fsS "http://$admin/metrics" >"$out.metrics.txt"
echo
echo "click events (edge counters):"
grep -E '^clickedge_(click_events_total|spool_size_bytes|spool_backlog_bytes)' "$out.metrics.txt"
kill -TERM "$edge"; wait "$edge" || true
trap - EXIT
rm -rf "$spool"
echo "results in $out.*"
