//! The release table: which records of which segments are still live, shared by the shard
//! (which adds each commit's records) and the upload worker (which releases stored ones); a
//! sealed segment whose last record is released is deleted.
#![forbid(unsafe_code)]

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
}

#[derive(Debug)]
pub(super) struct SegState {
    /// Offsets of records not yet released.
    pub(super) live: BTreeSet<u64>,
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
        if t.free.len() < FREE_POOL && bytes == self.segment_bytes {
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
        if known.is_some_and(|s| s.live.remove(&id.offset)) {
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
}
