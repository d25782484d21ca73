"""The runs: preparation, the rounds of each scenario with every system alternated, and the
figures recorded per run."""
import json
import math
import os
import re
import shutil
import statistics
import subprocess as sp
import tempfile
import time
from pathlib import Path

from .common import COREPOST, LABEL, SYSTEMS, TCK, WORKLOAD, die, log, run
from .procs import cpu_ticks, steal_ticks, vmhwm_mib
from .servers import Server, d_config
from .load import oha, wrk
from .store import Garage, drain
from .report import med


class Harness:
    def __init__(self, a):
        self.a, self.records, self.garage = a, [], None
        self.raw = Path(tempfile.mkdtemp(prefix="corepost-e2e."))
        for d in ("logs", "out"):
            (self.raw / d).mkdir()
        self.bodies = {}  # --body name -> (path, payloads per body)
        for name in a.body:
            path = (WORKLOAD / name) if (WORKLOAD / name).exists() else Path(name).resolve()
            self.bodies[name] = (path, len(json.loads(path.read_text())["data"]))
        self.use_body(a.body[0])
        self.run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"

    def use_body(self, name):
        """The body every following run sends (wrk, oha, the probe POST)."""
        self.body_name, (self.body, self.ppb) = name, self.bodies[name]

    def record(self, rec, srv=None):
        rec["body"] = self.body_name
        if srv:
            rec.update(rss_mib=vmhwm_mib(srv.pid), **({"mem_guard_killed": srv.guard_hit} if srv.guard_hit else {}))
        self.records.append(rec)
        with open(self.raw / "records.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        log("  " + ", ".join(f"{k}={v:,.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()
                             if k in ("req_s", "cpu_per_mreq", "rss_mib", "stored", "stored_s", "drain_s", "p99", "lat_rps",
                                      "fsyncs_s", "puts_per_mpayload", "verify", "kill_lost")))

    def start(self, system, sc, mode, kind, r):
        label = f"{sc}-{mode}-{Path(self.body_name).stem}-{system}-{kind}-r{r:03d}"
        prefix = f"e2e-{self.run_id}/{label}"
        return Server(self, system, sc, mode, label, prefix), label, prefix

    def tput(self, system, sc, mode, r):
        log(f"[{sc}/{mode} round {r}/{self.a.rounds}] {system}: saturating load {self.a.duration}s")
        g = self.garage
        objs0, writes0 = g.counters() if g else (0, 0)
        srv, label, prefix = self.start(system, sc, mode, "tput", r)
        m0, c0, st0, t0 = srv.metrics(), cpu_ticks(srv.pid), steal_ticks(), time.time()
        rec = wrk(self, srv, system, mode, self.a.duration, self.raw / "out" / f"{label}.wrk.json")
        t_end, rec["steal_ms"] = time.time(), (steal_ticks() - st0) / TCK * 1e3
        rec.update(kind="tput", system=system, scenario=sc, mode=mode, round=r)
        if sc == "d":
            rec.update(spool_rates(m0, srv.metrics(), t_end - t0))
        if g:  # (b), (c): wait for the uploads, then count what is in the bucket
            rec["drain_s"], rec["drain_end"] = drain(self, g, srv, system, rec["accepted"] + self.ppb, t_end, objs0)
            if sc == "b":
                stored = g.s3tool("count", prefix + "/")
                if stored < g.counters()[0] - objs0:  # a listing right after heavy writes can come back short
                    stored = max(stored, g.s3tool("count", prefix + "/"))
                rec["stored"] = max(0, stored - self.ppb)  # the probe POST's payloads
            else:
                u0 = srv.metrics().get("corepost_payloads_uploaded_total")
                inv = g.s3tool("inventory", prefix + "/", *(["--verify"] if system == "corepost" else []))
                (self.raw / "out" / f"{label}.inventory.json").write_text(json.dumps(inv))
                rec.update(inventory_figures(inv, self.ppb, srv.metrics(), u0, g.counters(), writes0, objs0))
            rec["stored_s"] = rec["stored"] / (rec["duration_s"] + rec["drain_s"])
            rec["never_stored"] = rec["accepted"] - rec["stored"]
        cpu = (cpu_ticks(srv.pid) - c0) / TCK  # (b), (c): the drain's upload work included
        if rec["ok"]:
            rec.update(cpu_per_mreq=cpu / rec["ok"] * 1e6, cpu_per_mpayload=cpu / rec["accepted"] * 1e6)
        if rec.get("stored"):
            rec["cpu_per_mstored"] = cpu / rec["stored"] * 1e6
        rec["metrics_accepted"] = srv.metrics().get("corepost_payloads_accepted_total")
        if sc == "c" and system == "corepost":
            rec["verify"], rec["verify_text"] = verify_c(rec)
        self.record(rec, srv)
        srv.stop()

    def kill(self, system, mode):
        """(b) answered 200 but not stored: SIGKILL the moment the load ends, count after a settle."""
        log(f"[b/{mode} kill round] {system}: {self.a.kill_duration}s load, then SIGKILL")
        srv, label, prefix = self.start(system, "b", mode, "kill", 1)
        w = wrk(self, srv, system, mode, self.a.kill_duration, self.raw / "out" / f"{label}.wrk.json")
        srv.kill()
        srv.stop()
        time.sleep(self.a.kill_settle)  # uploads already inside Garage get time to land
        stored = max(0, self.garage.s3tool("count", prefix + "/") - self.ppb)
        self.record({"kind": "kill", "system": system, "scenario": "b", "mode": mode, "round": 1,
                     "kill_accepted": w["accepted"], "kill_stored": stored, "kill_lost": w["accepted"] - stored})

    def lat(self, system, sc, mode, r, rate, kind=""):
        log(f"[{sc}/{mode} latency round {r}/{self.a.rounds}] {system}: fixed rate {rate} req/s {kind} for {self.a.duration}s")
        srv, label, prefix = self.start(system, sc, mode, "lat" + (f"-{kind}" if kind else ""), r)
        m0, c0, st0, t0 = srv.metrics(), cpu_ticks(srv.pid), steal_ticks(), time.time()
        rec = oha(self, srv, mode, rate, self.raw / "out" / f"{label}.oha.json")
        rec.update(kind="lat", system=system, scenario=sc, mode=mode, round=r, rate=rate, rate_kind=kind,
                   steal_ms=(steal_ticks() - st0) / TCK * 1e3)
        if rec["lat_ok"]:  # server CPU per request when it is not saturated (every request wakes it)
            rec["cpu_per_mreq"] = (cpu_ticks(srv.pid) - c0) / TCK / rec["lat_ok"] * 1e6
        if sc == "d":
            rec.update(spool_rates(m0, srv.metrics(), time.time() - t0))
        self.record(rec, srv)
        srv.stop()


def spool_rates(m0, m1, secs):
    """(d) the spool's counters over the load: data syncs/s, commits/s, requests per commit."""
    d = {k: m1.get(f"corepost_spool_{k}_total", 0) - m0.get(f"corepost_spool_{k}_total", 0) for k in ("fsyncs", "commits", "records")}
    if "corepost_spool_fsyncs_total" not in m1:
        return {}  # queued: no spool
    return {"fsyncs_s": d["fsyncs"] / secs, "commits_s": d["commits"] / secs,
            **({"req_per_commit": d["records"] / d["commits"]} if d["commits"] else {})}


def inventory_figures(inv, ppb, m, uploaded0, counters, writes0, objs0):
    """(c) figures from the bucket: payloads counted (probe subtracted from stored), PUT requests
    (corepost_put_requests_total; the objects for Go, one PUT each) and bytes per payload."""
    n = inv.get("payloads", inv["objects"])  # Go: listed, not downloaded: one payload per object
    f = {"objects": inv["objects"], "stored": max(0, n - ppb),
         "inv_payloads": n, "inv_bytes": inv["bytes"], "inv_verified": "payloads" in inv, "inv_by_kind": inv["by_kind"],
         "inv_invalid": inv.get("invalid_payloads", 0), "inv_problems": inv.get("problems", []),
         "uploaded_before_inventory": uploaded0, "metrics_uploaded": m.get("corepost_payloads_uploaded_total"),
         "garage_objects": counters[0] - objs0}
    puts = m.get("corepost_put_requests_total", inv["objects"])
    if n:
        f.update(puts_per_mpayload=puts / n * 1e6, bytes_per_payload=inv["bytes"] / n,
                 garage_writes_per_mpayload=(counters[1] - writes0) / n * 1e6, payloads_per_object=n / max(1, inv["objects"]))
    return f


def verify_c(r):
    """corepost after a (c) run: the bucket must hold exactly corepost_payloads_accepted_total
    payloads (match; MISMATCH after a complete drain). A drain cut by --drain-timeout: the count
    must lie between corepost's uploaded count before and after the inventory (consistent). A
    drain ended by --drain-stable with payloads missing: STALLED."""
    n, acc, end = r["inv_payloads"], r.get("metrics_accepted"), r["drain_end"]
    if acc is None or not r["inv_verified"]:
        return "not checked", "bucket not counted or corepost /metrics not read"
    bad = (f"; {r['inv_invalid']} invalid payloads" if r["inv_invalid"] else "") + \
          (f"; problems: {r['inv_problems'][:2]}" if r["inv_problems"] else "")
    text = f"{n:,} payloads in the bucket, {acc:,.0f} accepted by /metrics (drain ended: {end}){bad}"
    if n == acc and not bad:
        return "match", text
    if end not in ("timeout", "stable"):
        return "MISMATCH", text
    lo, hi = r.get("uploaded_before_inventory"), r.get("metrics_uploaded")
    if lo is None or hi is None or not lo <= n <= hi or bad:
        return "INCONSISTENT", text + f"; uploaded {lo} before / {hi} after the count"
    return ("STALLED" if end == "stable" else "consistent"), text + f"; uploaded {lo:,.0f} before / {hi:,.0f} after the count"


def fsync_latency(directory, n, block=4096):
    """(d) the raw disk: n x (one 4 KiB O_DIRECT write into a preallocated file + fdatasync), the
    spool's commit in miniature. -> ms percentiles"""
    import mmap
    path = os.path.join(directory, "fsync-probe.dat")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT needs
    buf.write(b"\xa5" * block)
    lat = []
    try:
        os.posix_fallocate(fd, 0, n * block)
        os.fsync(fd)
        for i in range(n):
            t0 = time.perf_counter()
            os.pwrite(fd, buf, i * block) == block or die("short write in the fsync probe")
            os.fdatasync(fd)
            lat.append((time.perf_counter() - t0) * 1e3)
    finally:
        os.close(fd)
        os.unlink(path)
    s = sorted(lat)
    pct = lambda q: s[min(n - 1, math.ceil(q / 100 * n) - 1)]
    return (f"{n} × (4 KiB O_DIRECT write + fdatasync): median {statistics.median(s):.2f} ms, p90 {pct(90):.2f} ms, "
            f"p99 {pct(99):.2f} ms, max {s[-1]:.2f} ms (mean {statistics.fmean(s):.2f} ms)")


def prepare(h, scenarios):
    """Files the scenarios need in the raw directory; (d): the spool base and the raw disk check."""
    a, meta = h.a, {}
    if "c" in scenarios:
        (h.raw / "corepost-c.toml").write_text(
            f"[batch]\nmax_payloads = {a.batch_payloads}\nmax_bytes = {a.batch_bytes}\nmax_age_ms = {a.batch_age_ms}\n"
            f'compression = "{a.compression}"\n[queue]\nmax_payloads = {max(100000, a.batch_payloads)}\n')
        meta["c_config"] = (h.raw / "corepost-c.toml").read_text()
    if "tls" in scenarios:  # a throwaway CA and one EC P-256 certificate for both TLS servers
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        q = {"cwd": h.raw, "stdout": sp.DEVNULL, "stderr": sp.DEVNULL}
        run(["openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench-ca"], **q)
        run(["openssl", "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=bench"], **q)
        (h.raw / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run(["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "server.ext"], **q)
    if "tokens" in scenarios:  # --tokens tokens of 32 hex characters (every tenth with a tenant), then body10's
        import secrets
        (h.raw / "tokens").write_text("".join(secrets.token_hex(16) + (f" tenant-{i}" if i % 10 == 0 else "") + "\n"
                                              for i in range(a.tokens - 1)) + "bench-token acme\n")
        meta["tokens"] = a.tokens
    if "d" in scenarios:
        os.makedirs(a.spool_base, exist_ok=True)
        df = run(["df", "--output=fstype,source", a.spool_base], stdout=sp.PIPE).stdout.split("\n")[1].split()
        if df[0] in ("tmpfs", "ramfs", "devtmpfs"):  # O_DIRECT + fdatasync there would measure memory
            die(f"scenario d: the spool base {a.spool_base} is on {df[0]}, not a disk; pick one with --spool-base")
        check = h.raw / "durable-check.toml"
        check.write_text(d_config("durable", os.path.join(a.spool_base, "check"), a.commit_wait_us))
        out = run([str(COREPOST), "check-config", "--config", str(check), "--sink", "discard"], stdout=sp.PIPE).stdout
        cw = re.search(r"^\[spool\][^\[]*?^commit_wait_us = (\d+)", out, re.M | re.S)
        probe_dir = tempfile.mkdtemp(prefix="corepost-e2e-fsync.", dir=a.spool_base)
        log(f"(d) spool base {a.spool_base} on {df[0]} ({df[1]}); measuring the raw disk")
        try:
            fs = fsync_latency(probe_dir, a.fsync_probes)
        finally:
            shutil.rmtree(probe_dir, ignore_errors=True)
        log(f"  {fs}")
        meta["d"] = {"commit_wait_us": cw[1] if cw else "?", "given": a.commit_wait_us is not None, "spool_base": a.spool_base,
                     "fs": f"{df[0]} on {df[1]}", "fsync": fs, "config": d_config("durable", "<fresh per run>", a.commit_wait_us)}
    return meta


def negotiated(h):
    """The cipher each TLS server negotiates with an OpenSSL client (wrk uses OpenSSL too)."""
    out = []
    for system in ("corepost-tls", "nginx-tls"):
        srv = Server(h, system, "tls", "percore", f"tls-cipher-{system}", "x")
        r = sp.run(["openssl", "s_client", "-connect", f"127.0.0.1:{srv.port}", "-CAfile", str(h.raw / "ca.pem"),
                    "-alpn", "http/1.1"], stdin=sp.DEVNULL, capture_output=True, text=True)
        srv.stop()
        out.append(f"{LABEL[system]}: " + next((l for l in r.stdout.splitlines() if l.startswith("New,")), "?"))
    return out


def derived_rate(h, sc, mode):
    """(a), (b): --rate-fraction × the lowest median sustained req/s of the systems of this run;
    in (b) a system's sustained rate is min(accepted req/s, stored payloads/s ÷ payloads per body)."""
    given = {"a": h.a.rate_a, "b": h.a.rate_b}[sc]
    if given:
        return given
    by = {}
    for r in h.records:
        if (r["kind"], r["scenario"], r["mode"], r["body"]) == ("tput", sc, mode, h.body_name):
            by.setdefault(r["system"], []).append(min(r["req_s"], r.get("stored_s", math.inf) / h.ppb))
    return max(1, int(min(statistics.median(v) for v in by.values()) * h.a.rate_fraction))


def measure(h, scenarios):
    order = lambda systems, r: systems[(r - 1) % len(systems):] + systems[:(r - 1) % len(systems)]
    for mode in h.a.modes:
        for sc in scenarios:
            systems = [s for s in SYSTEMS[sc] if sc not in "abc" or s in h.a.systems]
            log(f"=== scenario {sc}, {mode}: {' '.join(systems)} ===")
            if sc in ("b", "c"):
                h.garage = Garage(h, mode)
            try:
                if sc == "c":  # the payload counting proven on every object kind against this store
                    h.garage.s3tool("selftest", f"e2e-{h.run_id}/selftest-{mode}")
                    log("s3tool selftest ok: .json, .ndjson, .ndjson.gz, .ndjson.zst and suffix-less objects counted right")
                for body in h.a.body:  # each body: its own alternating rounds, its own derived rate
                    h.use_body(body)
                    log(f"--- {sc}/{mode}: body {body} ({h.ppb} payloads, {h.body.stat().st_size:,} bytes) ---")
                    for r in range(1, h.a.rounds + 1):  # the order rotates every round
                        for s in order(systems, r):
                            h.tput(s, sc, mode, r)
                    if sc == "b":
                        for s in systems:
                            h.kill(s, mode)
                    if h.a.no_latency:
                        rates = []
                    elif sc in ("a", "b"):
                        rates = [(derived_rate(h, sc, mode), "")]
                    elif sc == "d":  # ½ of queued's median sustained rate (the target's load) and ½ of durable's own
                        med = lambda s: statistics.median(r["req_s"] for r in h.records if (r["kind"], r["scenario"], r["mode"], r["system"], r["body"]) == ("tput", "d", mode, s, h.body_name))
                        rates = [(h.a.rate_d, "given")] if h.a.rate_d else [(max(1, int(med(s) / 2)), k) for s, k in (("queued", "halfq"), ("durable", "halfd"))]
                    else:
                        rates = []
                    for rate, kind in rates:
                        log(f"fixed rate for {sc}/{mode}/{body}: {rate} req/s {kind}")
                    for r in range(1, h.a.rounds + 1) if rates else []:
                        for rate, kind in rates:
                            for s in order(systems, r):
                                h.lat(s, sc, mode, r, rate, kind)
            finally:
                if h.garage:
                    h.garage.stop()
                    h.garage = None
