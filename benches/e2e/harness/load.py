"""The load generators: wrk (saturating, closed loop) and oha (fixed rate, latency)."""
import json
import os
import subprocess as sp

from .common import LG_CPU, WORKLOAD, die


def wrk(h, srv, system, mode, duration, out):
    """Saturating load: wrk -t1 -c64, its figures as JSON from post.lua's done() hook."""
    pin = ["taskset", "-c", LG_CPU] if mode == "percore" else []
    env = dict(os.environ, BODY=str(h.body), WRK_JSON=str(out),
               AUTH="Bearer bench-token" if system == "header" else "")
    r = sp.run(pin + ["wrk", "-t1", f"-c{h.a.connections}", f"-d{duration}s", "--timeout", "5s",
                      "-s", str(WORKLOAD / "post.lua"), srv.url], env=env, capture_output=True, text=True)
    if r.returncode or not out.exists():
        die(f"wrk failed against {srv.url}: {r.stdout}{r.stderr}")
    w = json.loads(out.read_text())
    ok = max(0, w["requests"] - w["non2xx"])
    d = w["duration_us"] / 1e6
    return {"ok": ok, "req_s": ok / d, "payloads_s": ok * h.ppb / d, "accepted": ok * h.ppb, "duration_s": d,
            "non2xx": w["non2xx"], "sock_errors": w["connect"] + w["read"] + w["write"] + w["timeout"],
            "wrk_p99_ms": w["p99_us"] / 1e3}


def oha(h, srv, mode, rate, out):
    """Fixed-rate (open-loop) latency, corrected for coordinated omission."""
    pin = ["taskset", "-c", LG_CPU] if mode == "percore" else []
    cmd = pin + ["oha", "-z", f"{h.a.duration}s", "-q", str(rate), "-c", str(h.a.connections), "-m", "POST",
                 "-D", str(h.body), "-T", "application/json", "--latency-correction", "--no-tui",
                 "--output-format", "json", srv.url + "/v1/payloads"]
    with open(out, "w") as f:
        r = sp.run(cmd, stdout=f, stderr=sp.PIPE, text=True)
    r.returncode == 0 or die(f"oha failed: {r.stderr}")
    doc = json.loads(out.read_text())
    codes, errors = doc.get("statusCodeDistribution") or {}, doc.get("errorDistribution") or {}
    pct = doc.get("latencyPercentiles") or {}
    ms = lambda k: None if pct.get(k) is None else pct[k] * 1e3
    # oha cancels the requests still in flight at the -z deadline: not a server error.
    return {"lat_ok": sum(v for k, v in codes.items() if k.startswith("2")),
            "lat_non2xx": sum(v for k, v in codes.items() if not k.startswith("2")),
            "lat_errors": sum(v for k, v in errors.items() if "deadline" not in k),
            "lat_rps": doc["summary"]["requestsPerSec"], "p50": ms("p50"), "p99": ms("p99"), "p999": ms("p99.9")}
