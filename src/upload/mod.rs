//! Upload workers: one OS thread per shard (pinned, tokio current_thread, because rust-s3 needs
//! tokio) that drains the shard's queue into the sink, `upload.max_in_flight` PUTs at a time,
//! retrying transient failures with capped exponential backoff and full jitter.
#![forbid(unsafe_code)]

mod sink;

pub use sink::{Sink, UploadError};

use crate::config::Config;
use crate::keys::KeySpace;
use crate::metrics::{dec, inc, ShardStats};
use crate::queue::{Budget, Job};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Everything a worker needs, handed over at start-up.
#[derive(Debug)]
pub struct WorkerSetup {
    /// Shard index (for logs and thread names).
    pub shard: usize,
    /// CPU to pin the thread to.
    pub cpu: usize,
    /// The shard's queue.
    pub rx: flume::Receiver<Job>,
    /// The shard's memory budget, released as requests finish.
    pub budget: Arc<Budget>,
    /// The shard's counters.
    pub stats: Arc<ShardStats>,
    /// The shard's key space.
    pub keys: KeySpace,
    /// The configuration.
    pub config: Arc<Config>,
}

/// Delay before retry number `attempt` (1-based): full jitter over an exponential cap.
pub fn backoff(attempt: u32, base_ms: u64, max_ms: u64) -> Duration {
    let exp = base_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
    let cap = exp.min(max_ms).max(1);
    Duration::from_millis(fastrand::u64(0..=cap))
}

/// Starts the worker thread. It returns when the queue is closed (every sender dropped) and
/// everything queued has been uploaded or given up.
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
            local.block_on(&rt, run(setup));
        })
}

async fn run(s: WorkerSetup) {
    let sink = match Sink::new(&s.config.sink, &s.config.upload) {
        Ok(sink) => Rc::new(sink),
        Err(e) => {
            // Config validation should have caught this; keep the queue draining into errors
            // rather than leaving 200-answered payloads in limbo silently.
            tracing::error!(shard = s.shard, error = %e, "cannot build sink");
            s.stats.sink_failing.store(true, Relaxed);
            return;
        }
    };
    if let Err(e) = sink.check().await {
        s.stats.sink_failing.store(true, Relaxed);
        tracing::error!(shard = s.shard, sink = %s.config.sink.kind, error = %e, "sink check failed at start-up; /readyz reports not ready");
    }
    let max = s.config.upload.max_in_flight;
    let permits = Arc::new(Semaphore::new(max));
    let ctx = Rc::new(Ctx {
        sink,
        stats: s.stats,
        budget: s.budget,
        keys: s.keys,
        config: s.config,
        shard: s.shard,
    });
    while let Ok(job) = s.rx.recv_async().await {
        let job = Rc::new(job);
        let remaining = Rc::new(Cell::new(job.spans.len()));
        for i in 0..job.spans.len() {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let (ctx, job, remaining) = (ctx.clone(), job.clone(), remaining.clone());
            tokio::task::spawn_local(async move {
                ctx.upload(&job, i).await;
                drop(permit);
                remaining.set(remaining.get() - 1);
                if remaining.get() == 0 {
                    ctx.budget.release(job.spans.len(), job.body.len());
                }
            });
        }
    }
    // The queue is closed and empty: wait for the uploads still in flight.
    let _ = permits.acquire_many(max as u32).await;
    tracing::debug!(shard = s.shard, "upload worker drained");
}

struct Ctx {
    sink: Rc<Sink>,
    stats: Arc<ShardStats>,
    budget: Arc<Budget>,
    keys: KeySpace,
    config: Arc<Config>,
    shard: usize,
}

impl Ctx {
    /// Uploads payload `i` of `job`, retrying as configured; counts and logs the outcome.
    async fn upload(&self, job: &Job, i: usize) {
        let (start, end) = job.spans[i];
        let data = &job.body[start as usize..end as usize];
        let key = self
            .keys
            .key(job.received_secs, job.first_seq + i as u64, "json");
        let up = &self.config.upload;
        inc(&self.stats.uploads_in_flight, 1);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let t0 = Instant::now();
            match self.sink.put(&key, data, "application/json").await {
                Ok(()) => {
                    self.stats.observe_upload(t0.elapsed().as_secs_f64());
                    inc(&self.stats.payloads_uploaded, 1);
                    inc(&self.stats.bytes_out, data.len() as u64);
                    if self.stats.sink_failing.swap(false, Relaxed) {
                        tracing::info!(shard = self.shard, "sink recovered");
                    }
                    break;
                }
                Err(e) if e.retryable() && (up.max_attempts == 0 || attempt < up.max_attempts) => {
                    inc(&self.stats.upload_retries, 1);
                    if !self.stats.sink_failing.swap(true, Relaxed) {
                        tracing::warn!(shard = self.shard, error = %e, "sink failing; retrying with backoff");
                    }
                    tokio::time::sleep(backoff(attempt, up.backoff_base_ms, up.backoff_max_ms))
                        .await;
                }
                Err(e) => {
                    self.stats.sink_failing.store(true, Relaxed);
                    inc(&self.stats.payloads_failed, 1);
                    tracing::error!(shard = self.shard, key = %key, attempts = attempt, error = %e, "payload not stored");
                    break;
                }
            }
        }
        dec(&self.stats.uploads_in_flight, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        for attempt in 1..40 {
            let d = backoff(attempt, 50, 5_000);
            assert!(d <= Duration::from_millis(5_000));
        }
        for _ in 0..100 {
            assert!(backoff(1, 50, 5_000) <= Duration::from_millis(50));
            assert!(backoff(3, 50, 5_000) <= Duration::from_millis(200));
        }
        let distinct: std::collections::HashSet<_> =
            (0..50).map(|_| backoff(10, 50, 5_000)).collect();
        assert!(distinct.len() > 10, "full jitter spreads retries");
    }
}
