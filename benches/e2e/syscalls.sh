#!/usr/bin/env bash
# Syscalls per request on the server, all its threads, counted by perf's syscall tracepoints
# (`perf stat -e raw_syscalls:sys_enter ... -p PID`: no ptrace, so the load runs at full
# speed, unlike `strace -c -f`). Per build (and the tokio peer): the server on CPU 1 with one
# shard, ack=queued, discard sink; wrk -t1 with body10 on CPU 0 at each connection count.
# Prints (and with --out writes) a markdown table: requests/s, syscalls per request in all,
# and the main ones by name.
#
# usage: benches/e2e/syscalls.sh [--conns "4 64"] [--duration S] [--out FILE] NAME=BINARY...
#   NAME=BINARY  a corepost build to count (e.g. main=target/release/corepost); the name
#                `peer` runs benches/tokio-peer's binary as the conventional epoll server
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CONNS="4 64" DURATION=5 OUT="" BUILDS=()
while (($#)); do
    case $1 in
        --conns) CONNS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *=*) BUILDS+=("$1"); shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
((${#BUILDS[@]})) || { echo "usage: $0 [--conns \"4 64\"] [--duration S] [--out FILE] NAME=BINARY..." >&2; exit 2; }
command -v perf >/dev/null || { echo "perf not found (apt-get install linux-perf)" >&2; exit 1; }
RUN=$(mktemp -d -p "$ROOT/target" syscalls.XXXXXX)
PORT=18271 PID=""
stop() { if [[ -n $PID ]]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi; PID=""; }
trap 'stop' EXIT
wait_up() {
    for _ in $(seq 1 300); do
        curl -sf -o /dev/null --max-time 1 -XPOST --data-binary @benches/workload/body10.json "http://127.0.0.1:$PORT/" && return
        kill -0 "$PID" || exit 1; sleep 0.1
    done
    echo "server not up" >&2; exit 1
}
EVENTS=raw_syscalls:sys_enter
NAMED="io_uring_enter sendto recvfrom epoll_wait write read futex membarrier writev"
for s in $NAMED; do EVENTS+=",syscalls:sys_enter_$s"; done
printf '| server | connections | requests/s | syscalls per request |' >"$RUN/table"
for s in $NAMED; do printf ' %s |' "$s" >>"$RUN/table"; done
printf '\n|---|---|---|---|%s\n' "$(for _ in $NAMED; do printf -- '---|'; done)" >>"$RUN/table"
for build in "${BUILDS[@]}"; do
    name=${build%%=*} bin=${build#*=}
    for c in $CONNS; do
        if [[ $name == peer ]]; then
            taskset -c 1 "$bin" --listen "127.0.0.1:$PORT" >"$RUN/$name.log" 2>&1 &
        else
            printf '[server]\nack = "queued"\n' >"$RUN/c.toml"
            taskset -c 1 "$bin" serve --listen "127.0.0.1:$PORT" --cores 1 --sink discard \
                --config "$RUN/c.toml" --spill-dir "$RUN/spill" >"$RUN/$name.log" 2>&1 &
        fi
        PID=$!; wait_up; sleep 0.5
        perf stat -x, -e "$EVENTS" -p "$PID" -o "$RUN/perf-$name-$c" -- sleep "$((DURATION + 1))" &
        perf_pid=$!; sleep 0.5
        out=$(cd benches/workload && BODY=body10.json taskset -c 0 wrk -t1 -c"$c" -d"${DURATION}s" \
            --timeout 5s -s post.lua "http://127.0.0.1:$PORT/v1/payloads")
        wait "$perf_pid"; stop
        total=$(awk '/requests in/{print $1}' <<<"$out"); non2xx=$(awk '/Non-2xx/{print $NF}' <<<"$out")
        ok=$((total - ${non2xx:-0}))
        python3 - "$RUN/perf-$name-$c" "$name" "$c" "$ok" "$DURATION" "$NAMED" >>"$RUN/table" <<'EOF'
import sys
path, name, conns, ok, dur, named = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), sys.argv[6].split()
counts = {}
for line in open(path):
    parts = line.strip().split(",")
    if len(parts) > 2 and parts[2].startswith(("raw_syscalls", "syscalls")):
        counts[parts[2].split(":")[1].removeprefix("sys_enter_")] = int(parts[0]) if parts[0].isdigit() else 0
per = lambda n: f"{counts.get(n, 0) / ok:.2f}" if ok else "n/a"
cells = " | ".join(per(n) for n in named)
print(f"| {name} | {conns} | {ok / dur:,.0f} | {per('sys_enter')} | {cells} |")
EOF
        echo "[syscalls $(date +%T)] $name c=$c done" >&2
    done
done
{
    echo "Command: \`benches/e2e/syscalls.sh --conns \"$CONNS\" --duration $DURATION ${BUILDS[*]}\`"
    echo "(perf counts the whole server process, every thread, for the wrk run plus about 1 s around it;"
    echo "wrk's own syscalls are not counted.)"
    echo
    cat "$RUN/table"
} | tee "${OUT:-/dev/null}"
