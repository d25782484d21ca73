#!/usr/bin/env bash
# TLS per core: corepost over TLS against nginx over TLS (same certificate, nginx answering 204
# as in run.sh's scenario (a)), and corepost plain HTTP against corepost TLS, in one run. Server
# pinned to CPU 1 (corepost --cores 1 --sink discard; nginx one worker), wrk on CPU 0, body10,
# keep-alive, systems alternated within each round (the order rotates every round); medians.
#
# usage: benches/e2e/tls.sh [--rounds N] [--duration S] [--connections N] [--no-build] [--out FILE]
# Run from anywhere; writes benches/results/<date>-tls.md (or --out) and prints its path.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
COMMAND_LINE="benches/e2e/tls.sh $*"
ROUNDS=5
DURATION=10
CONNS=64
BUILD=1
OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --connections) CONNS="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n 2,8p "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done
[[ -n $OUT ]] || OUT="$ROOT/benches/results/$(date -u +%F)-tls.md"
NGINX_BIN="$(command -v nginx || echo /usr/sbin/nginx)"
for tool in wrk openssl taskset curl python3; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[[ -x $NGINX_BIN ]] || { echo "needs nginx" >&2; exit 1; }
if ((BUILD)); then (cd "$ROOT" && cargo build --release --locked); fi
BIN="$ROOT/target/release/corepost"
RUN="$(mktemp -d /tmp/corepost-tls.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# One certificate for both servers: EC P-256 for 127.0.0.1, signed by a throwaway CA.
(
    cd "$RUN"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
        -out ca.pem -days 2 -subj /CN=bench-ca 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key \
        -out server.csr -subj /CN=bench 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
        -days 2 -extfile server.ext 2>/dev/null
)

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# cpu_ticks PID: utime+stime of PID and its children (nginx's worker), in clock ticks.
cpu_ticks() {
    local total=0 p
    for p in "$1" $(pgrep -P "$1" || true); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

# start SYSTEM PORT: starts it pinned to CPU 1, waits until it answers over its scheme.
start() {
    local sys=$1 port=$2 scheme=https
    case "$sys" in
        corepost-tls)
            taskset -c 1 "$BIN" serve --listen "127.0.0.1:$port" --cores 1 --sink discard \
                --spill-dir "$RUN/spill" --tls-cert "$RUN/server.pem" --tls-key "$RUN/server.key" \
                >"$RUN/$sys.log" 2>&1 &
            ;;
        corepost-plain)
            scheme=http
            taskset -c 1 "$BIN" serve --listen "127.0.0.1:$port" --cores 1 --sink discard \
                --spill-dir "$RUN/spill" >"$RUN/$sys.log" 2>&1 &
            ;;
        nginx-tls)
            mkdir -p "$RUN/nginx/logs" "$RUN/nginx/tmp"
            cat >"$RUN/nginx/nginx.conf" <<EOF
# As run.sh's HTTP-only ceiling (every POST gets 204, the body is read and dropped), over TLS.
user root;
worker_processes 1;
pid $RUN/nginx/nginx.pid;
error_log $RUN/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $RUN/nginx/tmp/body;
    proxy_temp_path $RUN/nginx/tmp/proxy;
    fastcgi_temp_path $RUN/nginx/tmp/fastcgi;
    uwsgi_temp_path $RUN/nginx/tmp/uwsgi;
    scgi_temp_path $RUN/nginx/tmp/scgi;
    client_max_body_size 1m;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    ssl_certificate $RUN/server.pem;
    ssl_certificate_key $RUN/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    server {
        listen 127.0.0.1:$port ssl reuseport;
        location / { return 204; }
    }
}
EOF
            taskset -c 1 "$NGINX_BIN" -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf" \
                -e "$RUN/nginx/logs/error.log" -g 'daemon off;' >"$RUN/$sys.log" 2>&1 &
            ;;
    esac
    SRV=$!
    PIDS+=("$SRV")
    URL="$scheme://127.0.0.1:$port/v1/payloads"
    for _ in $(seq 1 300); do
        code="$(curl -s -o /dev/null -w '%{http_code}' --cacert "$RUN/ca.pem" --max-time 1 -XPOST \
            -H 'Content-Type: application/json' --data-binary "@$ROOT/benches/workload/body10.json" "$URL" || true)"
        [[ $code == 2* ]] && return 0
        kill -0 "$SRV" 2>/dev/null || { cat "$RUN/$sys.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "$sys did not answer" >&2; exit 1
}

stop() { kill "$SRV" 2>/dev/null || true; wait "$SRV" 2>/dev/null || true; }

SYSTEMS=(corepost-tls nginx-tls corepost-plain)
: >"$RUN/records.tsv"
for ((r = 1; r <= ROUNDS; r++)); do
    for ((i = 0; i < ${#SYSTEMS[@]}; i++)); do
        sys=${SYSTEMS[$(((i + r - 1) % ${#SYSTEMS[@]}))]}
        p="$(port)"
        start "$sys" "$p"
        if [[ $r == 1 ]]; then
            # What each TLS server negotiates with an OpenSSL client (wrk uses OpenSSL too).
            [[ $sys == *-tls ]] && echo "$sys $(openssl s_client -connect "127.0.0.1:$p" -CAfile "$RUN/ca.pem" \
                -alpn http/1.1 </dev/null 2>/dev/null | grep -E '^New,' | head -1)" >>"$RUN/negotiated.txt"
        fi
        t0="$(cpu_ticks "$SRV")"
        (cd "$ROOT/benches/workload" && BODY=body10.json taskset -c 0 wrk -t1 -c"$CONNS" \
            -d"${DURATION}s" --latency -s post.lua "$URL") >"$RUN/$sys-$r.wrk" 2>&1
        t1="$(cpu_ticks "$SRV")"
        stop
        rps="$(awk '/^Requests\/sec/ {print $2}' "$RUN/$sys-$r.wrk")"
        reqs="$(awk '/requests in/ {print $1}' "$RUN/$sys-$r.wrk")"
        p99="$(awk '$1 == "99%" {print $2}' "$RUN/$sys-$r.wrk")"
        non2xx="$(awk '/Non-2xx/ {print $4}' "$RUN/$sys-$r.wrk")"
        errs="$(grep -E 'Socket errors' "$RUN/$sys-$r.wrk" || true)"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sys" "$r" "$rps" "$reqs" "$((t1 - t0))" "$p99" "${non2xx:-0} ${errs}" >>"$RUN/records.tsv"
        echo "round $r $sys: $rps req/s, p99 $p99, server CPU ticks $((t1 - t0))" >&2
    done
done

python3 - "$RUN" "$OUT" "$COMMAND_LINE" "$ROUNDS" "$DURATION" "$CONNS" "$(git -C "$ROOT" rev-parse --short HEAD)" <<'EOF'
import statistics, sys, os
run, out, cmd, rounds, duration, conns, commit = sys.argv[1:]
hz = os.sysconf("SC_CLK_TCK")
rows = [l.rstrip("\n").split("\t") for l in open(f"{run}/records.tsv")]
def ms(v):
    if v.endswith("us"): return float(v[:-2]) / 1000
    if v.endswith("ms"): return float(v[:-2])
    if v.endswith("s"): return float(v[:-1]) * 1000
    return float("nan")
by = {}
for sys_, r, rps, reqs, ticks, p99, errs in rows:
    d = by.setdefault(sys_, {"rps": [], "cpu": [], "p99": [], "errs": []})
    d["rps"].append(float(rps))
    d["cpu"].append(int(ticks) / hz / int(reqs) * 1e6)
    d["p99"].append(ms(p99))
    d["errs"].append(errs.strip())
def fmt(xs, nd=0):
    m = statistics.median(xs)
    f = (lambda x: f"{x:,.{nd}f}")
    return f"{f(m)} ({f(min(xs))}–{f(max(xs))})"
med = {s: {k: statistics.median(v) for k, v in d.items() if k != "errs"} for s, d in by.items()}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
neg = open(f"{run}/negotiated.txt").read().strip() if os.path.exists(f"{run}/negotiated.txt") else ""
L = []
L.append("# TLS per core: corepost over TLS vs nginx over TLS, and corepost plain vs TLS\n")
L.append(f"Command: `{cmd}` at commit {commit}.  ")
L.append(f"Server pinned to CPU 1 (`taskset -c 1`; corepost `--cores 1 --sink discard`, nginx one worker answering `204` as in `run.sh` scenario (a)), wrk on CPU 0 (`-t1 -c{conns} -d{duration}s`, keep-alive, `benches/workload/post.lua` with `body10.json`), {rounds} rounds of {duration} s, the three systems alternated within each round (order rotated per round); medians (min–max) over the rounds. Both TLS servers use the same EC P-256 certificate. CPU-s per million requests is the server's user+system CPU time during the run (nginx: master and worker) over the requests wrk completed.\n")
L.append(f"Machine: {os.cpu_count()} vCPUs, {cpu}, Linux {os.uname().release}.\n")
L.append("Negotiated with an OpenSSL client (`openssl s_client -alpn http/1.1`):\n")
for l in neg.splitlines():
    L.append(f"- `{l}`")
L.append("")
L.append("| system | requests/s | server CPU-s per million requests | p99 ms |")
L.append("|---|---|---|---|")
for s in ["corepost-tls", "nginx-tls", "corepost-plain"]:
    if s in by:
        d = by[s]
        L.append(f"| {s} | {fmt(d['rps'])} | {fmt(d['cpu'], 2)} | {fmt(d['p99'], 2)} |")
L.append("")
def ratio(a, b, k):
    if a in med and b in med and med[b][k]:
        return med[a][k] / med[b][k]
    return float("nan")
L.append("| ratio (of medians) | requests/s | CPU per request |")
L.append("|---|---|---|")
L.append(f"| corepost TLS / nginx TLS | {ratio('corepost-tls','nginx-tls','rps'):.2f}x | {ratio('corepost-tls','nginx-tls','cpu'):.2f}x |")
L.append(f"| corepost TLS / corepost plain | {ratio('corepost-tls','corepost-plain','rps'):.2f}x | {ratio('corepost-tls','corepost-plain','cpu'):.2f}x |")
L.append("")
bad = [f"{s} round {i+1}: {e}" for s, d in by.items() for i, e in enumerate(d["errs"]) if e not in ("0", "0 ")]
L.append("Non-2xx answers or socket errors: " + ("; ".join(bad) if bad else "none") + ".\n")
L.append("Per run (system, round, requests/s, requests, server CPU ticks, p99, non-2xx/errors):\n")
L.append("```")
for r in rows: L.append("\t".join(r))
L.append("```")
open(out, "w").write("\n".join(L) + "\n")
print(f"result: {out}")
EOF
