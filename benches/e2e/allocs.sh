#!/bin/bash
# Allocations per request (mimalloc's mi_malloc_aligned and mi_realloc_aligned, counted by uprobes
# with `perf stat`) of a one-shard queued server under `wrk -c64` body10, over a 2 s window.
# usage: benches/e2e/allocs.sh BINARY PORT   (root: uprobes)
BIN=$(readlink -f "$1"); PORT=$2
perf probe -d 'cp:*' >/dev/null 2>&1
perf probe -x $BIN -a 'cp:m=mi_malloc_aligned' -a 'cp:r=mi_realloc_aligned' >/dev/null 2>&1
(taskset -c 1 $BIN serve --listen 127.0.0.1:$PORT --cores 1 --sink discard --spill-dir /tmp/spill-$PORT > /tmp/allocs-$PORT.log 2>&1 &)
sleep 2
PID=$(pgrep -f "listen 127.0.0.1:$PORT")
cd "$(dirname "$0")/../workload"
(BODY=body10.json taskset -c 0 wrk -t1 -c64 -d6s -s post.lua http://127.0.0.1:$PORT/v1/payloads > /dev/null &)
sleep 2
m() { curl -s 127.0.0.1:$PORT/metrics | grep 'route="payloads",status="200"' | awk '{print $2}'; }
a=$(m); perf stat -e 'cp:*' -p $PID -x, -o /tmp/allocs-$PORT.stat -- sleep 2; b=$(m)
sleep 3; kill $PID
awk -F, -v n=$((b-a)) '{printf "%s per request: %.2f\n", $3, $1/n}' /tmp/allocs-$PORT.stat | grep cp
perf probe -d 'cp:*' >/dev/null 2>&1
