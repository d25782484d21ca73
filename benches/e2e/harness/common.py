"""Paths, the scenarios and their systems, the report's table rows and chart panels; logging and
commands."""
import os
import subprocess as sp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
WORKLOAD, RESULTS = ROOT / "benches/workload", ROOT / "benches/results"
COREPOST, S3TOOL = ROOT / "target/release/corepost", ROOT / "target/release/examples/s3tool"
GO_BIN, GARAGE_SH = ROOT / "benches/go-baseline/go-baseline", ROOT / "scripts/garage.sh"
PEER_DIR = ROOT / "benches/tokio-peer"  # its own cargo package and workspace
PEER_BIN = PEER_DIR / "target/release/tokio-peer"
LG_CPU, SRV_CPU = "0", "1"  # per core: load generator (and Garage) on CPU 0, server on CPU 1
NPROC, TCK = os.cpu_count(), os.sysconf("SC_CLK_TCK")

SCENARIOS = {
    "a": "(a) front end only",
    "b": "(b) one S3 object per payload (Garage)",
    "c": "(c) batched objects into Garage (corepost NDJSON batches, Go one object per payload)",
    "d": '(d) durable vs queued: corepost ack="durable" (fsynced spool) vs ack="queued", sink discard',
    "tls": "(tls) corepost over TLS vs nginx over TLS (same certificate) vs corepost plain HTTP",
    "tokens": "(tokens) the token check: no tokens file vs a token in the body vs in the header",
}
SYSTEMS = {"a": ["corepost", "peer", "go", "nginx"], "b": ["corepost", "go"], "c": ["corepost", "go"],
           "d": ["queued", "durable"], "tls": ["corepost-tls", "nginx-tls", "corepost"],
           "tokens": ["none", "body", "header"]}
RATIOS = {"a": [("corepost", "peer"), ("corepost", "go"), ("corepost", "nginx")], "b": [("corepost", "go")], "c": [("corepost", "go")],
          "d": [("durable", "queued")], "tls": [("corepost-tls", "nginx-tls"), ("corepost-tls", "corepost")],
          "tokens": [("body", "none"), ("header", "none")]}
LABEL = {"corepost": "corepost", "peer": "tokio peer", "go": "Go baseline", "nginx": "nginx (204)", "queued": "corepost ack=queued",
         "durable": "corepost ack=durable", "corepost-tls": "corepost TLS", "nginx-tls": "nginx TLS (204)",
         "none": "no tokens file", "body": "token in the body", "header": "token in the header"}
MODES = {"percore": "per core (server on CPU 1, load generator on CPU 0)", "machine": "whole machine (no pinning)"}
RATE_KINDS = {"": "", "halfq": "½ queued rate", "halfd": "½ durable rate", "given": "given rate"}

# Table rows: (label, figure, digits); "@" rows repeat per fixed rate, "kill_" figures come from
# the SIGKILL round. Figures are medians across rounds with (min–max).
BASE = [("**requests/s accepted (2xx)**", "req_s", None), ("payloads/s accepted", "payloads_s", None),
        ("non-2xx responses per run", "non2xx", 0), ("socket errors per run", "sock_errors", 0),
        ("**CPU-s per million payloads**", "cpu_per_mpayload", 2), ("CPU-s per million requests", "cpu_per_mreq", 2),
        ("peak RSS (VmHWM), MiB, saturating run", "rss_mib", None),
        ("wrk p99 under saturation (closed loop), ms", "wrk_p99_ms", 2)]
LAT = [("latency p50 @, ms", "p50", 2), ("**latency p99** @, ms", "p99", 2), ("latency p99.9 @, ms", "p999", 2),
       ("achieved rate @", "lat_rps", None)]
ROWS = {
    "a": BASE + LAT,
    "b": BASE + LAT + [
        ("**payloads stored in S3 per second (incl. drain)**", "stored_s", None), ("drain time after load, s", "drain_s", 1),
        ("payloads stored per saturating run", "stored", 0), ("payloads accepted per saturating run", "accepted", 0),
        ("accepted but not stored after the drain", "never_stored", 0),
        ("CPU-s per million payloads stored", "cpu_per_mstored", 2),
        ("SIGKILL round: payloads accepted", "kill_accepted", 0), ("SIGKILL round: stored after settle", "kill_stored", 0),
        ("SIGKILL round: answered 200 but not stored", "kill_lost", 0)],
    "c": [("**payloads stored per second (load start → last object stored)**", "stored_s", None),
          ("**PUT requests per million payloads stored**", "puts_per_mpayload", None),
          ("**bytes stored per payload**", "bytes_per_payload", 1),
          ("**CPU-s per million payloads accepted** (load + drain)", "cpu_per_mpayload", 2),
          ("**peak RSS (VmHWM), MiB**", "rss_mib", None), ("CPU-s per million payloads stored", "cpu_per_mstored", 2),
          ("payloads per object", "payloads_per_object", 1), ("objects stored per run", "objects", 0),
          ("payloads stored per run (counted in the bucket)", "stored", 0),
          ("payloads accepted per run (wrk 2xx × payloads per body)", "accepted", 0),
          ("accepted but not stored after the drain", "never_stored", 0), ("drain time after the load, s", "drain_s", 1),
          ("requests/s accepted (2xx)", "req_s", None), ("non-2xx responses per run", "non2xx", 0),
          ("write requests seen by Garage per million payloads (cross-check)", "garage_writes_per_mpayload", None)],
    "d": BASE[:2] + [("**data syncs per second**, saturating (corepost_spool_fsyncs_total)", "fsyncs_s", None),
                     ("spool commits per second, saturating", "commits_s", None),
                     ("**requests per commit**, saturating (spool records ÷ commits)", "req_per_commit", 1)]
    + BASE[2:] + [("host steal during the saturating run, ms (all vCPUs)", "steal_ms", 0)] + LAT
    + [("data syncs per second @", "fsyncs_s", None), ("requests per commit @", "req_per_commit", 1),
       ("server CPU-s per million requests @", "cpu_per_mreq", 2), ("host steal during the run @, ms", "steal_ms", 0)],
    "tls": [BASE[0], ("**server CPU-s per million requests**", "cpu_per_mreq", 2), BASE[7], BASE[2], BASE[3], BASE[6]],
    "tokens": [BASE[0], ("**server CPU-µs per request**", "cpu_per_mreq", 2), BASE[2], BASE[3]],
}
# Chart panels per scenario: (figure, title, rate kind for fixed-rate figures or None)
CHART = {"a": [("req_s", "requests/s accepted", None), ("p99", "p99 at the fixed rate, ms", "")],
         "b": [("req_s", "requests/s accepted", None), ("stored_s", "payloads stored in S3 /s", None),
               ("p99", "p99 at the fixed rate, ms", "")],
         "c": [("stored_s", "payloads stored /s (incl. drain)", None), ("puts_per_mpayload", "PUT requests per M payloads", None),
               ("bytes_per_payload", "bytes stored per payload", None)],
         "d": [("req_s", "requests/s accepted", None), ("p99", "p99 at ½ queued rate, ms", "halfq"),
               ("p99", "p99 at ½ durable rate, ms", "halfd"), ("fsyncs_s", "data syncs /s (saturating)", None)],
         "tls": [("req_s", "requests/s", None), ("cpu_per_mreq", "CPU-s per million requests", None)],
         "tokens": [("req_s", "requests/s", None), ("cpu_per_mreq", "CPU-µs per request", None)]}


def log(msg):
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die(msg):
    raise SystemExit(f"[e2e {time.strftime('%H:%M:%S')}] ERROR: {msg}")


def run(cmd, **kw):
    return sp.run(cmd, check=True, text=True, **kw)
