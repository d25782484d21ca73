#!/usr/bin/env bash
# A/B/C of the runtime under corepost, per core, builds alternated within each round:
#   g09  corepost at --base (default: main) on glommio 0.9 from crates.io, its own Cargo.lock;
#   ng   this tree on glommio-ng 0.12 as published (scripts/vendor-glommio-ng.sh --unpatched);
#   ngp  this tree as shipped: glommio-ng 0.12 + vendor/patches/glommio-ng-0.12.0.patch.
# Scenario (a): ack=queued, discard sink, body10; scenario (d): ack=durable (fresh spool per run
# under target/), discard sink. Server on CPU 1 (--cores 1), wrk -t1 -c64 on CPU 0, as
# run.sh's per-core mode; nginx answering 204 (worker_processes 1, CPU 1)
# runs in every round as the HTTP-only ceiling. Prints and writes a markdown table of medians.
#
# usage: benches/e2e/glommio-ng-ab.sh [--base REV | --g09-bin FILE] [--rounds N] [--duration S]
#                                     [--out FILE] [--no-build]
#   --g09-bin FILE  take this glommio 0.9 build of corepost (e.g. main's target/release/corepost)
#                   instead of building --base
#   --no-build      run the binaries already in target/ab/bin
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BASE=main ROUNDS=5 DURATION=5 OUT="" BUILD=1 G09_BIN=""
while (($#)); do
    case $1 in
        --base) BASE=$2; shift 2 ;;
        --g09-bin) G09_BIN=$(realpath "$2"); shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk)" >&2; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[[ -x $NGINX ]] || { echo "nginx not found (apt-get install nginx-light)" >&2; exit 1; }
log() { echo "[ng-ab $(date +%T)] $*" >&2; }

AB=$ROOT/target/ab
BIN=$AB/bin
BASE_REV=$(git rev-parse --short "$BASE")
HEAD_REV=$(git rev-parse --short HEAD)
# ---- the three builds (one target dir: the dependencies they share are built once)
if ((BUILD)); then
    mkdir -p "$BIN"
    rm -rf "$AB/g09-src"
    if [[ -n $G09_BIN ]]; then
        cp "$G09_BIN" "$BIN/g09"
    else
        mkdir -p "$AB/g09-src"
        git archive "$BASE" | tar -x -C "$AB/g09-src"
        grep -q '^glommio = "0.9"' "$AB/g09-src/Cargo.toml" || { echo "$BASE is not on glommio 0.9" >&2; exit 1; }
        log "g09: corepost $BASE_REV on glommio 0.9"
        cargo build --release --locked --quiet --manifest-path "$AB/g09-src/Cargo.toml" --target-dir "$ROOT/target"
        cp target/release/corepost "$BIN/g09"
    fi
    # Rewritten only when it changed: new mtimes would make cargo rebuild it and corepost.
    rm -rf "$AB/glommio-ng-unpatched.new"
    scripts/vendor-glommio-ng.sh --unpatched "$AB/glommio-ng-unpatched.new" >/dev/null
    if diff -rq "$AB/glommio-ng-unpatched.new" "$AB/glommio-ng-unpatched" >/dev/null 2>&1; then
        rm -rf "$AB/glommio-ng-unpatched.new"
    else
        rm -rf "$AB/glommio-ng-unpatched"
        mv "$AB/glommio-ng-unpatched.new" "$AB/glommio-ng-unpatched"
    fi
    log "ng: this tree on glommio-ng 0.12 as published"
    # A [patch] given in --config wins over Cargo.toml's (cargo's documented precedence).
    cargo build --release --locked --quiet \
        --config "patch.crates-io.glommio-ng.path=\"$AB/glommio-ng-unpatched\""
    cp target/release/corepost "$BIN/ng"
    log "ngp: this tree as shipped (glommio-ng 0.12 + patch)"
    cargo build --release --locked --quiet
    cp target/release/corepost "$BIN/ngp"
fi
for b in g09 ng ngp; do [[ -x $BIN/$b ]] || { echo "$BIN/$b missing (run without --no-build)" >&2; exit 1; }; done

# ---- the runs
RUN=$(mktemp -d -p "$ROOT/target" ng-ab.XXXXXX)
RES=$RUN/results.tsv
PORT=18241
# shellcheck source=benches/e2e/pinned-server.sh
. benches/e2e/pinned-server.sh
NGINX_PID=
stop_nginx() {
    if [[ -n $NGINX_PID ]]; then kill "$NGINX_PID" 2>/dev/null || true; wait "$NGINX_PID" 2>/dev/null || true; fi
    NGINX_PID=
}
cleanup() { stop_pinned; stop_nginx; rm -rf "$RUN/spool" "$RUN/spill"; }
trap cleanup EXIT
steal() { awk '/^cpu /{print $9; exit}' /proc/stat; }
ticks() {  # utime+stime of a process and its children (nginx's worker)
    local t=0 p
    for p in "$1" $(pgrep -P "$1" || true); do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$t"
}
load() {  # load PID -> appends "req/s accepted, ticks, steal" to the row
    local c0 c1 s0 s1 out total non2xx
    c0=$(ticks "$1"); s0=$(steal)
    out=$(cd benches/workload && BODY=body10.json taskset -c 0 wrk -t1 -c64 -d"${DURATION}s" --timeout 5s \
        -s post.lua "http://127.0.0.1:$PORT/v1/payloads")
    c1=$(ticks "$1"); s1=$(steal)
    total=$(awk '/requests in/{print $1}' <<<"$out")
    non2xx=$(awk '/Non-2xx/{print $NF}' <<<"$out")
    printf '%s\t%s\t%s\n' "$(python3 -c "print(($total - ${non2xx:-0}) / $DURATION)")" "$((c1 - c0))" "$((s1 - s0))"
}
corepost() {  # corepost BUILD SCENARIO ROUND
    local ack=queued
    [[ $2 == d ]] && ack=durable
    rm -rf "$RUN/spool" "$RUN/spill"
    printf '[server]\nack = "%s"\n[spool]\ndir = "%s"\n' "$ack" "$RUN/spool" >"$RUN/c.toml"
    start_pinned "$BIN/$1" "$RUN/c.toml" "$RUN/server-$1-$2.log" "$PORT" "$RUN/spill"
    sleep 0.5
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(load "$PINNED_PID")" >>"$RES"
    stop_pinned
}
nginx204() {  # nginx204 ROUND
    local d=$RUN/nginx
    mkdir -p "$d/logs" "$d/tmp"
    cat >"$d/nginx.conf" <<EOF
user root;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    client_max_body_size 1m;
    keepalive_requests 100000000;
    server { listen 127.0.0.1:$PORT reuseport; location / { return 204; } }
}
EOF
    taskset -c 1 "$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/logs/error.log" -g 'daemon off;' >/dev/null 2>&1 &
    NGINX_PID=$!
    for _ in $(seq 1 100); do
        curl -s -o /dev/null --max-time 1 -XPOST "http://127.0.0.1:$PORT/" && break
        sleep 0.05
    done
    sleep 0.5
    printf 'nginx\ta\t%s\t%s\n' "$1" "$(load "$NGINX_PID")" >>"$RES"
    stop_nginx
}

for ((r = 1; r <= ROUNDS; r++)); do
    # The order of the builds turns every round, so no build always runs first or last.
    builds=(g09 ng ngp)
    k=$(((r - 1) % 3))
    builds=("${builds[@]:k}" "${builds[@]:0:k}")
    nginx204 "$r"
    for sc in a d; do
        for b in "${builds[@]}"; do corepost "$b" "$sc" "$r"; done
    done
    log "round $r done"
done

# ---- the table
CMD="benches/e2e/glommio-ng-ab.sh --base $BASE --rounds $ROUNDS --duration $DURATION"
if [[ -n $G09_BIN ]]; then
    CMD="benches/e2e/glommio-ng-ab.sh --g09-bin $G09_BIN --rounds $ROUNDS --duration $DURATION"
    BASE_REV="$G09_BIN, built $(date -r "$G09_BIN" '+%F %T')"
fi
python3 - "$RES" "$CMD" "$DURATION" "$BASE_REV" "$HEAD_REV" "$(getconf CLK_TCK)" <<'EOF' | tee "${OUT:-/dev/null}"
import statistics as st, sys
res, cmd, dur, base, head, tck = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6])
rows = [l.rstrip("\n").split("\t") for l in open(res)]
def vals(b, sc, f):
    return [f(r) for r in rows if r[0] == b and r[1] == sc]
def rps(b, sc): return vals(b, sc, lambda r: float(r[3]))
def cpu(b, sc): return vals(b, sc, lambda r: float(r[4]) / tck / (float(r[3]) * dur) * 1e6)
def stl(b, sc): return vals(b, sc, lambda r: float(r[5]) / tck * 1e3)
def m(v): return st.median(v) if v else None
def f(v, d=0):
    return "n/a" if not v else f"{st.median(v):,.{d}f} ({min(v):,.{d}f}–{max(v):,.{d}f})"
def ratio(a, b): return "n/a" if not a or not b else f"{m(a) / m(b):.2f}x"
names = {"g09": f"glommio 0.9 ({base})", "ng": f"glommio-ng 0.12 ({head})", "ngp": f"glommio-ng 0.12 + patch ({head})"}
print("# glommio 0.9 vs glommio-ng 0.12 vs glommio-ng 0.12 + corepost's patch, per core\n")
print(f"Command: `{cmd}`.  ")
print(f"g09 = corepost at {base} on glommio 0.9 (crates.io); ng = corepost at {head} on glommio-ng 0.12 as "
      f"published; ngp = corepost at {head} as shipped, glommio-ng 0.12 + vendor/patches/glommio-ng-0.12.0.patch. "
      f"Server on CPU 1 (`--cores 1 --sink discard`), `wrk -t1 -c64 -d{dur:.0f}s` with body10 on CPU 0; nginx "
      f"answering 204 (1 worker, CPU 1) in every round. Builds alternated within each round (order rotated per "
      f"round); medians (min–max) over {len(rps('nginx', 'a'))} rounds. CPU = the server's utime+stime during the "
      f"load. Steal = /proc/stat steal of all vCPUs during the run.\n")
print("| scenario | figure | g09 | ng | ngp | ng / g09 | ngp / g09 | ngp / ng |\n|---|---|---|---|---|---|---|---|")
for sc, title in (("a", "(a) queued"), ("d", "(d) durable")):
    a, b, c = rps("g09", sc), rps("ng", sc), rps("ngp", sc)
    print(f"| {title} | requests/s | {f(a)} | {f(b)} | {f(c)} | {ratio(b, a)} | {ratio(c, a)} | {ratio(c, b)} |")
    a, b, c = cpu("g09", sc), cpu("ng", sc), cpu("ngp", sc)
    print(f"| {title} | CPU-s per million requests | {f(a, 1)} | {f(b, 1)} | {f(c, 1)} | {ratio(b, a)} | {ratio(c, a)} | {ratio(c, b)} |")
    a, b, c = stl("g09", sc), stl("ng", sc), stl("ngp", sc)
    print(f"| {title} | host steal, ms | {f(a)} | {f(b)} | {f(c)} | | | |")
n, nc = rps("nginx", "a"), cpu("nginx", "a")
print(f"\nnginx 204: {f(n)} requests/s at {f(nc, 1)} CPU-s per million requests.\n")
print("| against nginx 204, scenario (a) | g09 | ng | ngp |\n|---|---|---|---|")
print("| requests/s (target ≥ 0.8x) | " + " | ".join(ratio(rps(b, "a"), n) for b in ("g09", "ng", "ngp")) + " |")
print("| CPU per request (target ≤ 1.5x) | " + " | ".join(ratio(cpu(b, "a"), nc) for b in ("g09", "ng", "ngp")) + " |")
EOF
log "raw: $RES"
