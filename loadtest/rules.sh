#!/usr/bin/env bash
# What link rules and a country database cost a click (issue 18's target: at
# most 5% more CPU per click). Instructions per redirect under callgrind
# (loadtest/instructions.sh: deterministic, where wall time on this VM moves
# ±20%), the sample links as they are against the same links each with five
# rules that do not hold for the load's iPhone clicks (so all five are
# evaluated: device, os, country, language and query conditions) and
# --geoip-db with a database placing the client (a lookup on every click).
#
#   loadtest/rules.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/clickedge-ci/target}"
perl -MMaxMind::DB::Writer::Tree -e1 2>/dev/null || { apt-get update -qq && apt-get install -y -qq libmaxmind-db-writer-perl; }
cargo build --release --quiet --bin clickedge
work=/var/tmp/clickedge-loadtest/rules
rm -rf "$work" && mkdir -p "$work" loadtest/results
perl tests/it/fixtures/write_geoip.pl "$work/country.mmdb" 1790000000 127.0.0.0/8=FR 203.0.113.0/24=DE
python3 - "$work/rules.ndjson" <<'PY'
import json, sys
rules = [
    {"if": {"device": "desktop"}, "url": "https://www.acme.com/desktop"},
    {"if": {"os": "android"}, "url": "https://www.acme.com/android"},
    {"if": {"country": ["US", "GB", "DE"]}, "url": "https://www.acme.com/intl"},
    {"if": {"language": ["de", "nl"]}, "url": "https://www.acme.com/de"},
    {"if": {"query": {"utm_campaign": "vip"}}, "url": "https://www.acme.com/vip"},
]
with open("examples/links.ndjson") as src, open(sys.argv[1], "w") as out:
    for line in src:
        if line.strip() and not line.startswith("#"):
            record = json.loads(line)
            if record["type"] in ("tracking", "vanity", "domain"):
                record["rules"] = rules
            line = json.dumps(record) + "\n"
        out.write(line)
PY
out="loadtest/results/rules-$(date -u +%Y%m%dT%H%M%SZ).txt"
summary() { sed -n '/thread  8/p;/edge workers by step/p'; }
{
  echo "== the sample links, no --geoip-db"
  loadtest/instructions.sh | summary
  echo "== the sample links, --geoip-db (a lookup per click)"
  EXTRA_ARGS="--geoip-db $work/country.mmdb" loadtest/instructions.sh | summary
  echo "== five rules per link (none holds), --geoip-db"
  LINKS="$work/rules.ndjson" EXTRA_ARGS="--geoip-db $work/country.mmdb" loadtest/instructions.sh | summary
  echo "(thread 8: the event pump; the edge workers' figure sums the worker threads)"
} | tee "$out"
echo "written: $out"
