//! Capacities that fit the machine's limits: connections within `RLIMIT_NOFILE`, io memory
//! within `RLIMIT_MEMLOCK`, queue bytes within the memory. Pure functions of what `machine`
//! read.

use super::kernel;
use super::machine::Machine;
use crate::config::Config;

/// Connections per shard wanted before the descriptor limit: a dedicated machine (its NIC's
/// IRQs are ours to place) takes more.
pub fn wanted_connections(dedicated: bool) -> usize {
    if dedicated {
        50_000
    } else {
        10_000
    }
}

/// Ring depth for `max_connections` per shard: one entry per 64 connections, a power of two
/// between 128 and 2048 (10,000 connections → 256, 50,000 → 1024, as the shipped profiles).
pub fn ring_depth(max_connections: usize) -> usize {
    (max_connections / 64).next_power_of_two().clamp(128, 2048)
}

/// Bytes one io_uring of `depth` entries locks on kernels before 5.12: the rings (CQ twice
/// the SQ) and the submission entries, each rounded up to pages.
pub fn ring_bytes(depth: usize) -> u64 {
    let page = |b: usize| b.div_ceil(4096) as u64 * 4096;
    page(192 + depth * 4 + 2 * depth * 16) + page(depth * 64)
}

/// glommio registers each executor's io memory with its three rings (main, latency, poll);
/// each registration is charged to `RLIMIT_MEMLOCK`.
pub const RINGS_PER_SHARD: u64 = 3;

/// glommio refuses to start an executor when `RLIMIT_MEMLOCK` is below this.
pub const GLOMMIO_MIN_MEMLOCK: u64 = 512 * 1024;

/// `(io_memory_kib, note, warning)`: the io memory per shard that fits `memlock` (soft limit
/// in bytes, `None` unlimited) for `shards` shards with rings of `depth` (counted when
/// `rings_locked`).
pub fn fit_io_memory(
    wanted_kib: usize,
    memlock: Option<u64>,
    shards: usize,
    depth: usize,
    rings_locked: bool,
) -> (usize, String, Option<String>) {
    let Some(limit) = memlock else {
        return (
            wanted_kib,
            format!("unlimited: {wanted_kib} KiB per shard"),
            None,
        );
    };
    let shards = shards.max(1) as u64;
    let rings = if rings_locked {
        RINGS_PER_SHARD * ring_bytes(depth)
    } else {
        0
    };
    // 64 KiB kept for anything else the process locks.
    let avail = limit.saturating_sub(64 * 1024 + shards * rings);
    let per_kib = (avail / shards / RINGS_PER_SHARD / 1024) as usize / 4 * 4;
    let kib = wanted_kib.min(per_kib).max(64);
    let note = format!(
        "{limit} bytes: {shards} shards × {RINGS_PER_SHARD} rings × {kib} KiB{} {} (64 KiB kept free)",
        if rings_locked {
            format!(" + the rings' own {rings} bytes per shard (kernel before 5.12)")
        } else {
            String::new()
        },
        if per_kib < 64 { "do NOT fit" } else { "fit" }
    );
    let warning = if limit < GLOMMIO_MIN_MEMLOCK {
        Some(format!("RLIMIT_MEMLOCK is {limit} bytes: glommio refuses to start below {GLOMMIO_MIN_MEMLOCK}; raise it (LimitMEMLOCK=infinity in the unit)"))
    } else if per_kib < 64 {
        Some(format!("RLIMIT_MEMLOCK ({limit} bytes) cannot hold even 64 KiB of io memory per shard: registering it will fail and glommio falls back to unregistered buffers (slower spool I/O); raise it (LimitMEMLOCK=infinity)"))
    } else {
        None
    };
    (kib, note, warning)
}

/// Queue bytes per shard: a quarter of the memory (the cgroup's limit when lower) shared by
/// the shards, between 16 and 128 MiB, in whole MiB, never below `floor` (the largest body or
/// batch the configuration allows).
pub fn queue_bytes(memory: Option<u64>, shards: usize, floor: usize) -> usize {
    const MIB: u64 = 1 << 20;
    let floor = (floor as u64).div_ceil(MIB) * MIB;
    let per = match memory {
        Some(m) => (m / 4 / shards.max(1) as u64).clamp(16 * MIB, 128 * MIB) / MIB * MIB,
        None => 64 * MIB,
    };
    per.max(floor) as usize
}

/// `(shards.max_connections, note)`: the connections per shard that fit the descriptor limit
/// (`nofile` from `--nofile`, else the hard limit read), beside the reserve for `shards`
/// shards with `max_in_flight` store connections each.
pub fn connections(
    m: &Machine,
    nofile: Option<u64>,
    shards: usize,
    dedicated: bool,
    max_in_flight: usize,
) -> (usize, String) {
    let wanted = wanted_connections(dedicated);
    let read = m.nofile.and_then(|l| l.hard.or(l.soft));
    match nofile.or(read) {
        Some(limit) => {
            let n = crate::fd_limit::budget(limit, shards, wanted, max_in_flight);
            let source = if nofile.is_some() { "--nofile" } else { "hard limit read; corepost raises the soft limit to it at start" };
            (
                n,
                format!(
                    "RLIMIT_NOFILE {limit} ({source}): {wanted} wanted per shard, {n} fit beside the reserve for {shards} shards (spool, sink, {max_in_flight} store connections each)"
                ),
            )
        }
        None => (
            wanted,
            format!("RLIMIT_NOFILE not read: {wanted} per shard; corepost lowers it at start if the limit is smaller"),
        ),
    }
}

/// `(glommio.io_memory_kib, note)` within `RLIMIT_MEMLOCK` (`memlock` from `--memlock`, else
/// the soft limit read); warns about a kernel glommio cannot run on.
pub fn io_memory(
    m: &Machine,
    memlock: Option<Option<u64>>,
    shards: usize,
    ring_depth: usize,
    dedicated: bool,
    warnings: &mut Vec<String>,
) -> (usize, String) {
    let rings_locked = m
        .kernel_version
        .is_none_or(|v| v < kernel::RINGS_UNLOCKED_FROM);
    let from_flag = memlock.is_some();
    let memlock = memlock.or(m.memlock.map(|l| l.soft));
    let wanted_io = if dedicated { 16 * 1024 } else { 10 * 1024 };
    if let Some(v) = m.kernel_version {
        if v < kernel::GLOMMIO_MIN {
            warnings.push(format!(
                "kernel {}.{} is older than {}.{}, the oldest glommio runs on",
                v.0,
                v.1,
                kernel::GLOMMIO_MIN.0,
                kernel::GLOMMIO_MIN.1
            ));
        }
    }
    match memlock {
        Some(limit) => {
            let (kib, note, warn) =
                fit_io_memory(wanted_io, limit, shards, ring_depth, rings_locked);
            warnings.extend(warn);
            let source = if from_flag { " (--memlock)" } else { "" };
            (kib, format!("RLIMIT_MEMLOCK{source} {note}"))
        }
        None => (
            wanted_io,
            format!("RLIMIT_MEMLOCK not read: {wanted_io} KiB per shard"),
        ),
    }
}

/// `(queue.max_bytes, note)`: see [`queue_bytes`]; warns when the shards' queues may hold more
/// than half of the memory.
pub fn queue(
    m: &Machine,
    cfg: &Config,
    shards: usize,
    warnings: &mut Vec<String>,
) -> (usize, String) {
    let memory = match (m.mem_total, &m.cgroup_memory) {
        (Some(t), Some((_, c))) => Some(t.min(*c)),
        (t, c) => t.or(c.as_ref().map(|(_, c)| *c)),
    };
    let floor = cfg.server.max_body_bytes.max(cfg.batch.max_bytes);
    let queue_max_bytes = queue_bytes(memory, shards, floor);
    let note = match memory {
        Some(mem) => {
            let source = match &m.cgroup_memory {
                Some((file, c)) if *c == mem => format!(" (the cgroup's limit, {file})"),
                _ => " (MemTotal)".into(),
            };
            if (queue_max_bytes as u64) * shards as u64 > mem / 2 {
                warnings.push(format!("the shards' queues may hold {} MiB, more than half of the memory ({} MiB): lower queue.max_bytes or run fewer shards", (queue_max_bytes as u64 * shards as u64) >> 20, mem >> 20));
            }
            format!(
                "memory {} MiB{source}: a quarter of it over {shards} shards, 16 to 128 MiB each, at least the largest body or batch ({floor} bytes): {} MiB per shard",
                mem >> 20,
                queue_max_bytes >> 20
            )
        }
        None => format!("memory not read: {} MiB per shard", queue_max_bytes >> 20),
    };
    (queue_max_bytes, note)
}
