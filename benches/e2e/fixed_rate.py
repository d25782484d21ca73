#!/usr/bin/env python3
"""Fallback fixed-rate (open-loop) HTTP load generator, used by run.sh only when oha is not installed.

usage: fixed_rate.py URL BODY_FILE RATE DURATION_S CONNECTIONS > result.json

Request i is due at start + i/RATE. CONNECTIONS keep-alive connections take the due requests in
order; a request that has to wait for a free connection keeps its due time, so its latency counts
the wait (corrected for coordinated omission, like wrk2 or oha --latency-correction).
Prints a JSON summary shaped like `oha --output-format json` (summary, latencyPercentiles in
seconds, statusCodeDistribution, errorDistribution) with "generator": "fixed_rate.py".
Stdlib asyncio on one core: fine up to roughly 10k req/s; run.sh says when it is used.
"""
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        n = int(headers["content-length"])
        if n:
            await reader.readexactly(n)
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif status not in (204, 304) and not (100 <= status < 200):
        raise RuntimeError("response without length")
    close = headers.get("connection", "").lower() == "close"
    return status, close


async def main():
    url, body_file, rate, duration, conns = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
    u = urlsplit(url)
    host, port = u.hostname, u.port or 80
    path = u.path or "/"
    body = open(body_file, "rb").read()
    req = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    total = int(rate * duration)
    loop = asyncio.get_running_loop()
    lat = []
    codes = {}
    errors = {}
    state = {"next": 0}
    start = loop.time() + 0.2
    deadline = start + duration

    async def worker():
        reader = writer = None
        while True:
            i = state["next"]
            if i >= total:
                break
            state["next"] = i + 1
            due = start + i / rate
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
            if loop.time() > deadline + 5:
                errors["deadline"] = errors.get("deadline", 0) + 1
                continue
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(req)
                status, close = await asyncio.wait_for(read_response(reader), timeout=10)
                lat.append(loop.time() - due)
                codes[str(status)] = codes.get(str(status), 0) + 1
                if close:
                    writer.close()
                    writer = None
            except Exception as e:  # noqa: BLE001 - any failure is one counted error
                k = type(e).__name__
                errors[k] = errors.get(k, 0) + 1
                if writer is not None:
                    writer.close()
                writer = None
        if writer is not None:
            writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(conns)))
    elapsed = time.monotonic() - t0 - 0.2
    lat.sort()

    def pct(p):
        if not lat:
            return None
        return lat[min(len(lat) - 1, int(p / 100.0 * len(lat)))]

    out = {
        "generator": "fixed_rate.py (Python asyncio fallback)",
        "summary": {
            "successRate": (sum(codes.values()) / max(1, total)),
            "total": elapsed,
            "requestsPerSec": len(lat) / max(1e-9, elapsed),
        },
        "latencyPercentiles": {k: pct(v) for k, v in
                               (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9), ("p99.99", 99.99))},
        "statusCodeDistribution": codes,
        "errorDistribution": errors,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
