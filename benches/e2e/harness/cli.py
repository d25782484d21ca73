"""End-to-end benchmark: corepost against a conventional tokio + hyper peer, the Go baseline and
nginx (and against itself: durable
vs queued, TLS vs plain, token checks), the same load, systems alternated within each round.
Writes benches/results/<date>-<scenario>.md and a chart beside it. See benches/e2e/README.md.

Run it as benches/e2e/run.sh [flags]; --report RAWDIR rewrites the result file of an earlier run
from its raw directory (records.jsonl, meta.json)."""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess as sp
import sys
import time
from pathlib import Path

from .common import MODES, NPROC, RESULTS, ROOT, SCENARIOS, log
from .tools import ensure_tools
from .servers import Server
from .runs import Harness, measure, negotiated, prepare
from .report import report


def parse(argv):
    p = argparse.ArgumentParser(prog="benches/e2e/run.sh", description=__doc__.split("\n\n")[0])
    A = p.add_argument
    A("--scenario", default="all", choices=list(SCENARIOS) + ["all"], help="all = a, b, c, d [all]")
    A("--rounds", type=int, help="rounds; each runs every system once [3]")
    A("--duration", type=int, help="seconds of load per run [10]")
    A("--smoke", action="store_true", help="harness check: 1 round, 3 s, short drain/kill waits")
    A("--modes", default="percore,machine", help="percore,machine [both]")
    A("--systems", default="corepost,peer,go,nginx", help="(a, b, c) which of corepost,peer,go,nginx [all; peer only in (a)]")
    A("--body", default="body10.json", help="request bodies in benches/workload/, comma-separated; each gets its own "
      "rounds, e.g. body1.json,body10.json,body100.json [body10.json]")
    A("--connections", type=int, default=64, help="connections of wrk and oha [64]")
    A("--rate", type=int, help="fixed rate (req/s) of every scenario's latency runs")
    A("--rate-a", type=int), A("--rate-b", type=int), A("--rate-d", type=int)
    A("--rate-fraction", type=float, default=0.8, help="(a, b) derived rate = F × lowest median sustained rate [0.8]")
    A("--drain-timeout", type=float, help="(b, c) longest wait for the uploads after the load, s [120]")
    A("--drain-stable", type=float, help="(b, c) nothing written this long ends the drain, s [10]")
    A("--kill-duration", type=int, help="(b) load of the SIGKILL round, s [5]")
    A("--kill-settle", type=float, help="(b) wait after SIGKILL before counting, s [3]")
    A("--batch-payloads", type=int, default=1000, help="(c) batch.max_payloads [1000]")
    A("--batch-bytes", type=int, default=1048576, help="(c) batch.max_bytes [1048576]")
    A("--batch-age-ms", type=int, default=1000, help="(c) batch.max_age_ms [1000]")
    A("--compression", default="zstd", choices=["none", "gzip", "zstd"], help="(c) batch.compression [zstd]")
    A("--commit-wait-us", type=int, help="(d) spool.commit_wait_us [corepost's default]")
    A("--spool-base", default=str(ROOT / "target"), help="(d) where each durable run gets a fresh spool (not tmpfs) [target/]")
    A("--fsync-probes", type=int, default=200, help="(d) samples of the raw disk check [200]")
    A("--tokens", type=int, default=1000, help="(tokens) tokens in the tokens file [1000]")
    A("--mem-guard-mib", type=int, default=6144, help="kill a server whose RSS passes this [6144]")
    A("--no-latency", action="store_true", help="saturating rounds only: no fixed-rate (oha) rounds, oha not needed")
    A("--no-build", action="store_true", help="do not cargo build / go-baseline/build.sh")
    A("--no-install", action="store_true", help="do not apt-get, cargo install or pip install missing tools")
    A("--report", metavar="RAWDIR", help="only rewrite the result file of an earlier run from its raw directory")
    a = p.parse_args(argv)
    short = {"rounds": 1, "duration": 3, "drain_timeout": 30, "drain_stable": 5, "kill_duration": 3, "kill_settle": 2}
    full = {"rounds": 3, "duration": 10, "drain_timeout": 120, "drain_stable": 10, "kill_duration": 5, "kill_settle": 3}
    for k, v in (short if a.smoke else full).items():
        setattr(a, k, getattr(a, k) if getattr(a, k) is not None else v)
    a.rate_a, a.rate_b, a.rate_d = a.rate_a or a.rate, a.rate_b or a.rate, a.rate_d or a.rate
    a.modes, a.systems, a.body = a.modes.split(","), a.systems.split(","), a.body.split(",")
    if not set(a.modes) <= set(MODES) or not set(a.systems) <= {"corepost", "peer", "go", "nginx"} or min(a.rounds, a.duration) < 1:
        p.error("bad --modes, --systems, --rounds or --duration")
    return a


def main(argv):
    a = parse(argv)
    if a.report:
        raw = Path(a.report)
        base = RESULTS / json.loads((raw / "meta.json").read_text())["name"]
        return report(raw, base.with_suffix(".md"), base.with_suffix(".svg"))
    scenarios = ["a", "b", "c", "d"] if a.scenario == "all" else [a.scenario]
    ensure_tools(a, scenarios)
    h = Harness(a)
    cmdline = " ".join(["benches/e2e/run.sh"] + [x if re.fullmatch(r"[\w./,:=+-]+", x) else repr(x) for x in argv])
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    log(f"run {h.run_id}: {cmdline}; raw logs {h.raw}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        meta = prepare(h, scenarios)
        if "tls" in scenarios:
            meta["negotiated"] = negotiated(h)
        measure(h, scenarios)
    finally:
        for s in list(Server.live):
            s.stop()
        if h.garage:
            h.garage.stop()
    date = time.strftime("%Y-%m-%d")
    name = base = f"{date}-{a.scenario}{'-smoke' if a.smoke else ''}"
    for n in range(2, 1000):
        if not (RESULTS / f"{name}.md").exists():
            break
        name = f"{base}-{n}"
    ver = lambda *c: (lambda r: (r.stdout + r.stderr).strip().split("\n")[0])(sp.run(c, capture_output=True, text=True)) if shutil.which(c[0]) else "not found"
    git = lambda *c: sp.run(["git", "-C", str(ROOT), *c], capture_output=True, text=True)
    meta.update(name=name, command=cmdline, date=date, started=started, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                scenario=a.scenario, smoke=a.smoke, no_latency=a.no_latency, rounds=a.rounds, duration=a.duration, conns=a.connections,
                bodies=[{"body": b, "ppb": ppb, "bytes": path.stat().st_size} for b, (path, ppb) in h.bodies.items()],
                rate_fraction=a.rate_fraction, raw=str(h.raw),
                load=Path("/proc/loadavg").read_text().split(" ", 3)[:3], machine={
                    "CPU": re.search(r"model name\s*: (.*)", Path("/proc/cpuinfo").read_text())[1], "nproc": NPROC,
                    "memory": f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.1f} GiB",
                    "kernel": os.uname().release,
                    "corepost": git("rev-parse", "--short", "HEAD").stdout.strip() + ("" if git("diff", "--quiet", "HEAD").returncode == 0 else " (+ uncommitted changes)"),
                    "wrk": ver("wrk", "-v"), "oha": ver("oha", "--version"), "nginx": ver("nginx", "-v"), "go": ver("go", "version"),
                    "garage": ver("garage", "--version"), "rustc": ver("rustc", "--version")})
    meta["load"] = " ".join(meta["load"])
    if "c_config" in meta:
        meta["c"] = meta.pop("c_config")
    (h.raw / "meta.json").write_text(json.dumps(meta, indent=1))
    RESULTS.mkdir(exist_ok=True)
    report(h.raw, RESULTS / f"{name}.md", RESULTS / f"{name}.svg")
    print(f"\nresult: benches/results/{name}.md\nchart:  benches/results/{name}.svg\nraw:    {h.raw}")
