#!/usr/bin/env bash
# A/B of one change to glommio 0.9 that corepost does NOT ship: its main io_uring ring set up
# with IORING_SETUP_COOP_TASKRUN. Without that flag, every completion that arrives from another
# CPU while the shard runs (a socket becoming readable because the client on the other CPU sent
# a request) interrupts the shard with an IPI to run io_uring's task work; with it, the work
# waits for the shard's next entry into the kernel, which a busy shard makes within
# microseconds. glommio 0.9 (crates.io) has no way to pass setup flags, so this script builds a
# second corepost against a patched copy of glommio 0.9 from the local cargo registry, under
# target/ (nothing is committed or vendored), and runs both builds alternately, pinned like
# scenario (d) per core: server on CPU 1 (--cores 1, sink discard), load generator on CPU 0.
#
# usage: benches/e2e/glommio-coop-ab.sh [--rounds N] [--duration S] [--rate R] [--out FILE]
#   Per round and build: wrk saturation (64 connections) and an oha fixed-rate run at R req/s,
#   each for ack=queued and ack=durable. Prints and writes a markdown table of medians.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
ROUNDS=3 DURATION=10 RATE=20000 OUT=""
while (($#)); do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
OHA=$(command -v oha || echo "$HOME/.cargo/bin/oha")
[[ -x $OHA ]] || { echo "oha not found (cargo install oha --locked)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk)" >&2; exit 1; }

log() { echo "[coop-ab $(date +%T)] $*" >&2; }

# ---- the two builds
cargo fetch --quiet
SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/glommio-0.9.0 2>/dev/null | head -1)
[[ -d $SRC ]] || { echo "glommio 0.9.0 not in the cargo registry" >&2; exit 1; }
PATCHED=$ROOT/target/glommio-coop
rm -rf "$PATCHED"
cp -r "$SRC" "$PATCHED"
python3 - "$PATCHED" <<'EOF'
import sys
root = sys.argv[1]
def edit(rel, old, new):
    p = f"{root}/{rel}"
    s = open(p).read()
    assert s.count(old) == 1, f"{rel}: anchor not found once: {old!r}"
    open(p, "w").write(s.replace(old, new))
edit("src/iou/mod.rs", "        const ATTACH_WQ = 1 << 5;\n",
     "        const ATTACH_WQ = 1 << 5;\n        const COOP_TASKRUN = 1 << 8;\n")
# The main ring only (sockets, files); the latency ring keeps its IPIs (preemption timers).
edit("src/sys/uring.rs", "            ring: iou::IoUring::new(size as _)?,",
     "            ring: if name == \"main\" {\n"
     "                iou::IoUring::new_with_flags(size as _, iou::SetupFlags::COOP_TASKRUN, iou::SetupFeatures::empty())?\n"
     "            } else {\n"
     "                iou::IoUring::new(size as _)?\n"
     "            },")
EOF
log "building the stock build (target/release) and the COOP_TASKRUN build (target/coop)"
cargo build --release --quiet
# The patch rewrites glommio's entry in Cargo.lock: build it on a copy of the lock file and put
# the committed one back, whatever happens.
cp Cargo.lock target/Cargo.lock.stock
trap 'cp target/Cargo.lock.stock Cargo.lock' EXIT
cargo build --release --quiet --target-dir target/coop \
    --config "patch.crates-io.glommio.path=\"$PATCHED\""
cp target/Cargo.lock.stock Cargo.lock
trap - EXIT
STOCK=$ROOT/target/release/corepost
COOP=$ROOT/target/coop/release/corepost

# ---- the runs
RUN=$(mktemp -d -p "$ROOT/target" coop-ab.XXXXXX)
RES=$RUN/results.tsv
PORT=18231
# shellcheck source=benches/e2e/pinned-server.sh
. benches/e2e/pinned-server.sh
cleanup() { stop_pinned; rm -rf "$RUN/spool" "$RUN/spill"; }
trap cleanup EXIT
steal() { awk '/^cpu /{print $9; exit}' /proc/stat; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start() {  # start BINARY ACK: a fresh spool and spill dir per run
    rm -rf "$RUN/spool" "$RUN/spill"
    printf '[server]\nack = "%s"\n[spool]\ndir = "%s"\n' "$2" "$RUN/spool" >"$RUN/c.toml"
    start_pinned "$1" "$RUN/c.toml" "$RUN/server.log" "$PORT" "$RUN/spill"
    sleep 1
}

one() {  # one BUILD_LABEL BINARY ACK ROUND
    local c0 c1 s0 s1 out rps p50 p99
    start "$2" "$3"
    c0=$(ticks "$PINNED_PID"); s0=$(steal)
    out=$(cd benches/workload && BODY=body10.json taskset -c 0 wrk -t1 -c64 -d"${DURATION}s" -s post.lua \
        "http://127.0.0.1:$PORT/")
    c1=$(ticks "$PINNED_PID"); s1=$(steal)
    rps=$(awk '/^Requests\/sec/{print $2}' <<<"$out")
    printf '%s\t%s\tsat\t%s\t%s\t\t\t%s\t%s\n' "$1" "$3" "$4" "$rps" "$((c1 - c0))" "$((s1 - s0))" >>"$RES"
    stop_pinned
    start "$2" "$3"
    c0=$(ticks "$PINNED_PID"); s0=$(steal)
    out=$(taskset -c 0 "$OHA" -z "${DURATION}s" -q "$RATE" -c 64 -m POST -D benches/workload/body10.json \
        -T application/json --latency-correction --no-tui --output-format json "http://127.0.0.1:$PORT/")
    c1=$(ticks "$PINNED_PID"); s1=$(steal)
    read -r rps p50 p99 < <(python3 -c 'import json,sys; d=json.load(sys.stdin); p=d["latencyPercentiles"]; print(d["summary"]["requestsPerSec"], p["p50"]*1e3, p["p99"]*1e3)' <<<"$out")
    printf '%s\t%s\trate\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$3" "$4" "$rps" "$p50" "$p99" "$((c1 - c0))" "$((s1 - s0))" >>"$RES"
    stop_pinned
    log "round $4 $1 $3: done"
}

pkill -f "corepost serve --listen 127.0.0.1:$PORT" 2>/dev/null || true
for ((r = 1; r <= ROUNDS; r++)); do
    for ack in queued durable; do
        one stock "$STOCK" "$ack" "$r"
        one coop "$COOP" "$ack" "$r"
    done
done

# ---- the table
CMD="benches/e2e/glommio-coop-ab.sh --rounds $ROUNDS --duration $DURATION --rate $RATE"
python3 - "$RES" "$CMD" "$DURATION" "$RATE" "$(git rev-parse --short HEAD)" "$(getconf CLK_TCK)" <<'EOF' | tee "${OUT:-/dev/null}"
import statistics as st, sys
res, cmd, dur, rate, rev, tck = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
rows = [l.rstrip("\n").split("\t") for l in open(res)]
def med(build, ack, kind, col):
    v = [float(r[col]) for r in rows if r[0] == build and r[1] == ack and r[2] == kind and r[col]]
    return (st.median(v), min(v), max(v)) if v else None
def f(x, d=0):
    if x is None: return "n/a"
    m, lo, hi = x
    return f"{m:,.{d}f} ({lo:,.{d}f}–{hi:,.{d}f})"
def cpu_per_mreq(build, ack, kind):
    v = [float(r[7]) / tck / (float(r[4]) * dur) * 1e6 for r in rows if r[0] == build and r[1] == ack and r[2] == kind]
    return (st.median(v), min(v), max(v)) if v else None
def ratio(a, b):
    return "n/a" if not a or not b else f"{a[0] / b[0]:.2f}x"
print(f"# glommio COOP_TASKRUN A/B, per core\n")
print(f"Command: `{cmd}` at commit {rev}.  ")
print(f"Stock = corepost as shipped (glommio 0.9 from crates.io); coop = the same source built against a copy of "
      f"glommio 0.9 whose main io_uring ring is set up with IORING_SETUP_COOP_TASKRUN (not shipped). Server on CPU 1 "
      f"(`--cores 1 --sink discard`), wrk / oha on CPU 0, 64 connections, {dur:.0f} s per run, builds alternated "
      f"within each round; medians (min–max) over the rounds. Steal = /proc/stat steal of all vCPUs during the run.\n")
print("| figure | ack | stock | coop | coop / stock |\n|---|---|---|---|---|")
for ack in ("queued", "durable"):
    a, b = med("stock", ack, "sat", 4), med("coop", ack, "sat", 4)
    print(f"| requests/s, saturating (wrk) | {ack} | {f(a)} | {f(b)} | {ratio(b, a)} |")
    a, b = cpu_per_mreq("stock", ack, "sat"), cpu_per_mreq("coop", ack, "sat")
    print(f"| server CPU-s per million requests, saturating | {ack} | {f(a, 2)} | {f(b, 2)} | {ratio(b, a)} |")
    a, b = cpu_per_mreq("stock", ack, "rate"), cpu_per_mreq("coop", ack, "rate")
    print(f"| server CPU-s per million requests at {rate:,} req/s | {ack} | {f(a, 2)} | {f(b, 2)} | {ratio(b, a)} |")
    a, b = med("stock", ack, "rate", 5), med("coop", ack, "rate", 5)
    print(f"| p50 at {rate:,} req/s, ms | {ack} | {f(a, 2)} | {f(b, 2)} | {ratio(b, a)} |")
    a, b = med("stock", ack, "rate", 6), med("coop", ack, "rate", 6)
    print(f"| p99 at {rate:,} req/s, ms | {ack} | {f(a, 2)} | {f(b, 2)} | {ratio(b, a)} |")
    a, b = med("stock", ack, "rate", 8), med("coop", ack, "rate", 8)
    print(f"| host steal in the fixed-rate runs, ticks | {ack} | {f(a)} | {f(b)} | |")
EOF
log "raw: $RES"
