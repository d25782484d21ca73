//! The spill directory: objects not stored at the drain deadline, or refused by the store,
//! are written there; worker 0 uploads them while running (as soon as the store accepts
//! again) and at the next start, deleting each once stored.

use super::backoff::refused_backoff;
use super::delivery::Ctx;
use super::{payloads_in, ObjectFormat, SPILL_SUFFIX};
use crate::metrics::inc;
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// How often an idle worker 0 looks for files the other workers spilled (its own spills wake
/// it at once).
const IDLE_LOOK: Duration = Duration::from_secs(2);

/// Starts delivering the spill directory (worker 0), beside the queue, not before it, and
/// with in-flight slots of its own (a quarter of `max_in_flight`, at least one): the shard's
/// own requests are served meanwhile, however slowly the spilled objects go.
pub(super) fn start_redelivery(ctx: &Rc<Ctx>, max_in_flight: usize) {
    if let super::Sink::Discard = ctx.sink {
        // Nothing is stored: delivering would delete the files and lose their payloads.
        if !spilled_files(ctx.spill.root()).is_empty() {
            tracing::warn!(dir = %ctx.spill.root().display(), "sink discard: payloads spilled by an earlier run are left for a run with a real sink");
        }
        return;
    }
    let slots = (max_in_flight / 4).max(1);
    tokio::task::spawn_local(redeliver(ctx.clone(), slots));
}

/// Delivers the spill directory in passes until the drain deadline: after a pass that
/// stored everything, waits for a spill (or [`IDLE_LOOK`]); after one the store refused,
/// waits [`refused_backoff`] and tries again. Publishes what waits there (files, bytes, the
/// oldest one's time) for `/metrics` and `/readyz`.
async fn redeliver(ctx: Rc<Ctx>, slots: usize) {
    let permits = Arc::new(Semaphore::new(slots));
    let mut refusals = 0u32;
    let mut first = true;
    while !ctx.spilling.get() {
        let files = spilled_files(ctx.spill.root());
        publish(&ctx, &files);
        let refused = !files.is_empty() && !pass(&ctx, &permits, slots, files, first).await;
        first = false;
        publish(&ctx, &spilled_files(ctx.spill.root()));
        let pause = if refused {
            refusals += 1;
            refused_backoff(refusals, ctx.config.upload.refused_backoff_max_ms)
        } else {
            refusals = 0;
            IDLE_LOOK
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = ctx.spilled.notified(), if !refused => {}
            _ = ctx.deadline.notified() => {}
        }
    }
}

/// The spill directory's gauges.
fn publish(ctx: &Ctx, files: &[PathBuf]) {
    let (mut bytes, mut oldest) = (0, u64::MAX);
    for f in files {
        if let Ok(m) = std::fs::metadata(f) {
            bytes += m.len();
            let t = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            oldest = oldest.min(t.map_or(u64::MAX, |d| d.as_secs()));
        }
    }
    let st = &ctx.stats;
    st.spill_files.store(files.len() as u64, Relaxed);
    st.spill_bytes.store(bytes, Relaxed);
    st.spill_oldest_unix
        .store(if oldest == u64::MAX { 0 } else { oldest }, Relaxed);
}

/// Uploads `files` (`{key}.spill`) and deletes each once stored; stops starting new ones at
/// the first the store refuses (the rest would be refused too). Each file's bytes are
/// reserved in the shard's queue budget before it is read, so this holds no more memory than
/// the queue may. Returns false if the store refused one.
async fn pass(
    ctx: &Rc<Ctx>,
    permits: &Arc<Semaphore>,
    slots: usize,
    files: Vec<PathBuf>,
    first: bool,
) -> bool {
    let root = ctx.spill.root().to_path_buf();
    if first {
        tracing::info!(files = files.len(), dir = %root.display(), "uploading payloads spilled by an earlier run");
    }
    let refused = Rc::new(Cell::new(false));
    for path in files {
        if refused.get() || ctx.spilling.get() {
            break;
        }
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
        ctx.budget.reserve_waiting(0, want).await;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            ctx.budget.release(0, want);
            break;
        };
        let (ctx, refused) = (ctx.clone(), refused.clone());
        tokio::task::spawn_local(async move {
            match std::fs::read(&path) {
                Ok(data) => {
                    let format = ObjectFormat::from_key(&key);
                    if ctx.store(&key, &data, format, false).await.is_ok() {
                        let payloads = payloads_in(&data, format) as u64;
                        inc(&ctx.stats.payloads_uploaded, payloads);
                        if let Err(e) = std::fs::remove_file(&path) {
                            tracing::warn!(file = %path.display(), error = %e, "stored, but cannot delete the spilled copy");
                        }
                    } else {
                        // Kept where it is, for the next pass.
                        refused.set(true);
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
    // Every upload of this pass has ended.
    if let Ok(all) = permits.acquire_many(slots as u32).await {
        drop(all);
    }
    !refused.get()
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

/// Flushes the file system holding `dir` (every spilled file and directory entry at once).
pub(super) fn sync_dir_fs(dir: &Path) {
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
