"""The systems under test as processes: corepost, the tokio peer, the Go baseline, nginx."""
import os
import re
import shutil
import signal
import subprocess as sp
import tempfile
import threading
import time
from pathlib import Path

from .common import COREPOST, GO_BIN, NPROC, PEER_BIN, SRV_CPU, die, log
from .procs import free_port, http_get, metric_sums, tree


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
