//! The spill directory: objects not stored at the drain deadline (or refused) are written
//! there, and uploaded again by worker 0 at the next start.
#![forbid(unsafe_code)]

use super::delivery::{Ctx, Outcome};
use super::{payloads_in, ObjectFormat, SPILL_SUFFIX};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Starts uploading what an earlier run spilled (worker 0), beside the queue, not before it,
/// and with in-flight slots of its own (a quarter of `max_in_flight`, at least one): the
/// shard's own requests are served meanwhile, however slowly the spilled objects go.
pub(super) fn start_replay(ctx: &Rc<Ctx>, max_in_flight: usize) {
    if let super::Sink::Discard = ctx.sink {
        // Nothing is stored: replaying would delete the files and lose their payloads.
        if !spilled_files(ctx.spill.root()).is_empty() {
            tracing::warn!(dir = %ctx.spill.root().display(), "sink discard: payloads spilled by an earlier run are left for a run with a real sink");
        }
        return;
    }
    let slots = Arc::new(Semaphore::new((max_in_flight / 4).max(1)));
    tokio::task::spawn_local(replay(ctx.clone(), slots));
}

/// Uploads every file corepost spilled in an earlier run (`{key}.spill`) and deletes it once
/// stored. Each file's bytes are reserved in the shard's queue budget before it is read, so
/// replay holds no more memory than the queue may.
pub(super) async fn replay(ctx: Rc<Ctx>, permits: Arc<Semaphore>) {
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
        ctx.budget.reserve_waiting(0, want).await;
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
