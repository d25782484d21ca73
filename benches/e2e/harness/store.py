"""Garage for scenarios (b) and (c), and the drain that waits for the uploads after the load."""
import json
import os
import re
import shutil
import subprocess as sp
import time

from .common import GARAGE_SH, LG_CPU, S3TOOL, die, log, run
from .procs import http_get, metric_sums


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
