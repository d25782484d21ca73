# shellcheck shell=bash
# Sourced by durable-probe.sh and glommio-ng-ab.sh: one corepost shard
# pinned to CPU 1 with the discard sink, started and stopped the same way for every run.
# Run from the repository root (the probe POST reads benches/workload/body10.json).

# start_pinned BINARY CONFIG LOG PORT SPILL_DIR [SERVE_ARGS...]: starts the server (with any
# further `serve` arguments), waits for its ready line and sends one probe POST (body10, whose
# body token is `bench-token`); sets PINNED_PID. Exits the calling script if the server dies or
# is not ready within 30 s.
start_pinned() {
    local bin=$1 config=$2 log=$3 port=$4 spill=$5
    shift 5
    sync  # write back earlier dirty pages (a build, a deleted spool) before, not during, the run
    taskset -c 1 "$bin" serve --listen "127.0.0.1:$port" --cores 1 --sink discard \
        --config "$config" --spill-dir "$spill" "$@" >"$log" 2>&1 &
    PINNED_PID=$!
    # Wait for the ready line (creating a spool's first segments takes a while): a run must not
    # start against a server that is still starting, nor leave one behind on the port.
    for _ in $(seq 1 300); do
        grep -q "corepost ready" "$log" && break
        kill -0 "$PINNED_PID" 2>/dev/null || { cat "$log" >&2; exit 1; }
        sleep 0.1
    done
    grep -q "corepost ready" "$log" || { echo "server not ready after 30 s" >&2; cat "$log" >&2; exit 1; }
    curl -sf -XPOST --data-binary @benches/workload/body10.json "http://127.0.0.1:$port/" >/dev/null
}

# stop_pinned: stops the server start_pinned started, if any.
stop_pinned() {
    if [[ -n ${PINNED_PID:-} ]]; then
        kill "$PINNED_PID" 2>/dev/null || true
        wait "$PINNED_PID" 2>/dev/null || true
    fi
    PINNED_PID=
}
