#!/bin/bash
# Calls per request of a few functions, counted by uprobes with `perf stat` over a 2 s window
# of a one-shard queued server (CPU 1) under `wrk -t1 -c64` body10 (CPU 0).
#   allocs: mimalloc's mi_malloc_aligned and mi_realloc_aligned in the server binary
#   clock:  libc's clock_gettime, which std's Instant::now and SystemTime::now call (the
#           coarse clocks of src/clock.rs go to the vDSO without libc and are not counted)
# usage: benches/e2e/per-request.sh allocs|clock BINARY PORT   (root: uprobes)
set -euo pipefail
WHAT=${1:?allocs or clock}; BIN=$(readlink -f "${2:?binary}"); PORT=${3:?port}
case $WHAT in
    allocs) PROBES=("$BIN" "cp:malloc=mi_malloc_aligned" "cp:realloc=mi_realloc_aligned") ;;
    clock) PROBES=("$(ldd "$BIN" | awk '/libc.so/ {print $3}')" "cp:clock_gettime=clock_gettime") ;;
    *) echo "allocs or clock, not $WHAT" >&2; exit 2 ;;
esac
perf probe -d 'cp:*' >/dev/null 2>&1 || true
for p in "${PROBES[@]:1}"; do perf probe -x "${PROBES[0]}" -a "$p" >/dev/null 2>&1; done
taskset -c 1 "$BIN" serve --listen "127.0.0.1:$PORT" --cores 1 --sink discard \
    --spill-dir "/tmp/spill-$PORT" > "/tmp/per-request-$PORT.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; perf probe -d "cp:*" >/dev/null 2>&1 || true' EXIT
sleep 2
cd "$(dirname "$0")/../workload"
BODY=body10.json taskset -c 0 wrk -t1 -c64 -d6s -s post.lua "http://127.0.0.1:$PORT/v1/payloads" > /dev/null &
sleep 2
served() { curl -s "127.0.0.1:$PORT/metrics" | awk '/route="payloads",status="200"/ {print $2}'; }
a=$(served); perf stat -e 'cp:*' -p "$PID" -x, -o "/tmp/per-request-$PORT.stat" -- sleep 2; b=$(served)
wait %2 2>/dev/null || sleep 3
awk -F, -v n=$((b - a)) '/cp:/ {sub("cp:", "", $3); printf "%s per request: %.2f\n", $3, $1 / n}' "/tmp/per-request-$PORT.stat"
