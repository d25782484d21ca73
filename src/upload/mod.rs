//! Upload workers: one OS thread per shard (pinned, tokio current_thread, because rust-s3 needs
//! tokio) that drains the shard's queue into objects (one per payload, or NDJSON batches; see
//! `batch`) and stores them, `upload.max_in_flight` at a time, retrying transient failures with
//! capped exponential backoff and full jitter. A retried object keeps its key, so a retry after
//! a lost answer overwrites rather than duplicates.
//!
//! Nothing answered `200` is dropped: a payload the store refuses for good, or one still
//! undelivered at the drain deadline after SIGTERM, is written to the spill directory (fsynced,
//! named by its key), and worker 0 uploads the spill directory first at the next start.
#![forbid(unsafe_code)]

mod batch;
mod group_sync;
mod sink;

pub use batch::{payloads_in, ObjectBuilder, ObjectFormat};
pub use sink::{FsSink, Sink, UploadError, SPILL_SUFFIX};

use crate::config::Config;
use crate::keys::KeySpace;
use crate::metrics::{dec, inc, ShardStats};
use crate::queue::{Budget, Delivery, Job, Spooled};
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
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
    /// Receives the drain deadline when shutdown starts.
    pub drain: flume::Receiver<Instant>,
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

/// Delay before retry number `attempt` (1-based): full jitter over an exponential cap.
pub fn backoff(attempt: u32, base_ms: u64, max_ms: u64) -> Duration {
    let exp = base_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
    let cap = exp.min(max_ms).max(1);
    Duration::from_millis(fastrand::u64(0..=cap))
}

/// Delay before retry number `attempt` (1-based) after the store throttled the last attempt
/// (`429`, `503`, `SlowDown`): the store asked for fewer requests, so this waits as if two
/// attempts further along, with twice the cap (`2 × max_ms`), and with equal jitter instead of
/// full jitter (at least half of that cap), so a throttled attempt is never retried at once:
/// the first retry waits between `2 × base_ms` and `4 × base_ms`, where an ordinary one waits
/// up to `base_ms`.
pub fn throttled_backoff(attempt: u32, base_ms: u64, max_ms: u64) -> Duration {
    let exp = base_ms.saturating_mul(1u64 << attempt.saturating_add(1).min(20));
    let cap = exp.min(max_ms.saturating_mul(2)).max(2);
    let floor = cap / 2;
    Duration::from_millis(floor + fastrand::u64(0..=cap - floor))
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
                    self.0.worker_alive.store(false, Relaxed);
                }
            }
            setup.stats.worker_alive.store(true, Relaxed);
            let _alive = Alive(setup.stats.clone());
            local.block_on(&rt, run(setup));
        })
}

/// What became of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// In the store.
    Stored,
    /// Not stored: kept for a later attempt, in the spill directory or (a spooled request's
    /// object) in the durable spool, or lost when neither was possible (counted in
    /// `payloads_failed`). `refused`: the store refused it for good, a retry cannot help.
    NotStored { refused: bool },
}

/// One request's share of the worker's attention: its budget is released and its client told
/// once every object holding one of its payloads is stored or spilled.
struct Request {
    payloads: usize,
    bytes: usize,
    /// Objects still holding some of its payloads, plus one while its payloads are being added.
    pending: Cell<usize>,
    outcome: Cell<Delivery>,
    ack: RefCell<Option<tokio::sync::oneshot::Sender<Delivery>>>,
    /// Its record in the durable spool, released once everything is stored.
    spooled: Option<Spooled>,
}

/// How an object's key is made.
#[derive(Debug, Clone)]
enum Name {
    /// From the sequence number of its first payload (memory-queued requests).
    Seq(u64),
    /// From its request's spool record and the index of its first payload in the request, so
    /// a replay after a crash builds the same objects under the same keys.
    Spooled {
        segment: u64,
        offset: u64,
        index: usize,
        /// The key space of the run that wrote the record, if not this one's.
        keys: Option<Rc<KeySpace>>,
    },
}

/// The object being filled, and the requests whose payloads it holds.
struct Open {
    builder: ObjectBuilder,
    name: Name,
    /// The tenant all its payloads belong to (an object never mixes tenants).
    tenant: Option<crate::auth::Tenant>,
    received_secs: u64,
    opened: Instant,
    members: Vec<Rc<Request>>,
}

struct Ctx {
    sink: Sink,
    /// The fs sink under `ack = "durable"`: objects are synced (grouped) before they count as
    /// stored, since storing one releases its spool record.
    fs_sync: Option<group_sync::GroupSync>,
    spill: FsSink,
    stats: Arc<ShardStats>,
    budget: Arc<Budget>,
    keys: KeySpace,
    config: Arc<Config>,
    shard: usize,
    /// Set at the drain deadline: stop trying the store, spill instead.
    spilling: Cell<bool>,
    deadline: Notify,
}

async fn run(s: WorkerSetup) {
    let sink = match Sink::new(&s.config.sink, &s.config.upload, &s.config.batch) {
        Ok(sink) => sink,
        Err(e) => {
            // Validation should make this unreachable; if not, every payload is spilled (the
            // check below fails readiness), never counted as stored.
            tracing::error!(shard = s.shard, error = %e, "cannot build sink; spilling everything");
            Sink::Unavailable(e.to_string())
        }
    };
    let max = s.config.upload.max_in_flight;
    let permits = Arc::new(Semaphore::new(max));
    let fs_sync = match &sink {
        Sink::Fs(fs) if s.config.server.ack == crate::config::Ack::Durable => {
            Some(group_sync::GroupSync::new(fs.root()))
        }
        _ => None,
    };
    let ctx = Rc::new(Ctx {
        sink,
        fs_sync,
        // Spill files are written without a per-file fsync (thousands of fsyncs would outlast
        // any drain deadline); one syncfs at the end of the drain makes them all durable.
        spill: FsSink::spill(&s.config.upload.spill_dir),
        stats: s.stats,
        budget: s.budget,
        keys: s.keys,
        config: s.config,
        shard: s.shard,
        spilling: Cell::new(false),
        deadline: Notify::new(),
    });
    tokio::task::spawn_local(watch_sink(ctx.clone()));
    let drain_ctx = ctx.clone();
    let drain_rx = s.drain.clone();
    tokio::task::spawn_local(async move {
        if let Ok(mut at) = drain_rx.recv_async().await {
            // An earlier deadline (a second signal) may follow the first.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => break,
                    next = drain_rx.recv_async() => match next {
                        Ok(sooner) => at = at.min(sooner),
                        Err(_) => {
                            tokio::time::sleep_until(at.into()).await;
                            break;
                        }
                    },
                }
            }
            drain_ctx.spilling.set(true);
            drain_ctx.deadline.notify_waiters();
            tracing::warn!(
                shard = drain_ctx.shard,
                "drain deadline reached; spilling what is left"
            );
        }
    });
    if s.replay_spill {
        if let Sink::Discard = ctx.sink {
            // Nothing is stored: replaying would delete the files and lose their payloads.
            if !spilled_files(ctx.spill.root()).is_empty() {
                tracing::warn!(dir = %ctx.spill.root().display(), "sink discard: payloads spilled by an earlier run are left for a run with a real sink");
            }
        } else {
            // Beside the queue, not before it, and with in-flight slots of its own (a quarter
            // of max_in_flight, at least one): the shard's own requests are served meanwhile,
            // however slowly the spilled objects go.
            let slots = Arc::new(Semaphore::new((max / 4).max(1)));
            tokio::task::spawn_local(replay(ctx.clone(), slots));
        }
    }
    // Wake for the first job, take every job queued since, then let the queue fill for
    // `queue_poll_us` before looking again: a busy shard wakes its worker about a thousand
    // times a second instead of once per request (each wake is two context switches on the
    // shared core). An idle worker still wakes at once for the first job. An open object is
    // closed at its `max_age_ms` even if nothing else arrives.
    let window = Duration::from_micros(ctx.config.upload.queue_poll_us);
    let max_age = Duration::from_millis(ctx.config.batch.max_age_ms);
    // The objects being filled: one per tenant that has payloads waiting (a batch holds one
    // tenant's payloads only), a single one without `[auth]` tenants.
    let mut opens: Vec<Open> = Vec::new();
    loop {
        let first = match oldest(&opens).map(|t| t + max_age) {
            None => s.rx.recv_async().await,
            Some(due) => tokio::select! {
                job = s.rx.recv_async() => job,
                _ = tokio::time::sleep_until(due.into()) => {
                    close_aged(&ctx, &permits, &mut opens, max_age).await;
                    continue;
                }
            },
        };
        let Ok(first) = first else { break };
        let mut next = Some(first);
        while let Some(job) = next {
            if job.spooled.is_some() {
                // A spooled request gets objects of its own, named by its record: the same
                // objects and keys however often it is replayed.
                let mut own = None;
                add(&ctx, &permits, &mut own, job).await;
                close(&ctx, &permits, &mut own).await;
            } else {
                let mut open = opens
                    .iter()
                    .position(|o| o.tenant == job.tenant)
                    .map(|i| opens.swap_remove(i));
                add(&ctx, &permits, &mut open, job).await;
                opens.extend(open);
            }
            next = s.rx.try_recv().ok();
        }
        if !window.is_zero() {
            let mut until = Instant::now() + window;
            if let Some(first) = oldest(&opens) {
                until = until.min(first + max_age);
            }
            tokio::time::sleep_until(until.into()).await;
            close_aged(&ctx, &permits, &mut opens, max_age).await;
        }
    }
    // The queue is closed and empty: close the last objects, wait for the uploads in flight.
    close_aged(&ctx, &permits, &mut opens, Duration::ZERO).await;
    let _ = permits.acquire_many(max as u32).await;
    if ctx.stats.payloads_spilled.load(Relaxed) > 0 {
        sync_dir_fs(ctx.spill.root());
    }
    tracing::debug!(shard = ctx.shard, "upload worker drained");
}

/// When the oldest of the objects being filled was opened.
fn oldest(opens: &[Open]) -> Option<Instant> {
    opens.iter().map(|o| o.opened).min()
}

/// Closes every object being filled that has been open for `max_age` or longer.
async fn close_aged(
    ctx: &Rc<Ctx>,
    permits: &Arc<Semaphore>,
    opens: &mut Vec<Open>,
    max_age: Duration,
) {
    let mut i = 0;
    while i < opens.len() {
        if opens[i].opened.elapsed() >= max_age {
            let mut o = Some(opens.swap_remove(i));
            close(ctx, permits, &mut o).await;
        } else {
            i += 1;
        }
    }
}

/// Readiness of the sink: checks it at start (the shard is not ready until a check has
/// succeeded), and again with backoff whenever it is failing (its last upload failed, or the
/// last check), so readiness comes back without traffic once the store does.
async fn watch_sink(ctx: Rc<Ctx>) {
    let up = &ctx.config.upload;
    let mut attempt = 0u32;
    loop {
        let stats = &ctx.stats;
        if stats.sink_checked.load(Relaxed) && !stats.sink_failing.load(Relaxed) {
            attempt = 0;
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        match ctx.sink.check().await {
            Ok(()) => {
                if stats.sink_failing.swap(false, Relaxed) || !stats.sink_checked.load(Relaxed) {
                    tracing::info!(shard = ctx.shard, sink = %ctx.config.sink.kind, "sink check passed; ready");
                }
                stats.sink_checked.store(true, Relaxed);
            }
            Err(e) => {
                attempt += 1;
                if attempt == 1 || !stats.sink_failing.load(Relaxed) {
                    tracing::error!(shard = ctx.shard, sink = %ctx.config.sink.kind, error = %e, "sink check failed; /readyz reports not ready, checking again with backoff");
                }
                stats.set_sink_error(&e.to_string());
                stats.sink_failing.store(true, Relaxed);
                tokio::time::sleep(
                    backoff(attempt, up.backoff_base_ms, up.backoff_max_ms)
                        .max(Duration::from_millis(up.backoff_base_ms / 2)),
                )
                .await;
            }
        }
    }
}

/// Flushes the file system holding `dir` (every spilled file and directory entry at once).
fn sync_dir_fs(dir: &Path) {
    use std::os::fd::AsRawFd;
    match std::fs::File::open(dir) {
        Ok(f) => {
            if let Err(e) = nix::unistd::syncfs(f.as_raw_fd()) {
                tracing::error!(dir = %dir.display(), error = %e, "syncfs of the spill directory failed");
            }
        }
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "cannot open the spill directory")
        }
    }
}

/// Adds one request's payloads to the open object, closing objects as they fill.
async fn add(ctx: &Rc<Ctx>, permits: &Arc<Semaphore>, open: &mut Option<Open>, job: Job) {
    if let Sink::Discard = ctx.sink {
        // Front-end benchmarks: count and drop the whole request, with no object, key or
        // timer (nothing is stored, so there is nothing to name or time).
        let n = job.spans.len();
        inc(&ctx.stats.payloads_uploaded, n as u64);
        let bytes: u64 = job.spans.iter().map(|&(a, b)| u64::from(b - a)).sum();
        inc(&ctx.stats.bytes_out, bytes);
        ctx.budget.release(n, job.body.len());
        if let Some(ack) = job.ack {
            let _ = ack.send(Delivery::Stored);
        }
        if let Some(sp) = job.spooled {
            sp.releaser.release(sp.id);
        }
        return;
    }
    // A replayed request is built into objects as the run that accepted it built them.
    let naming = job.spooled.as_ref().and_then(|s| s.naming.clone());
    let batch = naming.as_ref().map_or(&ctx.config.batch, |n| &n.batch);
    let keys = naming
        .as_ref()
        .map(|n| Rc::new(KeySpace::new(&n.prefix, &n.instance, ctx.shard, 0)));
    let req = Rc::new(Request {
        payloads: job.spans.len(),
        bytes: job.body.len(),
        pending: Cell::new(1),
        outcome: Cell::new(Delivery::Stored),
        ack: RefCell::new(job.ack),
        spooled: job.spooled,
    });
    for (i, &(start, end)) in job.spans.iter().enumerate() {
        let payload = &job.body[start as usize..end as usize];
        if let Some(o) = open.as_ref() {
            if o.builder.payloads() > 0
                && o.builder.raw_bytes() + o.builder.cost(payload) > batch.max_bytes
            {
                close(ctx, permits, open).await;
            }
        }
        if open.is_none() {
            match ObjectBuilder::new(batch) {
                Ok(builder) => {
                    let name = match &req.spooled {
                        Some(sp) => Name::Spooled {
                            segment: sp.id.segment,
                            offset: sp.id.offset,
                            index: i,
                            keys: keys.clone(),
                        },
                        None => Name::Seq(job.first_seq + i as u64),
                    };
                    *open = Some(Open {
                        builder,
                        name,
                        tenant: job.tenant.clone(),
                        received_secs: job.received_secs,
                        opened: Instant::now(),
                        members: Vec::new(),
                    })
                }
                Err(e) => {
                    // Only the compressor's set-up can fail here (memory); say so loudly.
                    tracing::error!(shard = ctx.shard, error = %e, "cannot start an object; payload LOST");
                    inc(&ctx.stats.payloads_failed, 1);
                    req.outcome.set(Delivery::Refused);
                    continue;
                }
            }
        }
        let Some(o) = open.as_mut() else { continue };
        if let Err(e) = o.builder.push(payload) {
            tracing::error!(shard = ctx.shard, error = %e, "cannot add to an object; payload LOST");
            inc(&ctx.stats.payloads_failed, 1);
            req.outcome.set(Delivery::Refused);
            continue;
        }
        if !o.members.last().is_some_and(|m| Rc::ptr_eq(m, &req)) {
            req.pending.set(req.pending.get() + 1);
            o.members.push(req.clone());
        }
        if o.builder.payloads() >= batch.max_payloads || o.builder.raw_bytes() >= batch.max_bytes {
            close(ctx, permits, open).await;
        }
    }
    ctx.finish(&req, None);
}

/// Closes the open object (if any) and starts its upload once an in-flight permit is free.
async fn close(ctx: &Rc<Ctx>, permits: &Arc<Semaphore>, open: &mut Option<Open>) {
    let Some(o) = open.take() else { return };
    let payloads = o.builder.payloads();
    let (data, format) = match o.builder.finish() {
        Ok(done) => done,
        Err(e) => {
            tracing::error!(shard = ctx.shard, payloads, error = %e, "cannot finish an object; its payloads are LOST");
            inc(&ctx.stats.payloads_failed, payloads as u64);
            for m in &o.members {
                ctx.finish(m, Some(Outcome::NotStored { refused: true }));
            }
            return;
        }
    };
    let key = match &o.name {
        Name::Seq(seq) => ctx
            .keys
            .key(o.tenant.as_deref(), o.received_secs, *seq, format.ext),
        Name::Spooled {
            segment,
            offset,
            index,
            keys,
        } => keys.as_deref().unwrap_or(&ctx.keys).spooled_key(
            o.tenant.as_deref(),
            o.received_secs,
            *segment,
            *offset,
            *index,
            format.ext,
        ),
    };
    let spooled = matches!(o.name, Name::Spooled { .. });
    let Ok(permit) = permits.clone().acquire_owned().await else {
        return;
    };
    let ctx = ctx.clone();
    tokio::task::spawn_local(async move {
        let outcome = ctx.deliver(&key, &data, format, payloads, spooled).await;
        drop(permit);
        for m in &o.members {
            ctx.finish(m, Some(outcome));
        }
    });
}

/// Uploads every file corepost spilled in an earlier run (`{key}.spill`) and deletes it once
/// stored. Each file's bytes are reserved in the shard's queue budget before it is read, so
/// replay holds no more memory than the queue may.
async fn replay(ctx: Rc<Ctx>, permits: Arc<Semaphore>) {
    let root = ctx.spill.root().to_path_buf();
    let files = spilled_files(&root);
    if files.is_empty() {
        return;
    }
    tracing::info!(files = files.len(), dir = %root.display(), "uploading payloads spilled by an earlier run");
    for path in files {
        let Some(key) = path
            .strip_prefix(&root)
            .ok()
            .and_then(|k| k.to_str())
            .and_then(|k| k.strip_suffix(SPILL_SUFFIX))
            .map(str::to_owned)
        else {
            continue;
        };
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len() as usize,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot read spilled payload");
                continue;
            }
        };
        // A file larger than the whole budget is read alone (the budget is then empty).
        let want = size.min(ctx.config.queue.max_bytes);
        while !ctx.budget.try_reserve(0, want) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            ctx.budget.release(0, want);
            break;
        };
        let ctx = ctx.clone();
        tokio::task::spawn_local(async move {
            match std::fs::read(&path) {
                Ok(data) => {
                    let format = ObjectFormat::from_key(&key);
                    let payloads = payloads_in(&data, format);
                    if let Outcome::Stored = ctx.deliver(&key, &data, format, payloads, false).await
                    {
                        if let Err(e) = std::fs::remove_file(&path) {
                            tracing::warn!(file = %path.display(), error = %e, "stored, but cannot delete the spilled copy");
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "cannot read spilled payload")
                }
            }
            ctx.budget.release(0, want);
            drop(permit);
        });
    }
}

/// Every file corepost spilled under `root` (`*.spill`, not in-progress dot-files), in key
/// order. Anything else there is not corepost's and is left alone.
pub fn spilled_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in rd.flatten() {
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t)
                    if t.is_file() && !hidden && path.to_string_lossy().ends_with(SPILL_SUFFIX) =>
                {
                    out.push(path)
                }
                _ => {}
            }
        }
    }
    out.sort();
    out
}

impl Ctx {
    /// Notes that one object holding some of `req`'s payloads is done (`None`: all its
    /// payloads have been added); the last one releases the request's budget and answers it.
    fn finish(&self, req: &Request, outcome: Option<Outcome>) {
        match outcome {
            Some(Outcome::NotStored { refused: true }) => req.outcome.set(Delivery::Refused),
            Some(Outcome::NotStored { refused: false })
                if req.outcome.get() == Delivery::Stored =>
            {
                req.outcome.set(Delivery::Deferred)
            }
            _ => {}
        }
        req.pending.set(req.pending.get() - 1);
        if req.pending.get() == 0 {
            self.budget.release(req.payloads, req.bytes);
            if let Some(sp) = &req.spooled {
                if req.outcome.get() == Delivery::Stored {
                    crate::crash_point!("upload::stored::before_release");
                    sp.releaser.release(sp.id);
                }
            }
            if let Some(ack) = req.ack.borrow_mut().take() {
                // The client may have given up waiting; nothing to do then.
                let _ = ack.send(req.outcome.get());
            }
        }
    }

    /// Stores one object of `payloads` payloads, retrying as configured; what cannot be
    /// stored is spilled, unless it comes from the durable spool (`spooled`), which keeps it
    /// for the next start. Counts and logs the outcome.
    async fn deliver(
        &self,
        key: &str,
        data: &[u8],
        format: ObjectFormat,
        payloads: usize,
        spooled: bool,
    ) -> Outcome {
        let n = payloads as u64;
        inc(&self.stats.uploads_in_flight, 1);
        let outcome = match self.store(key, data, format).await {
            Ok(()) => {
                inc(&self.stats.payloads_uploaded, n);
                Outcome::Stored
            }
            Err(e) if spooled => {
                inc(&self.stats.payloads_deferred, n);
                if !self.spilling.get() {
                    tracing::error!(shard = self.shard, key, payloads, error = %e, "object not stored; its request stays in the durable spool for the next start");
                }
                Outcome::NotStored {
                    refused: !e.retryable(),
                }
            }
            Err(e) => {
                let permanent = !e.retryable();
                if let Err(spill_err) = self.spill.put(key, data) {
                    inc(&self.stats.payloads_failed, n);
                    tracing::error!(shard = self.shard, key, payloads, error = %e, spill_error = %spill_err, "payloads LOST: not stored and not spilled");
                } else {
                    inc(&self.stats.payloads_spilled, n);
                    if !self.spilling.get() {
                        tracing::error!(shard = self.shard, key, payloads, error = %e, "object not stored; kept in the spill directory");
                    }
                }
                Outcome::NotStored { refused: permanent }
            }
        };
        dec(&self.stats.uploads_in_flight, 1);
        outcome
    }

    /// Stores one object; with the fs sink under `ack = "durable"`, also waits for the group
    /// sync that makes it survive a power cut.
    async fn put_synced(
        &self,
        key: &str,
        data: &[u8],
        format: ObjectFormat,
    ) -> Result<(), UploadError> {
        self.sink
            .put(key, data, format, &self.stats.put_requests)
            .await?;
        if let Some(g) = &self.fs_sync {
            g.sync()
                .await
                .map_err(|e| UploadError::Transient(e.to_string()))?;
            self.stats.sink_syncs.store(g.syncs.get(), Relaxed);
        }
        Ok(())
    }

    /// Tries the store until it succeeds, a permanent error, `max_attempts`, or the drain
    /// deadline. Retries wait [`backoff`], or the longer [`throttled_backoff`] when the store
    /// throttled the attempt (counted in `corepost_upload_throttled_total`).
    async fn store(&self, key: &str, data: &[u8], format: ObjectFormat) -> Result<(), UploadError> {
        let up = &self.config.upload;
        let mut attempt = 0u32;
        loop {
            if self.spilling.get() {
                return Err(UploadError::Transient("drain deadline reached".into()));
            }
            attempt += 1;
            let t0 = Instant::now();
            let result = tokio::select! {
                r = self.put_synced(key, data, format) => r,
                _ = self.deadline.notified() => Err(UploadError::Transient("drain deadline reached".into())),
            };
            if result.as_ref().is_err_and(UploadError::throttled) {
                inc(&self.stats.upload_throttled, 1);
            }
            match result {
                Ok(()) => {
                    self.stats.observe_upload(t0.elapsed().as_secs_f64());
                    inc(&self.stats.objects_uploaded, 1);
                    inc(&self.stats.bytes_out, data.len() as u64);
                    if self.stats.sink_failing.swap(false, Relaxed) {
                        tracing::info!(shard = self.shard, "sink recovered");
                    }
                    return Ok(());
                }
                Err(e) if e.retryable() && (up.max_attempts == 0 || attempt < up.max_attempts) => {
                    if self.spilling.get() {
                        return Err(e);
                    }
                    inc(&self.stats.upload_retries, 1);
                    self.stats.set_sink_error(&e.to_string());
                    if !self.stats.sink_failing.swap(true, Relaxed) {
                        tracing::warn!(shard = self.shard, error = %e, "sink failing; retrying with backoff");
                    }
                    let pause = if e.throttled() {
                        throttled_backoff(attempt, up.backoff_base_ms, up.backoff_max_ms)
                    } else {
                        backoff(attempt, up.backoff_base_ms, up.backoff_max_ms)
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.deadline.notified() => {}
                    }
                }
                Err(e) => {
                    self.stats.set_sink_error(&e.to_string());
                    self.stats.sink_failing.store(true, Relaxed);
                    return Err(e);
                }
            }
        }
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

    #[test]
    fn throttled_backoff_waits_longer_and_never_zero() {
        for _ in 0..100 {
            let d = throttled_backoff(1, 50, 5_000);
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(200));
            let d = throttled_backoff(3, 50, 5_000);
            assert!(d >= Duration::from_millis(400) && d <= Duration::from_millis(800));
        }
        for attempt in 1..40 {
            let d = throttled_backoff(attempt, 50, 5_000);
            assert!(d <= Duration::from_millis(10_000), "cap doubled: {d:?}");
            assert!(
                d >= backoff(1, 50, 50),
                "never below the first ordinary pause"
            );
        }
        assert!(throttled_backoff(30, 50, 5_000) >= Duration::from_millis(5_000));
        assert!(throttled_backoff(1, 1, 1) >= Duration::from_millis(1));
    }
}
