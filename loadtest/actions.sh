#!/usr/bin/env bash
# Actions per second on one edge core, and the edge's CPU per action (SPEC §8):
# API batches of 100 sales (POST /v1/actions) and single-sale pixels (GET
# /v1/px), each action checked, journaled and delivered to a real tansu broker.
# Clicks on the same core are measured alongside, for scale.
#
#   loadtest/actions.sh                     # 15 s per mode
#   DURATION=5s loadtest/actions.sh
#
# The edge runs pinned to SERVER_CPUS (core 0, one worker), wrk and tansu to
# LOAD_CPUS (core 1). CPU is perf stat's task-clock over the run, every thread
# of the edge (workers, event pump, librdkafka). Output: loadtest/results/actions-*.md
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-15s}"
CONNECTIONS="${CONNECTIONS:-16}"
SERVER_CPUS="${SERVER_CPUS:-0}"
LOAD_CPUS="${LOAD_CPUS:-1}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/clickedge-ci/target}"
for tool in wrk perf curl; do
  command -v $tool >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk linux-perf curl; break; }
done
TANSU="${TANSU_BIN:-$HOME/.cargo/bin/tansu}"
[ -x "$TANSU" ] || cargo install tansu --version 0.6.0 --locked --no-default-features --features dynostore \
  --target-dir /var/tmp/clickedge-ci/tansu-target
cargo build --release --quiet --bin clickedge
bin="${CLICKEDGE_BIN:-$CARGO_TARGET_DIR/release/clickedge}"
work=/var/tmp/clickedge-loadtest/actions-run
rm -rf "$work" && mkdir -p "$work" loadtest/results
out="loadtest/results/actions-$(date -u +%Y%m%dT%H%M%SZ).md"

taskset -c "$LOAD_CPUS" "$TANSU" broker --listener-url tcp://127.0.0.1:19392 --advertised-listener-url tcp://127.0.0.1:19392 \
  --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
tansu=$!
trap 'kill $tansu 2>/dev/null || true; pkill -P $$ 2>/dev/null || true' EXIT
sleep 1
for topic in clicks actions; do
  "$TANSU" topic create $topic --broker tcp://127.0.0.1:19392 --partitions 3 >/dev/null
done
# The embedded sample links: brand acme, its development key, promo JANE10.
taskset -c "$SERVER_CPUS" "$bin" --http 127.0.0.1:18680 --admin 127.0.0.1:19680 --workers 1 \
  --kafka-brokers 127.0.0.1:19392 --spool-dir "$work/spool" >"$work/edge.log" 2>&1 &
edge=$!
until curl -sf 127.0.0.1:19680/readyz >/dev/null; do sleep 0.1; done

echo "| what | requests/s | actions/s | p50 ms | p99 ms | CPU µs/action | CPU µs/request | action events delivered |" >"$out"
echo "|---|---|---|---|---|---|---|---|" >>"$out"
delivered() { curl -s 127.0.0.1:19680/metrics | awk '/^clickedge_action_events_total\{result="delivered"\}/ {print $2}'; }
measure() { # name actions-per-request wrk-args...
  local name=$1 per=$2; shift 2
  taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNECTIONS" -d2s "$@" >/dev/null # warm-up
  local before; before=$(delivered)
  perf stat -x, -e task-clock -p "$edge" -o "$work/perf" &
  local perf=$!
  sleep 0.2
  taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "$@" >"$work/wrk"
  kill -INT $perf; wait $perf 2>/dev/null || true
  sleep 2 # the last deliveries
  local reqs rps p50 p99 errors
  reqs=$(awk '/^REQUESTS/ {print $2}' "$work/wrk")
  errors=$(awk '/^REQUESTS/ {print $4}' "$work/wrk")
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk")
  read -r p50 p99 < <(awk '/^LATENCY_US/ {gsub(/p[0-9]+=/, ""); print $2/1000, $4/1000}' "$work/wrk")
  [ "$errors" = 0 ] || echo "warning: $errors requests answered with an error" >&2
  awk -F, -v r="$reqs" -v per="$per" -v rps="$rps" -v name="$name" -v p50="$p50" -v p99="$p99" \
    -v got="$(echo "$(delivered) - $before" | bc)" \
    '/task-clock/ {printf "| %s | %.0f | %.0f | %.2f | %.2f | %.2f | %.1f | %d |\n", name, rps, rps * per, p50, p99, $1 * 1000 / (r * per), $1 * 1000 / r, got}' \
    "$work/perf" | tee -a "$out"
}
MODE=api measure "API, batches of 100 sales" 100 -s loadtest/actions.lua http://127.0.0.1:18680/
MODE=pixel measure "pixel, one sale per GET" 1 -s loadtest/actions.lua http://127.0.0.1:18680/
echo "(clicks for scale: loadtest/compare.sh; API counts every action of a 202, pixels every 200; CPU includes the journal and Kafka delivery)" >>"$out"
kill -TERM $edge; wait $edge || true
echo "written: $out"
