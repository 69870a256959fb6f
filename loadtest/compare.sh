#!/usr/bin/env bash
# clickedge side by side with nginx, HAProxy and a constant-302 hyper server (the
# stack's floor), on the same redirects (loadtest/dataset.py), one server core.
#
#   loadtest/compare.sh                      # 1M links, 20 s per server
#   LINKS=10000 DURATION=10s loadtest/compare.sh
#   SERVERS=clickedge loadtest/compare.sh    # only some (floor nginx haproxy clickedge)
#   SERVER_CPUS=0,1 LOAD_CPUS=0,1 loadtest/compare.sh   # two server cores (shared with wrk)
#   MIX=hard loadtest/compare.sh             # issue 15's harder link mix (dataset.py --mix)
#   CLICKEDGE_BIN=/path/to/clickedge SERVERS=clickedge loadtest/compare.sh   # another build
#
# Each server runs pinned to SERVER_CPUS (core 0; one nginx worker, HAProxy
# thread, clickedge worker per core), wrk (64 connections, a Lua target list, a thread
# per core) to LOAD_CPUS (core 1). Recorded: redirects/s, p50/p99/p99.9, server CPU
# time per redirect (perf stat task-clock over the run, every thread of the
# server), its ratio to nginx's, syscalls and context switches per request (perf
# stat software counters: deterministic where time is noisy), RSS, time to ready.
# clickedge writes every click's event to a real tansu broker. Output:
# loadtest/results/compare-*.md and .png.
set -euo pipefail
cd "$(dirname "$0")/.."
LINKS="${LINKS:-1000000}"
MIX="${MIX:-shared}"
DURATION="${DURATION:-20s}"
CONNECTIONS="${CONNECTIONS:-64}"
SERVERS="${SERVERS:-floor nginx haproxy clickedge}"
SERVER_CPUS="${SERVER_CPUS:-0}"
LOAD_CPUS="${LOAD_CPUS:-1}"
cores=$(echo "$SERVER_CPUS" | tr ',' '\n' | wc -l)
load_threads=$(echo "$LOAD_CPUS" | tr ',' '\n' | wc -l)
wanted() { [[ " $SERVERS " == *" $1 "* ]]; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/clickedge-ci/target}"

need=()
for tool in wrk nginx haproxy curl bc perf; do command -v $tool >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  pkgs=("${need[@]/nginx/nginx-light}")
  pkgs=("${pkgs[@]/perf/linux-perf}")
  apt-get update -qq && apt-get install -y -qq "${pkgs[@]}"
fi
python3 -c 'import matplotlib' 2>/dev/null || pip install -q matplotlib
TANSU="${TANSU_BIN:-$HOME/.cargo/bin/tansu}"
[ -x "$TANSU" ] || cargo install tansu --version 0.6.0 --locked --no-default-features --features dynostore \
  --target-dir /var/tmp/clickedge-ci/tansu-target

cargo build --release --quiet --bin clickedge --example floor
bin="${CLICKEDGE_BIN:-$CARGO_TARGET_DIR/release/clickedge}" # CLICKEDGE_BIN: another build (A/B)
data=/var/tmp/clickedge-loadtest/compare-$LINKS-$MIX
[ -s "$data/targets.txt" ] || python3 loadtest/dataset.py "$LINKS" "$data" --mix "$MIX"
work=/var/tmp/clickedge-loadtest/compare-run
rm -rf "$work" && mkdir -p "$work" loadtest/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out="loadtest/results/compare-$stamp"
# CPU time the hypervisor took from this VM: a noisy neighbour shows here.
steal_and_total() { awk '/^cpu / {print $9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
read -r steal0 total0 < <(steal_and_total)
rss_mb() { for p in $1; do cat "/proc/$p/status"; done | awk '/VmRSS/ {kb += $2} END {printf "%d", kb / 1024}'; }
# Seconds from $launched (set just before a server is started) to its first redirect.
wait_ready() { # url host
  local start=$launched tries=0
  until [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $2" "$1")" = 302 ]; do
    tries=$((tries + 1))
    [ $tries -lt 3000 ] || { echo "no redirect from $1 within a minute" >&2; exit 1; }
    sleep 0.02
  done
  echo "$(date +%s.%N) - $start" | bc
}

# The broker for clickedge's events, beside the load generator: its work is not the
# server's, and must not take the server's core.
taskset -c "$LOAD_CPUS" "$TANSU" broker --listener-url tcp://127.0.0.1:19192 --advertised-listener-url tcp://127.0.0.1:19192 \
  --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
tansu=$!
trap 'kill $tansu 2>/dev/null || true; pkill -P $$ 2>/dev/null || true' EXIT
sleep 1
"$TANSU" topic create clicks --broker tcp://127.0.0.1:19192 --partitions 3 >/dev/null
"$TANSU" topic create actions --broker tcp://127.0.0.1:19192 --partitions 3 >/dev/null

read -r probe_host probe_path < <(head -1 "$data/targets.txt")
echo "| server | redirects/s | p50 ms | p99 ms | p99.9 ms | CPU µs/redirect | × nginx | syscalls/req | ctx switches/req | RSS MB | ready s |" >"$out.md"
echo "|---|---|---|---|---|---|---|---|---|---|---|" >>"$out.md"
nginx_cpu=""

run() { # name port pid ready
  local name=$1 port=$2 pid=$3 ready=$4
  # Warm-up (connections, caches, the first events' batches), not counted.
  TARGETS="$data/targets.txt" taskset -c "$LOAD_CPUS" wrk -t"$load_threads" -c"$CONNECTIONS" -d2s -s loadtest/targets.lua \
    "http://127.0.0.1:$port/" >/dev/null
  perf stat -x, -e task-clock,context-switches,raw_syscalls:sys_enter -p "${pid// /,}" -o "$work/$name.perf" &
  local perf=$!
  sleep 0.2
  TARGETS="$data/targets.txt" taskset -c "$LOAD_CPUS" wrk -t"$load_threads" -c"$CONNECTIONS" -d"$DURATION" -s loadtest/targets.lua \
    "http://127.0.0.1:$port/" >"$work/$name.wrk"
  kill -INT $perf; wait $perf 2>/dev/null || true
  local rps reqs p50 p99 p999 cpu ratio syscalls switches
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/$name.wrk")
  reqs=$(awk '/^REQUESTS/ {print $2}' "$work/$name.wrk")
  read -r p50 p99 p999 < <(awk '/^LATENCY_US/ {gsub(/p[0-9]+=/, ""); print $2/1000, $4/1000, $5/1000}' "$work/$name.wrk")
  # perf counted a little longer than wrk ran (its start, the 0.2 s before wrk):
  # idle time, which adds nothing to a busy server's counters but its idle ticks.
  cpu=$(awk -F, -v r="$reqs" '/task-clock/ {printf "%.2f", $1 * 1000 / r}' "$work/$name.perf")
  syscalls=$(awk -F, -v r="$reqs" '/sys_enter/ {printf "%.2f", $1 / r}' "$work/$name.perf")
  switches=$(awk -F, -v r="$reqs" '/context-switches/ {printf "%.3f", $1 / r}' "$work/$name.perf")
  [[ $name == nginx* ]] && nginx_cpu=$cpu
  ratio=$( [ -n "$nginx_cpu" ] && printf '%.2f' "$(echo "scale=4; $cpu / $nginx_cpu" | bc)" || echo "-")
  printf '| %s | %.0f | %.2f | %.2f | %.2f | %s | %s | %s | %s | %s | %.2f |\n' \
    "$name" "$rps" "$p50" "$p99" "$p999" "$cpu" "$ratio" "$syscalls" "$switches" "$(rss_mb "$pid")" "$ready" | tee -a "$out.md"
  grep -E "^REQUESTS" "$work/$name.wrk" >&2
}

# nginx: map $host$uri, one worker.
if wanted nginx; then
cat >"$work/nginx.conf" <<CONF
worker_processes $cores;
error_log $work/nginx-error.log;
pid $work/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  map_hash_max_size 4194304;
  map_hash_bucket_size 256;
  map \$host\$uri \$target { default ""; include $data/nginx.map; }
  map \$host \$fallback { default ""; include $data/nginx-fallback.map; }
  server {
    listen 127.0.0.1:18580 default_server;
    location / {
      if (\$target != "") { return 302 \$target; }
      if (\$fallback != "") { return 302 \$fallback; }
      return 404;
    }
  }
}
CONF
launched=$(date +%s.%N) # nginx loads its maps before it daemonizes: counted
taskset -c "$SERVER_CPUS" nginx -c "$work/nginx.conf"
ready=$(wait_ready "http://127.0.0.1:18580$probe_path" "$probe_host")
pid=$(pgrep -d' ' -f "nginx: worker process") # every worker's
run "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') (map, $cores worker)" 18580 "$pid" "$ready"
kill "$(cat "$work/nginx.pid")"
fi

# The floor: constant 302.
if wanted floor; then
launched=$(date +%s.%N)
taskset -c "$SERVER_CPUS" "$CARGO_TARGET_DIR/release/examples/floor" 127.0.0.1:18780 &
pid=$!; ready=$(wait_ready "http://127.0.0.1:18780$probe_path" "$probe_host")
run "hyper floor (constant 302)" 18780 $pid "$ready"; kill $pid
fi

# HAProxy: map redirect, one thread.
if wanted haproxy; then
cat >"$work/haproxy.cfg" <<CONF
global
  nbthread $cores
  maxconn 4096
defaults
  mode http
  timeout client 30s
  timeout server 30s
  timeout connect 5s
frontend edge
  bind 127.0.0.1:18680
  http-request redirect location %[base,map($data/haproxy.map)] code 302 if { base,map($data/haproxy.map) -m found }
  http-request redirect location %[req.hdr(host),map($data/haproxy-fallback.map)] code 302 if { req.hdr(host),map($data/haproxy-fallback.map) -m found }
  http-request return status 404
CONF
launched=$(date +%s.%N)
taskset -c "$SERVER_CPUS" haproxy -f "$work/haproxy.cfg" -q &
pid=$!; ready=$(wait_ready "http://127.0.0.1:18680$probe_path" "$probe_host")
run "HAProxy $(haproxy -v | awk 'NR==1 {print $3}') (map, $cores thread)" 18680 $pid "$ready"; kill $pid
fi

# clickedge: events on, to tansu.
touch "$work/clickedge-events.txt"
if wanted clickedge; then
rm -rf "$work/spool"
launched=$(date +%s.%N)
RUST_LOG=warn taskset -c "$SERVER_CPUS" "$bin" --links "$data/links.ndjson" --http 127.0.0.1:18480 --admin 127.0.0.1:19480 \
  --kafka-brokers 127.0.0.1:19192 --spool-dir "$work/spool" 2>"$work/clickedge.log" &
pid=$!; ready=$(wait_ready "http://127.0.0.1:18480$probe_path" "$probe_host")
run "clickedge $(grep -m1 '^version' Cargo.toml | cut -d'"' -f2) (events to tansu)" 18480 $pid "$ready"
sleep 2
curl -s http://127.0.0.1:19480/metrics | grep -E '^clickedge_click_events_total' >"$work/clickedge-events.txt"
kill -TERM $pid; wait $pid || true
fi

read -r steal1 total1 < <(steal_and_total)
steal=$(echo "scale=1; 100 * ($steal1 - $steal0) / ($total1 - $total0)" | bc)
{
  echo
  echo "CPU stolen by the hypervisor during the run: $steal% (figures from a run with more than ~1% are noise)."
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); each server pinned to cores $SERVER_CPUS, wrk to cores $LOAD_CPUS;"
  echo "$LINKS links, $CONNECTIONS connections, $DURATION per server. clickedge's events: $(tr '\n' ' ' <"$work/clickedge-events.txt")"
} >>"$out.md"
python3 loadtest/plot.py "$out.md" "$out.png"
echo "wrote $out.md and $out.png"
