#!/usr/bin/env python3
"""End-to-end benchmark: corepost against a conventional tokio + hyper peer, the Go baseline and
nginx (and against itself: durable
vs queued, TLS vs plain, token checks), the same load, systems alternated within each round.
Writes benches/results/<date>-<scenario>.md and a chart beside it. See benches/e2e/README.md.

Run it as benches/e2e/run.sh [flags]; --report RAWDIR rewrites the result file of an earlier run
from its raw directory (records.jsonl, meta.json)."""
import argparse
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess as sp
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
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


def ensure_tools(a, scenarios):
    """Installs what is missing (unless --no-install) and builds corepost, s3tool, the Go baseline
    and the tokio peer."""
    def need(ok, what, install):
        if ok():
            return
        if a.no_install:
            die(f"missing {what} and --no-install given")
        log(f"installing {what}: {' '.join(install)}")
        if "apt-get" in install:
            run(["apt-get", "update", "-qq"], stdout=sp.DEVNULL, stderr=sp.DEVNULL)
        run(install, stdout=sp.DEVNULL, stderr=sp.DEVNULL)
    apt = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y"]
    for tool, pkg in (("wrk", "wrk"), ("taskset", "util-linux"), ("curl", "curl"), ("openssl", "openssl")):
        need(lambda: shutil.which(tool), tool, apt + [pkg])
    need(lambda: shutil.which("nginx") or os.access("/usr/sbin/nginx", os.X_OK), "nginx", apt + ["nginx-light"])
    cargo_bin = Path.home() / ".cargo/bin"
    os.environ["PATH"] += os.pathsep + str(cargo_bin)
    if set(scenarios) & {"a", "b", "d"} and not a.no_latency:
        need(lambda: shutil.which("oha"), "oha", ["cargo", "install", "oha", "--locked"])
    need(lambda: importlib.util.find_spec("matplotlib"), "matplotlib",
         [sys.executable, "-m", "pip", "install", "matplotlib"])
    if not a.no_build:
        log("building corepost and s3tool: cargo build --release --bin corepost --example s3tool")
        run(["cargo", "build", "--release", "--bin", "corepost", "--example", "s3tool"], cwd=ROOT)
        if set(scenarios) & {"a", "b", "c"} and "go" in a.systems:
            log("building the Go baseline: benches/go-baseline/build.sh")
            run([str(ROOT / "benches/go-baseline/build.sh")], stdout=sp.DEVNULL)
        if "a" in scenarios and "peer" in a.systems:
            log("building the tokio peer: cargo build --release --manifest-path benches/tokio-peer/Cargo.toml")
            run(["cargo", "build", "--release", "--locked", "--manifest-path", str(PEER_DIR / "Cargo.toml")], cwd=ROOT)
    peer = [PEER_BIN] if "a" in scenarios and "peer" in a.systems else []
    for f in [COREPOST] + ([S3TOOL] if set(scenarios) & {"b", "c"} else []) + peer:
        f.exists() or die(f"{f} is missing (run without --no-build)")


# ---------------------------------------------------------------- processes and /proc
def tree(pid):
    """pid and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for t in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (t / "children").read_text().split()]
            except OSError:
                pass
    return out


def proc_sum(pid, f):
    total = 0
    for p in tree(pid):
        try:
            total += f(p)
        except (OSError, ValueError, IndexError):
            pass
    return total


def cpu_ticks(pid):  # utime + stime of the process tree
    return proc_sum(pid, lambda p: sum(int(x) for x in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[11:13]))


def vmhwm_mib(pid):
    return proc_sum(pid, lambda p: int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{p}/status").read_text())[1])) / 1024


def steal_ticks():
    return int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[8])


def http_get(url, headers=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def metric_sums(text, pattern=r"corepost_[a-z_]+"):
    """Prometheus samples summed over labels, by name (and api_endpoint for Garage's counters)."""
    sums = {}
    for m in re.finditer(rf"^({pattern})(\{{[^}}]*\}})?\s+([0-9.eE+-]+)$", text, re.M):
        ep = re.search(r'api_endpoint="(\w+)"', m[2] or "")
        key = m[1] + (f":{ep[1]}" if ep else "")
        sums[key] = sums.get(key, 0) + float(m[3])
    return sums


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One system under test on a fresh port; killed on stop (and at exit)."""
    live = []

    def __init__(self, h, system, sc, mode, label, prefix):
        self.port, self.log = free_port(), h.raw / "logs" / f"{label}.log"
        tls = system.endswith("-tls")
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        pin = ["taskset", "-c", SRV_CPU] if mode == "percore" else []
        cores = "1" if mode == "percore" else str(NPROC)
        env = dict(os.environ, S3_PREFIX=prefix)
        self.spool = None
        if system in ("nginx", "nginx-tls"):
            d = h.raw / f"nginx-{label}"
            (d / "logs").mkdir(parents=True)
            (d / "nginx.conf").write_text(nginx_conf(d, self.port, 1 if mode == "percore" else NPROC, h.raw if tls else None))
            cmd = ["nginx", "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "logs/error.log"), "-g", "daemon off;"]
            if not shutil.which("nginx"):
                cmd[0] = "/usr/sbin/nginx"
        elif system == "go":
            env.update(ADDR=f"127.0.0.1:{self.port}", **({"GOMAXPROCS": "1"} if mode == "percore" else {}),
                       **({"UPLOAD_NOOP": "1"} if sc == "a" else {}))
            cmd = [str(GO_BIN)]
        elif system == "peer":  # its tokio runtime has one worker per CPU in its affinity mask
            cmd = [str(PEER_BIN), "--listen", f"127.0.0.1:{self.port}"]
        else:
            cmd = [str(COREPOST), "serve", "--listen", f"127.0.0.1:{self.port}", "--cores", cores,
                   "--sink", "s3" if sc in ("b", "c") else "discard", "--spill-dir", str(h.raw / "spill" / label)]
            if sc == "c":
                cmd += ["--config", str(h.raw / "corepost-c.toml")]
            if system in ("queued", "durable"):
                cfg = h.raw / "cfg" / f"{label}.toml"
                cfg.parent.mkdir(exist_ok=True)
                if system == "durable":
                    self.spool = tempfile.mkdtemp(prefix="corepost-e2e-spool.", dir=h.a.spool_base)
                cfg.write_text(d_config(system, self.spool, h.a.commit_wait_us))
                cmd += ["--config", str(cfg)]
            if tls:
                cmd += ["--tls-cert", str(h.raw / "server.pem"), "--tls-key", str(h.raw / "server.key")]
            if system in ("body", "header"):
                cmd += ["--tokens-file", str(h.raw / "tokens")]
        os.sync()  # dirty pages of earlier runs are written back now, not during this run
        self.proc = sp.Popen(pin + cmd, env=env, stdout=open(self.log, "w"), stderr=sp.STDOUT, start_new_session=True)
        Server.live.append(self)
        self.pid = self.proc.pid
        self.guard_hit = None
        # Ready: the first HTTP answer to the probe POST (one real body) must be 2xx.
        end = time.time() + 30
        while True:
            code = self.probe(h)
            if code != "000":
                break
            if self.proc.poll() is not None or time.time() > end:
                self.stop()
                die(f"{system} did not answer within 30 s or exited (log {self.log}):\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        code.startswith("2") or die(f"{system} answered the probe POST with HTTP {code} (log {self.log})")
        threading.Thread(target=self.guard, args=(h.a.mem_guard_mib,), daemon=True).start()

    def probe(self, h):
        ca = ["--cacert", str(h.raw / "ca.pem")] if self.url.startswith("https") else []
        r = sp.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", *ca, "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", f"@{h.body}",
                    self.url + "/v1/payloads"], capture_output=True, text=True)
        return r.stdout.strip() or "000"

    def guard(self, limit_mib):  # the machine is shared: a runaway server is killed and the run marked
        while self.proc.poll() is None:
            m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{self.pid}/status").read_text() if Path(f"/proc/{self.pid}").exists() else "")
            if m and int(m[1]) > limit_mib * 1024:
                self.guard_hit = int(m[1]) // 1024
                self.kill()
            time.sleep(0.25)

    def metrics(self):
        return metric_sums(http_get(self.url + "/metrics")) if self.url.startswith("http:") else {}

    def kill(self, sig=signal.SIGKILL):
        for p in tree(self.pid):
            try:
                os.kill(p, sig)
            except OSError:
                pass

    def stop(self):
        self.kill(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except sp.TimeoutExpired:
            self.kill()
            self.proc.wait()
        if self in Server.live:
            Server.live.remove(self)
        if self.spool:
            shutil.rmtree(self.spool, ignore_errors=True)
        if self.guard_hit:
            log(f"WARNING: the memory guard killed the server at RSS {self.guard_hit} MiB")


def nginx_conf(d, port, workers, tls_dir):
    # `return 204` runs before the content phase: nginx reads the body off the socket and drops it
    # (no buffering, nothing on disk): the cost of HTTP alone.
    ssl = f"ssl_certificate {tls_dir}/server.pem; ssl_certificate_key {tls_dir}/server.key; " \
          "ssl_protocols TLSv1.2 TLSv1.3;" if tls_dir else ""
    return f"""user root; worker_processes {workers}; pid {d}/nginx.pid; error_log {d}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_max_body_size 1m; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  keepalive_requests 100000000; keepalive_timeout 75s; {ssl}
  server {{ listen 127.0.0.1:{port}{' ssl' if tls_dir else ''} reuseport; location / {{ return 204; }} }} }}
"""


def d_config(system, spool, commit_wait):
    s = f'[server]\nack = "{system}"\n'
    if system == "durable":
        s += f'[spool]\ndir = "{spool}"\n' + (f"commit_wait_us = {commit_wait}\n" if commit_wait is not None else "")
    return s


# ---------------------------------------------------------------- load generators
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


# ---------------------------------------------------------------- Garage (b, c)
class Garage:
    def __init__(self, h, mode):
        self.h, self.dir = h, h.raw / f"garage-{mode}"
        pin = ["taskset", "-c", LG_CPU] if mode == "percore" else []
        log(f"starting Garage{' pinned to CPU ' + LG_CPU if pin else ''}: scripts/garage.sh start {self.dir}")
        env = dict(os.environ, GARAGE_LOG=os.environ.get("GARAGE_LOG", "garage=warn"))  # info logs every request
        with open(h.raw / "logs/garage.log", "a") as f:
            run(pin + [str(GARAGE_SH), "start", str(self.dir)], env=env, stdout=sp.DEVNULL, stderr=f)
        self.env = dict(l[7:].split("=", 1) for l in (self.dir / "env").read_text().splitlines() if l.startswith("export "))
        os.environ.update(self.env)
        inst = dict(l.split("=", 1) for l in (self.dir / "instance.sh").read_text().splitlines() if "=" in l)
        self.metrics_url = f"http://127.0.0.1:{inst['ADMIN_PORT']}/metrics"
        self.token = re.search(r'metrics_token = "(\w+)"', (self.dir / "garage.toml").read_text())[1]
        self.pin = pin

    def counters(self):
        """Garage's own counts of the writes it served: (objects stored = successful PutObject +
        CompleteMultipartUpload, write requests = PutObject + CreateMultipartUpload + UploadPart +
        CompleteMultipartUpload). Only one server writes at a time: deltas are that run's."""
        s = metric_sums(http_get(self.metrics_url, {"Authorization": f"Bearer {self.token}"}), r"api_s3_\w+_counter")
        if not s:
            die("cannot read Garage's /metrics")
        g = lambda kind, ep: s.get(f"api_s3_{kind}_counter:{ep}", 0)
        objs = sum(g("request", e) - g("error", e) for e in ("PutObject", "CompleteMultipartUpload"))
        return objs, sum(g("request", e) for e in ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"))

    def s3tool(self, *args):
        return json.loads(run(self.pin + [str(S3TOOL), *args], stdout=sp.PIPE).stdout)

    def stop(self):
        sp.run([str(GARAGE_SH), "stop", str(self.dir)], stdout=sp.DEVNULL, stderr=sp.DEVNULL)
        shutil.copy(self.dir / "garage.log", self.h.raw / "logs" / f"garage-server-{self.dir.name}.log")
        sp.run([str(GARAGE_SH), "wipe", str(self.dir)], stdout=sp.DEVNULL, stderr=sp.DEVNULL)
        for k in self.env:
            os.environ.pop(k, None)


def drain(h, g, srv, system, expected, t_end, objs0):
    """Waits for the uploads after the load: until corepost's /metrics show every accepted payload
    settled (uploaded + failed + spilled) or, for Go, `expected` objects were written; or nothing
    was written for --drain-stable s; or --drain-timeout. Progress = Garage's count of objects
    written, polled every 0.2 s. -> (seconds from the end of the load to the last write, how it ended)"""
    last, last_change = -1, t_end
    while True:
        t = time.time()
        n = g.counters()[0] - objs0
        if n != last:
            last_change = t if last >= 0 else last_change
            last = n
        if system == "corepost":
            m = srv.metrics()
            settled = sum(m.get(f"corepost_payloads_{k}_total", 0) for k in ("uploaded", "failed", "spilled"))
            if "corepost_payloads_accepted_total" not in m:
                die(f"cannot read corepost's /metrics at {srv.url}")
            if settled >= m["corepost_payloads_accepted_total"]:
                end = "settled"
                break
        elif n >= expected:
            end = "expected"
            break
        if t - last_change >= h.a.drain_stable:
            end = "stable"
            break
        if t - t_end >= h.a.drain_timeout:
            end = "timeout"
            break
        time.sleep(0.2)
    return max(0.0, last_change - t_end), end


# ---------------------------------------------------------------- runs
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


# ---------------------------------------------------------------- report
def spread(vals):
    vals = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return (statistics.median(vals), min(vals), max(vals)) if vals else None


def summarize(records, default_body):
    """-> {(scenario, mode, body): {system: {figure or figure@rate_kind: (median, min, max)}}}
    (records of runs before several bodies per run carry no body: default_body)"""
    out = {}
    for r in records:
        f = out.setdefault((r["scenario"], r["mode"], r.get("body", default_body)), {}).setdefault(r["system"], {})
        suffix = f"@{r['rate_kind']}" if r["kind"] == "lat" else ""
        for k, v in r.items():
            f.setdefault(k + suffix, []).append(v)
        if r["kind"] == "lat":
            f.setdefault("rate@" + r["rate_kind"], []).append(r["rate"])
    for g in out.values():
        for s, f in g.items():
            g[s] = {k: spread(v) if k.split("@")[0] not in ("verify", "verify_text", "drain_end", "inv_by_kind") else v
                    for k, v in f.items()}
    return out


def fmt(v, digits=None):
    if v is None:
        return "n/a"
    if digits is None:
        digits = 0 if abs(v) >= 100 else 1 if abs(v) >= 10 else 2 if abs(v) >= 0.1 else 3
    return f"{v:,.{digits}f}"


def fmt_spread(sp_, digits=None):
    return "n/a" if sp_ is None else fmt(sp_[0], digits) + ("" if sp_[1] == sp_[2] else f" ({fmt(sp_[1], digits)}–{fmt(sp_[2], digits)})")


def med(g, s, k):
    v = g.get(s, {}).get(k)
    return v[0] if v else None


def ratio(x, y):
    return None if x is None or not y else x / y


def fmt_ratio(x):  # small ratios keep their digits: PUTs per payload in (c) is 0.0010x (1/999)
    return "n/a" if x is None else f"{x:.2g}x (1/{1 / x:,.0f})" if 0 < x < 0.01 else f"{x:.2f}x"


def headline(summ, sc, mode):
    """The runs of a scenario and mode that the targets read: body10's, else the first body's."""
    keys = [k for k in summ if k[:2] == (sc, mode)]
    return summ[next((k for k in keys if Path(k[2]).name == "body10.json"), keys[0])] if keys else {}


def targets(summ):
    """Targets, reported as met / missed / not measured; never asserted."""
    v = lambda ok: "not measured" if ok is None else "**met**" if ok else "**missed**"
    a, L = headline(summ, "a", "percore"), []
    r = ratio(med(a, "corepost", "req_s"), med(a, "go", "req_s"))
    L.append(("front end per core: corepost req/s >= 12x Go", fmt_ratio(r), v(r and r >= 12)))
    r = ratio(med(a, "corepost", "req_s"), med(a, "nginx", "req_s"))
    L.append(("front end per core: corepost req/s >= 80% of nginx", "n/a" if r is None else f"{r:.0%}", v(r and r >= 0.8)))
    r = ratio(med(a, "corepost", "cpu_per_mreq"), med(a, "nginx", "cpu_per_mreq"))
    L.append(("front end per core: corepost CPU per request <= 1.5x nginx", fmt_ratio(r), v(None if r is None else r <= 1.5)))
    pk = max((f["rss_mib"][2] for (sc, _, _), g in summ.items() if sc in "abcd" for s, f in g.items()
              if s in ("corepost", "queued", "durable") and f.get("rss_mib")), default=None)
    L.append(("peak RSS under overload (all saturating runs) <= 256 MiB for corepost", fmt(pk) + " MiB", v(None if pk is None else pk <= 256)))
    for (sc, mode, body), g in summ.items():
        where = "per core" if mode == "percore" else "whole machine"
        if sc == "a" and "peer" in g:  # issue 23: the design must earn its keep against the afternoon server
            r = ratio(med(g, "corepost", "req_s"), med(g, "peer", "req_s"))
            L.append((f"(a) {where}, {body}: corepost req/s >= 1.25x the tokio peer", fmt_ratio(r), v(r and r >= 1.25)))
        if sc == "c":
            r = ratio(med(g, "corepost", "stored_s"), med(g, "go", "stored_s"))
            L.append((f"(c) {where}: corepost payloads stored/s (incl. drain) >= 50x Go, same run", fmt_ratio(r), v(r and r >= 50)))
            r = ratio(med(g, "go", "puts_per_mpayload"), med(g, "corepost", "puts_per_mpayload"))
            L.append((f"(c) {where}: corepost >= 100x fewer PUT requests per payload than Go", fmt_ratio(r), v(r and r >= 100)))
            st = g.get("corepost", {}).get("verify") or []
            bad = [x for x in st if x in ("MISMATCH", "INCONSISTENT", "STALLED")]
            L.append((f"(c) {where}: corepost payloads in the bucket = payloads accepted (every run)",
                      f"{st.count('match')}/{len(st)} runs match" + (f", {len(bad)} failed" if bad else ""),
                      v(False) if bad else v(True) if st and st.count("match") == len(st) else "**not verifiable** (drain timed out)"))
        if sc == "d":
            r = ratio(med(g, "durable", "req_s"), med(g, "queued", "req_s"))
            L.append((f"(d) {where}: durable req/s >= 0.5x queued req/s, same run", fmt_ratio(r), v(r and r >= 0.5)))
            for k in ("given", "halfd", "halfq"):
                p99, rate, got = (med(g, "durable", f"{x}@{k}") for x in ("p99", "rate", "lat_rps"))
                if p99 is None:
                    continue
                sustained = got >= 0.95 * rate and not med(g, "durable", f"lat_non2xx@{k}") and not med(g, "durable", f"lat_errors@{k}")
                L.append((f"(d) {where}: durable p99 < 10 ms at {RATE_KINDS[k]}",
                          f"{p99:.2f} ms at {rate:,.0f} req/s" + ("" if sustained else f" (only {got:,.0f} req/s achieved or errors)"),
                          v(p99 < 10 and sustained)))
    return L


def table(g, sc):
    systems = [s for s in SYSTEMS[sc] if s in g]
    pairs = [(x, y) for x, y in RATIOS[sc] if x in g and y in g]
    L = ["| figure | " + " | ".join(LABEL[s] for s in systems) + "".join(f" | {LABEL[x]} / {LABEL[y]}" for x, y in pairs) + " |",
         "|---" * (1 + len(systems) + len(pairs)) + "|"]
    kinds = sorted({k.split("@")[1] for f in g.values() for k in f if k.startswith("rate@")})
    for label, key, digits in ROWS[sc]:
        for k in kinds if "@" in label else [None]:
            name = key if k is None else f"{key}@{k}"
            if not any(g[s].get(name) for s in systems):
                continue
            rate = next((g[s][f"rate@{k}"][0] for s in systems if g[s].get(f"rate@{k}")), 0) if k is not None else 0
            text = label.replace("@", f"at {RATE_KINDS[k]} ({rate:,.0f} req/s)" if k else f"at {rate:,.0f} req/s") if k is not None else label
            L.append(f"| {text} | " + " | ".join(fmt_spread(g[s].get(name), digits) for s in systems)
                     + "".join(f" | {fmt_ratio(ratio(med(g, x, name), med(g, y, name)))}" for x, y in pairs) + " |")
    return L


def notes(g, sc):
    N = []
    for s, f in g.items():
        for k in [k for k in f if k.startswith("rate@")]:
            kind, rate = k[5:], f[k][0]
            errs = sum((f.get(f"lat_non2xx@{kind}") or (0, 0, 0))[1:]) + sum((f.get(f"lat_errors@{kind}") or (0, 0, 0))[1:])
            if errs or f[f"lat_rps@{kind}"][1] < 0.95 * rate:
                N.append(f"{LABEL[s]}: the fixed rate {rate:,.0f} req/s was not fully sustained (achieved "
                         f"{fmt_spread(f[f'lat_rps@{kind}'])}, non-2xx or errors in some runs).")
        if f.get("drain_end"):
            N.append(f"{LABEL[s]}: drains ended by {', '.join(sorted(set(f['drain_end'])))} (settled/expected: all stored; "
                     "stable: nothing written for --drain-stable s; timeout: --drain-timeout).")
        if f.get("metrics_accepted") and s == "corepost":
            N.append(f"corepost's own counter corepost_payloads_accepted_total: {fmt_spread(f['metrics_accepted'])} per run "
                     f"incl. the probe POST (wrk-derived: {fmt_spread(f['accepted'])}).")
        for rnd, (st, text) in enumerate(zip(f.get("verify") or [], f.get("verify_text") or []), 1):
            N.append(f"corepost correctness, run {rnd}: {st if st in ('match', 'consistent') else f'**{st}**'} — {text}.")
        if f.get("mem_guard_killed"):
            N.append(f"{LABEL[s]}: **killed by the memory guard** in some runs.")
    if sc == "c":
        kinds = {}
        for f in g.values():
            for inv in f.get("inv_by_kind") or []:
                for k, v in inv.items():
                    kinds[k] = kinds.get(k, 0) + v["objects"]
        N.append("PUT requests: corepost's corepost_put_requests_total (single PUTs and multipart calls); Go: the objects in "
                 "the bucket (one PUT each). Objects over all runs by key suffix: "
                 + ", ".join(f"`{k}` {v:,}" for k, v in sorted(kinds.items())) + " (`other`: Go's `prefix/UnixNano` keys).")
    if sc in "bc" and "go" in g:
        N.append(f"Go baseline peak RSS: {fmt(g['go']['rss_mib'][2])} MiB (its queue is unbounded; growth is expected).")
    return N


def report(raw, out_md, out_svg):
    meta = json.loads((raw / "meta.json").read_text())
    records = [json.loads(l) for l in (raw / "records.jsonl").read_text().splitlines() if l]
    bodies = meta.get("bodies") or [{"body": meta["body"], "ppb": meta["ppb"], "bytes": meta["body_bytes"]}]
    summ = summarize(records, bodies[0]["body"])
    scs = {sc for sc, _, _ in summ}
    L = [f"# corepost end-to-end benchmark — scenario {meta['scenario']}, {meta['date']}"
         + (" (SMOKE RUN: harness check only, numbers are not meaningful)" if meta["smoke"] else "") + "\n",
         f"Command: `{meta['command']}`  ", f"Started {meta['started']}, finished {meta['finished']}.  ",
         f"Rounds: {meta['rounds']} × {meta['duration']} s per system, systems alternated within each round (the order "
         "rotates every round); figures are the median across rounds, with (min–max); ratios are of medians.  ",
         f"Saturating load: `wrk -t1 -c{meta['conns']} -d{meta['duration']}s --timeout 5s -s benches/workload/post.lua` with "
         + ", ".join(f"`{b['body']}` ({b['ppb']} payloads, {b['bytes']} bytes per request)" for b in bodies)
         + (" (each body its own rounds)" if len(bodies) > 1 else "") + ", its figures as JSON from post.lua's done() hook.  "]
    if scs & {"a", "b", "d"} and meta.get("no_latency"):
        L.append("No fixed-rate latency rounds (`--no-latency`).  ")
    elif scs & {"a", "b", "d"}:
        L.append(f"Fixed-rate latency: `oha -z {meta['duration']}s -q RATE -c {meta['conns']} --latency-correction` (open loop, "
                 f"from the intended send time); (a), (b): RATE = {meta['rate_fraction']:.0%} of the lowest median sustained rate "
                 "of the systems of that scenario, mode and body in this run; (d): ½ of queued's and ½ of durable's median sustained "
                 "rate, both modes at both; unless given on the command line.  ")
    if "c" in meta:
        L.append("(c) corepost `--sink s3 --config corepost-c.toml`:\n\n```toml\n" + meta["c"].strip() + "\n```\n")
    if "d" in meta:
        d = meta["d"]
        L.append(f"(d) corepost `--sink discard`; durable config (a fresh spool dir per run, deleted after it):\n\n```toml\n"
                 f"{d['config'].strip()}\n```\nspool.commit_wait_us = {d['commit_wait_us']} "
                 f"({'--commit-wait-us' if d['given'] else 'corepost default'}); spool base `{d['spool_base']}` ({d['fs']}); "
                 f"raw disk: {d['fsync']}.  ")
    if "tokens" in meta:
        L.append(f"(tokens) `--tokens-file` of {meta['tokens']} tokens; body10 carries `bench-token` in its body; the header "
                 "variant sends `Authorization: Bearer bench-token` too.  ")
    for line in meta.get("negotiated", []):
        L.append(f"(tls) negotiated with `openssl s_client -alpn http/1.1`: `{line}`  ")
    L.append(f"Raw logs: `{meta['raw']}` (temporary).\n\n## Machine and versions\n\n| item | value |\n|---|---|")
    L += [f"| {k} | {v} |" for k, v in meta["machine"].items()]
    L.append(f"\nMachine load: {meta['load']} (1/5/15-min load average at the end of the run)\n")
    if scs & {"a", "b", "c", "d"}:
        L += ["## Targets (reported, not asserted)\n", "| target | measured | verdict |", "|---|---|---|"]
        L += [f"| {a} | {b} | {c} |" for a, b, c in targets(summ)]
        L.append("\nThe first three compare the per-core runs of (a); RSS: the highest VmHWM of corepost in any saturating "
                 "run; (c) and (d): medians of the same run and mode; the (d) p99 target counts only if durable sustained "
                 "the rate (>= 95%, all 2xx).\n")
    for sc in SCENARIOS:
        for mode in MODES:
            for b in bodies:
                g = summ.get((sc, mode, b["body"]))
                if g:
                    L += [f"## {SCENARIOS[sc]} — {MODES[mode]} — {b['body']}\n"] + table(g, sc) + [""] + [f"- {n}" for n in notes(g, sc)] + [""]
    L.append("Definitions of every figure: benches/e2e/README.md.")
    out_md.write_text("\n".join(L) + "\n")
    chart(summ, [b["body"] for b in bodies], out_svg)


def chart(summ, bodies, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [(sc, m, b) for sc in SCENARIOS for m in MODES for b in bodies if (sc, m, b) in summ]
    ncols = max(len(CHART[sc]) for sc, _, _ in keys)
    fig, axes = plt.subplots(len(keys), ncols, figsize=(4 * ncols, 3.2 * len(keys)), squeeze=False)
    for row, (sc, mode, body) in zip(axes, keys):
        g = summ[(sc, mode, body)]
        systems = [s for s in SYSTEMS[sc] if s in g]
        for i, ax in enumerate(row):
            if i >= len(CHART[sc]):
                ax.axis("off")
                continue
            fig_key, title, kind = CHART[sc][i]
            name = fig_key if kind is None else f"{fig_key}@{kind}"
            vals = [g[s].get(name) for s in systems]
            if not any(vals):
                ax.axis("off")
                continue
            m = [v[0] if v else 0 for v in vals]
            err = [[v[0] - v[1] if v else 0 for v in vals], [v[2] - v[0] if v else 0 for v in vals]]
            ax.bar([LABEL[s] for s in systems], m, yerr=err, capsize=4, color=[f"C{SYSTEMS[sc].index(s)}" for s in systems])
            pos = [x for x in m if x > 0]
            if pos and max(pos) / min(pos) > 20:
                ax.set_yscale("log")
            if sc == "d" and kind:
                ax.axhline(10, color="red", linestyle="--", linewidth=1)  # the p99 target
            for i, (x, v) in enumerate(zip(m, vals)):
                ax.annotate(fmt(x) if v else "n/a", (i, x), ha="center", va="bottom", fontsize=8)
            which = ("per core" if mode == "percore" else "machine") + (f", {Path(body).stem}" if len(bodies) > 1 else "")
            ax.set_title(f"({sc}) {which}: {title}", fontsize=9)
            ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path)


# ---------------------------------------------------------------- main
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


if __name__ == "__main__":
    main(sys.argv[1:])
