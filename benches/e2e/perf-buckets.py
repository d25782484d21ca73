#!/usr/bin/env python3
"""Buckets the CPU samples of a pinned shard by what they were doing.

usage: perf script -i perf.data -F comm,ip,sym | benches/e2e/perf-buckets.py shard-0-1,upload-0

Each sample of the named threads goes to the first bucket (rules in order) matched by its
stack, walked from the leaf up; record with call stacks (`perf record -e cpu-clock
--call-graph dwarf -p PID`: the release build has no frame pointers). Prints a markdown table
of shares; the most common leaf frames left unclassified go to stderr.
"""
import re, sys, collections
comms = set(sys.argv[1].split(","))
rules = [
    ("validation (simd-json, walk)", r"simd_json|corepost::parse|serde_json"),
    ("allocator (mimalloc, kernel slab)", r"^_?mi_|mimalloc|^mi_|malloc|^free$|cfree|allocate_slab|kmem_cache|slab"),
    ("body copy (memmove)", r"memmove|memcpy"),
    ("hyper parse/encode/dispatch", r"hyper::|httparse|^http::|bytes::"),
    ("queue hand-off (flume, event-listener, budget)", r"flume|event_listener|corepost::queue|send_reserved|futex"),
    ("scheduler (wake-ups of the client and worker, switches)", r"try_to_wake_up|schedule|finish_task_switch"),
    ("metrics", r"corepost::metrics"),
    ("timers/clock", r"clock_gettime|read_tsc|timer|Timer|Sleep"),
    ("io_uring (kernel)", r"io_uring|io_submit|io_cqring|io_issue|__io_|io_req|tctx|task_work"),
    ("glommio executor/reactor", r"glommio"),
    ("kernel TCP/loopback", r"tcp|inet|ip_|skb|sock|net_|napi|loopback|dev_queue|__netif|_copy_to_iter|_copy_from_iter|datagram|bbr|eth_"),
    ("kernel syscall entry", r"do_syscall|entry_SYSCALL|syscall_exit|fdget|fput|fget"),
    ("corepost request path", r"corepost::"),
]
rules = [(n, re.compile(p)) for n, p in rules]
count = collections.Counter(); total = 0; other = collections.Counter()
cur = None; frames = []
def flush():
    global total
    if cur is None: return
    total += 1
    for f in frames:
        for n, p in rules:
            if p.search(f):
                count[n] += 1; return
    count["other"] += 1
    other[frames[0] if frames else "?"] += 1
for line in sys.stdin:
    if not line.strip():
        flush(); cur = None; frames = []; continue
    if not line[0].isspace():
        c = line.split()[0]
        cur = c if c in comms else None
        frames = []
        continue
    if cur is None: continue
    parts = line.split(None, 1)
    if len(parts) == 2:
        sym = parts[1].rsplit(" (", 1)[0]
        sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
        frames.append(sym)
flush()
print(f"samples: {total}")
for n, c in count.most_common():
    print(f"| {n} | {100*c/total:.1f}% |")
print("top unclassified:", other.most_common(12), file=sys.stderr)
