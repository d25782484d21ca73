#!/usr/bin/env bash
# Fixed-rate latency of ack="durable" alone, for tuning the spool (scenario (d) of run.sh is
# the full comparison). One corepost shard pinned to CPU 1 with the discard sink and a fresh
# spool under target/, oha on CPU 0 for 10 s after one warm-up request; prints oha's rate and
# percentiles and the spool's commit counters.
#
# usage: benches/e2e/durable-probe.sh RATE [SEGMENT_BYTES] [COMMIT_WAIT_US]
#   needs target/release/corepost (cargo build --release) and oha on PATH.
set -euo pipefail
cd "$(dirname "$0")/../.."
RATE=${1:?rate (req/s)}
SEG=${2:-67108864}
WAIT=${3:-50}
PORT=${PORT:-18181}
D=$(mktemp -d -p "$PWD/target" durable-probe.XXXXXX)
# shellcheck source=benches/e2e/pinned-server.sh
. benches/e2e/pinned-server.sh
trap 'stop_pinned; rm -rf "$D"' EXIT
printf '[server]\nack = "durable"\n[spool]\ndir = "%s"\nsegment_bytes = %s\nmax_bytes = %s\ncommit_wait_us = %s\n' \
    "$D/spool" "$SEG" "$((SEG * 8))" "$WAIT" > "$D/c.toml"
start_pinned target/release/corepost "$D/c.toml" "$D/out" "$PORT" "$D/spill"
sleep 2
echo "rate=$RATE segment_bytes=$SEG commit_wait_us=$WAIT"
taskset -c 0 oha -z 10s -q "$RATE" -c 64 -m POST -D benches/workload/body10.json \
    -T application/json --latency-correction --no-tui "http://127.0.0.1:$PORT/" 2>&1 \
    | grep -E "Success rate|Requests/sec|50.00%|99.00%|99.90%"
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E "^corepost_spool_(commits|records)_total"
