//! Per-shard counters, summed (and labelled by shard) only when `/metrics` is scraped.
//!
//! Each counter has one writer: the shard's executor or the shard's upload worker, so the
//! atomics are never contended on the hot path; a scrape only reads them.

use crate::queue::Budget;
use crate::readiness::Readiness;
use crate::spool::Spools;
pub use waiting::Waiting;

#[path = "metrics_waiting.rs"]
mod waiting;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Routes counted in `corepost_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/payloads` and `POST /`.
    Payloads,
    /// `/healthz`
    Health,
    /// `/readyz`
    Ready,
    /// `/metrics`
    Metrics,
    /// Anything else.
    Other,
}

const ROUTES: [&str; 5] = ["payloads", "healthz", "readyz", "metrics", "other"];
const STATUSES: [u16; 12] = [200, 400, 404, 405, 408, 413, 500, 503, 204, 431, 401, 0];
/// Reasons counted in `corepost_auth_refused_total`, in [`crate::auth::Denied`] order.
const AUTH_REASONS: [crate::auth::Denied; 2] =
    [crate::auth::Denied::Missing, crate::auth::Denied::Invalid];
/// Upload latency histogram bucket bounds, in seconds.
const LATENCY_BOUNDS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

fn status_index(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|&s| s == status)
        .unwrap_or(STATUSES.len() - 1)
}

/// One shard's counters.
#[derive(Debug, Default)]
pub struct ShardStats {
    requests: [[AtomicU64; STATUSES.len()]; ROUTES.len()],
    /// Payloads answered 200 for.
    pub payloads_accepted: AtomicU64,
    /// Request body bytes accepted (decoded, for compressed bodies).
    pub bytes_in: AtomicU64,
    /// Payloads stored in the sink.
    pub payloads_uploaded: AtomicU64,
    /// Payloads neither stored nor spilled (disk failure on top of a store failure; logged).
    pub payloads_failed: AtomicU64,
    /// Payloads written to the spill directory instead of the store.
    pub payloads_spilled: AtomicU64,
    /// Payloads of spooled requests not stored (drain deadline, refused): they stay in the
    /// durable spool and are uploaded at the next start.
    pub payloads_deferred: AtomicU64,
    /// Payloads of spooled requests handed to the worker again at start-up.
    pub payloads_replayed: AtomicU64,
    /// Spool records found corrupt (not at a tail) at start-up; each is logged.
    pub spool_corrupt: AtomicU64,
    /// Torn tails cut off spool segments at start-up (a crash mid-write).
    pub spool_torn_tails: AtomicU64,
    /// Spool records that can never be delivered, moved to the dead-letter directory.
    pub spool_dead_letters: AtomicU64,
    /// Upload attempts that failed and were retried.
    pub upload_retries: AtomicU64,
    /// Upload attempts the store throttled (`429`, `503`, `SlowDown`); each is retried after
    /// the longer throttled backoff.
    pub upload_throttled: AtomicU64,
    /// Bytes written to the sink (objects as stored, after compression).
    pub bytes_out: AtomicU64,
    /// Objects stored in the sink.
    pub objects_uploaded: AtomicU64,
    /// Objects closed early to keep `batch.max_open_partitions`.
    pub partitions_evicted: AtomicU64,
    /// Payloads a Parquet object could not take (not a JSON object, or not fitting its
    /// schema), written to the error output instead.
    pub payloads_unfit: AtomicU64,
    /// Group syncs of the fs sink's file system (`ack = "durable"`).
    pub sink_syncs: AtomicU64,
    /// Write requests sent to the store (single PUTs, and multipart start, parts and
    /// completion), retries included.
    pub put_requests: AtomicU64,
    /// Uploads in progress now.
    pub uploads_in_flight: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Connections closed at once because `shards.max_connections` was reached.
    pub connections_rejected: AtomicU64,
    /// Connections closed after an answer because they reached
    /// `server.max_connection_age_ms`.
    pub connections_aged: AtomicU64,
    /// Connections on the TLS listener closed before their handshake completed: not TLS,
    /// no handshake within `tls.handshake_timeout_ms`, or a failed handshake (e.g. no valid
    /// client certificate).
    pub tls_handshake_failures: AtomicU64,
    /// Payload requests refused `401` (`[auth]`), by reason: missing, invalid.
    auth_refused: [AtomicU64; 2],
    latency_buckets: [AtomicU64; LATENCY_BOUNDS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    /// Whether the shard is ready, and why not (`/readyz`).
    pub readiness: Readiness,
    /// Spill directory files waiting for the store, their bytes, and the oldest one's mtime
    /// (Unix seconds, 0 when none): set by the worker that redelivers them (shard 0).
    pub spill_files: AtomicU64,
    /// See `spill_files`.
    pub spill_bytes: AtomicU64,
    /// See `spill_files`.
    pub spill_oldest_unix: AtomicU64,
}

/// Adds to a counter.
pub fn inc(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

/// Subtracts from a gauge.
pub fn dec(c: &AtomicU64, n: u64) {
    c.fetch_sub(n, Relaxed);
}

impl ShardStats {
    /// Counts one payload request refused `401`.
    pub fn auth_refused(&self, why: crate::auth::Denied) {
        let i = AUTH_REASONS.iter().position(|&r| r == why).unwrap_or(0);
        inc(&self.auth_refused[i], 1);
    }

    /// Counts one answered request.
    pub fn request(&self, route: Route, status: u16) {
        inc(&self.requests[route as usize][status_index(status)], 1);
    }

    /// Records one successful upload's latency.
    pub fn observe_upload(&self, seconds: f64) {
        if let Some(i) = LATENCY_BOUNDS.iter().position(|&b| seconds <= b) {
            inc(&self.latency_buckets[i], 1);
        }
        inc(&self.latency_count, 1);
        inc(&self.latency_sum_us, (seconds * 1e6) as u64);
    }

    /// Counters for one shard of a server whose shards share `stored_anywhere` (a refusal
    /// ends when any of them stores an object; see [`Readiness::sharing`]).
    pub fn sharing(stored_anywhere: Arc<AtomicU64>) -> ShardStats {
        ShardStats {
            readiness: Readiness::sharing(stored_anywhere),
            ..ShardStats::default()
        }
    }

    /// Requests answered on `route` with `status`.
    pub fn requests(&self, route: Route, status: u16) -> u64 {
        self.requests[route as usize][status_index(status)].load(Relaxed)
    }
}

/// What a scrape reads from one shard.
#[derive(Debug, Clone)]
pub struct ShardView {
    /// The shard's counters.
    pub stats: Arc<ShardStats>,
    /// The shard's queue budget (for the queue depth gauges).
    pub budget: Arc<Budget>,
    /// The shard's durable spool, once opened (`ack = "durable"`), for its counters.
    pub spool: Arc<Spools>,
    /// The shard's connection limit in force.
    pub max_connections: usize,
}

/// Picks one counter out of a shard's stats.
type Field = fn(&ShardStats) -> &AtomicU64;

/// Writes one metric family, one series per shard (`_total` names are counters).
fn series(out: &mut String, name: &str, help: &str, values: impl Iterator<Item = u64>) {
    let kind = if name.ends_with("_total") {
        "counter"
    } else {
        "gauge"
    };
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (i, v) in values.enumerate() {
        let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {v}");
    }
}

/// Picks one number out of a spool's stats.
type SpoolField = fn(&crate::spool::SpoolStats) -> u64;

/// Renders all shards in Prometheus text format.
pub fn render(shards: &[ShardView], ready: bool) -> String {
    let mut out = String::with_capacity(8192);
    let counters: [(&str, &str, Field); 23] = [
        (
            "corepost_payloads_accepted_total",
            "Payloads answered 200 for.",
            |s| &s.payloads_accepted,
        ),
        (
            "corepost_bytes_in_total",
            "Request body bytes accepted (decoded, for compressed bodies).",
            |s| &s.bytes_in,
        ),
        (
            "corepost_payloads_uploaded_total",
            "Payloads stored in the sink.",
            |s| &s.payloads_uploaded,
        ),
        (
            "corepost_payloads_spilled_total",
            "Payloads kept in the spill directory for the next start.",
            |s| &s.payloads_spilled,
        ),
        (
            "corepost_payloads_failed_total",
            "Payloads neither stored nor spilled (lost; logged).",
            |s| &s.payloads_failed,
        ),
        (
            "corepost_upload_retries_total",
            "Upload attempts retried.",
            |s| &s.upload_retries,
        ),
        (
            "corepost_upload_throttled_total",
            "Upload attempts the store throttled (429, 503 or SlowDown), retried after a longer backoff.",
            |s| &s.upload_throttled,
        ),
        (
            "corepost_bytes_out_total",
            "Bytes written to the sink (objects as stored, after compression).",
            |s| &s.bytes_out,
        ),
        (
            "corepost_payloads_deferred_total",
            "Payloads of spooled requests left for the next start (in the durable spool).",
            |s| &s.payloads_deferred,
        ),
        (
            "corepost_payloads_replayed_total",
            "Payloads of spooled requests handed to the upload worker again at start-up.",
            |s| &s.payloads_replayed,
        ),
        (
            "corepost_spool_corrupt_records_total",
            "Corrupt spool ranges found at start-up (not at a tail); each is logged.",
            |s| &s.spool_corrupt,
        ),
        (
            "corepost_spool_torn_tails_total",
            "Torn tails cut off spool segments at start-up (a crash mid-write).",
            |s| &s.spool_torn_tails,
        ),
        (
            "corepost_spool_dead_letters_total",
            "Spool records that can never be delivered (logged), moved to spool.dir/dead-letter/.",
            |s| &s.spool_dead_letters,
        ),
        (
            "corepost_objects_uploaded_total",
            "Objects stored in the sink.",
            |s| &s.objects_uploaded,
        ),
        (
            "corepost_partitions_evicted_total",
            "Objects closed before they were full or aged, to keep batch.max_open_partitions.",
            |s| &s.partitions_evicted,
        ),
        (
            "corepost_payloads_unfit_total",
            "Payloads a Parquet object could not take (not a JSON object, or not fitting batch.schema_file), stored as NDJSON under {prefix}/errors/ instead.",
            |s| &s.payloads_unfit,
        ),
        (
            "corepost_sink_syncs_total",
            "Group syncs of the fs sink's file system before spool records are released (ack = durable).",
            |s| &s.sink_syncs,
        ),
        (
            "corepost_put_requests_total",
            "Write requests sent to the store (PUTs, multipart start/parts/completion), retries included.",
            |s| &s.put_requests,
        ),
        ("corepost_uploads_in_flight", "Uploads in progress.", |s| {
            &s.uploads_in_flight
        }),
        ("corepost_connections_open", "Connections open.", |s| {
            &s.connections_open
        }),
        (
            "corepost_connections_rejected_total",
            "Connections refused at the per-shard limit.",
            |s| &s.connections_rejected,
        ),
        (
            "corepost_connections_aged_total",
            "Connections closed after an answer (Connection: close) because they reached server.max_connection_age_ms.",
            |s| &s.connections_aged,
        ),
        (
            "corepost_tls_handshake_failures_total",
            "Connections closed before their TLS handshake completed (not TLS, timeout, failed).",
            |s| &s.tls_handshake_failures,
        ),
    ];
    for (name, help, get) in counters {
        series(
            &mut out,
            name,
            help,
            shards.iter().map(|sh| get(&sh.stats).load(Relaxed)),
        );
    }
    let _ = writeln!(
        out,
        "# HELP corepost_requests_total HTTP requests by route and status.\n# TYPE corepost_requests_total counter"
    );
    for (i, sh) in shards.iter().enumerate() {
        for (r, route) in ROUTES.iter().enumerate() {
            for (s, status) in STATUSES.iter().enumerate() {
                let v = sh.stats.requests[r][s].load(Relaxed);
                if v > 0 {
                    let status = if *status == 0 {
                        "other".to_string()
                    } else {
                        status.to_string()
                    };
                    let _ = writeln!(
                        out,
                        "corepost_requests_total{{shard=\"{i}\",route=\"{route}\",status=\"{status}\"}} {v}"
                    );
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP corepost_auth_refused_total Payload requests refused 401 ([auth]): no token (missing) or one not listed (invalid).\n# TYPE corepost_auth_refused_total counter"
    );
    for (i, sh) in shards.iter().enumerate() {
        for (k, why) in AUTH_REASONS.iter().enumerate() {
            let v = sh.stats.auth_refused[k].load(Relaxed);
            let _ = writeln!(
                out,
                "corepost_auth_refused_total{{shard=\"{i}\",reason=\"{}\"}} {v}",
                why.label()
            );
        }
    }
    series(
        &mut out,
        "corepost_sink_failing",
        "1 while the shard's last store attempt or sink check failed, else 0.",
        shards
            .iter()
            .map(|sh| u64::from(sh.stats.readiness.sink_failing())),
    );
    series(
        &mut out,
        "corepost_sink_refusing",
        "1 while the store refuses the shard's objects for good (403, 404, credentials, permissions), else 0: they wait in the spool or spill directory and are retried.",
        shards.iter().map(|sh| u64::from(sh.stats.readiness.refusing())),
    );
    let w = Waiting::of(shards);
    for (name, help, v) in [
        ("corepost_spill_files", "Files in the spill directory waiting for the store.", w.spill_files),
        ("corepost_spill_bytes", "Bytes of those files.", w.spill_bytes),
        ("corepost_waiting_oldest_seconds", "Age of the oldest data answered 200 that waits for the store in the spill directory or the durable spool (its spool segment's creation or spill file's time), 0 when none waits.", w.oldest_seconds),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    series(
        &mut out,
        "corepost_shard_ready",
        "1 if the shard is ready (worker running, sink checked and not failing, spool writing), else 0; /readyz says why.",
        shards.iter().map(|sh| u64::from(sh.stats.readiness.not_ready().is_none())),
    );
    series(
        &mut out,
        "corepost_connections_max",
        "Connections a shard holds at most (shards.max_connections, fitted to the file descriptor limit).",
        shards.iter().map(|sh| sh.max_connections as u64),
    );
    series(
        &mut out,
        "corepost_queue_payloads",
        "Payloads queued or uploading.",
        shards.iter().map(|sh| sh.budget.depth().0 as u64),
    );
    series(
        &mut out,
        "corepost_queue_bytes",
        "Body bytes queued or uploading.",
        shards.iter().map(|sh| sh.budget.depth().1 as u64),
    );
    let spool_series: [(&str, &str, SpoolField); 6] = [
        (
            "corepost_spool_fsyncs_total",
            "Data syncs issued by the durable spool: one per commit (an O_DSYNC write) plus the fdatasyncs of segment creation.",
            |s| s.data_syncs,
        ),
        (
            "corepost_spool_commits_total",
            "Group commits of the durable spool (one O_DSYNC write each).",
            |s| s.commits,
        ),
        (
            "corepost_spool_records_total",
            "Requests made durable in the spool.",
            |s| s.records_appended,
        ),
        (
            "corepost_spool_live_records",
            "Spooled requests not yet stored.",
            |s| s.live_records,
        ),
        (
            "corepost_spool_live_bytes",
            "Bytes of spool segment files on disk (counted against spool.max_bytes).",
            |s| s.live_bytes,
        ),
        (
            "corepost_spool_releases_unpersisted",
            "Stored records not yet in a written release checkpoint (spool.checkpoint_ms): what a crash now would replay of what is already stored.",
            |s| s.unpersisted_releases,
        ),
    ];
    let stats: Vec<_> = shards.iter().map(|sh| sh.spool.stats()).collect();
    if stats.iter().any(Option::is_some) {
        let stats: Vec<_> = stats.into_iter().map(Option::unwrap_or_default).collect();
        for (name, help, get) in spool_series {
            series(&mut out, name, help, stats.iter().map(get));
        }
    }
    let name = "corepost_upload_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Latency of successful uploads.\n# TYPE {name} histogram"
    );
    for (i, sh) in shards.iter().enumerate() {
        let st = &sh.stats;
        let mut cum = 0;
        for (b, bound) in LATENCY_BOUNDS.iter().enumerate() {
            cum += st.latency_buckets[b].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{shard=\"{i}\",le=\"{bound}\"}} {cum}");
        }
        let count = st.latency_count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{shard=\"{i}\",le=\"+Inf\"}} {count}");
        let sum = st.latency_sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_sum{{shard=\"{i}\"}} {sum}\n{name}_count{{shard=\"{i}\"}} {count}"
        );
    }
    let _ = writeln!(out, "# HELP corepost_ready 1 when the server is ready (sink working, not shutting down).\n# TYPE corepost_ready gauge\ncorepost_ready {}", u8::from(ready));
    out
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
