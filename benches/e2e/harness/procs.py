"""Processes and /proc (CPU ticks, peak RSS, steal), HTTP probes and Prometheus sums, free ports."""
import re
import urllib.request
from pathlib import Path


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
