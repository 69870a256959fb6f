#!/usr/bin/env bash
# Instructions per redirect, counted by callgrind: deterministic where wall time on
# this VM moves ±20%, so a 1% change of the request path shows.
#
#   loadtest/instructions.sh                 # the release build of this checkout
#   BIN=/path/to/clickedge loadtest/instructions.sh   # another build (A/B)
#   SECONDS_UNDER_LOAD=20 CONNECTIONS=16 loadtest/instructions.sh
#   LINKS=file.ndjson EXTRA_ARGS="--geoip-db x.mmdb" loadtest/instructions.sh   # other links, flags
#
# The edge runs under `valgrind --tool=callgrind --separate-threads=yes` with the
# sample links, its events going to a tansu broker (outside valgrind, so the
# broker's work is not counted). After a warm-up the counters are zeroed, the edge
# idles for as long as it will then be loaded (background ticks: the event pump,
# librdkafka, the health monitor), and the counters are dumped; then zeroed, loaded
# with wrk (clicks.lua), dumped. Instructions per redirect = (loaded − idle) /
# redirects, per thread and in total; the top functions of the loaded run follow.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/clickedge-ci/target}"
SECONDS_UNDER_LOAD="${SECONDS_UNDER_LOAD:-10}"
CONNECTIONS="${CONNECTIONS:-16}"
command -v valgrind >/dev/null && command -v wrk >/dev/null || {
  apt-get update -qq && apt-get install -y -qq valgrind wrk
}
TANSU="${TANSU_BIN:-$HOME/.cargo/bin/tansu}"
[ -x "$TANSU" ] || cargo install tansu --version 0.6.0 --locked --no-default-features --features dynostore \
  --target-dir /var/tmp/clickedge-ci/tansu-target
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin clickedge
  BIN="$CARGO_TARGET_DIR/release/clickedge"
fi

work=/var/tmp/clickedge-loadtest/instructions
rm -rf "$work" && mkdir -p "$work"
"$TANSU" broker --listener-url tcp://127.0.0.1:19292 --advertised-listener-url tcp://127.0.0.1:19292 \
  --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
tansu=$!
trap 'kill $tansu 2>/dev/null || true; pkill -P $$ 2>/dev/null || true' EXIT
sleep 1
"$TANSU" topic create clicks --broker tcp://127.0.0.1:19292 --partitions 3 >/dev/null
"$TANSU" topic create actions --broker tcp://127.0.0.1:19292 --partitions 3 >/dev/null

RUST_LOG=warn valgrind --tool=callgrind --separate-threads=yes --compress-strings=no --compress-pos=no \
  --callgrind-out-file="$work/cg.%p" \
  "$BIN" --http 127.0.0.1:18380 --admin 127.0.0.1:19380 --links "${LINKS:-examples/links.ndjson}" ${EXTRA_ARGS:-} \
  --kafka-brokers 127.0.0.1:19292 --spool-dir "$work/spool" 2>"$work/edge.log" &
edge=$!
for _ in $(seq 600); do curl -fsS http://127.0.0.1:19380/readyz >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS http://127.0.0.1:19380/readyz >/dev/null
wrk -t1 -c"$CONNECTIONS" -d3s -s loadtest/clicks.lua http://127.0.0.1:18380/ >/dev/null

measure() { # label action...
  local label=$1; shift
  callgrind_control -z "$edge" >/dev/null 2>&1
  "$@"
  callgrind_control -d "$label" "$edge" >/dev/null 2>&1
  sleep 1
}
measure idle sleep "$SECONDS_UNDER_LOAD"
measure load wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_UNDER_LOAD}s" -s loadtest/clicks.lua http://127.0.0.1:18380/ >"$work/wrk.txt"
requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
kill -TERM "$edge"; wait "$edge" 2>/dev/null || true

python3 - "$work" "$edge" "$requests" "${TOP:-25}" <<'PY'
import collections, glob, re, sys
work, pid, requests, top = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def dumps(label):
    """{thread: (Ir, {function: self Ir})} of the dumps taken with this label."""
    out = {}
    for path in glob.glob(f"{work}/cg.{pid}.*-*"):
        text = open(path, errors="replace").read()
        if f"Trigger: dump {label}" not in text:
            continue
        functions, fn, skip = collections.Counter(), None, False
        for line in text.splitlines():
            if line.startswith("fn="):
                fn = line[3:]
            elif line.startswith("calls="):
                skip = True  # the next line is the call's inclusive cost
            elif line[:1].isdigit() or line[:1] in "+-*":
                if skip:
                    skip = False
                elif fn is not None and len(line.split()) > 1:
                    functions[fn] += int(line.split()[1])
        thread = int(re.search(r"^thread: (\d+)", text, re.M).group(1))
        out[thread] = (int(re.search(r"^summary: (\d+)", text, re.M).group(1)), functions)
    return out
idle, load = dumps("idle"), dumps("load")
print(f"{requests} redirects under callgrind; instructions per redirect (loaded minus idle):")
total, functions = 0, collections.Counter()
for thread in sorted(load):
    before = idle.get(thread, (0, collections.Counter()))
    per = (load[thread][0] - before[0]) / requests
    total += per
    functions.update(load[thread][1])
    functions.subtract(before[1])
    if abs(per) >= 10:
        print(f"  thread {thread:>2}: {per:>8,.0f}")
print(f"  total    : {total:>8,.0f}")
print(f"top functions (self instructions per redirect, all threads):")
for fn, ir in functions.most_common(top):
    print(f"  {ir / requests:>8,.0f}  {fn[:110]}")

# The edge workers' instructions by step: their functions grouped by what they
# belong to (the first pattern that matches).
steps = [
    ("HTTP/1 (hyper, http, httparse, bytes)", r"hyper|http::|httparse|bytes::"),
    ("event JSON (to_json, strings, timestamp)", r"clickedge::event"),
    ("link lookup (host map, tracking table, packed ids)", r"clickedge::links::|resolve::|clickedge::host::|hashbrown"),
    ("Location (query parse and merge)", r"destination::|IncomingQuery|percent_encoding|form_urlencoded"),
    ("click and visitor ids (ULID, text)", r"ulid|click_id|ClickId|from_utf8"),
    ("User-Agent (remembered)", r"useragent|isbot|woothee|regex"),
    ("request headers, cookie", r"server::request::|cookie"),
    ("hand-off to the pump (channel)", r"EventSink|crossbeam"),
    ("metrics", r"metrics"),
    ("allocator and copies", r"malloc|free|memcpy|memmove|memset|realloc|_int_|memchr|memrchr|memcmp"),
    ("runtime, sockets, timers (tokio, limits)", r"tokio|mio|epoll|recv|send|writev|readv|Timespec|clock|Timed|limits|sleep|syscall"),
    ("the edge handler itself (edge.rs, spawn_connection)", r"server::edge|spawn_connection|server::service|client_ip"),
    ("formatting and strings (core::fmt, str)", r"core::fmt|core::str|alloc::fmt|String|pad_integral"),
]
workers = collections.Counter()
for thread in load:
    # The workers serve connections (edge::handle may be inlined into the service).
    if any("edge::handle" in fn or "connection::service" in fn for fn in load[thread][1]):
        workers.update(load[thread][1])
        workers.subtract(idle.get(thread, (0, collections.Counter()))[1])
by_step = collections.Counter()
for fn, ir in workers.items():
    step = next((name for name, pattern in steps if re.search(pattern, fn)), "other")
    by_step[step] += ir
print(f"edge workers by step: {sum(workers.values()) / requests:,.0f} instructions per redirect")
for step, ir in by_step.most_common():
    print(f"| {step} | {ir / requests:,.0f} |")
PY
echo "dumps: $work (callgrind_annotate --inclusive=no FILE for one thread)"
