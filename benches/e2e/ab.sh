#!/usr/bin/env bash
# A/B of two corepost builds, per core, alternated within each round (order swapped every round):
#   (a) ack=queued, discard sink; (d) ack=durable (fresh spool under target/ per run), discard sink.
# Server on CPU 1 (`--cores 1`), `wrk -t1 -c64` with body10 on CPU 0; nginx answering 204
# (1 worker, CPU 1) in every round as the ceiling. With --rate, each build of (d) also runs at
# that fixed rate (oha, as run.sh uses: `cargo install oha --locked`) for its p99.
# With --whole, the whole machine instead (as run.sh's whole-machine mode): both shards
# (`--cores 2`), nginx with 2 workers, the same `wrk -t1`, nothing pinned. Prints (and with --out writes) a markdown table of medians (min–max).
#
# usage: benches/e2e/ab.sh A B [--rounds N] [--duration S] [--scenarios "a d"] [--rate R]
#                          [--body FILE] [--whole] [--a-conf TOML] [--b-conf TOML] [--out FILE]
#   --body     a file of benches/workload/ (default body10.json)
#   A, B       corepost binaries (paths); each is copied to target/ab/{A,B}/corepost first.
#              A binary named `tokio-peer` (benches/tokio-peer/target/release/tokio-peer) runs
#              as the conventional peer instead, in scenario (a) only
#   --x-conf   extra TOML lines appended to that build's config (e.g. '[spool]' settings)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
A_IN=${1:?binary A}; B_IN=${2:?binary B}; shift 2
ROUNDS=5 DURATION=5 SCEN="a d" RATE="" OUT="" ACONF="" BCONF="" BODY=body10.json WHOLE=""
while (($#)); do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --scenarios) SCEN=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --body) BODY=$2; shift 2 ;;
        --whole) WHOLE=1; shift ;;
        --a-conf) ACONF=$2; shift 2 ;;
        --b-conf) BCONF=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
# Placement: per core (server on CPU 1, wrk on CPU 0) or, with --whole, both cores unpinned.
if [[ -n $WHOLE ]]; then SRV=(taskset -c 0,1) GEN=(taskset -c 0,1) CORES=2 THREADS=1
else SRV=(taskset -c 1) GEN=(taskset -c 0) CORES=1 THREADS=1; fi
[[ -z $RATE ]] || command -v oha >/dev/null || { echo "--rate needs oha (cargo install oha --locked)" >&2; exit 1; }
log() { echo "[ab $(date +%T)] $*" >&2; }
mkdir -p target/ab/A target/ab/B
[[ $(realpath "$A_IN") == "$ROOT/target/ab/A/corepost" ]] || cp "$A_IN" target/ab/A/corepost
[[ $(realpath "$B_IN") == "$ROOT/target/ab/B/corepost" ]] || cp "$B_IN" target/ab/B/corepost
RUN=$(mktemp -d -p "$ROOT/target" ab.XXXXXX)
RES=$RUN/results.tsv PORT=18261 PID=""
# A listener closed by a process that died with io_uring requests on it (http-floor) is released
# by the kernel a moment after the exit: wait for the port, or a server that binds without
# SO_REUSEPORT (the tokio peer) finds it in use.
stop() {
    if [[ -n $PID ]]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi; PID=""
    for _ in $(seq 1 50); do [[ -z $(ss -Hltn "sport = :$PORT") ]] && break; sleep 0.1; done
}
trap 'stop; rm -rf "$RUN/spool" "$RUN/spill"' EXIT
# CPU ticks of a server and its children: "user kernel"
ticks() { local u=0 k=0 p; for p in "$1" $(pgrep -P "$1" || true); do read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat"); u=$((u + a)) k=$((k + b)); done; echo "$u $k"; }
steal() { awk '/^cpu /{print $9; exit}' /proc/stat; }
wait_up() { for _ in $(seq 1 300); do curl -sf -o /dev/null --max-time 1 -XPOST --data-binary @benches/workload/$BODY "http://127.0.0.1:$PORT/" && return; kill -0 "$PID" || exit 1; sleep 0.1; done; echo "server not up" >&2; exit 1; }
# row NAME SCENARIO ROUND: saturating wrk run -> req/s, CPU ticks, steal ticks, user and kernel ticks
row() {
    local c0 s0 out total non2xx u0 k0 u1 k1
    read -r u0 k0 < <(ticks "$PID"); s0=$(steal)
    out=$(cd benches/workload && BODY=$BODY "${GEN[@]}" wrk -t$THREADS -c64 -d"${DURATION}s" --timeout 5s -s post.lua "http://127.0.0.1:$PORT/v1/payloads")
    total=$(awk '/requests in/{print $1}' <<<"$out"); non2xx=$(awk '/Non-2xx/{print $NF}' <<<"$out")
    read -r u1 k1 < <(ticks "$PID")
    printf '%s\t%s\t%s\tsat\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(((total - ${non2xx:-0}) / DURATION))" "$((u1 + k1 - u0 - k0))" "$(($(steal) - s0))" "$((u1 - u0))" "$((k1 - k0))" >>"$RES"
}
# fixed NAME ROUND: --rate run -> achieved req/s, CPU ticks, p99 ms
fixed() {
    local u0 k0 u1 k1 j
    read -r u0 k0 < <(ticks "$PID")
    j=$("${GEN[@]}" oha -z "${DURATION}s" -q "$RATE" -c 64 -m POST -D "benches/workload/$BODY" -T application/json \
        --latency-correction --no-tui --output-format json "http://127.0.0.1:$PORT/v1/payloads")
    read -r u1 k1 < <(ticks "$PID")
    printf '%s\td\t%s\tfixed\t%s\t%s\t%s\n' "$1" "$2" \
        "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["summary"]["requestsPerSec"])' "$j")" "$((u1 + k1 - u0 - k0))" \
        "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["latencyPercentiles"]["p99"] * 1e3)' "$j")" >>"$RES"
}
corepost() {  # corepost A|B SCENARIO ROUND
    local ack=queued extra=$ACONF
    [[ $1 == B ]] && extra=$BCONF
    [[ $2 == d ]] && ack=durable
    if [[ $(basename "$([[ $1 == A ]] && echo "$A_IN" || echo "$B_IN")") == tokio-peer ]]; then
        [[ $2 == a ]] || return 0
        "${SRV[@]}" "target/ab/$1/corepost" --listen "127.0.0.1:$PORT" >"$RUN/server-$1-$2-$3.log" 2>&1 &
        PID=$!; wait_up; sleep 0.5
        row "$1" "$2" "$3"; stop; return
    fi
    rm -rf "$RUN/spool" "$RUN/spill"; sync
    printf '[server]\nack = "%s"\n[spool]\ndir = "%s"\n%b\n' "$ack" "$RUN/spool" "$extra" >"$RUN/c.toml"
    "${SRV[@]}" "target/ab/$1/corepost" serve --listen "127.0.0.1:$PORT" --cores $CORES --sink discard \
        --config "$RUN/c.toml" --spill-dir "$RUN/spill" >"$RUN/server-$1-$2-$3.log" 2>&1 &
    PID=$!; wait_up; sleep 0.5
    row "$1" "$2" "$3"
    if [[ $2 == d && -n $RATE ]]; then fixed "$1" "$3"; fi
    stop
}
nginx204() {
    local d=$RUN/nginx; mkdir -p "$d/logs" "$d/tmp"
    printf 'worker_processes %s; pid %s/nginx.pid; error_log %s/logs/error.log warn; events { worker_connections 4096; }
http { access_log off; client_body_temp_path %s/tmp; keepalive_requests 100000000; client_max_body_size 1m;
server { listen 127.0.0.1:%s reuseport; location / { return 204; } } }\n' "$CORES" "$d" "$d" "$d" "$PORT" >"$d/nginx.conf"
    "${SRV[@]}" "$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/logs/error.log" -g 'daemon off;' >/dev/null 2>&1 &
    PID=$!; wait_up; sleep 0.5
    row nginx a "$1"; stop
}
for ((r = 1; r <= ROUNDS; r++)); do
    order=(A B); ((r % 2)) || order=(B A)
    nginx204 "$r"
    for sc in $SCEN; do for b in "${order[@]}"; do corepost "$b" "$sc" "$r"; done; done
    log "round $r done"
done
CMD="benches/e2e/ab.sh $A_IN $B_IN --rounds $ROUNDS --duration $DURATION --scenarios \"$SCEN\" --body $BODY${WHOLE:+ --whole}${RATE:+ --rate $RATE}${ACONF:+ --a-conf '$ACONF'}${BCONF:+ --b-conf '$BCONF'}"
python3 - "$RES" "$CMD" "$(getconf CLK_TCK)" "$DURATION" <<'EOF' | tee "${OUT:-/dev/null}"
import statistics as st, sys
res, cmd, tck, dur = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
rows = [l.split("\t") for l in open(res).read().splitlines()]
def v(b, sc, kind, f): return [f(r) for r in rows if r[0] == b and r[1] == sc and r[3] == kind]
def rps(b, sc, k="sat"): return v(b, sc, k, lambda r: float(r[4]))
def cpu(b, sc, k="sat"): return v(b, sc, k, lambda r: float(r[5]) / tck / (float(r[4]) * dur) * 1e6)
def part(i): return lambda b, sc, k="sat": v(b, sc, k, lambda r: float(r[i]) / tck / (float(r[4]) * dur) * 1e6)
user, kern = part(7), part(8)  # CPU-s per million requests in user space and in the kernel
def col6(b, sc, k): return v(b, sc, k, lambda r: float(r[6]) * (1 if k == "fixed" else 1e3 / tck))
def f(x, d=0): return "n/a" if not x else f"{st.median(x):,.{d}f} ({min(x):,.{d}f}–{max(x):,.{d}f})"
def q(a, b): return "n/a" if not a or not b else f"{st.median(a) / st.median(b):.2f}x"
def paired(fn, sc, k="sat"):  # B/A of each round (same machine state), median (min–max)
    a = {r[2]: x for r, x in zip([r for r in rows if r[0] == "A" and r[1] == sc and r[3] == k], fn("A", sc, k))}
    b = {r[2]: x for r, x in zip([r for r in rows if r[0] == "B" and r[1] == sc and r[3] == k], fn("B", sc, k))}
    v = [b[i] / a[i] for i in a if i in b and a[i]]
    return "n/a" if not v else f"{st.median(v):.2f}x ({min(v):.2f}–{max(v):.2f})"
print(f"Command: `{cmd}`; {len(rps('nginx', 'a'))} rounds, medians (min–max).\n")
print("| scenario | figure | A | B | B / A | B / A per round | A / nginx | B / nginx |\n|---|---|---|---|---|---|---|---|")
n, nc = rps("nginx", "a"), cpu("nginx", "a")
print(f"| nginx 204 | requests/s | {f(n)} | | | | | |\n| nginx 204 | CPU-s per million requests | {f(nc, 1)} | | | | | |")
print(f"| nginx 204 | of which kernel | {f(kern('nginx', 'a'), 1)} | | | | | |")
for sc in sorted({r[1] for r in rows if r[0] != "nginx"}):
    A, B = rps("A", sc), rps("B", sc)
    print(f"| {sc} | requests/s | {f(A)} | {f(B)} | {q(B, A)} | {paired(rps, sc)} | {q(A, n)} | {q(B, n)} |")
    A, B = cpu("A", sc), cpu("B", sc)
    print(f"| {sc} | CPU-s per million requests | {f(A, 1)} | {f(B, 1)} | {q(B, A)} | {paired(cpu, sc)} | {q(A, nc)} | {q(B, nc)} |")
    for name, fn in (("of which user space", user), ("of which kernel", kern)):
        A, B = fn("A", sc), fn("B", sc)
        print(f"| {sc} | {name} | {f(A, 1)} | {f(B, 1)} | {q(B, A)} | {paired(fn, sc)} | | |")
    print(f"| {sc} | host steal, ms | {f(col6('A', sc, 'sat'))} | {f(col6('B', sc, 'sat'))} | | | | |")
    if rps("A", sc, "fixed"):
        for name, fn, d in (("achieved req/s at fixed rate", rps, 0), ("CPU-s per million requests at fixed rate", cpu, 1)):
            A, B = fn("A", sc, "fixed"), fn("B", sc, "fixed")
            print(f"| {sc} | {name} | {f(A, d)} | {f(B, d)} | {q(B, A)} | {paired(fn, sc, 'fixed')} | | |")
        A, B = col6("A", sc, "fixed"), col6("B", sc, "fixed")
        print(f"| {sc} | p99 at fixed rate, ms | {f(A, 2)} | {f(B, 2)} | {q(B, A)} | {paired(col6, sc, 'fixed')} | | |")
for b in ("A", "B"):
    if rps(b, "a") and rps(b, "d"):
        print(f"\n{b}: durable / queued requests/s {q(rps(b, 'd'), rps(b, 'a'))}", end="")
print()
EOF
log "raw: $RES"
