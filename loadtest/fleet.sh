#!/usr/bin/env bash
# A fleet rolled under load (issue 14), one command: three edges behind HAProxy
# (health on /readyz, retries, redispatch), one tansu broker, a links topic,
# clients through HAProxy checking every answer; each edge restarted in turn
# the way a rollout does it (SIGTERM: readiness off, drain, flush, exit; a new
# process on the same spool; back in rotation), twice:
#   1. broker healthy, a link changed through the topic mid-rollout;
#   2. broker hung (SIGSTOP) for the whole rollout, back afterwards.
# These are the tests in tests/it/fleet.rs (CI runs them short, in debug), run
# here in release, one after the other, with more clients and longer steady
# phases. Each prints one result line; they also assert: 0 client-visible
# failures, 0 clicks lost (every click id a client saw read back from Kafka).
#
#   loadtest/fleet.sh
#   FLEET_CLIENTS=16 FLEET_PAUSE_MS=0 FLEET_STEADY_S=20 loadtest/fleet.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/clickedge-ci/target}"
command -v haproxy >/dev/null || { apt-get update -qq && apt-get install -y -qq haproxy; }
export TANSU_BIN="${TANSU_BIN:-$HOME/.cargo/bin/tansu}"
[ -x "$TANSU_BIN" ] || cargo install tansu --version 0.6.0 --locked --no-default-features \
  --features dynostore --target-dir /var/tmp/clickedge-ci/tansu-target

export FLEET_CLIENTS="${FLEET_CLIENTS:-8}" FLEET_PAUSE_MS="${FLEET_PAUSE_MS:-1}" \
  FLEET_STEADY_S="${FLEET_STEADY_S:-10}" CI="${CI:-1}"
mkdir -p loadtest/results
out="loadtest/results/fleet-$(date -u +%Y%m%dT%H%M%SZ).txt"
echo "clients=$FLEET_CLIENTS pause_ms=$FLEET_PAUSE_MS steady_s=$FLEET_STEADY_S cores=$(nproc)" | tee "$out"
cargo test --release --locked --test it -- fleet:: --nocapture --test-threads 1 2>&1 \
  | tee "$out.log" | grep -E '^fleet|^test |test result' | tee -a "$out"
