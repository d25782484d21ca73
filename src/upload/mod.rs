//! Upload workers: one OS thread per shard (pinned, tokio current_thread, because rust-s3 needs
//! tokio) that drains the shard's queue into objects (one per payload, NDJSON batches, or
//! Parquet files encoded at close; see `batch` and `parquet`) and stores them,
//! `upload.max_in_flight` at a time, retrying transient failures with capped exponential
//! backoff and full jitter. A retried object keeps its key, so a retry after
//! a lost answer overwrites rather than duplicates.
//!
//! Nothing answered `200` is dropped: a payload the store refuses for good, or one still
//! undelivered at the drain deadline after SIGTERM, is written to the spill directory (fsynced,
//! named by its key), and worker 0 uploads the spill directory first at the next start.
//!
//! Imports run down this list: `mod.rs` (the worker's thread and loops) → `objects`
//! (the `objects::Batcher`: jobs into objects, in-flight slots) → `delivery` (the worker's
//! shared state `Ctx`, one object into the store, a job's `delivery::Upload` answered) and
//! `spill` → `sink`, `fs_sink`, `group_sync`, `batch`/`parquet` → `error`, `backoff`.

mod backoff;
mod batch;
mod delivery;
mod error;
mod fs_sink;
mod group_sync;
mod objects;
mod parquet;
pub mod schema_file;
mod sink;
mod spill;

pub use backoff::{backoff, refused_backoff, throttled_backoff};
pub use batch::{payloads_in, Finished, ObjectBuilder, ObjectFormat, Unfit, UNFIT};
pub use error::UploadError;
pub use fs_sink::{FsSink, SPILL_SUFFIX};
pub use sink::Sink;
pub use spill::spilled_files;

use crate::config::Config;
use crate::keys::KeySpace;
use crate::metrics::ShardStats;
use crate::queue::{Budget, Job};
use delivery::Ctx;
use objects::Batcher;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};

/// Everything a worker needs, handed over at start-up.
#[derive(Debug)]
pub struct WorkerSetup {
    /// Shard index (for logs and thread names).
    pub shard: usize,
    /// CPU to pin the thread to.
    pub cpu: usize,
    /// The shard's queue.
    pub rx: flume::Receiver<Job>,
    /// The server's shutdown signal: its drain deadline ends the worker's store attempts.
    pub shutdown: Arc<crate::shutdown::Shutdown>,
    /// Whether this worker uploads the spill directory left by an earlier run (worker 0).
    pub replay_spill: bool,
    /// The shard's memory budget, released as requests finish.
    pub budget: Arc<Budget>,
    /// The shard's counters.
    pub stats: Arc<ShardStats>,
    /// The shard's key space.
    pub keys: KeySpace,
    /// The configuration.
    pub config: Arc<Config>,
}

/// Starts the worker thread. It returns when the queue is closed (every sender dropped) and
/// everything queued has been stored or spilled.
pub fn spawn(setup: WorkerSetup) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("upload-{}", setup.shard))
        .spawn(move || {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: setup.cpu }) {
                tracing::warn!(
                    shard = setup.shard,
                    cpu = setup.cpu,
                    "could not pin upload worker"
                );
            }
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(shard = setup.shard, error = %e, "cannot start upload runtime");
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            // Readiness reports a worker that is gone (ended, or panicked) until shutdown.
            struct Alive(Arc<ShardStats>);
            impl Drop for Alive {
                fn drop(&mut self) {
                    self.0.readiness.worker_ended();
                }
            }
            setup.stats.readiness.worker_started();
            let _alive = Alive(setup.stats.clone());
            local.block_on(&rt, run(setup));
        })
}

async fn run(s: WorkerSetup) {
    let max = s.config.upload.max_in_flight;
    let permits = Arc::new(Semaphore::new(max));
    let ctx = Rc::new(worker_ctx(&s));
    tokio::task::spawn_local(watch_sink(ctx.clone()));
    tokio::task::spawn_local(watch_deadline(ctx.clone(), s.shutdown.clone()));
    if s.replay_spill {
        spill::start_redelivery(&ctx, max);
    }
    let batcher = Batcher::new(ctx.clone(), permits.clone());
    drain_queue(&s.config, batcher, &s.rx).await;
    // The queue is closed and empty: wait for the uploads in flight.
    let _ = permits.acquire_many(max as u32).await;
    if ctx.stats.payloads_spilled.load(Relaxed) > 0 {
        spill::sync_dir_fs(ctx.spill.root());
    }
    tracing::debug!(shard = ctx.shard, "upload worker drained");
}

/// The worker's shared state, from its setup.
fn worker_ctx(s: &WorkerSetup) -> Ctx {
    let sink = match Sink::new(&s.config) {
        Ok(sink) => sink,
        Err(e) => {
            // Validation should make this unreachable; if not, every payload is spilled (the
            // check below fails readiness), never counted as stored.
            tracing::error!(shard = s.shard, error = %e, "cannot build sink; spilling everything");
            Sink::Unavailable(e.to_string())
        }
    };
    let fs_sync = match &sink {
        Sink::Fs(fs) if s.config.server.ack == crate::config::Ack::Durable => {
            Some(group_sync::GroupSync::new(fs.root()))
        }
        _ => None,
    };
    let schema = match (&s.config.batch.schema_file, s.config.batch.format) {
        (Some(path), crate::config::BatchFormat::Parquet) => match schema_file::load(path) {
            Ok(schema) => Some(schema),
            Err(e) => {
                // Validation read it at start; if it is gone now, columns are inferred.
                tracing::error!(shard = s.shard, error = %e, "batch.schema_file: cannot read it; inferring columns per object");
                None
            }
        },
        _ => None,
    };
    Ctx {
        sink,
        fs_sync,
        schema,
        kept_schemas: Default::default(),
        // Spill files are written without a per-file fsync (thousands of fsyncs would outlast
        // any drain deadline); one syncfs at the end of the drain makes them all durable.
        spill: FsSink::spill(&s.config.upload.spill_dir),
        stats: s.stats.clone(),
        budget: s.budget.clone(),
        keys: s.keys.clone(),
        config: s.config.clone(),
        shard: s.shard,
        spilling: Cell::new(false),
        deadline: Notify::new(),
        spilled: Notify::new(),
    }
}

/// At the drain deadline (the first signal's, or now at a second signal), stops trying the
/// store: what is left is spilled.
async fn watch_deadline(ctx: Rc<Ctx>, shutdown: Arc<crate::shutdown::Shutdown>) {
    use crate::shutdown::Phase;
    shutdown.reached(Phase::Draining).await;
    if let Some(at) = shutdown.deadline() {
        tokio::select! {
            _ = tokio::time::sleep_until(at.into()) => {}
            _ = shutdown.reached(Phase::Hurry) => {}
        }
    }
    ctx.spilling.set(true);
    ctx.deadline.notify_waiters();
    tracing::warn!(
        shard = ctx.shard,
        "drain deadline reached; spilling what is left"
    );
}

/// Builds the queue's jobs into objects until the queue is closed and empty, then closes the
/// last objects.
///
/// Wakes for the first job, takes every job queued since, then lets the queue fill for
/// `queue_poll_us` before looking again: a busy shard wakes its worker about a thousand
/// times a second instead of once per request (each wake is two context switches on the
/// shared core). An idle worker still wakes at once for the first job. An open object is
/// closed at its `max_age_ms` even if nothing else arrives.
async fn drain_queue(config: &Config, mut batcher: Batcher, rx: &flume::Receiver<Job>) {
    let window = Duration::from_micros(config.upload.queue_poll_us);
    let max_age = Duration::from_millis(config.batch.max_age_ms);
    loop {
        let first = match batcher.oldest().map(|t| t + max_age) {
            None => rx.recv_async().await,
            Some(due) => tokio::select! {
                job = rx.recv_async() => job,
                _ = tokio::time::sleep_until(due.into()) => {
                    batcher.close_aged(max_age).await;
                    continue;
                }
            },
        };
        let Ok(first) = first else { break };
        let mut next = Some(first);
        while let Some(job) = next {
            batcher.add(job).await;
            next = rx.try_recv().ok();
        }
        if !window.is_zero() {
            let mut until = Instant::now() + window;
            if let Some(first) = batcher.oldest() {
                until = until.min(first + max_age);
            }
            tokio::time::sleep_until(until.into()).await;
            batcher.close_aged(max_age).await;
        }
    }
    batcher.close_aged(Duration::ZERO).await;
}

/// Readiness of the sink: checks it at start (the shard is not ready until a check has
/// succeeded), and again with backoff whenever it is failing (its last upload failed, or the
/// last check), so readiness comes back without traffic once the store does.
async fn watch_sink(ctx: Rc<Ctx>) {
    let up = &ctx.config.upload;
    let mut attempt = 0u32;
    loop {
        let readiness = &ctx.stats.readiness;
        if readiness.sink_ok() {
            attempt = 0;
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        match ctx.sink.check().await {
            Ok(()) => {
                if readiness.sink_passed() {
                    tracing::info!(shard = ctx.shard, sink = %ctx.config.sink.kind, "sink check passed; ready");
                }
            }
            Err(e) => {
                attempt += 1;
                if readiness.sink_failed(&e.to_string()) || attempt == 1 {
                    tracing::error!(shard = ctx.shard, sink = %ctx.config.sink.kind, error = %e, "sink check failed; /readyz reports not ready, checking again with backoff");
                }
                tokio::time::sleep(
                    backoff(attempt, up.backoff_base_ms, up.backoff_max_ms)
                        .max(Duration::from_millis(up.backoff_base_ms / 2)),
                )
                .await;
            }
        }
    }
}
