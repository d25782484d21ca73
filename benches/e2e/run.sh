#!/usr/bin/env bash
# End-to-end benchmark: corepost vs the Go baseline vs nginx (HTTP-only ceiling), same load,
# systems alternated within each round, one run. Writes benches/results/<date>-<scenario>.md and
# an SVG chart beside it. See benches/e2e/README.md.
#
# usage: benches/e2e/run.sh [--scenario a|b|c|d|all] [--rounds N] [--duration S] [--smoke] [more: --help]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
E2E="$ROOT/benches/e2e"
LIB="$E2E/lib.py"
WORKLOAD="$ROOT/benches/workload"
RESULTS="$ROOT/benches/results"
COMMAND_LINE="benches/e2e/run.sh"
for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./,:=+-]+$ ]]; then COMMAND_LINE+=" $arg"; else COMMAND_LINE+=" $(printf %q "$arg")"; fi
done

# ------------------------------------------------------------------ defaults and flags
SCENARIO=all
ROUNDS=3
DURATION=10
SMOKE=0
MODES=percore,machine
SYSTEMS=corepost,go,nginx
BODY_NAME=body10.json
CONNS=64
WRK_THREADS=1
RATE_A=""            # fixed rate for the latency runs of (a), req/s; empty = derived
RATE_B=""            # same for (b)
RATE_FRAC=0.8        # derived rate = this x the lowest median sustained rate of the run
DRAIN_TIMEOUT=120    # s: max wait for S3 to catch up after the load (b)
DRAIN_STABLE=10      # s: no new object for this long = drain finished (b)
KILL_DURATION=5      # s: load of the SIGKILL round (b)
KILL_SETTLE=3        # s: wait after SIGKILL before counting (b)
STOP_GRACE=10        # s: SIGTERM -> SIGKILL
READY_TIMEOUT=30     # s: server must print its ready line within this
MEM_GUARD_MIB=6144   # a server whose RSS passes this is killed (the machine is shared)
MAX_WORKERS=""       # passed to corepost and Go when set
MAX_QUEUE=""
LG_CPU=0             # load generator (and Garage in b) in the per-core runs
SERVER_CPU=1         # server in the per-core runs
SKIP_MISSING=0
NO_BUILD=0
NO_INSTALL=0
WRK_TIMEOUT=5s
# (c) corepost's batching, written to its --config file
BATCH_PAYLOADS=1000      # payloads per object
BATCH_BYTES=1048576      # uncompressed NDJSON bytes per object
BATCH_AGE_MS=1000        # an object is closed this long after its first payload
COMPRESSION=zstd         # none | gzip | zstd
C_QUEUE=100000           # corepost queue.max_payloads in (c) (raised to BATCH_PAYLOADS if lower)
VERIFY_THREADS=8         # parallel downloads when counting the payloads in the bucket (c)
# (d) corepost ack = "durable" vs "queued", both --sink discard
COMMIT_WAIT_US=""        # spool.commit_wait_us; empty = corepost's built-in default (50)
SPOOL_BASE=""            # where each durable run gets a fresh spool dir; empty = $ROOT/target
RATE_D=""                # fixed rate of the (d) latency runs; empty = half of each mode's median rate
FSYNC_PROBES=200         # (d) raw disk check: this many 4 KiB O_DIRECT writes + fdatasync

usage() {
    cat <<EOF
usage: benches/e2e/run.sh [options]
  --scenario a|b|c|d|all a = front end only, b = one S3 object per payload (Garage),
                       c = corepost batching NDJSON objects vs Go one object per payload,
                       d = corepost ack "durable" (fsynced spool) vs "queued", sink discard [all]
  --rounds N           rounds; each round runs every system once, alternating      [3]
  --duration S         seconds of load per run                                      [10]
  --smoke              harness check: 1 round, 3 s, short drain/kill waits
  --modes LIST         percore,machine (per-core pinned runs, whole-machine runs)   [percore,machine]
  --systems LIST       corepost,go,nginx                                            [all three]
  --skip-missing       skip a system whose binary cannot be built instead of failing
  --body FILE          body in benches/workload/                                    [body10.json]
  --connections N      connections for wrk and the fixed-rate runs                  [64]
  --wrk-threads N      wrk threads                                                  [1]
  --rate R             fixed rate (req/s) for the latency runs of every scenario
  --rate-a R, --rate-b R, --rate-d R   the same for one scenario only
  --rate-fraction F    derived fixed rate = F x lowest median sustained rate         [0.8]
  --drain-timeout S    (b, c) max wait for stored objects to stop growing           [120]
  --drain-stable S     (b, c) count unchanged this long = drain finished            [10]
  --kill-duration S    (b) load of the SIGKILL round                                [5]
  --kill-settle S      (b) wait after SIGKILL before counting                       [3]
  --batch-payloads N   (c) corepost batch.max_payloads, payloads per object          [1000]
  --batch-bytes N      (c) corepost batch.max_bytes, uncompressed bytes per object   [1048576]
  --batch-age-ms N     (c) corepost batch.max_age_ms                                  [1000]
  --compression C      (c) corepost batch.compression: none, gzip or zstd             [zstd]
  --verify-threads N   (c) parallel downloads when counting payloads in the bucket    [8]
  --commit-wait-us N   (d) spool.commit_wait_us, group commit wait         [corepost default, 50]
  --spool-base DIR     (d) a fresh spool dir per durable run is made (and deleted) under DIR;
                       must be a real disk, not tmpfs                          [\$ROOT/target]
  --fsync-probes N     (d) 4 KiB O_DIRECT write + fdatasync samples of the raw disk     [200]
  --max-workers N      MAX_WORKERS for corepost and Go                              [server default]
  --max-queue N        MAX_QUEUE for corepost and Go                                [server default]
  --mem-guard-mib N    kill a server whose RSS passes N MiB (shared machine)        [6144]
  --no-build           do not run cargo build / go-baseline/build.sh
  --no-install         do not apt-get / cargo install missing tools
EOF
}

# --smoke sets short defaults first, so that other flags on the same command line still win.
for arg in "$@"; do
    if [[ $arg == --smoke ]]; then
        SMOKE=1; ROUNDS=1; DURATION=3; DRAIN_TIMEOUT=30; DRAIN_STABLE=5; KILL_DURATION=3; KILL_SETTLE=2; STOP_GRACE=5
    fi
done

while [[ $# -gt 0 ]]; do
    case "$1" in
        --scenario) SCENARIO="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --smoke) SMOKE=1; shift ;;
        --modes) MODES="$2"; shift 2 ;;
        --systems) SYSTEMS="$2"; shift 2 ;;
        --skip-missing) SKIP_MISSING=1; shift ;;
        --body) BODY_NAME="$2"; shift 2 ;;
        --connections) CONNS="$2"; shift 2 ;;
        --wrk-threads) WRK_THREADS="$2"; shift 2 ;;
        --rate) RATE_A="$2"; RATE_B="$2"; RATE_D="$2"; shift 2 ;;
        --rate-a) RATE_A="$2"; shift 2 ;;
        --rate-b) RATE_B="$2"; shift 2 ;;
        --rate-d) RATE_D="$2"; shift 2 ;;
        --rate-fraction) RATE_FRAC="$2"; shift 2 ;;
        --drain-timeout) DRAIN_TIMEOUT="$2"; shift 2 ;;
        --drain-stable) DRAIN_STABLE="$2"; shift 2 ;;
        --kill-duration) KILL_DURATION="$2"; shift 2 ;;
        --kill-settle) KILL_SETTLE="$2"; shift 2 ;;
        --max-workers) MAX_WORKERS="$2"; shift 2 ;;
        --max-queue) MAX_QUEUE="$2"; shift 2 ;;
        --mem-guard-mib) MEM_GUARD_MIB="$2"; shift 2 ;;
        --batch-payloads) BATCH_PAYLOADS="$2"; shift 2 ;;
        --batch-bytes) BATCH_BYTES="$2"; shift 2 ;;
        --batch-age-ms) BATCH_AGE_MS="$2"; shift 2 ;;
        --compression) COMPRESSION="$2"; shift 2 ;;
        --verify-threads) VERIFY_THREADS="$2"; shift 2 ;;
        --commit-wait-us) COMMIT_WAIT_US="$2"; shift 2 ;;
        --spool-base) SPOOL_BASE="$2"; shift 2 ;;
        --fsync-probes) FSYNC_PROBES="$2"; shift 2 ;;
        --no-build) NO_BUILD=1; shift ;;
        --no-install) NO_INSTALL=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

case "$SCENARIO" in a) SCENARIOS=(a) ;; b) SCENARIOS=(b) ;; c) SCENARIOS=(c) ;; d) SCENARIOS=(d) ;;
    all) SCENARIOS=(a b c d) ;;
    *) echo "--scenario must be a, b, c, d or all" >&2; exit 2 ;; esac
IFS=, read -r -a MODE_LIST <<<"$MODES"
IFS=, read -r -a SYSTEM_LIST <<<"$SYSTEMS"
for m in "${MODE_LIST[@]}"; do [[ $m == percore || $m == machine ]] || { echo "bad mode $m" >&2; exit 2; }; done
for s in "${SYSTEM_LIST[@]}"; do [[ $s == corepost || $s == go || $s == nginx ]] || { echo "bad system $s" >&2; exit 2; }; done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "--rounds must be a positive integer" >&2; exit 2; }
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || { echo "--duration must be a positive integer (seconds)" >&2; exit 2; }
for v in BATCH_PAYLOADS BATCH_BYTES BATCH_AGE_MS VERIFY_THREADS FSYNC_PROBES; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "--$(tr 'A-Z_' 'a-z-' <<<"$v") must be a positive integer" >&2; exit 2; }
done
[[ -z $COMMIT_WAIT_US || $COMMIT_WAIT_US =~ ^[0-9]+$ ]] || { echo "--commit-wait-us must be a non-negative integer (µs)" >&2; exit 2; }
for v in RATE_A RATE_B RATE_D; do
    [[ -z ${!v} || ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "--rate* must be a positive integer (req/s)" >&2; exit 2; }
done
[[ $COMPRESSION == none || $COMPRESSION == gzip || $COMPRESSION == zstd ]] || { echo "--compression must be none, gzip or zstd" >&2; exit 2; }
((C_QUEUE >= BATCH_PAYLOADS)) || C_QUEUE=$BATCH_PAYLOADS
if [[ -n $MAX_QUEUE ]] && ((MAX_QUEUE < BATCH_PAYLOADS)) && [[ " ${SCENARIOS[*]} " == *" c "* ]]; then
    # MAX_QUEUE overrides queue.max_payloads, which corepost requires to be >= batch.max_payloads.
    echo "--max-queue ($MAX_QUEUE) must be >= --batch-payloads ($BATCH_PAYLOADS) for scenario c" >&2; exit 2
fi

BODY="$WORKLOAD/$BODY_NAME"
[[ -f $BODY ]] || BODY="$BODY_NAME"
[[ -f $BODY ]] || { echo "body file not found: $BODY_NAME" >&2; exit 2; }
BODY="$(cd "$(dirname "$BODY")" && pwd)/$(basename "$BODY")"
POST_LUA="$WORKLOAD/post.lua"
# GARAGE_SH may point to a stand-in with the same interface (start/count/stop/wipe DIR), for testing.
GARAGE_SH="${GARAGE_SH:-$ROOT/scripts/garage.sh}"
# Garage logs every request at info level: at thousands of PUT/s that is CPU taken from the store.
GARAGE_LOG_LEVEL="${GARAGE_LOG:-garage=warn}"
URL_PATH=/v1/payloads

# ------------------------------------------------------------------ logging, cleanup
log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf '[e2e %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2
    exit 1
}

RUN_ID="$(date +%Y%m%d-%H%M%S)-$$"
RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/corepost-e2e.XXXXXX")"
mkdir -p "$RUN_DIR/logs" "$RUN_DIR/out"
RECORDS="$RUN_DIR/records.jsonl"
: >"$RECORDS"

STARTED_PIDS=()     # every server / watchdog we started
GARAGE_DIRS=()      # every Garage we started
SPOOL_DIRS=()       # (d) spool dirs made by this run (each removed after its run, all on exit)
GARAGE_DIR=""

alive() {  # alive PID: exists and is not a zombie
    local st
    [[ -r /proc/$1/stat ]] || return 1
    st="$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n $st && $st != Z ]]
}

tree_pids() {  # tree_pids PID: the process and its descendants
    local p=$1 c
    echo "$p"
    for c in $(pgrep -P "$p" 2>/dev/null || true); do tree_pids "$c"; done
}

kill_tree() {  # kill_tree PID GRACE_S: SIGTERM the root, SIGKILL whatever is left after GRACE_S
    local root=$1 grace=$2 pids p end
    alive "$root" || { wait "$root" 2>/dev/null || true; return 0; }
    pids="$(tree_pids "$root")"
    kill -TERM "$root" 2>/dev/null || true
    end=$((SECONDS + grace))
    while alive "$root" && ((SECONDS < end)); do sleep 0.05; done
    for p in $pids; do
        if alive "$p"; then kill -KILL "$p" 2>/dev/null || true; fi
    done
    wait "$root" 2>/dev/null || true
}

cleanup() {
    local rc=$? p d
    trap - EXIT INT TERM
    for p in "${STARTED_PIDS[@]}"; do
        if alive "$p"; then kill_tree "$p" 3; fi
    done
    for d in "${SPOOL_DIRS[@]}"; do remove_spool_dir "$d"; done
    for d in "${GARAGE_DIRS[@]}"; do
        [[ -f $d/garage.log ]] && cp "$d/garage.log" "$RUN_DIR/logs/garage-server-$(basename "$d").log" 2>/dev/null
        "$GARAGE_SH" stop "$d" >>"$RUN_DIR/logs/garage.log" 2>&1 || true
        "$GARAGE_SH" wipe "$d" >>"$RUN_DIR/logs/garage.log" 2>&1 || true
    done
    if ((rc != 0)); then
        log "FAILED (exit $rc); logs kept in $RUN_DIR/logs"
    fi
    exit "$rc"
}
remove_spool_dir() {  # only what this run made (mktemp names under the spool base)
    [[ -n $1 && $(basename "$1") == corepost-e2e-* && -d $1 ]] && rm -rf -- "$1"
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

in_list() {  # in_list ITEM LIST...
    local x=$1 y
    shift
    for y in "$@"; do [[ $y == "$x" ]] && return 0; done
    return 1
}
now() { echo "$EPOCHREALTIME"; }
fsub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
fge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }

# (d) the spool base, checked before anything is built: a real disk, not tmpfs.
D_SPOOL_FSTYPE=""; D_SPOOL_SOURCE=""
[[ -n $SPOOL_BASE ]] || SPOOL_BASE="$ROOT/target"
if [[ " ${SCENARIOS[*]} " == *" d "* ]]; then
    # O_DIRECT + fdatasync on tmpfs would measure memory, not a disk: refuse it.
    mkdir -p "$SPOOL_BASE" || die "--spool-base $SPOOL_BASE: cannot create it"
    SPOOL_BASE="$(cd "$SPOOL_BASE" && pwd)"
    D_SPOOL_FSTYPE="$(df --output=fstype "$SPOOL_BASE" 2>/dev/null | tail -1 | tr -d ' ')"
    D_SPOOL_SOURCE="$(df --output=source "$SPOOL_BASE" 2>/dev/null | tail -1 | tr -d ' ')"
    [[ -n $D_SPOOL_FSTYPE ]] || die "cannot tell the filesystem type of $SPOOL_BASE (df --output=fstype)"
    case "$D_SPOOL_FSTYPE" in
        tmpfs|ramfs|devtmpfs)
            die "scenario d: the spool base $SPOOL_BASE is on $D_SPOOL_FSTYPE, not a disk: the durable spool uses O_DIRECT + fdatasync, which would measure memory; pick a dir on a real disk with --spool-base (e.g. /var/tmp)" ;;
    esac
fi

# ------------------------------------------------------------------ tools
NPROC="$(nproc)"
CLK_TCK="$(getconf CLK_TCK)"
((NPROC >= 2)) || log "WARNING: only $NPROC CPU; the per-core runs need CPUs $LG_CPU and $SERVER_CPU"

apt_install() {
    [[ $NO_INSTALL == 1 ]] && die "missing $* and --no-install given"
    log "installing $* with apt-get"
    apt-get update -qq >>"$RUN_DIR/logs/install.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >>"$RUN_DIR/logs/install.log" 2>&1
}

command -v python3 >/dev/null || die "python3 is required"
command -v taskset >/dev/null || apt_install util-linux
command -v curl >/dev/null || apt_install curl
command -v pgrep >/dev/null || apt_install procps
command -v wrk >/dev/null || apt_install wrk || die "cannot install wrk"
if [[ " ${SCENARIOS[*]} " == *" c "* ]]; then
    # (c) counts the payloads in .ndjson.zst objects: zstd CLI, or the python zstandard package.
    command -v zstd >/dev/null || python3 -c 'import zstandard' 2>/dev/null || apt_install zstd || die "cannot install zstd"
fi
if in_list nginx "${SYSTEM_LIST[@]}" && [[ " ${SCENARIOS[*]} " == *" a "* ]]; then
    if [[ ! -x /usr/sbin/nginx ]] && ! command -v nginx >/dev/null; then
        apt_install nginx-light || apt_install nginx || die "cannot install nginx"
    fi
fi
NGINX_BIN="$(command -v nginx || echo /usr/sbin/nginx)"

# Fixed-rate generator: oha when it is there or installs, else the labelled Python fallback.
OHA_BIN="$(command -v oha || true)"
[[ -z $OHA_BIN && -x $HOME/.cargo/bin/oha ]] && OHA_BIN="$HOME/.cargo/bin/oha"
if [[ -z $OHA_BIN && $NO_INSTALL == 0 ]]; then
    log "oha not found: cargo install oha --locked (slow, once; log in $RUN_DIR/logs/oha-install.log)"
    if cargo install oha --locked >"$RUN_DIR/logs/oha-install.log" 2>&1; then
        OHA_BIN="$HOME/.cargo/bin/oha"
    else
        log "WARNING: cargo install oha failed; using the Python asyncio fallback (benches/e2e/fixed_rate.py)"
    fi
fi
if [[ -n $OHA_BIN ]]; then
    OHA_HELP="$("$OHA_BIN" --help 2>&1 || true)"
    if grep -q -- '--output-format' <<<"$OHA_HELP"; then OHA_JSON=(--output-format json); else OHA_JSON=(--json); fi
    OHA_EXTRA=()
    grep -q -- '--latency-correction' <<<"$OHA_HELP" && OHA_EXTRA+=(--latency-correction)
    grep -q -- '--no-tui' <<<"$OHA_HELP" && OHA_EXTRA+=(--no-tui)
    LAT_TOOL="oha $("$OHA_BIN" --version 2>/dev/null | awk '{print $2}') (-q rate, --latency-correction)"
else
    LAT_TOOL="fixed_rate.py — Python asyncio fallback written for this harness (oha not installed); open loop, corrected for coordinated omission"
fi

# ------------------------------------------------------------------ build
COREPOST_BIN="$ROOT/target/release/corepost"
GO_BIN="$ROOT/benches/go-baseline/go-baseline"
SKIPPED=()
AVAILABLE=()

# Go and nginx only take part in (a), (b), (c): a (d)-only run neither builds nor needs them.
HAS_ABC=0
for sc in "${SCENARIOS[@]}"; do [[ $sc == d ]] || HAS_ABC=1; done
want() { in_list "$1" "${SYSTEM_LIST[@]}" && [[ $1 == corepost || $HAS_ABC == 1 ]]; }

missing() {  # missing SYSTEM REASON
    if [[ $SKIP_MISSING == 1 ]]; then
        log "WARNING: skipping $1: $2"
        SKIPPED+=("$1: $2")
    else
        die "$1: $2 (use --skip-missing or --systems to run without it)"
    fi
}

if want corepost; then
    if [[ $NO_BUILD == 0 && -f $ROOT/Cargo.toml && -f $ROOT/src/main.rs ]]; then
        log "building corepost: cargo build --release (log: $RUN_DIR/logs/cargo-build.log)"
        if ! (cd "$ROOT" && cargo build --release) >"$RUN_DIR/logs/cargo-build.log" 2>&1; then
            tail -20 "$RUN_DIR/logs/cargo-build.log" >&2
            missing corepost "cargo build --release failed"
        fi
    fi
    if [[ -x $COREPOST_BIN ]]; then AVAILABLE+=(corepost)
    elif [[ " ${SKIPPED[*]} " != *" corepost:"* ]]; then missing corepost "no $COREPOST_BIN"; fi
fi
if want go; then
    if [[ $NO_BUILD == 0 && -x $ROOT/benches/go-baseline/build.sh ]]; then
        log "building the Go baseline: benches/go-baseline/build.sh"
        if ! "$ROOT/benches/go-baseline/build.sh" >"$RUN_DIR/logs/go-build.log" 2>&1; then
            tail -20 "$RUN_DIR/logs/go-build.log" >&2
            missing go "benches/go-baseline/build.sh failed"
        fi
    fi
    if [[ -x $GO_BIN ]]; then AVAILABLE+=(go)
    elif [[ " ${SKIPPED[*]} " != *" go:"* ]]; then missing go "no $GO_BIN"; fi
fi
if want nginx; then
    if [[ -x $NGINX_BIN ]]; then AVAILABLE+=(nginx); else missing nginx "no nginx binary"; fi
fi
((${#AVAILABLE[@]} > 0)) || die "no system to benchmark"

if [[ " ${SCENARIOS[*]} " == *" b "* || " ${SCENARIOS[*]} " == *" c "* ]]; then
    [[ -x $GARAGE_SH ]] || die "scenarios b and c need scripts/garage.sh (not there yet)"
fi

PPB="$(python3 "$LIB" payloads "$BODY")"
BODY_BYTES="$(stat -c %s "$BODY")"

# (c): corepost's batching configuration (--config). The Go baseline has no such mode: it stays
# one PUT per payload.
C_CONFIG="$RUN_DIR/corepost-c.toml"
cat >"$C_CONFIG" <<EOF
# scenario (c), written by benches/e2e/run.sh
[batch]
max_payloads = $BATCH_PAYLOADS
max_bytes = $BATCH_BYTES
max_age_ms = $BATCH_AGE_MS
compression = "$COMPRESSION"
[queue]
max_payloads = $C_QUEUE
EOF

# (d): corepost's two ack modes, both `--sink discard`, each from a config file of its own run
# (durable: a fresh spool directory per run, on a real disk, deleted after the run).
HAS_D=0; [[ " ${SCENARIOS[*]} " == *" d "* ]] && HAS_D=1
D_QUEUED_CONFIG="$RUN_DIR/corepost-d-queued.toml"
D_DURABLE_TEMPLATE="$RUN_DIR/corepost-d-durable.toml"
D_COMMIT_WAIT_EFFECTIVE=""; D_FSYNC_JSON=""
cat >"$D_QUEUED_CONFIG" <<EOF
# scenario (d), queued mode, written by benches/e2e/run.sh (run with --sink discard)
[server]
ack = "queued"
EOF
# write_durable_config OUT SPOOL_DIR
write_durable_config() {
    {
        echo "# scenario (d), durable mode, written by benches/e2e/run.sh (run with --sink discard)"
        echo "[server]"
        echo 'ack = "durable"'
        echo "[spool]"
        echo "dir = \"$2\""
        if [[ -n $COMMIT_WAIT_US ]]; then echo "commit_wait_us = $COMMIT_WAIT_US"; fi
    } >"$1"
}
write_durable_config "$D_DURABLE_TEMPLATE" "<a fresh directory per run under $SPOOL_BASE>"

if [[ $HAS_D == 1 ]] && want corepost && in_list corepost "${AVAILABLE[@]}"; then
    write_durable_config "$D_DURABLE_TEMPLATE.check" "$SPOOL_BASE/check"
    if ! D_CHECK="$("$COREPOST_BIN" check-config --config "$D_DURABLE_TEMPLATE.check" --sink discard 2>&1)"; then
        echo "$D_CHECK" >&2
        die "corepost check-config refused the (d) durable configuration"
    fi
    D_COMMIT_WAIT_EFFECTIVE="$(awk -F' *= *' '/^\[/ { sec = $0 } sec == "[spool]" && $1 == "commit_wait_us" { print $2 }' <<<"$D_CHECK")"
    [[ -n $D_COMMIT_WAIT_EFFECTIVE ]] || D_COMMIT_WAIT_EFFECTIVE="${COMMIT_WAIT_US:-?}"
    rm -f "$D_DURABLE_TEMPLATE.check"
    # The raw disk once per run: what one 4 KiB O_DIRECT write + fdatasync costs on the spool's
    # filesystem bounds the durable latency (a commit is one such write + fdatasync).
    fsync_dir="$(mktemp -d "$SPOOL_BASE/corepost-e2e-fsync.XXXXXX")"
    SPOOL_DIRS+=("$fsync_dir")
    D_FSYNC_JSON="$RUN_DIR/out/fsync-latency.json"
    log "(d) spool base $SPOOL_BASE on $D_SPOOL_FSTYPE ($D_SPOOL_SOURCE); measuring the raw disk: $FSYNC_PROBES x (4 KiB O_DIRECT write + fdatasync)"
    python3 "$LIB" fsync-latency "$fsync_dir" "$FSYNC_PROBES" >"$D_FSYNC_JSON" 2>"$RUN_DIR/logs/fsync-latency.log" \
        || { cat "$RUN_DIR/logs/fsync-latency.log" >&2; die "the fdatasync latency probe failed in $fsync_dir"; }
    remove_spool_dir "$fsync_dir"
    log "  $(python3 "$LIB" fsync-summary "$D_FSYNC_JSON")"
fi

systems_for() {  # systems_for SCENARIO: available systems that apply to it, in the fixed order
    local s
    if [[ $1 == d ]]; then
        # (d) compares corepost with itself; Go and nginx have no durable mode.
        in_list corepost "${AVAILABLE[@]}" && printf '%s\n' queued durable
        return 0
    fi
    for s in corepost go nginx; do
        in_list "$s" "${AVAILABLE[@]}" || continue
        [[ $1 != a && $s == nginx ]] && continue  # (b), (c): nginx stores nothing
        echo "$s"
    done
}

log "run $RUN_ID: scenario=$SCENARIO rounds=$ROUNDS duration=${DURATION}s modes=$MODES systems=${AVAILABLE[*]}"
log "body $BODY ($PPB payloads, $BODY_BYTES bytes), $CONNS connections; fixed-rate tool: $LAT_TOOL"
log "raw logs: $RUN_DIR"

# ------------------------------------------------------------------ ports, servers
port_free() { [[ -z "$(ss -Htln "sport = :$1" 2>/dev/null)" ]]; }

pick_port() {
    local p
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        p="$(python3 "$LIB" free-port)"
        if port_free "$p"; then echo "$p"; return 0; fi
    done
    die "could not find a free port"
}

host_steal() {  # steal ticks of all vCPUs so far (/proc/stat): time the hypervisor ran something else
    awk '/^cpu /{print $9; exit}' /proc/stat
}

cpu_ticks() {  # utime+stime of a process tree, in clock ticks
    local total=0 p s f
    for p in $(tree_pids "$1"); do
        s="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
        s="${s##*) }"
        read -r -a f <<<"$s"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

vmhwm_kib() {  # sum of VmHWM (kB) over a process tree
    local total=0 p v
    for p in $(tree_pids "$1"); do
        v="$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)"
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

write_nginx_conf() {  # write_nginx_conf DIR PORT WORKERS
    local dir=$1 port=$2 workers=$3
    mkdir -p "$dir/logs" "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
# HTTP-only ceiling: every POST gets 204 without the body being stored anywhere.
# 'return' runs before the content phase, so nginx never reads the body into a buffer or a temp
# file: ngx_http_discard_request_body reads it off the socket and drops it (no request-body
# buffering, nothing written to disk).
user root;
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    client_max_body_size 1m;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    server {
        listen 127.0.0.1:$port reuseport;
        location / {
            return 204;
        }
    }
}
EOF
}

SRV_PID=""; SRV_PORT=""; SRV_LOG=""; SRV_URL=""; GUARD_PID=""; GUARD_FLAG=""; SRV_SPOOL=""

# start_server SYSTEM SCENARIO MODE S3_PREFIX LABEL -> SRV_PID SRV_PORT SRV_LOG SRV_URL
start_server() {
    local sys=$1 scenario=$2 mode=$3 prefix=$4 label=$5
    local pin=() envs=() cores workers pattern code end
    SRV_PORT="$(pick_port)"
    SRV_LOG="$RUN_DIR/logs/$label.log"
    SRV_URL="http://127.0.0.1:$SRV_PORT"
    [[ $mode == percore ]] && pin=(taskset -c "$SERVER_CPU")
    [[ -n $MAX_WORKERS ]] && envs+=("MAX_WORKERS=$MAX_WORKERS")
    [[ -n $MAX_QUEUE ]] && envs+=("MAX_QUEUE=$MAX_QUEUE")
    envs+=("S3_PREFIX=$prefix")
    SRV_SPOOL=""
    # Dirty pages of the previous run (a deleted spool, logs, a build) are written back now,
    # not during this run: durable latency is the disk's, and writeback would stall it.
    sync
    case "$sys" in
        queued|durable)
            # (d) corepost with ack = queued / durable, no store: front end (+ spool) only.
            cores=1; [[ $mode == machine ]] && cores=$NPROC
            local cfg=$D_QUEUED_CONFIG
            if [[ $sys == durable ]]; then
                SRV_SPOOL="$(mktemp -d "$SPOOL_BASE/corepost-e2e-spool.XXXXXX")"
                SPOOL_DIRS+=("$SRV_SPOOL")
                cfg="$RUN_DIR/cfg/$label.toml"
                mkdir -p "$RUN_DIR/cfg"
                write_durable_config "$cfg" "$SRV_SPOOL"
            fi
            env "${envs[@]}" "${pin[@]}" "$COREPOST_BIN" serve --listen "127.0.0.1:$SRV_PORT" \
                --cores "$cores" --sink discard --config "$cfg" --spill-dir "$RUN_DIR/spill/$label" >"$SRV_LOG" 2>&1 &
            pattern="listening on 127.0.0.1:$SRV_PORT"
            ;;
        corepost)
            cores=1; [[ $mode == machine ]] && cores=$NPROC
            local sink=discard extra=()
            [[ $scenario != a ]] && sink=s3
            # (c): batching from the config file; a spill directory of its own per run, so nothing
            # left over by one run is uploaded at the start of the next.
            [[ $scenario == c ]] && extra=(--config "$C_CONFIG" --spill-dir "$RUN_DIR/spill/$label")
            env "${envs[@]}" "${pin[@]}" "$COREPOST_BIN" serve --listen "127.0.0.1:$SRV_PORT" \
                --cores "$cores" --sink "$sink" "${extra[@]}" >"$SRV_LOG" 2>&1 &
            pattern="listening on 127.0.0.1:$SRV_PORT"
            ;;
        go)
            envs+=("ADDR=127.0.0.1:$SRV_PORT")
            [[ $mode == percore ]] && envs+=("GOMAXPROCS=1")
            [[ $scenario == a ]] && envs+=("UPLOAD_NOOP=1")
            env "${envs[@]}" "${pin[@]}" "$GO_BIN" >"$SRV_LOG" 2>&1 &
            pattern="go-baseline listening on 127.0.0.1:$SRV_PORT"
            ;;
        nginx)
            workers=1; [[ $mode == machine ]] && workers=$NPROC
            local ndir="$RUN_DIR/nginx-$label"
            write_nginx_conf "$ndir" "$SRV_PORT" "$workers"
            "${pin[@]}" "$NGINX_BIN" -p "$ndir" -c "$ndir/nginx.conf" -e "$ndir/logs/error.log" \
                -g 'daemon off;' >"$SRV_LOG" 2>&1 &
            pattern=""
            ;;
    esac
    SRV_PID=$!
    STARTED_PIDS+=("$SRV_PID")
    end=$((SECONDS + READY_TIMEOUT))
    if [[ -n $pattern ]]; then
        until grep -qF "$pattern" "$SRV_LOG" 2>/dev/null; do
            if ! alive "$SRV_PID"; then
                tail -20 "$SRV_LOG" >&2 || true
                die "$sys exited before it was ready (log $SRV_LOG)"
            fi
            if ((SECONDS >= end)); then
                tail -20 "$SRV_LOG" >&2 || true
                die "$sys did not print '$pattern' within ${READY_TIMEOUT}s (log $SRV_LOG)"
            fi
            sleep 0.02
        done
    else
        # nginx prints nothing when ready: its ready signal is the port answering.
        until curl -s -o /dev/null --max-time 1 -X POST "$SRV_URL/" 2>/dev/null; do
            if ! alive "$SRV_PID"; then
                cat "$RUN_DIR/nginx-$label/logs/error.log" "$SRV_LOG" >&2 2>/dev/null || true
                die "nginx exited before it was ready"
            fi
            ((SECONDS >= end)) && die "nginx did not answer within ${READY_TIMEOUT}s"
            sleep 0.02
        done
    fi
    # One real request to prove the server answers the workload with 2xx before measuring.
    code="$(curl -s -o "$RUN_DIR/out/$label.probe" -w '%{http_code}' --max-time 10 -X POST \
        -H 'Content-Type: application/json' --data-binary "@$BODY" "$SRV_URL$URL_PATH" || true)"
    [[ $code == 2* ]] || die "$sys answered the probe POST with HTTP '$code' (body: $(head -c 300 "$RUN_DIR/out/$label.probe" 2>/dev/null))"
    # Memory guard: the machine is shared; a runaway server is killed and the run marked.
    GUARD_FLAG="$RUN_DIR/out/$label.memguard"
    (
        trap - EXIT INT TERM
        while alive "$SRV_PID"; do
            rss="$(awk '/^VmRSS:/ {print $2}' "/proc/$SRV_PID/status" 2>/dev/null || echo 0)"
            if ((${rss:-0} > MEM_GUARD_MIB * 1024)); then
                echo "$rss" >"$GUARD_FLAG"
                kill -KILL "$SRV_PID" 2>/dev/null || true
                break
            fi
            sleep 0.25
        done
    ) &
    GUARD_PID=$!
    STARTED_PIDS+=("$GUARD_PID")
}

stop_server() {
    kill_tree "$SRV_PID" "$STOP_GRACE"
    if [[ -n $SRV_SPOOL ]]; then
        remove_spool_dir "$SRV_SPOOL"
        SRV_SPOOL=""
    fi
    if [[ -n $GUARD_PID ]]; then
        kill "$GUARD_PID" 2>/dev/null || true
        wait "$GUARD_PID" 2>/dev/null || true
    fi
    if [[ -s $GUARD_FLAG ]]; then
        log "WARNING: the memory guard killed the server at RSS $(($(cat "$GUARD_FLAG") / 1024)) MiB (> $MEM_GUARD_MIB MiB)"
    fi
}

LG_PIN=()
set_mode_pinning() { if [[ $1 == percore ]]; then LG_PIN=(taskset -c "$LG_CPU"); else LG_PIN=(); fi; }

# Load generators run in the background and are waited for, so that SIGTERM/SIGINT reach the
# trap at once instead of after the load.
bg_wait() {  # bg_wait STDOUT_FILE STDERR_FILE CMD...  (no redirection around the call: the trap
    local o=$1 e=$2  # must write to the real stderr)
    shift 2
    "$@" >"$o" 2>"$e" &
    local pid=$!
    STARTED_PIDS+=("$pid")
    wait "$pid"
}

run_wrk() {  # run_wrk OUT DURATION
    local out=$1 dur=$2
    if ! bg_wait "$out" "$out.stderr" env BODY="$BODY" URL_PATH="$URL_PATH" timeout $((dur + 60)) "${LG_PIN[@]}" \
        wrk -t"$WRK_THREADS" -c"$CONNS" -d"${dur}s" --timeout "$WRK_TIMEOUT" --latency -s "$POST_LUA" "$SRV_URL"; then
        cat "$out" "$out.stderr" >&2
        die "wrk failed against $SRV_URL"
    fi
    grep -q 'requests in' "$out" || { cat "$out" "$out.stderr" >&2; die "wrk printed no result"; }
}

# ------------------------------------------------------------------ Garage
start_garage() {  # start_garage MODE
    local mode=$1
    GARAGE_DIR="$RUN_DIR/garage-$mode"
    GARAGE_DIRS+=("$GARAGE_DIR")
    if [[ $mode == percore ]]; then
        log "starting Garage pinned to CPU $LG_CPU (with the load generator): scripts/garage.sh start $GARAGE_DIR"
        GARAGE_LOG="$GARAGE_LOG_LEVEL" taskset -c "$LG_CPU" "$GARAGE_SH" start "$GARAGE_DIR" >"$RUN_DIR/logs/garage-start-$mode.log" 2>&1 \
            || { cat "$RUN_DIR/logs/garage-start-$mode.log" >&2; die "scripts/garage.sh start failed"; }
    else
        log "starting Garage (not pinned): scripts/garage.sh start $GARAGE_DIR"
        GARAGE_LOG="$GARAGE_LOG_LEVEL" "$GARAGE_SH" start "$GARAGE_DIR" >"$RUN_DIR/logs/garage-start-$mode.log" 2>&1 \
            || { cat "$RUN_DIR/logs/garage-start-$mode.log" >&2; die "scripts/garage.sh start failed"; }
    fi
    [[ -f $GARAGE_DIR/env ]] || die "scripts/garage.sh start wrote no $GARAGE_DIR/env"
    set -a
    # shellcheck disable=SC1091
    . "$GARAGE_DIR/env"
    set +a
    log "Garage up: S3_ENDPOINT=${S3_ENDPOINT:-?} bucket=${S3_BUCKET:-?}"
    garage_metrics_init
}

stop_garage() {
    [[ -n $GARAGE_DIR ]] || return 0
    "$GARAGE_SH" stop "$GARAGE_DIR" >>"$RUN_DIR/logs/garage.log" 2>&1 || log "WARNING: garage stop failed"
    cp "$GARAGE_DIR/garage.log" "$RUN_DIR/logs/garage-server-$(basename "$GARAGE_DIR").log" 2>/dev/null || true
    "$GARAGE_SH" wipe "$GARAGE_DIR" >>"$RUN_DIR/logs/garage.log" 2>&1 || true
    GARAGE_DIR=""
    unset S3_ENDPOINT S3_REGION S3_BUCKET AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
}

garage_count() {  # garage_count PREFIX -> exact object count under PREFIX/
    local c
    c="$("${LG_PIN[@]}" "$GARAGE_SH" count "$GARAGE_DIR" "$1/" 2>>"$RUN_DIR/logs/garage.log" | tail -1)"
    if ! [[ $c =~ ^[0-9]+$ ]]; then
        tail -5 "$RUN_DIR/logs/garage.log" >&2
        tail -20 "$GARAGE_DIR/garage.log" >&2 2>/dev/null || true
        die "scripts/garage.sh count printed '$c' (Garage log above)"
    fi
    echo "$c"
}

# Progress signal for the drain: Garage's own counter of successful PutObject calls (its admin
# /metrics, cheap and immediate; only one server talks to Garage at a time, so the delta over a run
# is that run's uploads). Listing the bucket (garage.sh count) is exact but takes seconds per 100k
# objects, too coarse to time the drain, so it gives the stored figure once the uploads stop.
# Falls back to polling the exact count when the metrics cannot be read.
GARAGE_ADMIN_PORT=""; GARAGE_METRICS_TOKEN=""; GARAGE_PROGRESS=count

garage_metrics_init() {
    # shellcheck disable=SC1091
    GARAGE_ADMIN_PORT="$( (. "$GARAGE_DIR/instance.sh" >/dev/null 2>&1 && echo "${ADMIN_PORT:-}") || true)"
    GARAGE_METRICS_TOKEN="$(sed -n 's/^metrics_token = "\(.*\)"$/\1/p' "$GARAGE_DIR/garage.toml" 2>/dev/null || true)"
    GARAGE_PROGRESS=count
    if [[ -n $GARAGE_ADMIN_PORT && -n $GARAGE_METRICS_TOKEN && "$(garage_puts)" =~ ^[0-9]+$ ]]; then
        GARAGE_PROGRESS=puts
    else
        log "WARNING: cannot read Garage's metrics; the drain is timed by polling the exact count (coarse)"
    fi
}

garage_puts() {  # successful PutObject calls so far (empty if unavailable)
    { curl -s --max-time 5 -H "Authorization: Bearer $GARAGE_METRICS_TOKEN" \
        "http://127.0.0.1:$GARAGE_ADMIN_PORT/metrics" 2>/dev/null || true; } |
        awk '/^# TYPE / { seen = 1 }
             /^api_s3_request_counter\{.*api_endpoint="PutObject"/ { ok += $NF }
             /^api_s3_error_counter\{.*api_endpoint="PutObject"/ { err += $NF }
             END { if (seen) printf "%d\n", ok - err }'
}

# Garage's counters of the writes it served, for (c): "OBJECTS REQUESTS" (empty if unavailable).
#   OBJECTS  = successful PutObject + CompleteMultipartUpload calls (objects stored)
#   REQUESTS = PutObject + CreateMultipartUpload + UploadPart + CompleteMultipartUpload requests
garage_writes() {
    { curl -s --max-time 5 -H "Authorization: Bearer $GARAGE_METRICS_TOKEN" \
        "http://127.0.0.1:$GARAGE_ADMIN_PORT/metrics" 2>/dev/null || true; } |
        awk '/^# TYPE / { seen = 1 }
             /^api_s3_request_counter\{.*api_endpoint="(PutObject|CompleteMultipartUpload)"/ { obj += $NF }
             /^api_s3_error_counter\{.*api_endpoint="(PutObject|CompleteMultipartUpload)"/ { obj -= $NF }
             /^api_s3_request_counter\{.*api_endpoint="(PutObject|CreateMultipartUpload|UploadPart|CompleteMultipartUpload)"/ { req += $NF }
             END { if (seen) printf "%d %d\n", obj, req }'
}

# corepost_counts URL -> "ACCEPTED SETTLED UPLOADED" payloads from corepost's /metrics, summed over
# shards; SETTLED = uploaded + failed + spilled (empty if unreadable). curl + awk: cheap to poll.
corepost_counts() {
    { curl -s --max-time 5 "$1/metrics" 2>/dev/null || true; } |
        awk '/^corepost_payloads_accepted_total[{ ]/ { a += $NF; seen = 1 }
             /^corepost_payloads_uploaded_total[{ ]/ { u += $NF }
             /^corepost_payloads_(failed|spilled)_total[{ ]/ { f += $NF }
             END { if (seen) printf "%d %d %d\n", a, u + f, u }'
}

# spool_counts URL -> "FSYNCS COMMITS RECORDS" from corepost's /metrics, summed over shards
# (corepost_spool_fsyncs_total, _commits_total, _records_total); empty without a spool (queued).
spool_counts() {
    { curl -s --max-time 5 "$1/metrics" 2>/dev/null || true; } |
        awk '/^corepost_spool_fsyncs_total[{ ]/ { f += $NF; seen = 1 }
             /^corepost_spool_commits_total[{ ]/ { c += $NF }
             /^corepost_spool_records_total[{ ]/ { r += $NF }
             END { if (seen) printf "%d %d %d\n", f, c, r }'
}

# spool_fields BEFORE AFTER T0 T1 -> record fields of the spool counters' deltas over [T0, T1]
spool_fields() {
    local f0 c0 r0 f1 c1 r1
    read -r f0 c0 r0 <<<"$1"
    read -r f1 c1 r1 <<<"$2"
    [[ -n ${f0:-} && -n ${f1:-} ]] || return 0
    echo "spool_fsyncs=$((f1 - f0))" "spool_commits=$((c1 - c0))" "spool_records=$((r1 - r0))" \
        "spool_window_s=$(fsub "$4" "$3")"
}

# drain_c SYSTEM PREFIX EXPECTED T_LOAD_END OBJECTS0 -> DRAIN_S DRAIN_TIMED_OUT DRAIN_END
#   (c) The time of the last object stored: Garage's count of objects written (PutObject +
#   CompleteMultipartUpload; multipart uploads would escape a PutObject-only count), polled every
#   0.2 s. Ends when everything corepost accepted is settled by its own /metrics (uploaded, failed
#   or spilled), or for Go when EXPECTED objects were written; or when nothing was written for
#   DRAIN_STABLE s; or after DRAIN_TIMEOUT s. The payloads stored are counted afterwards in the
#   bucket itself (s3-inventory).
drain_c() {
    local sys=$1 prefix=$2 expected=$3 t_end=$4 obj0=$5 last=-1 last_change t p w a settled u
    DRAIN_TIMED_OUT=0
    DRAIN_END=""
    last_change="$t_end"
    while :; do
        t="$(now)"
        if [[ $GARAGE_PROGRESS == puts ]]; then
            w="$(garage_writes)"
            [[ $w =~ ^[0-9]+\ [0-9]+$ ]] || die "could not read Garage's write counters"
            p=$((${w%% *} - obj0))
        elif [[ $sys == corepost ]]; then
            read -r a settled u <<<"$(corepost_counts "$SRV_URL")"
            p=${u:-0}
        else
            p="$(garage_count "$prefix")"
            t="$(now)"
        fi
        if ((p != last)); then
            ((last >= 0)) && last_change=$t
            last=$p
        fi
        if [[ $sys == corepost ]]; then
            read -r a settled u <<<"$(corepost_counts "$SRV_URL")"
            [[ -n ${a:-} ]] || die "could not read corepost's /metrics at $SRV_URL"
            if ((settled >= a)); then DRAIN_END=settled; break; fi
        elif ((p >= expected)); then
            DRAIN_END=expected; break
        fi
        if fge "$(fsub "$t" "$last_change")" "$DRAIN_STABLE"; then DRAIN_END=stable; break; fi
        if fge "$(fsub "$t" "$t_end")" "$DRAIN_TIMEOUT"; then DRAIN_TIMED_OUT=1; DRAIN_END=timeout; break; fi
        sleep 0.2
    done
    DRAIN_S="$(fsub "$last_change" "$t_end")"
    fge "$DRAIN_S" 0 || DRAIN_S=0
}

# drain PREFIX EXPECTED T_LOAD_END PUTS0 -> STORED DRAIN_S DRAIN_TIMED_OUT
#   Waits until EXPECTED objects were written under PREFIX, or the writes stop for DRAIN_STABLE s,
#   or DRAIN_TIMEOUT s pass. DRAIN_S = time from the end of the load to the last observed growth.
drain() {
    local prefix=$1 expected=$2 t_end=$3 puts0=$4 last=-1 last_change t c p c2
    DRAIN_TIMED_OUT=0
    last_change="$t_end"
    if [[ $GARAGE_PROGRESS == puts ]]; then
        while :; do
            t="$(now)"
            p="$(garage_puts)"
            [[ $p =~ ^[0-9]+$ ]] || die "could not read Garage's PutObject counter"
            c=$((p - puts0))
            if ((c != last)); then
                ((last >= 0)) && last_change=$t
                last=$c
            fi
            ((c >= expected)) && break
            fge "$(fsub "$t" "$last_change")" "$DRAIN_STABLE" && break
            if fge "$(fsub "$t" "$t_end")" "$DRAIN_TIMEOUT"; then DRAIN_TIMED_OUT=1; break; fi
            sleep 0.2
        done
        STORED="$(garage_count "$prefix")"
        if ((STORED < c)); then
            # A listing right after heavy writes can come back short: count once more.
            c2="$(garage_count "$prefix")"
            ((c2 > STORED)) && STORED=$c2
        fi
    else
        while :; do
            c="$(garage_count "$prefix")"
            t="$(now)"  # conservative: objects counted were stored by the end of the listing
            if ((c != last)); then
                ((last >= 0 || c > 0)) && last_change=$t
                last=$c
            elif fge "$(fsub "$t" "$last_change")" "$DRAIN_STABLE"; then
                break
            fi
            ((c >= expected)) && break
            if fge "$(fsub "$t" "$t_end")" "$DRAIN_TIMEOUT"; then DRAIN_TIMED_OUT=1; break; fi
            sleep 0.5
        done
        STORED=$last
    fi
    DRAIN_S="$(fsub "$last_change" "$t_end")"
    fge "$DRAIN_S" 0 || DRAIN_S=0
}

# ------------------------------------------------------------------ one run of each kind
common_fields() {  # common_fields KIND SYSTEM SCENARIO MODE ROUND
    echo "kind=$1" "system=$2" "scenario=$3" "mode=$4" "round=$5" "payloads_per_body=$PPB" "clk_tck=$CLK_TCK" \
        "port=$SRV_PORT"
}

# The probe POST of start_server adds PPB payloads under the prefix in (b): subtract them.
probe_adjust() { local s=$1; s=$((s - PPB)); ((s < 0)) && s=0; echo "$s"; }

run_tput() {  # run_tput SYSTEM SCENARIO MODE ROUND
    local sys=$1 sc=$2 mode=$3 r=$4 label prefix c0 c1 c2 st0 t_end hwm extra=()
    label="$sc-$mode-$sys-tput-r$(printf %03d "$r")"
    prefix="e2e-$RUN_ID/$label"
    log "[$sc/$mode round $r/$ROUNDS] $sys: saturating load ${DURATION}s"
    local puts0=0
    [[ $sc == b && $GARAGE_PROGRESS == puts ]] && puts0="$(garage_puts)"
    start_server "$sys" "$sc" "$mode" "$prefix" "$label"
    local sp0="" sp1="" t_start
    [[ $sc == d ]] && sp0="$(spool_counts "$SRV_URL")"
    c0="$(cpu_ticks "$SRV_PID")"
    st0="$(host_steal)"
    t_start="$(now)"
    run_wrk "$RUN_DIR/out/$label.wrk" "$DURATION"
    t_end="$(now)"
    c1="$(cpu_ticks "$SRV_PID")"
    extra+=("steal_ticks_before=$st0" "steal_ticks_after=$(host_steal)")
    if [[ $sc == d ]]; then
        sp1="$(spool_counts "$SRV_URL")"
        # shellcheck disable=SC2207
        extra+=($(spool_fields "$sp0" "$sp1" "$t_start" "$t_end"))
    fi
    if [[ $sc == b ]]; then
        local ok expected
        ok="$(python3 "$LIB" parse-wrk "$RUN_DIR/out/$label.wrk" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["requests"]-d["non2xx"])')"
        expected=$((ok * PPB + PPB))
        drain "$prefix" "$expected" "$t_end" "$puts0"
        extra+=("stored=$(probe_adjust "$STORED")" "drain_s=$DRAIN_S" "drain_timed_out=$DRAIN_TIMED_OUT"
            "drain_progress=$GARAGE_PROGRESS")
    fi
    c2="$(cpu_ticks "$SRV_PID")"
    if [[ $sys == corepost || $sc == d ]]; then
        curl -s --max-time 5 "$SRV_URL/metrics" >"$RUN_DIR/out/$label.metrics" 2>/dev/null || true
        extra+=("metrics=$RUN_DIR/out/$label.metrics")
    fi
    hwm="$(vmhwm_kib "$SRV_PID")"
    alive "$SRV_PID" || log "WARNING: $sys was not alive at the end of the round"
    stop_server
    [[ -s $GUARD_FLAG ]] && extra+=("mem_guard_killed=1")
    # shellcheck disable=SC2046
    python3 "$LIB" record "$RECORDS" $(common_fields tput "$sys" "$sc" "$mode" "$r") \
        "wrk=$RUN_DIR/out/$label.wrk" "cpu_ticks_before=$c0" "cpu_ticks_load_end=$c1" "cpu_ticks_after=$c2" \
        "vmhwm_kib=$hwm" "s3_prefix=$prefix" "${extra[@]}" >/dev/null
    log "  $(python3 "$LIB" summary-line "$RECORDS")"
}

run_tput_c() {  # run_tput_c SYSTEM MODE ROUND: saturating load, drain, then count in the bucket
    local sys=$1 sc=c mode=$2 r=$3 label prefix c0 c1 c2 t_end hwm ok expected obj0=0 w0="" w1="" u0="" inv
    local extra=() verify=()
    label="$sc-$mode-$sys-tput-r$(printf %03d "$r")"
    prefix="e2e-$RUN_ID/$label"
    inv="$RUN_DIR/out/$label.inventory.json"
    log "[$sc/$mode round $r/$ROUNDS] $sys: saturating load ${DURATION}s"
    if [[ $GARAGE_PROGRESS == puts ]]; then
        w0="$(garage_writes)"
        obj0="${w0%% *}"
    fi
    start_server "$sys" "$sc" "$mode" "$prefix" "$label"
    c0="$(cpu_ticks "$SRV_PID")"
    run_wrk "$RUN_DIR/out/$label.wrk" "$DURATION"
    t_end="$(now)"
    c1="$(cpu_ticks "$SRV_PID")"
    ok="$(python3 "$LIB" parse-wrk "$RUN_DIR/out/$label.wrk" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["requests"]-d["non2xx"])')"
    expected=$((ok * PPB + PPB))
    drain_c "$sys" "$prefix" "$expected" "$t_end" "$obj0"
    c2="$(cpu_ticks "$SRV_PID")"
    log "  drain: ${DRAIN_S}s ($DRAIN_END); counting objects under $prefix/"
    if [[ $sys == corepost ]]; then
        # corepost's uploaded count just before and just after the inventory brackets what the
        # bucket can hold if uploads are still going on (drain timed out).
        read -r _ _ u0 <<<"$(corepost_counts "$SRV_URL")"
        verify=(--verify)
    fi
    # Go's objects are one payload each by construction: listed, not downloaded.
    "${LG_PIN[@]}" env VERIFY_THREADS="$VERIFY_THREADS" python3 "$LIB" s3-inventory "$prefix/" "${verify[@]}" --out "$inv" \
        >/dev/null 2>>"$RUN_DIR/logs/inventory.log" || { tail -20 "$RUN_DIR/logs/inventory.log" >&2; die "s3-inventory of $prefix/ failed"; }
    if [[ $sys == corepost ]]; then
        curl -s --max-time 5 "$SRV_URL/metrics" >"$RUN_DIR/out/$label.metrics" 2>/dev/null || true
        extra+=("metrics=$RUN_DIR/out/$label.metrics" "uploaded_before_inventory=${u0:-}")
    fi
    [[ $GARAGE_PROGRESS == puts ]] && w1="$(garage_writes)"
    if [[ -n $w0 && -n $w1 ]]; then
        extra+=("garage_objects=$((${w1%% *} - ${w0%% *}))" "garage_write_requests=$((${w1##* } - ${w0##* }))")
    fi
    hwm="$(vmhwm_kib "$SRV_PID")"
    alive "$SRV_PID" || log "WARNING: $sys was not alive at the end of the round"
    stop_server
    [[ -s $GUARD_FLAG ]] && extra+=("mem_guard_killed=1")
    # shellcheck disable=SC2046
    python3 "$LIB" record "$RECORDS" $(common_fields tput "$sys" "$sc" "$mode" "$r") \
        "wrk=$RUN_DIR/out/$label.wrk" "cpu_ticks_before=$c0" "cpu_ticks_load_end=$c1" "cpu_ticks_after=$c2" \
        "vmhwm_kib=$hwm" "s3_prefix=$prefix" "inventory=$inv" "drain_s=$DRAIN_S" "drain_timed_out=$DRAIN_TIMED_OUT" \
        "drain_end=$DRAIN_END" "drain_progress=$GARAGE_PROGRESS" "${extra[@]}" >/dev/null
    log "  $(python3 "$LIB" summary-line "$RECORDS")"
}

run_kill() {  # run_kill SYSTEM SCENARIO MODE ROUND  (b only)
    local sys=$1 sc=$2 mode=$3 r=$4 label prefix stored hwm
    label="$sc-$mode-$sys-kill-r$(printf %03d "$r")"
    prefix="e2e-$RUN_ID/$label"
    log "[$sc/$mode kill round $r] $sys: ${KILL_DURATION}s load, then SIGKILL"
    start_server "$sys" "$sc" "$mode" "$prefix" "$label"
    run_wrk "$RUN_DIR/out/$label.wrk" "$KILL_DURATION"
    hwm="$(vmhwm_kib "$SRV_PID")"
    local p
    for p in $(tree_pids "$SRV_PID"); do kill -KILL "$p" 2>/dev/null || true; done
    wait "$SRV_PID" 2>/dev/null || true
    kill "$GUARD_PID" 2>/dev/null || true
    wait "$GUARD_PID" 2>/dev/null || true
    sleep "$KILL_SETTLE"  # deliberate: uploads already inside Garage get time to land
    stored="$(probe_adjust "$(garage_count "$prefix")")"
    # shellcheck disable=SC2046
    python3 "$LIB" record "$RECORDS" $(common_fields kill "$sys" "$sc" "$mode" "$r") \
        "wrk=$RUN_DIR/out/$label.wrk" "stored=$stored" "vmhwm_kib=$hwm" "s3_prefix=$prefix" >/dev/null
    log "  $(python3 "$LIB" summary-line "$RECORDS")"
}

run_lat() {  # run_lat SYSTEM SCENARIO MODE ROUND RATE [RATE_KIND]
    local sys=$1 sc=$2 mode=$3 r=$4 rate=$5 kind=${6:-} label prefix out hwm extra=() sp0="" sp1="" t0 t1 c0 st0
    label="$sc-$mode-$sys-lat${kind:+-$kind}-r$(printf %03d "$r")"
    prefix="e2e-$RUN_ID/$label"
    out="$RUN_DIR/out/$label.json"
    log "[$sc/$mode latency round $r/$ROUNDS] $sys: fixed rate $rate req/s${kind:+ ($kind)} for ${DURATION}s"
    start_server "$sys" "$sc" "$mode" "$prefix" "$label"
    [[ $sc == d ]] && sp0="$(spool_counts "$SRV_URL")"
    c0="$(cpu_ticks "$SRV_PID")"
    st0="$(host_steal)"
    t0="$(now)"
    if [[ -n $OHA_BIN ]]; then
        bg_wait "$out" "$RUN_DIR/out/$label.stderr" timeout $((DURATION + 60)) "${LG_PIN[@]}" "$OHA_BIN" -z "${DURATION}s" -q "$rate" -c "$CONNS" -m POST \
            -D "$BODY" -T application/json "${OHA_EXTRA[@]}" "${OHA_JSON[@]}" "$SRV_URL$URL_PATH" || { cat "$RUN_DIR/out/$label.stderr" >&2; die "oha failed"; }
    else
        bg_wait "$out" "$RUN_DIR/out/$label.stderr" timeout $((DURATION + 60)) "${LG_PIN[@]}" python3 "$E2E/fixed_rate.py" "$SRV_URL$URL_PATH" "$BODY" \
            "$rate" "$DURATION" "$CONNS" || { cat "$RUN_DIR/out/$label.stderr" >&2; die "fixed_rate.py failed"; }
    fi
    t1="$(now)"
    extra+=("cpu_ticks_before=$c0" "cpu_ticks_load_end=$(cpu_ticks "$SRV_PID")"
        "steal_ticks_before=$st0" "steal_ticks_after=$(host_steal)")
    if [[ $sc == d ]]; then
        sp1="$(spool_counts "$SRV_URL")"
        # shellcheck disable=SC2207
        extra+=($(spool_fields "$sp0" "$sp1" "$t0" "$t1"))
        [[ -n $kind ]] && extra+=("rate_kind=$kind")
    fi
    hwm="$(vmhwm_kib "$SRV_PID")"
    stop_server
    # shellcheck disable=SC2046
    python3 "$LIB" record "$RECORDS" $(common_fields lat "$sys" "$sc" "$mode" "$r") \
        "oha=$out" "rate=$rate" "vmhwm_kib=$hwm" "${extra[@]}" >/dev/null
    log "  $(python3 "$LIB" summary-line "$RECORDS")"
}

# ------------------------------------------------------------------ the run
STARTED="$(date -Is)"
DATE="$(date +%F)"
for mode in "${MODE_LIST[@]}"; do
    set_mode_pinning "$mode"
    for sc in "${SCENARIOS[@]}"; do
        mapfile -t SYS <<<"$(systems_for "$sc")"
        [[ -n ${SYS[0]:-} ]] || { log "no system applies to scenario $sc"; continue; }
        log "=== scenario $sc, $mode: ${SYS[*]} ==="
        if [[ $sc == b || $sc == c ]]; then start_garage "$mode"; fi
        if [[ $sc == c ]]; then
            # Prove the payload counting on every object kind against this store before using it.
            "${LG_PIN[@]}" python3 "$LIB" s3-selftest "e2e-$RUN_ID/selftest-$mode" >"$RUN_DIR/out/selftest-$mode.json" 2>&1 \
                || { cat "$RUN_DIR/out/selftest-$mode.json" >&2; die "s3-selftest failed: the payload count of .json/.ndjson/.gz/.zst objects is wrong"; }
            log "s3-selftest ok: .json, .ndjson, .ndjson.gz, .ndjson.zst and suffix-less objects counted right"
            for ((r = 1; r <= ROUNDS; r++)); do
                for s in "${SYS[@]}"; do run_tput_c "$s" "$mode" "$r"; done
            done
            # (c) measures storage (stored/s, PUTs, bytes); no SIGKILL or fixed-rate rounds.
            stop_garage
            continue
        fi
        if [[ $sc == d ]]; then
            # (d) queued vs durable, alternating within each round; then fixed-rate rounds at half
            # of queued's median sustained rate (the target's load) and at half of durable's own.
            for ((r = 1; r <= ROUNDS; r++)); do
                for s in "${SYS[@]}"; do run_tput "$s" "$sc" "$mode" "$r"; done
            done
            if [[ -n $RATE_D ]]; then
                d_rates=("$RATE_D:given")
                log "fixed rate for d/$mode: $RATE_D req/s (given)"
            else
                read -r rate_q rate_d <<<"$(python3 "$LIB" rate-d "$RECORDS" "$mode")"
                [[ ${rate_q:-} =~ ^[0-9]+$ && ${rate_d:-} =~ ^[0-9]+$ ]] || die "no fixed rate could be derived for d/$mode"
                log "fixed rates for d/$mode: $rate_q req/s (half of queued's median) and $rate_d req/s (half of durable's median)"
                d_rates=("$rate_q:halfq" "$rate_d:halfd")
            fi
            for ((r = 1; r <= ROUNDS; r++)); do
                for rk in "${d_rates[@]}"; do
                    for s in "${SYS[@]}"; do run_lat "$s" "$sc" "$mode" "$r" "${rk%%:*}" "${rk##*:}"; done
                done
            done
            continue
        fi
        for ((r = 1; r <= ROUNDS; r++)); do
            for s in "${SYS[@]}"; do run_tput "$s" "$sc" "$mode" "$r"; done
        done
        if [[ $sc == b ]]; then
            for s in "${SYS[@]}"; do run_kill "$s" "$sc" "$mode" 1; done
        fi
        rate=""
        [[ $sc == a ]] && rate="$RATE_A"
        [[ $sc == b ]] && rate="$RATE_B"
        if [[ -z $rate ]]; then
            rate="$(python3 "$LIB" rate "$RECORDS" "$sc" "$mode" "$RATE_FRAC")"
            log "fixed rate for $sc/$mode: $rate req/s (${RATE_FRAC} x the lowest median sustained rate of ${SYS[*]})"
        else
            log "fixed rate for $sc/$mode: $rate req/s (given)"
        fi
        [[ $rate =~ ^[0-9]+$ ]] || die "no fixed rate could be derived for $sc/$mode"
        for ((r = 1; r <= ROUNDS; r++)); do
            for s in "${SYS[@]}"; do run_lat "$s" "$sc" "$mode" "$r" "$rate"; done
        done
        if [[ $sc == b ]]; then stop_garage; fi
    done
done
FINISHED="$(date -Is)"

# ------------------------------------------------------------------ report
ver() { { "$@" 2>&1 || true; } | head -1 | tr -d '\r'; }
GARAGE_BIN="$(command -v garage || echo "$HOME/.cargo/bin/garage")"
V_COREPOST="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
V_WRK="$( (wrk -v 2>&1 || true) | head -1 | awk '{print $1, $2}')"
V_NGINX="$(ver "$NGINX_BIN" -v | sed 's/^nginx version: //')"
V_GO="$(ver go version)"
V_OHA="$([[ -n $OHA_BIN ]] && ver "$OHA_BIN" --version || echo 'not installed (Python fallback used)')"
V_GARAGE="$([[ -x $GARAGE_BIN ]] && ver "$GARAGE_BIN" --version || echo 'not used / not found')"
V_RUSTC="$(ver rustc --version)"
CPU_MODEL="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
MEM="$(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"

SUFFIX=""; [[ $SMOKE == 1 ]] && SUFFIX="-smoke"
mkdir -p "$RESULTS"
BASE="$RESULTS/$DATE-$SCENARIO$SUFFIX"
n=2
while [[ -e $BASE.md ]]; do BASE="$RESULTS/$DATE-$SCENARIO$SUFFIX-$n"; n=$((n + 1)); done

SKIPPED_TEXT="$(printf '%s\n' "${SKIPPED[@]}")"
LOADAVG="$(cut -d' ' -f1-3 /proc/loadavg)"
KERNEL="$(uname -r)"
HAS_C=0; [[ " ${SCENARIOS[*]} " == *" c "* ]] && HAS_C=1
C_CONFIG_TEXT="$(cat "$C_CONFIG")"
D_QUEUED_TEXT="$(cat "$D_QUEUED_CONFIG")"
D_DURABLE_TEXT="$(cat "$D_DURABLE_TEMPLATE")"
export E2E_COMMAND="$COMMAND_LINE" E2E_DATE="$DATE" E2E_STARTED="$STARTED" E2E_FINISHED="$FINISHED" \
    E2E_SCENARIO="$SCENARIO" E2E_SMOKE="$SMOKE" E2E_ROUNDS="$ROUNDS" E2E_DURATION="$DURATION" E2E_CONNS="$CONNS" E2E_WRK_THREADS="$WRK_THREADS" \
    E2E_BODY="$BODY_NAME" E2E_PPB="$PPB" E2E_BODY_BYTES="$BODY_BYTES" E2E_RATE_FRAC="$RATE_FRAC" \
    E2E_LAT_TOOL="$LAT_TOOL" E2E_MAX_WORKERS="$MAX_WORKERS" E2E_MAX_QUEUE="$MAX_QUEUE" \
    E2E_SYSTEMS="${AVAILABLE[*]}" E2E_SKIPPED="$SKIPPED_TEXT" E2E_RUNDIR="$RUN_DIR" \
    E2E_LOAD="$LOADAVG" E2E_NPROC="$NPROC" E2E_KERNEL="$KERNEL" E2E_CPU="$CPU_MODEL" \
    E2E_MEM="$MEM" V_COREPOST V_WRK V_NGINX V_GO V_OHA V_GARAGE V_RUSTC \
    E2E_C="$HAS_C" E2E_C_CONFIG="$C_CONFIG_TEXT" \
    E2E_BATCH_PAYLOADS="$BATCH_PAYLOADS" E2E_BATCH_BYTES="$BATCH_BYTES" E2E_BATCH_AGE_MS="$BATCH_AGE_MS" \
    E2E_COMPRESSION="$COMPRESSION" \
    E2E_D="$HAS_D" E2E_D_QUEUED_CONFIG="$D_QUEUED_TEXT" E2E_D_DURABLE_CONFIG="$D_DURABLE_TEXT" \
    E2E_D_COMMIT_WAIT="$D_COMMIT_WAIT_EFFECTIVE" E2E_D_COMMIT_WAIT_GIVEN="$COMMIT_WAIT_US" E2E_D_SPOOL_BASE="$SPOOL_BASE" \
    E2E_D_FSTYPE="$D_SPOOL_FSTYPE" E2E_D_SOURCE="$D_SPOOL_SOURCE" E2E_D_FSYNC_JSON="$D_FSYNC_JSON" E2E_RATE_D="$RATE_D"
python3 - "$RUN_DIR/meta.json" <<'EOF'
import json, os, sys
e = os.environ
meta = {
    "command": e["E2E_COMMAND"], "date": e["E2E_DATE"], "started": e["E2E_STARTED"], "finished": e["E2E_FINISHED"],
    "scenario": e["E2E_SCENARIO"], "smoke": e["E2E_SMOKE"] == "1",
    "rounds": int(e["E2E_ROUNDS"]), "duration": int(e["E2E_DURATION"]), "conns": int(e["E2E_CONNS"]), "wrk_threads": int(e["E2E_WRK_THREADS"]),
    "body": e["E2E_BODY"], "payloads_per_body": int(e["E2E_PPB"]), "body_bytes": int(e["E2E_BODY_BYTES"]),
    "rate_frac": float(e["E2E_RATE_FRAC"]), "lat_tool": e["E2E_LAT_TOOL"],
    "max_workers": e["E2E_MAX_WORKERS"], "max_queue": e["E2E_MAX_QUEUE"],
    "systems": e["E2E_SYSTEMS"].split(), "skipped": [l for l in e["E2E_SKIPPED"].splitlines() if l],
    "rundir": e["E2E_RUNDIR"],
    "load_note": e["E2E_LOAD"] + " (1/5/15-min load average at the end of the run)",
    "machine": {"nproc": int(e["E2E_NPROC"]), "kernel": e["E2E_KERNEL"], "cpu": e["E2E_CPU"], "mem": e["E2E_MEM"]},
    "versions": {"corepost": e["V_COREPOST"], "wrk": e["V_WRK"], "nginx": e["V_NGINX"], "go": e["V_GO"],
                 "oha": e["V_OHA"], "garage": e["V_GARAGE"], "rustc": e["V_RUSTC"]},
}
if e["E2E_C"] == "1":
    meta["c"] = {"config": e["E2E_C_CONFIG"], "batch_payloads": int(e["E2E_BATCH_PAYLOADS"]),
                 "batch_bytes": int(e["E2E_BATCH_BYTES"]), "batch_age_ms": int(e["E2E_BATCH_AGE_MS"]),
                 "compression": e["E2E_COMPRESSION"]}
if e["E2E_D"] == "1":
    fs = {}
    if e["E2E_D_FSYNC_JSON"] and os.path.exists(e["E2E_D_FSYNC_JSON"]):
        fs = json.load(open(e["E2E_D_FSYNC_JSON"]))
    meta["d"] = {"queued_config": e["E2E_D_QUEUED_CONFIG"], "durable_config": e["E2E_D_DURABLE_CONFIG"],
                 "commit_wait_us": e["E2E_D_COMMIT_WAIT"], "commit_wait_given": e["E2E_D_COMMIT_WAIT_GIVEN"],
                 "spool_base": e["E2E_D_SPOOL_BASE"], "fstype": e["E2E_D_FSTYPE"], "source": e["E2E_D_SOURCE"],
                 "fsync": fs, "rate_given": e["E2E_RATE_D"]}
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF
python3 "$LIB" report "$RUN_DIR" "$BASE.md" "$BASE.svg" || die "report generation failed (raw data in $RUN_DIR)"
log "done"
echo
echo "result: ${BASE#"$ROOT"/}.md"
echo "chart:  ${BASE#"$ROOT"/}.svg"
echo "raw:    $RUN_DIR"
