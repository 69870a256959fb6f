#!/usr/bin/env bash
# Load time and memory of the link map at 1M and 10M links (SIZES to change).
#
#   loadtest/links_scale.sh                        # gen_links.py's records
#   MIX=hard SIZES=1000000 loadtest/links_scale.sh # dataset.py --mix hard|shared
#   BIN=/path/to/clickedge ...                     # another build (A/B)
#
# For each size: generate the file once (loadtest/gen_links.py, or with MIX
# loadtest/dataset.py), then
#  - `clickedge --check --links FILE` under /usr/bin/time: load time, peak RSS;
#  - the edge itself serving FILE: time to /readyz, its RSS once ready and its
#    peak RSS while loading (VmHWM).
# Results go to loadtest/results/links-scale-*.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES="${SIZES:-1000000 10000000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/clickedge-ci/target}"
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN="$CARGO_TARGET_DIR/release/clickedge"
fi
bin="$BIN"
data=/var/tmp/clickedge-loadtest
mkdir -p "$data" loadtest/results
out="loadtest/results/links-scale-$(date -u +%Y%m%dT%H%M%SZ).txt"

for n in $SIZES; do
  if [ -n "${MIX:-}" ]; then
    file="$data/mem-$MIX-$n/links.ndjson"
    [ -s "$file" ] || python3 loadtest/dataset.py "$n" "$data/mem-$MIX-$n" --mix "$MIX" >/dev/null
  else
    file="$data/links-$n${DISTINCT_URLS:+-distinct}.ndjson"
    [ -s "$file" ] || python3 loadtest/gen_links.py "$n" "$file"
  fi
  size=$(du -h "$file" | cut -f1)
  /usr/bin/time -f '%e %M' -o "$data/time.txt" "$bin" --check --links "$file" >/dev/null
  read -r check_s check_kb <"$data/time.txt"

  rm -rf "$data/spool"
  start=$(date +%s.%N)
  RUST_LOG=warn "$bin" --links "$file" --http 127.0.0.1:18180 --admin 127.0.0.1:19190 \
    --spool-dir "$data/spool" 2>/dev/null &
  edge=$!
  until curl -fsS http://127.0.0.1:19190/readyz >/dev/null 2>&1; do sleep 0.05; done
  ready=$(echo "$(date +%s.%N) - $start" | bc)
  rss_kb=$(awk '/VmRSS/ {print $2}' /proc/$edge/status)
  peak_kb=$(awk '/VmHWM/ {print $2}' /proc/$edge/status)
  kill -TERM $edge; wait $edge || true

  printf '%s links%s (%s file): --check %.2f s, peak RSS %d MB; edge ready in %.2f s, RSS %d MB serving, %d MB peak\n' \
    "$n" "${MIX:+ ($MIX mix)}" "$size" "$check_s" $((check_kb / 1024)) "$ready" $((rss_kb / 1024)) $((peak_kb / 1024)) | tee -a "$out"
done
