//! The release table: which records of which segments are still live, shared by the shard
//! (which adds each commit's records) and the upload worker (which releases stored ones); a
//! sealed segment whose last record is released is deleted.

use super::checkpoint::{Checkpoint, SegmentProgress};
use super::*;

/// Counters and gauges of a spool, readable from any thread through [`Releaser::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Data syncs issued: commits (each an `O_DSYNC` write), and the fdatasyncs of segment
    /// creation, the meta file and the directory.
    pub data_syncs: u64,
    /// Group commits done (one `O_DSYNC` write each).
    pub commits: u64,
    /// Records made durable by `append`.
    pub records_appended: u64,
    /// Data bytes of those records.
    pub bytes_appended: u64,
    /// Segment files not yet deleted (recovered, sealed or being written).
    pub live_segments: u64,
    /// Their total size: what counts against `max_bytes`.
    pub live_bytes: u64,
    /// Records appended or recovered and not yet released.
    pub live_records: u64,
    /// Id of the oldest segment holding such records (its creation time in µs, see the
    /// module doc on segment ids), 0 when none.
    pub oldest_live_segment: u64,
    /// Releases not yet in a written release checkpoint: what a crash now would replay of
    /// what is already stored.
    pub unpersisted_releases: u64,
}

#[derive(Debug)]
pub(super) struct SegState {
    /// Records not yet released: the offset of each, and the end of its frame (so that
    /// consecutive live records make one range in a checkpoint).
    pub(super) live: BTreeMap<u64, u64>,
    /// End of the durable records (the file size for a segment of an earlier run).
    pub(super) end: u64,
    /// No more records will be added: deleted once `live` is empty.
    pub(super) sealed: bool,
    /// File size, counted against the budget.
    pub(super) bytes: u64,
}

#[derive(Debug, Default)]
pub(super) struct Table {
    pub(super) segments: BTreeMap<u64, SegState>,
    /// Files on disk: live segments and the free pool.
    pub(super) live_bytes: u64,
    /// Retired segment files kept for reuse (`{id}.free`), newest last.
    pub(super) free: Vec<u64>,
    /// Releases so far, and how many of them the last checkpoint written covers.
    pub(super) released: u64,
    pub(super) checkpointed: u64,
}

impl Table {
    /// A checkpoint of the table: its live records as ranges (consecutive live records make one
    /// range, so a backlog the store refuses is one range per segment, whatever its length).
    pub(super) fn progress(&self) -> Checkpoint {
        let mut segments = BTreeMap::new();
        for (&id, s) in &self.segments {
            let mut live: Vec<(u64, u64)> = Vec::new();
            for (&start, &end) in &s.live {
                match live.last_mut() {
                    Some(last) if last.1 == start => last.1 = end,
                    _ => live.push((start, end)),
                }
            }
            segments.insert(id, SegmentProgress { end: s.end, live });
        }
        Checkpoint { segments }
    }
}

/// Retired segment files kept for reuse: a new segment is then a rename and one header
/// write, not a file of `segment_bytes` zeros written while commits wait on the same disk
/// (scenario (d): `benches/results/2026-11-28-d.md` before reuse, `-d-2.md` after).
pub(super) const FREE_POOL: usize = 2;

/// What the shard and the releasers share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) dir: PathBuf,
    /// Size of the files this run creates (the only ones reused).
    pub(super) segment_bytes: u64,
    pub(super) table: Mutex<Table>,
    pub(super) data_syncs: AtomicU64,
    pub(super) commits: AtomicU64,
    pub(super) records: AtomicU64,
    pub(super) bytes: AtomicU64,
    /// Files kept for reuse (the free pool's size; 0 for a spool that is only drained).
    pub(super) pool: usize,
    /// One checkpoint written at a time (the periodic one and the one at shutdown).
    pub(super) checkpoint_lock: Mutex<()>,
}

impl Shared {
    pub(super) fn table(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent across a panic elsewhere: every update is one step.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn synced(&self) {
        self.data_syncs.fetch_add(1, Relaxed);
    }

    pub(super) fn seg_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}.seg"))
    }

    pub(super) fn delete(&self, id: u64) {
        remove_segment(&self.seg_path(id));
    }

    pub(super) fn free_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}.free"))
    }

    /// Retires segment `id` if it is sealed and fully released: into the free pool (renamed
    /// under the table lock, so the writer never takes a file not yet renamed) if there is
    /// room and it has the standard size, else deleted.
    pub(super) fn retire_if_done(&self, t: &mut Table, id: u64) {
        let bytes = match t.segments.get(&id) {
            Some(s) if s.sealed && s.live.is_empty() => s.bytes,
            _ => return,
        };
        t.segments.remove(&id);
        crate::crash_point!("spool::retire::before");
        if t.free.len() < self.pool && bytes == self.segment_bytes {
            match std::fs::rename(self.seg_path(id), self.free_path(id)) {
                Ok(()) => {
                    crate::crash_point!("spool::retire::after_rename");
                    t.free.push(id);
                    return;
                }
                // A segment whose creation failed may have no file.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(segment = id, error = %e, "spool: cannot keep a segment for reuse")
                }
            }
        }
        t.live_bytes -= bytes;
        self.delete(id);
    }

    pub(super) fn release(&self, id: RecordId) {
        let mut t = self.table();
        let known = t.segments.get_mut(&id.segment);
        if known.is_some_and(|s| s.live.remove(&id.offset).is_some()) {
            t.released += 1;
            self.retire_if_done(&mut t, id.segment);
        } else {
            tracing::debug!(?id, "release of an unknown or released spool record");
        }
    }

    pub(super) fn seal(&self, id: u64) {
        let mut t = self.table();
        if let Some(s) = t.segments.get_mut(&id) {
            s.sealed = true;
        }
        self.retire_if_done(&mut t, id);
    }

    /// Writes the release checkpoint if records were released since the last one; returns
    /// whether it wrote one.
    pub(super) fn checkpoint(&self) -> io::Result<bool> {
        let _one = self
            .checkpoint_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (ckpt, released) = {
            let t = self.table();
            if t.released == t.checkpointed {
                return Ok(false);
            }
            (t.progress(), t.released)
        };
        super::checkpoint::write(&self.dir, &ckpt)?;
        self.table().checkpointed = released;
        Ok(true)
    }

    pub(super) fn stats(&self) -> SpoolStats {
        let t = self.table();
        SpoolStats {
            data_syncs: self.data_syncs.load(Relaxed),
            commits: self.commits.load(Relaxed),
            records_appended: self.records.load(Relaxed),
            bytes_appended: self.bytes.load(Relaxed),
            live_segments: t.segments.len() as u64,
            live_bytes: t.live_bytes,
            live_records: t.segments.values().map(|s| s.live.len() as u64).sum(),
            oldest_live_segment: t
                .segments
                .iter()
                .find(|(_, s)| !s.live.is_empty())
                .map_or(0, |(&id, _)| id),
            unpersisted_releases: t.released - t.checkpointed,
        }
    }
}

/// Marks records stored, from any thread (the upload worker's). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Releaser {
    pub(super) shared: Arc<Shared>,
}

impl Releaser {
    /// Marks record `id` stored. When that was the last live record of a sealed segment, its
    /// file is deleted (here, with `std::fs::remove_file`) and its budget freed. Unknown or
    /// already released ids are ignored.
    pub fn release(&self, id: RecordId) {
        self.shared.release(id);
    }

    /// The spool's counters and gauges.
    pub fn stats(&self) -> SpoolStats {
        self.shared.stats()
    }

    /// Persists release progress (`release.ckpt`) if records were released since the last
    /// time, so that a start does not replay them; blocking (a small file written and synced).
    /// Called every `spool.checkpoint_ms` and once more at shutdown, after the last release.
    pub fn checkpoint(&self) {
        if let Err(e) = self.shared.checkpoint() {
            tracing::error!(dir = %self.shared.dir.display(), error = %e, "spool: cannot write the release checkpoint; a start would replay stored records again");
        }
    }
}

/// The spools a shard delivers from (its own, and those of other shard indexes it adopted),
/// seen from any thread: for `/metrics`, the readiness of what waits, and the release
/// checkpoints.
#[derive(Debug, Default)]
pub struct Spools(Mutex<Vec<Releaser>>);

impl Spools {
    /// Adds a spool the shard opened.
    pub fn add(&self, r: Releaser) {
        self.list().push(r);
    }

    fn list(&self) -> MutexGuard<'_, Vec<Releaser>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shard's spools' counters and gauges, summed; `None` when it has none.
    pub fn stats(&self) -> Option<SpoolStats> {
        let list = self.list();
        let mut sum: Option<SpoolStats> = None;
        for s in list.iter().map(Releaser::stats) {
            let t = sum.get_or_insert_with(SpoolStats::default);
            t.data_syncs += s.data_syncs;
            t.commits += s.commits;
            t.records_appended += s.records_appended;
            t.bytes_appended += s.bytes_appended;
            t.live_segments += s.live_segments;
            t.live_bytes += s.live_bytes;
            t.live_records += s.live_records;
            t.unpersisted_releases += s.unpersisted_releases;
            t.oldest_live_segment = match (t.oldest_live_segment, s.oldest_live_segment) {
                (0, b) => b,
                (a, 0) => a,
                (a, b) => a.min(b),
            };
        }
        sum
    }

    /// Writes each spool's release checkpoint that is behind ([`Releaser::checkpoint`]).
    pub fn checkpoint(&self) {
        let list: Vec<Releaser> = self.list().clone();
        for r in list {
            r.checkpoint();
        }
    }
}
