#!/usr/bin/env python3
"""Helpers for benches/e2e/run.sh (stdlib only).

Subcommands:
  free-port                          print a free TCP port on 127.0.0.1
  payloads BODY                      print the number of payloads in a body file
  parse-wrk FILE                     print wrk's output as JSON
  parse-oha FILE                     print oha's (or fixed_rate.py's) JSON summary as flat JSON
  record RECORDS k=v ...             append one JSON record; wrk=FILE / oha=FILE / metrics=FILE are parsed
  rate RECORDS SCENARIO MODE FRAC    print the fixed rate (req/s) every system sustained in that run
  report RUNDIR OUT_MD OUT_SVG       write the result file and the chart
"""
import json
import math
import re
import socket
import statistics
import sys
from pathlib import Path

SYSTEM_ORDER = ["corepost", "go", "nginx"]
SYSTEM_LABEL = {"corepost": "corepost", "go": "Go baseline", "nginx": "nginx (204)"}
SCENARIO_LABEL = {
    "a": "(a) front end only",
    "b": "(b) one S3 object per payload (Garage)",
}
MODE_LABEL = {
    "percore": "per core (server on CPU 1, load generator on CPU 0)",
    "machine": "whole machine (no pinning)",
}


# ---------------------------------------------------------------- small helpers
def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def count_payloads(path):
    with open(path, "rb") as f:
        doc = json.load(f)
    return len(doc["data"])


UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def dur_s(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"bad duration {text!r}")
    return float(m.group(1)) * UNIT[m.group(2)]


def parse_wrk(text):
    out = {}
    m = re.search(r"^\s*(\d+) requests in ([0-9.]+(?:us|ms|s|m|h)),", text, re.M)
    if not m:
        raise ValueError("wrk output has no 'N requests in' line:\n" + text)
    out["requests"] = int(m.group(1))
    out["duration_s"] = dur_s(m.group(2))
    m = re.search(r"^Requests/sec:\s*([0-9.]+)", text, re.M)
    out["rps_total"] = float(m.group(1)) if m else out["requests"] / out["duration_s"]
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    out["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["sock_errors"] = sum(int(x) for x in m.groups()) if m else 0
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s*{pct}%\s+([0-9.]+(?:us|ms|s|m))", text, re.M)
        if m:
            out[f"p{pct}_ms"] = dur_s(m.group(1)) * 1e3
    return out


def parse_oha(path):
    doc = json.loads(Path(path).read_text())
    summ = doc.get("summary", {})
    pct = doc.get("latencyPercentiles") or doc.get("latency_percentiles") or {}
    codes = doc.get("statusCodeDistribution") or {}
    errors = doc.get("errorDistribution") or {}
    ok = sum(int(v) for k, v in codes.items() if str(k).startswith("2"))
    bad = sum(int(v) for k, v in codes.items() if not str(k).startswith("2"))
    # oha cancels the requests still in flight at the -z deadline: not a server error.
    aborted = sum(int(v) for k, v in errors.items() if "deadline" in k)
    nerr = sum(int(v) for k, v in errors.items() if "deadline" not in k)
    total_time = summ.get("total")
    out = {
        "ok": ok,
        "non2xx": bad,
        "errors": nerr,
        "aborted_at_deadline": aborted,
        "rps": summ.get("requestsPerSec"),
        "duration_s": total_time,
        "generator": doc.get("generator", "oha"),
    }
    for key, name in (("p50", "p50_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms"), ("p99.99", "p9999_ms")):
        v = pct.get(key)
        out[name] = None if v is None else float(v) * 1e3
    real = {k: v for k, v in errors.items() if "deadline" not in k}
    if real:
        out["error_kinds"] = "; ".join(f"{k} x{v}" for k, v in list(real.items())[:3])
    return out


def parse_metrics(path):
    """Sum corepost_* counters over shards."""
    sums = {}
    for line in Path(path).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r"^(corepost_[a-z_]+)(?:\{[^}]*\})?\s+([0-9.eE+-]+)", line)
        if m:
            sums[m.group(1)] = sums.get(m.group(1), 0.0) + float(m.group(2))
    return {
        "metrics_accepted": sums.get("corepost_payloads_accepted_total"),
        "metrics_uploaded": sums.get("corepost_payloads_uploaded_total"),
    }


def conv(v):
    for f in (int, float):
        try:
            return f(v)
        except ValueError:
            pass
    return v


def record(records_path, pairs):
    rec = {}
    for p in pairs:
        k, _, v = p.partition("=")
        if k == "wrk":
            rec.update({f"wrk_{kk}": vv for kk, vv in parse_wrk(Path(v).read_text()).items()})
        elif k == "oha":
            rec.update({f"lat_{kk}": vv for kk, vv in parse_oha(v).items()})
        elif k == "metrics":
            if Path(v).exists() and Path(v).stat().st_size:
                rec.update(parse_metrics(v))
        else:
            rec[k] = conv(v)
    with open(records_path, "a") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")
    return rec


def load_records(path):
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(l) for l in p.read_text().splitlines() if l.strip()]


# ---------------------------------------------------------------- derived figures
def derive(r):
    """Add derived per-run figures to a throughput/kill record (in place)."""
    if "wrk_requests" not in r:
        return r
    ppb = r["payloads_per_body"]
    ok = max(0, r["wrk_requests"] - r["wrk_non2xx"])
    d = r["wrk_duration_s"]
    r["ok_requests"] = ok
    r["accepted_payloads"] = ok * ppb
    r["req_s"] = ok / d
    r["payloads_s"] = ok * ppb / d
    tck = r["clk_tck"]
    if "cpu_ticks_before" in r and "cpu_ticks_after" in r:
        cpu = (r["cpu_ticks_after"] - r["cpu_ticks_before"]) / tck
        r["cpu_s"] = cpu
        if ok:
            r["cpu_per_mreq"] = cpu / ok * 1e6
            r["cpu_per_mpayload"] = cpu / (ok * ppb) * 1e6
    if "cpu_ticks_load_end" in r and "cpu_ticks_before" in r:
        r["cpu_s_load_only"] = (r["cpu_ticks_load_end"] - r["cpu_ticks_before"]) / tck
    if r.get("stored") is not None and "drain_s" in r:
        r["stored_s"] = r["stored"] / (d + r["drain_s"])
        r["never_stored"] = r["accepted_payloads"] - r["stored"]
        if r.get("cpu_s") is not None and r["stored"]:
            r["cpu_per_mstored"] = r["cpu_s"] / r["stored"] * 1e6
    if r.get("kind") == "kill" and r.get("stored") is not None:
        r["lost"] = r["accepted_payloads"] - r["stored"]
    return r


def med(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return statistics.median(vals)


def spread(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return (statistics.median(vals), min(vals), max(vals))


def compute_rate(records, scenario, mode, frac):
    """Fixed rate = frac x the lowest median sustained req/s among the systems of that run.

    For (b) a system's sustained rate is min(accepted req/s, stored payloads/s / payloads per body):
    S3 is the limit there, and a rate above it would only measure a growing queue."""
    per_sys = {}
    for r in records:
        if r.get("kind") != "tput" or r["scenario"] != scenario or r["mode"] != mode:
            continue
        derive(r)
        v = r["req_s"]
        if scenario == "b" and r.get("stored_s") is not None:
            v = min(v, r["stored_s"] / r["payloads_per_body"])
        per_sys.setdefault(r["system"], []).append(v)
    if not per_sys:
        return None
    lowest = min(med(v) for v in per_sys.values())
    return max(1, int(lowest * frac))


# ---------------------------------------------------------------- formatting
def fmt(v, unit="", digits=None):
    if v is None:
        return "n/a"
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    if digits is None:
        a = abs(v)
        digits = 0 if a >= 100 else (1 if a >= 10 else (2 if a >= 0.1 else 3))
    if digits == 0:
        s = f"{v:,.0f}"
    else:
        s = f"{v:,.{digits}f}"
    return s + unit


def fmt_spread(sp, unit="", digits=None):
    if sp is None:
        return "n/a"
    m, lo, hi = sp
    if lo == hi:
        return fmt(m, unit, digits)
    return f"{fmt(m, unit, digits)} ({fmt(lo, '', digits)}–{fmt(hi, '', digits)})"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(x):
    return "n/a" if x is None else f"{x:.2f}x"


# ---------------------------------------------------------------- report
def summarize(records):
    """-> {(scenario, mode): {system: {figure: (median, min, max)}}}"""
    groups = {}
    for r in records:
        derive(r)
        key = (r["scenario"], r["mode"])
        s = groups.setdefault(key, {}).setdefault(r["system"], {"tput": [], "lat": [], "kill": []})
        s[r["kind"]].append(r)
    out = {}
    for key, systems in groups.items():
        out[key] = {}
        for sysname, runs in systems.items():
            t, l, k = runs["tput"], runs["lat"], runs["kill"]
            f = {
                "rounds": len(t),
                "req_s": spread([r.get("req_s") for r in t]),
                "payloads_s": spread([r.get("payloads_s") for r in t]),
                "non2xx": spread([r.get("wrk_non2xx") for r in t]),
                "sock_errors": spread([r.get("wrk_sock_errors") for r in t]),
                "cpu_per_mpayload": spread([r.get("cpu_per_mpayload") for r in t]),
                "cpu_per_mreq": spread([r.get("cpu_per_mreq") for r in t]),
                "rss_mib": spread([r.get("vmhwm_kib", 0) / 1024 if r.get("vmhwm_kib") else None for r in t]),
                "rss_max_mib": max([r["vmhwm_kib"] / 1024 for r in t if r.get("vmhwm_kib")], default=None),
                "wrk_p99_ms": spread([r.get("wrk_p99_ms") for r in t]),
                "stored_s": spread([r.get("stored_s") for r in t]),
                "drain_s": spread([r.get("drain_s") for r in t]),
                "drain_timeouts": sum(1 for r in t if r.get("drain_timed_out")),
                "stored": spread([r.get("stored") for r in t]),
                "never_stored": spread([r.get("never_stored") for r in t]),
                "cpu_per_mstored": spread([r.get("cpu_per_mstored") for r in t]),
                "accepted_payloads": spread([r.get("accepted_payloads") for r in t]),
                "metrics_accepted": spread([r.get("metrics_accepted") for r in t]),
                "lat_rate": med([r.get("rate") for r in l]),
                "lat_rounds": len(l),
                "p50": spread([r.get("lat_p50_ms") for r in l]),
                "p99": spread([r.get("lat_p99_ms") for r in l]),
                "p999": spread([r.get("lat_p999_ms") for r in l]),
                "lat_rps": spread([r.get("lat_rps") for r in l]),
                "lat_non2xx": sum((r.get("lat_non2xx") or 0) for r in l),
                "lat_errors": sum((r.get("lat_errors") or 0) for r in l),
                "lat_generator": l[0].get("lat_generator") if l else None,
                "lat_rss_mib": max([r["vmhwm_kib"] / 1024 for r in l if r.get("vmhwm_kib")], default=None),
                "kill_accepted": spread([r.get("accepted_payloads") for r in k]),
                "kill_stored": spread([r.get("stored") for r in k]),
                "kill_lost": spread([r.get("lost") for r in k]),
                "kill_rounds": len(k),
            }
            out[key][sysname] = f
    return out


def med_of(f, name):
    sp = f.get(name)
    return None if sp is None else sp[0]


def target_lines(summ):
    """Targets, reported as met / missed / not measured. Never asserted."""
    lines = []
    a = summ.get(("a", "percore"), {})
    cp, go, ng = a.get("corepost"), a.get("go"), a.get("nginx")

    def verdict(ok):
        if ok is None:
            return "not measured"
        return "**met**" if ok else "**missed**"

    r = ratio(med_of(cp, "req_s") if cp else None, med_of(go, "req_s") if go else None)
    lines.append(("front end per core: corepost req/s >= 12x Go", fmt_ratio(r), verdict(None if r is None else r >= 12)))
    r = ratio(med_of(cp, "req_s") if cp else None, med_of(ng, "req_s") if ng else None)
    lines.append(("front end per core: corepost req/s >= 80% of nginx", "n/a" if r is None else f"{r*100:.0f}%",
                  verdict(None if r is None else r >= 0.8)))
    r = ratio(med_of(cp, "cpu_per_mreq") if cp else None, med_of(ng, "cpu_per_mreq") if ng else None)
    lines.append(("front end per core: corepost CPU per request <= 1.5x nginx", fmt_ratio(r),
                  verdict(None if r is None else r <= 1.5)))
    peaks = [f["rss_max_mib"] for (sc, mo), systems in summ.items() for s, f in systems.items()
             if s == "corepost" and f.get("rss_max_mib") is not None]
    pk = max(peaks) if peaks else None
    lines.append(("peak RSS under overload (all saturating runs) <= 256 MiB for corepost",
                  fmt(pk, " MiB"), verdict(None if pk is None else pk <= 256)))
    return lines


def systems_in(group):
    return [s for s in SYSTEM_ORDER if s in group]


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for r in rows:
        out.append("| " + " | ".join(r) + " |")
    return "\n".join(out)


def report(rundir, out_md, out_svg):
    rundir = Path(rundir)
    meta = json.loads((rundir / "meta.json").read_text())
    records = load_records(rundir / "records.jsonl")
    summ = summarize(records)
    L = []
    title = f"corepost end-to-end benchmark — scenario {meta['scenario']}, {meta['date']}"
    if meta.get("smoke"):
        title += " (SMOKE RUN: harness check only, numbers are not meaningful)"
    L.append(f"# {title}\n")
    L.append(f"Command: `{meta['command']}`  ")
    L.append(f"Started {meta['started']}, finished {meta['finished']}.  ")
    L.append(f"Rounds: {meta['rounds']} × {meta['duration']} s per system, systems alternated within each round "
             f"({', '.join(meta['systems'])}); figures are the median across rounds, with (min–max).  ")
    L.append(f"Load: `wrk -t{meta.get('wrk_threads', 1)} -c{meta['conns']} -d{meta['duration']}s -s benches/workload/post.lua` with "
             f"`{meta['body']}` ({meta['payloads_per_body']} payloads, {meta['body_bytes']} bytes per request).  ")
    L.append(f"Fixed-rate latency: {meta['lat_tool']}, {meta['conns']} connections, at "
             f"{int(meta['rate_frac']*100)}% of the lowest median sustained rate of the systems in that run "
             "unless a rate was given on the command line.  ")
    L.append(f"Server limits: MAX_WORKERS={meta.get('max_workers') or '(server default)'}, "
             f"MAX_QUEUE={meta.get('max_queue') or '(server default)'}.  ")
    L.append(f"Raw logs: `{meta['rundir']}` (temporary).\n")
    if meta.get("skipped"):
        L.append("**Systems skipped in this run:** " + "; ".join(meta["skipped"]) + "\n")

    L.append("## Machine and versions\n")
    m = meta["machine"]
    L.append(table(["item", "value"], [
        ["CPU", m["cpu"]], ["nproc", str(m["nproc"])], ["memory", m["mem"]], ["kernel", m["kernel"]],
        ["corepost", meta["versions"].get("corepost", "n/a")],
        ["wrk", meta["versions"].get("wrk", "n/a")], ["nginx", meta["versions"].get("nginx", "n/a")],
        ["go", meta["versions"].get("go", "n/a")], ["oha", meta["versions"].get("oha", "n/a")],
        ["garage", meta["versions"].get("garage", "n/a")], ["rustc", meta["versions"].get("rustc", "n/a")],
    ]))
    L.append("")
    if meta.get("load_note"):
        L.append(f"Machine load: {meta['load_note']}\n")

    L.append("## Targets (reported, not asserted)\n")
    L.append(table(["target", "measured", "verdict"], [list(t) for t in target_lines(summ)]))
    L.append("\nThe first three compare the per-core runs of scenario (a). The RSS target takes the highest VmHWM "
             "of corepost in any saturating (wrk) run.\n")

    for scenario in ("a", "b"):
        for mode in ("percore", "machine"):
            g = summ.get((scenario, mode))
            if not g:
                continue
            L.append(f"## {SCENARIO_LABEL[scenario]} — {MODE_LABEL[mode]}\n")
            nproc = meta['machine']['nproc']
            if mode == "percore":
                how = {"corepost": "corepost `--cores 1`", "go": "Go `GOMAXPROCS=1`",
                       "nginx": "nginx `worker_processes 1`"}
                L.append("Load generator on CPU 0 (`taskset -c 0`), server on CPU 1 (`taskset -c 1`): "
                         + ", ".join(how[s] for s in systems_in(g)) + "."
                         + (" **Garage runs on CPU 0 too, beside the load generator.**" if scenario == "b" else "")
                         + "\n")
            else:
                how = {"corepost": f"corepost `--cores {nproc}`", "go": "Go default GOMAXPROCS",
                       "nginx": f"nginx `worker_processes {nproc}`"}
                L.append("**Whole machine:** nothing pinned; " + ", ".join(how[s] for s in systems_in(g))
                         + "; the load generator" + (" and Garage" if scenario == "b" else "")
                         + " run on the same cores as the server.\n")
            if scenario == "b":
                L.append("nginx is not applicable to (b): it stores nothing.\n")
            systems = systems_in(g)
            cp = g.get("corepost")
            hdr = ["figure"] + [SYSTEM_LABEL[s] for s in systems]
            ratio_cols = []
            if cp and "go" in g:
                ratio_cols.append("go")
            if cp and "nginx" in g:
                ratio_cols.append("nginx")
            hdr += [f"corepost / {SYSTEM_LABEL[s]}" for s in ratio_cols]

            def row(label, name, unit="", digits=None, spread_fmt=True):
                cells = [label]
                for s in systems:
                    v = g[s].get(name)
                    cells.append(fmt_spread(v, unit, digits) if spread_fmt else fmt(v, unit, digits))
                for s in ratio_cols:
                    a = cp.get(name)
                    b = g[s].get(name)
                    a = a[0] if isinstance(a, tuple) else a
                    b = b[0] if isinstance(b, tuple) else b
                    cells.append(fmt_ratio(ratio(a, b)))
                return cells

            rows = [
                row("requests/s accepted (2xx)", "req_s"),
                row("payloads/s accepted", "payloads_s"),
                row("non-2xx responses per run", "non2xx", digits=0),
                row("socket errors per run", "sock_errors", digits=0),
                row("CPU-s per million payloads", "cpu_per_mpayload", digits=2),
                row("CPU-s per million requests", "cpu_per_mreq", digits=2),
                row("peak RSS (VmHWM), MiB, saturating run", "rss_mib"),
                row("wrk p99 under saturation (closed loop), ms", "wrk_p99_ms", digits=2),
            ]
            rate = next((g[s]["lat_rate"] for s in systems if g[s].get("lat_rate")), None)
            rows += [
                row(f"latency p50 at {fmt(rate, digits=0)} req/s, ms", "p50", digits=2),
                row(f"latency p99 at {fmt(rate, digits=0)} req/s, ms", "p99", digits=2),
                row(f"latency p99.9 at {fmt(rate, digits=0)} req/s, ms", "p999", digits=2),
                row("achieved rate in latency runs, req/s", "lat_rps"),
            ]
            if scenario == "b":
                rows += [
                    row("payloads stored in S3 per second (incl. drain)", "stored_s"),
                    row("drain time after load, s", "drain_s", digits=1),
                    row("payloads stored per saturating run", "stored", digits=0),
                    row("payloads accepted per saturating run", "accepted_payloads", digits=0),
                    row("accepted but not stored after the drain", "never_stored", digits=0),
                    row("CPU-s per million payloads stored", "cpu_per_mstored", digits=2),
                    row("SIGKILL round: payloads accepted", "kill_accepted", digits=0),
                    row("SIGKILL round: stored after settle", "kill_stored", digits=0),
                    row("SIGKILL round: answered 200 but not stored", "kill_lost", digits=0),
                ]
            L.append(table(hdr, rows))
            L.append("")
            notes = []
            for s in systems:
                f = g[s]
                if f["lat_non2xx"] or f["lat_errors"]:
                    notes.append(f"{SYSTEM_LABEL[s]}: {f['lat_non2xx']} non-2xx and {f['lat_errors']} errors "
                                 "in the fixed-rate runs (the rate was not fully sustained).")
                if f.get("lat_rps") and rate and f["lat_rps"][0] < 0.95 * rate:
                    notes.append(f"{SYSTEM_LABEL[s]}: achieved only {fmt(f['lat_rps'][0])} of {fmt(rate)} req/s "
                                 "in the latency runs.")
                if scenario == "b" and f["drain_timeouts"]:
                    notes.append(f"{SYSTEM_LABEL[s]}: the drain timed out in {f['drain_timeouts']} of "
                                 f"{f['rounds']} rounds (stored/s counts only what was stored by then).")
                if f.get("metrics_accepted") and s == "corepost":
                    notes.append(f"corepost's own counter corepost_payloads_accepted_total: "
                                 f"{fmt_spread(f['metrics_accepted'])} per run "
                                 f"(wrk-derived: {fmt_spread(f['accepted_payloads'])}).")
            if scenario == "b" and "go" in g and g["go"].get("rss_mib"):
                notes.append(f"Go baseline peak RSS under this S3 load: {fmt(g['go']['rss_max_mib'], ' MiB')} "
                             "(its queue is unbounded; growth is expected and is one point of the comparison).")
            if notes:
                L.append("\n".join(f"- {n}" for n in notes) + "\n")

    L.append("## What the figures mean\n")
    L.append(
        "- **requests/s, payloads/s accepted**: wrk's completed requests minus those it counted as "
        "`Non-2xx or 3xx` (wrk counts status >= 400), divided by wrk's measured duration; payloads = 2xx "
        f"requests × {meta['payloads_per_body']}. nginx does not parse the body: its payloads are nominal.\n"
        "- **non-2xx, socket errors**: per saturating run (median across rounds).\n"
        "- **CPU-s per million payloads / requests**: utime+stime of the server process (nginx: master + "
        "workers) from /proc/PID/stat, before the load and after it (in (b) after the drain, so upload work "
        "is included), divided by CLK_TCK, per million accepted payloads / 2xx requests.\n"
        "- **peak RSS**: VmHWM from /proc/PID/status at the end of the saturating round (nginx: master + "
        "workers summed). Each run starts a fresh server process.\n"
        "- **latency p50/p99/p99.9**: from the fixed-rate runs (open loop, latency measured from the intended "
        "send time, i.e. corrected for coordinated omission). The closed-loop wrk p99 is shown for "
        "reference only.\n"
        "- **payloads stored in S3 per second**: objects under the run's own S3_PREFIX counted with "
        "`scripts/garage.sh count`, polled after the load until the count stopped growing or reached the "
        "accepted payloads; stored / (load time + time until the last growth).\n"
        "- **answered 200 but not stored**: a separate short run; the server gets SIGKILL the moment wrk "
        "finishes; accepted payloads (2xx × payloads per body) minus objects stored under that run's prefix "
        "after a settle. Negative values mean requests were stored whose responses wrk never counted "
        "(in flight at the cut-off).\n"
    )
    Path(out_md).write_text("\n".join(L))
    write_svg(summ, meta, out_svg)


# ---------------------------------------------------------------- chart
COLORS = {"corepost": "#d95f02", "go": "#1b9e77", "nginx": "#7570b3"}


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_svg(summ, meta, path):
    panels = [(sc, mo) for sc in ("a", "b") for mo in ("percore", "machine") if (sc, mo) in summ]
    def metrics_for(scenario):
        m = [("req_s", "requests/s accepted (2xx)"), ("p99", "p99 latency at fixed rate, ms")]
        if scenario == "b":
            m.insert(1, ("stored_s", "payloads stored in S3 /s"))
        return m
    ncols = max([len(metrics_for(sc)) for sc, _ in panels], default=2)
    shown = [s for s in SYSTEM_ORDER if any(s in summ[k] for k in panels)]
    pw, ph = 300, 220
    margin_l, margin_t = 70, 70
    gap_x, gap_y = 60, 80
    W = margin_l + ncols * (pw + gap_x) + 20
    H = margin_t + max(1, len(panels)) * (ph + gap_y) - 10
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         'font-family="sans-serif" font-size="11">',
         f'<rect width="{W}" height="{H}" fill="white"/>']
    title = f"corepost e2e — {meta['date']} — scenario {meta['scenario']}"
    if meta.get("smoke"):
        title += " — SMOKE RUN (not meaningful)"
    o.append(f'<text x="{W/2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{esc(title)}</text>')
    o.append(f'<text x="{W/2}" y="40" text-anchor="middle" fill="#555">median of {meta["rounds"]} rounds, '
             f'whiskers = min/max; body {esc(meta["body"])}, {meta["conns"]} connections; '
             f'(a) front end only, (b) one S3 object per payload</text>')
    # legend
    lx = margin_l
    for s in shown:
        if True:
            o.append(f'<rect x="{lx}" y="50" width="10" height="10" fill="{COLORS[s]}"/>')
            o.append(f'<text x="{lx+14}" y="59">{esc(SYSTEM_LABEL[s])}</text>')
            lx += 110
    if not panels:
        o.append(f'<text x="{W/2}" y="{margin_t+40}" text-anchor="middle">no data</text>')
    for pi, key in enumerate(panels):
        g = summ[key]
        systems = systems_in(g)
        y0 = margin_t + pi * (ph + gap_y) + 20
        for mi, (mname, mlabel) in enumerate(metrics_for(key[0])):
            x0 = margin_l + mi * (pw + gap_x)
            mode_txt = "per core" if key[1] == "percore" else "whole machine"
            o.append(f'<text x="{x0 + pw/2}" y="{y0 - 8}" text-anchor="middle" font-weight="bold">'
                     f'({key[0]}) {mode_txt}: {esc(mlabel)}</text>')
            vals = {s: g[s].get(mname) for s in systems}
            present = [v for v in vals.values() if v]
            vmax = max([v[2] for v in present], default=0) or 1
            vmin = min([v[1] for v in present if v[1] > 0], default=vmax)
            log_scale = mname == "p99" and vmax / max(vmin, 1e-9) > 20
            if log_scale:
                lo_e = math.floor(math.log10(vmin))
                hi_e = math.ceil(math.log10(vmax * 1.3))
                bottom = 10 ** lo_e

                def ypos(v, lo_e=lo_e, hi_e=hi_e):
                    v = max(v, 10 ** lo_e)
                    return y0 + ph - ph * (math.log10(v) - lo_e) / (hi_e - lo_e)
                ticks = [10 ** e for e in range(lo_e, hi_e + 1)]
            else:
                top = vmax * 1.12
                exp = 10 ** math.floor(math.log10(top))
                for step in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
                    if step * exp >= top:
                        top = step * exp
                        break
                bottom = 0

                def ypos(v, top=top):
                    return y0 + ph - ph * v / top
                ticks = [top * t / 4 for t in range(5)]
            o.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y0+ph}" stroke="#333"/>')
            o.append(f'<line x1="{x0}" y1="{y0+ph}" x2="{x0+pw}" y2="{y0+ph}" stroke="#333"/>')
            for tv in ticks:
                ty = ypos(tv)
                digits = 0
                while digits < 4 and abs(round(tv, digits) - tv) > 1e-9 * max(1, abs(tv)):
                    digits += 1
                o.append(f'<line x1="{x0-3}" y1="{ty}" x2="{x0+pw}" y2="{ty}" stroke="#ddd"/>')
                o.append(f'<text x="{x0-5}" y="{ty+4}" text-anchor="end">{esc(fmt(tv, digits=digits))}</text>')
            if log_scale:
                o.append(f'<text x="{x0+pw}" y="{y0-20}" text-anchor="end" fill="#555" font-size="10">'
                         'log scale</text>')
            n = max(1, len(systems))
            bw = pw / n * 0.6
            for si, s in enumerate(systems):
                cx = x0 + pw / n * (si + 0.5)
                v = vals[s]
                if not v:
                    o.append(f'<text x="{cx}" y="{y0+ph-5}" text-anchor="middle" fill="#999">n/a</text>')
                else:
                    m, lo, hi = v
                    bh = y0 + ph - ypos(m)
                    o.append(f'<rect x="{cx-bw/2}" y="{y0+ph-bh}" width="{bw}" height="{bh}" fill="{COLORS[s]}"/>')
                    ylo, yhi = ypos(lo), ypos(hi)
                    o.append(f'<line x1="{cx}" y1="{ylo}" x2="{cx}" y2="{yhi}" stroke="black"/>')
                    o.append(f'<line x1="{cx-4}" y1="{ylo}" x2="{cx+4}" y2="{ylo}" stroke="black"/>')
                    o.append(f'<line x1="{cx-4}" y1="{yhi}" x2="{cx+4}" y2="{yhi}" stroke="black"/>')
                    o.append(f'<text x="{cx}" y="{y0+ph-bh-4 if hi == m else yhi-4}" text-anchor="middle">'
                             f'{esc(fmt(m))}</text>')
                o.append(f'<text x="{cx}" y="{y0+ph+14}" text-anchor="middle">{esc(SYSTEM_LABEL[s])}</text>')
            if mname == "p99":
                rate = next((g[s]["lat_rate"] for s in systems if g[s].get("lat_rate")), None)
                o.append(f'<text x="{x0 + pw/2}" y="{y0+ph+30}" text-anchor="middle" fill="#555">'
                         f'open loop at {esc(fmt(rate, digits=0))} req/s</text>')
    o.append("</svg>")
    Path(path).write_text("\n".join(o) + "\n")


# ---------------------------------------------------------------- main
def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd = argv[1]
    if cmd == "free-port":
        print(free_port())
    elif cmd == "payloads":
        print(count_payloads(argv[2]))
    elif cmd == "parse-wrk":
        print(json.dumps(parse_wrk(Path(argv[2]).read_text())))
    elif cmd == "parse-oha":
        print(json.dumps(parse_oha(argv[2])))
    elif cmd == "record":
        rec = record(argv[2], argv[3:])
        derive(rec)
        print(json.dumps(rec))
    elif cmd == "rate":
        r = compute_rate(load_records(argv[2]), argv[3], argv[4], float(argv[5]))
        print(r if r is not None else "")
    elif cmd == "report":
        report(argv[2], argv[3], argv[4])
    elif cmd == "summary-line":
        # one-line human summary of the last record in RECORDS
        recs = load_records(argv[2])
        r = derive(recs[-1])
        parts = [f"{r['system']} {r['scenario']}/{r['mode']} {r['kind']} r{r['round']}:"]
        if "req_s" in r:
            parts.append(f"{r['req_s']:,.0f} req/s 2xx, {r['payloads_s']:,.0f} payloads/s, "
                         f"non2xx={r['wrk_non2xx']}, sockerr={r['wrk_sock_errors']}")
        if r.get("cpu_per_mpayload") is not None:
            parts.append(f"cpu={r['cpu_s']:.2f}s ({r['cpu_per_mpayload']:.2f} s/Mpayload)")
        if r.get("vmhwm_kib"):
            parts.append(f"VmHWM={r['vmhwm_kib']/1024:.1f} MiB")
        if r.get("stored") is not None:
            parts.append(f"stored={r['stored']}" + (f" drain={r['drain_s']:.1f}s" if "drain_s" in r else ""))
        if r.get("lost") is not None:
            parts.append(f"lost={r['lost']}")
        if r.get("lat_p99_ms") is not None:
            parts.append(f"rate={r.get('rate')} achieved={r.get('lat_rps') or 0:,.0f} req/s "
                         f"p50={r['lat_p50_ms']:.2f}ms p99={r['lat_p99_ms']:.2f}ms "
                         f"p99.9={(r.get('lat_p999_ms') or float('nan')):.2f}ms "
                         f"non2xx={r.get('lat_non2xx')} err={r.get('lat_errors')}")
        print(" ".join(parts))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
