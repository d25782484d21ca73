#!/bin/bash
# Precise clock reads per request: calls of libc's clock_gettime (std's Instant::now and
# SystemTime::now; the coarse clocks of src/clock.rs go to the vDSO without libc and are not
# counted), by a uprobe and `perf stat`, over a 2 s window of a one-shard queued server under
# `wrk -c64` body10, with the callers' split from a short `perf record`.
# usage: benches/e2e/clock-reads.sh BINARY PORT   (root: uprobes)
BIN=$(readlink -f "$1"); PORT=$2
LIBC=$(ldd "$BIN" | awk '/libc.so/ {print $3}')
perf probe -d 'ck:*' >/dev/null 2>&1
perf probe -x "$LIBC" -a 'ck:g=clock_gettime' >/dev/null 2>&1
(taskset -c 1 "$BIN" serve --listen 127.0.0.1:$PORT --cores 1 --sink discard --spill-dir /tmp/spill-$PORT > /tmp/clock-$PORT.log 2>&1 &)
sleep 2
PID=$(pgrep -f "listen 127.0.0.1:$PORT")
cd "$(dirname "$0")/../workload"
(BODY=body10.json taskset -c 0 wrk -t1 -c64 -d6s -s post.lua http://127.0.0.1:$PORT/v1/payloads > /dev/null &)
sleep 2
m() { curl -s 127.0.0.1:$PORT/metrics | grep 'route="payloads",status="200"' | awk '{print $2}'; }
a=$(m); perf stat -e 'ck:g' -p $PID -x, -o /tmp/clock-$PORT.stat -- sleep 2; b=$(m)
sleep 3; kill $PID
awk -F, -v n=$((b-a)) '/ck:g/ {printf "precise clock reads per request: %.2f\n", $1/n}' /tmp/clock-$PORT.stat
perf probe -d 'ck:*' >/dev/null 2>&1
