//! Group sync of a directory's file system, for the fs sink under `ack = "durable"`: a spool
//! record may be released only once the files holding its payloads survive a power cut, and
//! one `syncfs` per group of objects (files and directory entries at once) costs far less than
//! an `fsync` of every file and directory.

use std::cell::Cell;
use std::path::PathBuf;
use tokio::sync::Notify;

/// Callers that wrote files ask for a sync; one `syncfs` (on tokio's blocking pool) covers
/// every caller that asked before it started. Lives on one worker's `LocalSet`.
#[derive(Debug)]
pub struct GroupSync {
    dir: PathBuf,
    /// Tickets handed out: one per caller.
    asked: Cell<u64>,
    /// Every ticket up to this one is covered by a finished sync.
    done: Cell<u64>,
    /// Ticket ranges of recent syncs that failed, for the callers they covered.
    failed: std::cell::RefCell<std::collections::VecDeque<(u64, u64)>>,
    running: Cell<bool>,
    finished: Notify,
    /// Syncs issued, for the metrics.
    pub syncs: Cell<u64>,
}

impl GroupSync {
    /// A group sync of the file system holding `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            asked: Cell::new(0),
            done: Cell::new(0),
            failed: Default::default(),
            running: Cell::new(false),
            finished: Notify::new(),
            syncs: Cell::new(0),
        }
    }

    /// Resolves once a sync that started after this call has finished: every file written
    /// before the call is then on stable storage.
    pub async fn sync(&self) -> std::io::Result<()> {
        let ticket = self.asked.get() + 1;
        self.asked.set(ticket);
        loop {
            if self.done.get() >= ticket {
                let failed = self
                    .failed
                    .borrow()
                    .iter()
                    .any(|&(a, b)| (a..=b).contains(&ticket));
                return if failed {
                    Err(std::io::Error::other(format!(
                        "syncfs of {} failed",
                        self.dir.display()
                    )))
                } else {
                    Ok(())
                };
            }
            if !self.running.get() {
                self.running.set(true);
                let upto = self.asked.get();
                let dir = self.dir.clone();
                let result = tokio::task::spawn_blocking(move || syncfs(&dir)).await;
                self.syncs.set(self.syncs.get() + 1);
                let ok = matches!(result, Ok(Ok(())));
                if let Ok(Err(e)) = &result {
                    tracing::error!(dir = %self.dir.display(), error = %e, "syncfs failed");
                }
                if !ok {
                    let mut f = self.failed.borrow_mut();
                    f.push_back((self.done.get() + 1, upto));
                    // Its waiters are woken below and read it before many more syncs end.
                    if f.len() > 64 {
                        f.pop_front();
                    }
                }
                self.done.set(upto);
                self.running.set(false);
                self.finished.notify_waiters();
                continue;
            }
            // Single-threaded: nothing runs between this check and the first poll below, so
            // the wake-up of the running sync cannot be missed.
            self.finished.notified().await;
        }
    }
}

fn syncfs(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(dir)?;
    nix::unistd::syncfs(f.as_raw_fd()).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn concurrent_callers_share_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let g = Rc::new(GroupSync::new(dir.path()));
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let tasks: Vec<_> = (0..50)
                .map(|_| {
                    let g = g.clone();
                    tokio::task::spawn_local(async move { g.sync().await })
                })
                .collect();
            for t in tasks {
                t.await.unwrap().unwrap();
            }
        });
        let n = g.syncs.get();
        assert!((1..50).contains(&n), "50 callers, {n} syncs");
        // A caller after those gets a sync of its own.
        local.block_on(&rt, g.sync()).unwrap();
        assert_eq!(g.syncs.get(), n + 1);
        // A directory that is gone: the caller hears of it.
        let gone = GroupSync::new(dir.path().join("missing"));
        assert!(local.block_on(&rt, gone.sync()).is_err());
    }
}
