#!/usr/bin/env bash
# The cost of the token check ([auth] tokens_file), per core, end to end: one corepost shard
# pinned to CPU 1 (`--cores 1 --sink discard`, ack = queued), wrk pinned to CPU 0 posting body10
# on 64 keep-alive connections, in alternating rounds of three variants:
#   none   - no tokens file (no check);
#   body   - `--tokens-file` of N tokens, the token in the body's `token` field (body10 carries
#            `bench-token`), no header: the Go service's clients;
#   header - the same file, `Authorization: Bearer bench-token` on every request.
# Per run it records requests/s and the server's CPU time (utime + stime from /proc), so the
# figure is server CPU per request: what the check adds to it is the cost, whatever the host's
# other load does to throughput.
#
# usage: benches/e2e/token-cost.sh [--rounds N] [--duration S] [--tokens N] [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
ROUNDS=5 DURATION=10 TOKENS=1000 OUT=""
while (($#)); do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --tokens) TOKENS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk)" >&2; exit 1; }
log() { echo "[token-cost $(date +%T)] $*" >&2; }

cargo build --release --locked --quiet
BIN=$ROOT/target/release/corepost
RUN=$(mktemp -d -p "$ROOT/target" token-cost.XXXXXX)
RES=$RUN/results.tsv
PORT=${TOKEN_COST_PORT:-18377}
# shellcheck source=benches/e2e/pinned-server.sh
. benches/e2e/pinned-server.sh
trap 'stop_pinned' EXIT
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# N tokens of 32 hex characters (every tenth with a tenant), then the one body10 carries.
python3 - "$TOKENS" >"$RUN/tokens" <<'PY'
import secrets, sys
n = int(sys.argv[1])
for i in range(n - 1):
    print(secrets.token_hex(16) + (f" tenant-{i}" if i % 10 == 0 else ""))
print("bench-token acme")
PY
printf '' >"$RUN/c.toml"

one() {  # one VARIANT ROUND
    local c0 c1 out rps auth=""
    if [[ $1 == none ]]; then
        start_pinned "$BIN" "$RUN/c.toml" "$RUN/server.log" "$PORT" "$RUN/spill"
    else
        start_pinned "$BIN" "$RUN/c.toml" "$RUN/server.log" "$PORT" "$RUN/spill" --tokens-file "$RUN/tokens"
    fi
    [[ $1 == header ]] && auth="Bearer bench-token"
    sleep 1
    c0=$(ticks "$PINNED_PID")
    out=$(cd benches/workload && BODY=body10.json AUTH=$auth taskset -c 0 wrk -t1 -c64 -d"${DURATION}s" \
        -s post.lua "http://127.0.0.1:$PORT/")
    c1=$(ticks "$PINNED_PID")
    # Every request must have been accepted: a 401 would be cheaper than a 200.
    grep -q "Non-2xx" <<<"$out" && { echo "$1: non-2xx answers:" >&2; echo "$out" >&2; exit 1; }
    rps=$(awk '/^Requests\/sec/{print $2}' <<<"$out")
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$rps" "$((c1 - c0))" >>"$RES"
    stop_pinned
    log "round $2 $1: $rps req/s"
}

for ((r = 1; r <= ROUNDS; r++)); do
    # The order rotates each round, so no variant always runs first or last.
    case $((r % 3)) in
        1) order="none body header" ;;
        2) order="body header none" ;;
        0) order="header none body" ;;
    esac
    for v in $order; do one "$v" "$r"; done
done

CMD="benches/e2e/token-cost.sh --rounds $ROUNDS --duration $DURATION --tokens $TOKENS"
python3 - "$RES" "$CMD" "$DURATION" "$(git rev-parse --short HEAD)" "$(getconf CLK_TCK)" "$TOKENS" <<'PY' | tee "${OUT:-/dev/null}"
import statistics as st, sys
res, cmd, dur, rev, tck, n = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6]
rows = [l.rstrip("\n").split("\t") for l in open(res)]
rounds = sorted({int(r[1]) for r in rows})
def get(v, rnd):
    r = next(r for r in rows if r[0] == v and int(r[1]) == rnd)
    rps = float(r[2])
    return rps, float(r[3]) / tck / (rps * dur) * 1e6  # req/s, server CPU-us per request
def m(xs):
    return f"{st.median(xs):,.2f} ({min(xs):,.2f} to {max(xs):,.2f})"
print(f"Command: `{cmd}` at commit {rev}; {n} tokens listed.\n")
print("| variant | requests/s | server CPU-us per request | CPU per request vs none (same round) |")
print("|---|---|---|---|")
for v in ("none", "body", "header"):
    rps = [get(v, r)[0] for r in rounds]
    cpu = [get(v, r)[1] for r in rounds]
    rel = [(get(v, r)[1] / get("none", r)[1] - 1) * 100 for r in rounds]
    print(f"| {v} | {m(rps)} | {m(cpu)} | {m(rel)} % |")
print(f"\nMedians (min to max) over {len(rounds)} rounds; the last column is each round's ratio to that round's `none` run.")
PY
log "raw: $RES"
