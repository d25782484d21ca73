//! The per-shard durable write-ahead spool: requests acknowledged `durable` are appended here
//! and answered only after the synchronous (`O_DSYNC`) write that covers their record; the
//! upload worker (on another thread) releases records once they are stored, and a segment file
//! is deleted when it is sealed and every record in it has been released.
//!
//! # How it works
//! - One [`Spool`] per shard, `!Send`, on the shard's glommio executor. [`Spool::append`]
//!   queues a framed record and waits. A committer task (spawned by [`Spool::open`], cancelled
//!   when the `Spool` is dropped) takes everything queued once the oldest record has waited
//!   `commit_wait_us`, and lands it with one `O_DSYNC` `write_at` (group commit): the write
//!   completes once its data is on stable storage, like a `write` + `fdatasync` but as one
//!   io_uring operation. Each appender is woken by the commit that holds its record, alone.
//!   Record ids are assigned by the committer, so a cancelled `append` leaves no hole (its
//!   record may still be written: delivery is at least once).
//! - Writes are O_DIRECT ([`glommio::io::DmaFile`]). A commit writes from the 4096-aligned
//!   block holding the end of the durable data to the next block boundary, zero-padded: the
//!   durable prefix of that block is kept in memory and rewritten with identical bytes, so a
//!   torn block write can only damage records that were not yet acknowledged.
//! - Segment files are written in full (header, then zeros) to `segment_bytes` when created,
//!   so a commit overwrites allocated blocks and its sync flushes data only (into an
//!   fallocated file every commit would also journal the extent conversion). A retired
//!   segment (sealed, every record released) goes to a free pool of up to two files
//!   (`{id}.free`) and becomes a later segment by rename and a header rewrite; its old records
//!   carry another segment's tag and read as the end of the data. [`Spool::open`] fills the
//!   pool before serving (adopting free files a previous run left), so zeros are written
//!   while commits wait only when the spool grows past it. The next segment is prepared in
//!   the background once the active one is half full, budget permitting (free files count
//!   against the budget). The writer only ever appends to a segment it created in this run;
//!   [`Spool::open`] seals every segment found on disk. When a record does not fit, the
//!   segment is sealed and a new one is created, if the budget (`max_bytes`, the sum of live
//!   segment file sizes) allows, else the append fails with [`SpoolError::Full`]. A failed
//!   commit write seals the segment too (its fate on disk is unknown) and fails the records
//!   of that commit.
//! - Release bookkeeping is a table of live record offsets per segment behind a mutex shared
//!   with every [`Releaser`] (touched once per commit by the shard, once per release by the
//!   worker). Releasing an unknown or already released id is ignored. A release that empties
//!   a sealed segment deletes its file (a deletion lost in a crash only means its records are
//!   recovered and uploaded again).
//!
//! # On-disk format (integers little-endian)
//! The directory holds segment files named `{segment:020}.seg` and `spool.meta`.
//!
//! A segment file is `segment_bytes` long (zero-filled at creation; unused space is zeros):
//! - header, 32 bytes: magic `CPSPOOL\0` (8), version `1` (u32), zero (u32), segment id
//!   (u64), CRC32C of the previous 24 bytes (u32), zero (u32);
//! - records from offset 32, each at a multiple of 8: magic `C1 FF 53 52` (4; 0xC1 and 0xFF
//!   never occur in UTF-8, so a JSON payload cannot imitate a record start), data length
//!   (u32), CRC32C of the length field, the tag and the data (u32), the segment's tag (u32:
//!   CRC32C of the segment id), the data, zero padding to a multiple of 8. A [`RecordId`] is
//!   (segment id, offset of the record's magic). The tag tells this segment's records from
//!   those left in a recycled file by its earlier use: a valid record with another tag ends
//!   the data.
//!
//! `spool.meta`, 20 bytes: magic `CPSPMETA` (8), the highest segment id ever created (u64),
//! CRC32C of the previous 16 bytes (u32). It is written to `spool.meta.tmp`, synced and
//! renamed (then the directory is synced) before each new segment file is created.
//!
//! # Segment ids
//! A new segment's id is `max(previous id + 1, spool.meta + 1, largest id on disk + 1, unix
//! time in µs)`. The meta file keeps ids from repeating after their segments were deleted,
//! even if the clock steps back; the clock keeps them from repeating when the spool directory
//! itself was lost or replaced (a fresh directory would otherwise start again at 1).
//!
//! # Recovery ([`Spool::open`])
//! Every segment is read back and scanned. Invalid bytes after the last valid record (a crash
//! mid-commit: nothing there was acknowledged) are cut and reported in
//! [`RecoveryReport::torn_tails`] (and at each open until the segment is deleted: recovery
//! never writes old segments). An invalid range followed by valid records is corruption: it
//! is logged (`tracing::error!`) and reported in [`RecoveryReport::corrupt`], and the scan
//! resyncs at the next 8-byte position holding a record whose CRC checks. Recovered records
//! are live: they must be released like new ones. Segments without a valid record are deleted
//! at open.

mod checkpoint;
mod files;
mod format;
mod open;
mod release;
#[cfg(test)]
mod tests;
mod writer;

use files::*;
use open::{check_options, fill_free_pool, read_meta, recover_segments};
pub use release::{Releaser, SpoolStats, Spools};
use release::{SegState, Shared, FREE_POOL};
use writer::*;

use crate::keys::unix_micros;
use event_listener::Event;
use glommio::io::{Directory, DmaFile, OpenOptions};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use std::{fmt, io};

const META_FILE: &str = "spool.meta";
const META_TMP: &str = "spool.meta.tmp";
/// Unit of every write and of the segment size.
const BLOCK: u64 = 4096;
/// Zero-filling a new segment: bytes per write, and the pause between two writes.
const FILL_CHUNK: u64 = 256 << 10;
const FILL_PAUSE: Duration = Duration::from_millis(1);
/// Read size when recovering a segment.
const READ_CHUNK: usize = 1 << 20;

/// Where and how a shard's spool keeps its records.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// This shard's directory (created if missing). Must be on a real disk, not tmpfs, for
    /// O_DIRECT to be durable.
    pub dir: PathBuf,
    /// Size of each segment file, a multiple of 4096 of at least 8192; zero-filled at creation. Also
    /// bounds a record: at most `segment_bytes - 48` data bytes.
    pub segment_bytes: u64,
    /// Disk budget: the sum of live segment files. An append needing a new segment beyond it
    /// fails with [`SpoolError::Full`].
    pub max_bytes: u64,
    /// Group commit: the longest a record waits for others before the synchronous write
    /// (0 = commit at once).
    pub commit_wait_us: u64,
    /// Opaque bytes (at most 1024) written at the head of every segment and handed back per
    /// segment by recovery: the caller records there what decides how the records are
    /// processed (corepost: how their objects are built and named), so a replay after a
    /// configuration change processes them as the run that wrote them would have.
    pub context: Vec<u8>,
    /// Opened only to deliver what an earlier run left (a spool of another shard index, or
    /// one found while `ack` is not `durable`): no free pool is kept, retired segments are
    /// deleted.
    pub drain_only: bool,
}

/// The stable name of a record: its segment and the byte offset of its frame in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId {
    /// Segment id (never reused, see the module doc).
    pub segment: u64,
    /// Offset of the record's frame in the segment file.
    pub offset: u64,
}

/// A valid record found on disk by [`Spool::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The record's id; release it once stored.
    pub id: RecordId,
    /// The length of its data, read with [`Spool::read_record`] when it is replayed (recovery
    /// keeps no record data in memory: a spool holds far more than the queue budget).
    pub len: usize,
}

/// Invalid bytes after the last valid record of a segment, cut off by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Segment id.
    pub segment: u64,
    /// Where the cut was made (the end of the last valid record).
    pub offset: u64,
    /// Bytes from `offset` to the last non-zero byte.
    pub bytes: u64,
    /// Why the bytes at `offset` are not a valid record.
    pub reason: CorruptReason,
}

/// An invalid range followed by valid records: corruption, not a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt {
    /// Segment id.
    pub segment: u64,
    /// Start of the invalid range.
    pub offset: u64,
    /// Length of the invalid range (up to the next valid record).
    pub length: u64,
    /// What is wrong at `offset`.
    pub reason: CorruptReason,
}

/// Why bytes are not a valid header or record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CorruptReason {
    /// The segment header's magic, version or CRC is wrong.
    #[error("bad segment header")]
    BadHeader,
    /// The segment header names another segment than the file name.
    #[error("segment header names segment {found}")]
    HeaderId {
        /// The id in the header.
        found: u64,
    },
    /// No record magic where a record should start.
    #[error("bad record magic")]
    BadMagic,
    /// Zeros where a record should start.
    #[error("zeroed range")]
    Zeroed,
    /// The record's length runs past the end of the file.
    #[error("record length beyond end of file")]
    BadLength,
    /// The record's CRC does not match its length and data.
    #[error("record CRC mismatch")]
    BadCrc,
    /// A valid record of the segment file's earlier use (recycled): the end of the data.
    #[error("record of an earlier use of the file")]
    Stale,
    /// The file is shorter than the size its header records: data past its end is lost.
    #[error("segment file truncated (created with {size} bytes)")]
    Truncated {
        /// The size the segment was created with.
        size: u64,
    },
}

/// What [`Spool::open`] found on disk.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    /// Every valid record still on disk and not yet stored, in (segment, offset) order.
    pub records: Vec<Recovered>,
    /// Valid records on disk that the release checkpoint knows were stored: not replayed.
    pub skipped: usize,
    /// Per segment, the torn tail that was cut off.
    pub torn_tails: Vec<TornTail>,
    /// Invalid ranges that are not at a tail (also logged as errors).
    pub corrupt: Vec<Corrupt>,
    /// The context each segment holding records was written with ([`SpoolOptions::context`];
    /// absent for segments of format version 1 or with an unreadable context).
    pub contexts: BTreeMap<u64, Vec<u8>>,
}

/// Why the spool could not open or append.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The disk budget (`max_bytes`) has no room for another segment: release records first.
    #[error("spool full")]
    Full,
    /// The record can never fit in a segment.
    #[error("record of {len} bytes exceeds the spool's maximum of {max}")]
    TooLarge {
        /// The record's length.
        len: usize,
        /// The largest record the spool takes.
        max: usize,
    },
    /// Impossible options.
    #[error("invalid spool options: {0}")]
    InvalidOptions(String),
    /// The committer task has stopped (the executor is shutting down).
    #[error("spool closed")]
    Closed,
    /// The disk failed.
    #[error("spool I/O: {0}")]
    Io(#[from] io::Error),
}

impl From<glommio::GlommioError<()>> for SpoolError {
    fn from(e: glommio::GlommioError<()>) -> Self {
        SpoolError::Io(e.into())
    }
}

impl SpoolError {
    /// The same error for another record of a failed commit.
    fn again(&self) -> SpoolError {
        match self {
            SpoolError::Full => SpoolError::Full,
            SpoolError::TooLarge { len, max } => SpoolError::TooLarge {
                len: *len,
                max: *max,
            },
            SpoolError::InvalidOptions(s) => SpoolError::InvalidOptions(s.clone()),
            SpoolError::Closed => SpoolError::Closed,
            SpoolError::Io(e) => SpoolError::Io(io::Error::new(e.kind(), e.to_string())),
        }
    }
}

/// Where the committer leaves one append's outcome, and the waker of the task awaiting it.
#[derive(Default)]
struct SlotState {
    result: Cell<Option<Result<RecordId, SpoolError>>>,
    waker: Cell<Option<std::task::Waker>>,
}

type Slot = Rc<SlotState>;

impl SlotState {
    /// Sets the outcome and wakes the appender (only it: a commit wakes its own records).
    fn fill(&self, result: Result<RecordId, SpoolError>) {
        self.result.set(Some(result));
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// A record waiting for the committer.
struct Pending {
    /// The record's data (framed at commit time, with the segment's tag).
    data: bytes::Bytes,
    /// Its size on disk.
    framed: u64,
    len: usize,
    at: Instant,
    slot: Slot,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Pending>,
    stopped: bool,
}

/// State shared by the `Spool` handle and its committer task (same thread).
struct Inner {
    opts: SpoolOptions,
    dir: Directory,
    shared: Arc<Shared>,
    queue: RefCell<Queue>,
    /// Wakes the committer when a record is queued.
    queued: Event,
}

/// A shard's durable spool. Lives on one glommio executor (`!Send`); see the module doc.
pub struct Spool {
    inner: Rc<Inner>,
    max_record: usize,
    /// The segment file [`Spool::read_record`] read last.
    reader: RefCell<Option<(u64, Rc<DmaFile>)>>,
    /// Dropping the spool cancels its committer.
    _committer: glommio::Task<()>,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens (or creates) the spool in `opts.dir`: recovers every segment on disk (see the
    /// module doc), seals them, and starts the committer. Must run on a glommio executor.
    pub async fn open(opts: SpoolOptions) -> Result<(Spool, RecoveryReport), SpoolError> {
        let max_record = check_options(&opts)?;
        std::fs::create_dir_all(&opts.dir)?;
        // glommio's Directory::open fails on a relative path (EBADF), and the default
        // `spool.dir` is relative: resolve it against the working directory once, here.
        let mut opts = opts;
        opts.dir = std::path::absolute(&opts.dir)?;
        let dir = Directory::open(&opts.dir).await?;
        let shared = Arc::new(Shared {
            dir: opts.dir.clone(),
            segment_bytes: opts.segment_bytes,
            table: Mutex::default(),
            data_syncs: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            pool: if opts.drain_only { 0 } else { FREE_POOL },
            checkpoint_lock: Mutex::default(),
        });
        let meta = read_meta(&opts.dir)?;
        let adopted = adopt_free_files(&opts.dir, opts.segment_bytes, shared.pool);
        let ids = list_segments(&opts.dir)?;
        let progress = checkpoint::read(&opts.dir);
        let (report, empty) = recover_segments(&shared, &ids, &progress).await?;
        let disk_max = ids.last().copied();
        if disk_max > meta {
            // Before any segment goes, so that its id is never handed out again.
            write_meta(&shared, disk_max.unwrap_or(0)).await?;
            dir.sync().await?;
            shared.synced();
        }
        for id in empty {
            shared.seal(id);
        }
        let mut next_id = meta.max(disk_max).map_or(1, |m| m.saturating_add(1));
        // New free files are named past the adopted ones (their names are not in spool.meta).
        if let Some(&m) = adopted.iter().max() {
            next_id = next_id.max(m.saturating_add(1));
        }
        let prepared = fill_free_pool(&shared, &opts, adopted, &mut next_id).await?;
        if prepared > 0 {
            dir.sync().await?;
            shared.synced();
        }
        tracing::info!(dir = %opts.dir.display(), segments = ids.len(), prepared,
            records = report.records.len(), stored = report.skipped, torn = report.torn_tails.len(),
            corrupt = report.corrupt.len(), "spool opened");

        let inner = Rc::new(Inner {
            opts,
            dir,
            shared,
            queue: RefCell::default(),
            queued: Event::new(),
        });
        let writer = Writer {
            inner: inner.clone(),
            active: None,
            next_id,
            next: None,
        };
        let committer = glommio::spawn_local(writer.run());
        let spool = Spool {
            inner,
            max_record,
            reader: RefCell::new(None),
            _committer: committer,
        };
        Ok((spool, report))
    }

    /// Appends one record; resolves after the synchronous write that made it durable.
    /// Concurrent appends (tasks of this executor) are group-committed: one `O_DSYNC` write for
    /// all records pending, waiting at most `commit_wait_us` for more to join.
    pub async fn append(&self, data: impl Into<bytes::Bytes>) -> Result<RecordId, SpoolError> {
        // Taken by value (shared, not copied): the shard queues the same bytes for upload.
        let data: bytes::Bytes = data.into();
        if data.len() > self.max_record {
            return Err(SpoolError::TooLarge {
                len: data.len(),
                max: self.max_record,
            });
        }
        let slot = Slot::default();
        {
            let mut q = self.inner.queue.borrow_mut();
            if q.stopped {
                return Err(SpoolError::Closed);
            }
            q.pending.push_back(Pending {
                framed: format::framed_len(data.len()),
                len: data.len(),
                data,
                at: Instant::now(),
                slot: slot.clone(),
            });
        }
        self.inner.queued.notify(1);
        std::future::poll_fn(|cx| match slot.result.take() {
            Some(result) => std::task::Poll::Ready(result),
            None => {
                slot.waker.set(Some(cx.waker().clone()));
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// Reads the data of a record that recovery found (its segment file is open until a
    /// record of another segment is read).
    pub async fn read_record(&self, r: &Recovered) -> Result<Vec<u8>, SpoolError> {
        let cached = self
            .reader
            .borrow()
            .as_ref()
            .filter(|(seg, _)| *seg == r.id.segment)
            .map(|(_, f)| f.clone());
        let file = match cached {
            Some(f) => f,
            None => {
                let f = Rc::new(DmaFile::open(self.inner.shared.seg_path(r.id.segment)).await?);
                if let Some((_, old)) = self.reader.replace(Some((r.id.segment, f.clone()))) {
                    if let Ok(old) = Rc::try_unwrap(old) {
                        let _ = old.close().await;
                    }
                }
                f
            }
        };
        let data = file
            .read_at(r.id.offset + format::FRAME_HEADER, r.len)
            .await?;
        if data.len() != r.len {
            return Err(
                io::Error::new(io::ErrorKind::UnexpectedEof, "spool record cut short").into(),
            );
        }
        Ok(data.to_vec())
    }

    /// A handle for the upload worker's thread to release stored records.
    pub fn releaser(&self) -> Releaser {
        Releaser {
            shared: self.inner.shared.clone(),
        }
    }

    /// The spool's counters and gauges (also readable from other threads via [`Releaser`]).
    pub fn stats(&self) -> SpoolStats {
        self.inner.shared.stats()
    }

    /// The largest record [`Spool::append`] takes, in bytes.
    pub fn max_record_len(&self) -> usize {
        self.max_record
    }
}
