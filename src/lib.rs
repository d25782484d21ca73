//! corepost: a thread-per-core HTTP ingest server that lands every POSTed payload in S3.
//!
//! # Layout
//! - [`config`]: defaults, config file, tuning profile, environment and flags; validation;
//!   CPU placement.
//! - [`auth`]: bearer tokens (`[auth] tokens_file`), their tenants, reloads on SIGHUP.
//! - [`parse`]: request body → validated payload byte ranges (simd-json or serde_json).
//! - [`intake`]: what a shard does with a request: its token, room in the queue budget,
//!   parsing, then the ack mode's strategy (queued, uploaded, durable); spool replay.
//! - [`job`]: what a shard hands its upload worker (an accepted request, its spool record)
//!   and what the worker answers.
//! - [`keys`]: object keys that never collide across shards, restarts or machines, laid out
//!   by `keys.template` (Hive-style partitions from payload fields, headers, time), values
//!   made safe for a path.
//! - [`queue`]: the per-shard queue to the upload worker, bounded by payloads and bytes.
//! - [`spool`]: the per-shard durable write-ahead spool (group-committed, O_DIRECT) behind
//!   `ack = "durable"`; records are released once stored.
//! - [`dirlock`]: exclusive locks on the data directories (spool, spill, fs sink root), held
//!   for the process's life, so two processes never share one.
//! - [`upload`]: upload workers, objects (JSON, NDJSON, Parquet with its error output),
//!   sinks (s3, fs, discard), retries with backoff.
//! - [`metrics`]: per-shard counters and the Prometheus text rendering.
//! - [`readiness`]: one shard's readiness (worker running, sink checked and storing, spool
//!   writing) behind `/readyz`, its state private to it.
//! - [`http`]: hyper http1 on glommio streams, connections, bodies, routing, and the one
//!   table from refusals to statuses.
//! - [`tls`]: `[tls]`: certificate and key from PEM files (swapped on SIGHUP), client
//!   certificates, the bounded handshake of the public listener's connections.
//! - [`listen`]: the start-up probe for a port in use and the shards' listening sockets
//!   (`SO_REUSEADDR`, so a restart is not held up by the last run's TIME_WAIT connections).
//! - [`fd_limit`]: the file descriptor limit raised at start, connections fitted to it.
//! - [`reload`]: SIGHUP: the files re-read while running (tokens, TLS certificate).
//! - [`shard`]: executors pinned per core, listeners, start-up and graceful shutdown.
//! - [`shutdown`]: the server's one shutdown signal (draining, then hurry) and each shard's
//!   copy of it.
//! - [`clock`]: coarse time (the kernel's last tick) for deadlines and key dates.
//! - [`notify`]: systemd's readiness protocol (`READY=1` to `NOTIFY_SOCKET`) for
//!   `Type=notify` units.
//! - [`lifecycle`]: `corepost serve` as a process: signals, SIGHUP reloads, systemd
//!   notifications, and how shutdown flows from the first signal to every part.
//! - [`tune`]: `corepost tune`: reads the machine (CPUs, NUMA, NIC queues and IRQs, limits,
//!   kernel, the spool's disk) and writes a tuning profile and a script of recommended system
//!   changes.
#![warn(missing_docs)]

/// A named crash point in a durability protocol. Compiled only with the `failpoints` feature
/// (which only the crash tests enable): there, `FAILPOINTS="name=return"` (the `fail` crate's
/// syntax, e.g. `name=3*off->return` for the fourth pass) makes the process abort at that
/// point, as a power cut or `kill -9` would stop it. Without the feature it is nothing.
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        {
            if let Some(never) = fail::eval($name, |_| -> std::convert::Infallible {
                eprintln!("corepost: failpoint {} reached: aborting", $name);
                std::process::abort()
            }) {
                match never {}
            }
        }
    };
}

pub mod auth;
pub mod clock;
pub mod config;
pub mod dirlock;
pub mod fd_limit;
pub mod http;
pub mod intake;
pub mod job;
pub mod keys;
pub mod lifecycle;
pub mod listen;
pub mod metrics;
pub mod notify;
pub mod parse;
pub mod queue;
pub mod readiness;
pub mod reload;
pub mod shard;
pub mod shutdown;
pub mod spool;
pub mod tls;
pub mod tune;
pub mod upload;
