"""The tools a run needs: installed when missing (unless --no-install), the binaries built."""
import importlib.util
import os
import shutil
import subprocess as sp
import sys
from pathlib import Path

from .common import COREPOST, PEER_BIN, PEER_DIR, ROOT, S3TOOL, die, log, run


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
