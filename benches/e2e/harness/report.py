"""From the recorded runs to the result file: medians with their spread, ratios, tables, notes,
the chart."""
import json
import statistics
from pathlib import Path

from .common import CHART, LABEL, MODES, RATE_KINDS, RATIOS, ROWS, SCENARIOS, SYSTEMS


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
