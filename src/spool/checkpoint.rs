//! Release progress on disk: `release.ckpt`, a snapshot of the release table, so that a start
//! replays only what was not yet stored (a clean stop: nothing; a crash: what was unreleased
//! then, plus what was released since the last checkpoint, at most one checkpoint interval).
//!
//! # What a checkpoint says
//! For each segment that was live when it was taken: the end of its durable records then, and
//! the byte ranges of its records not yet released. A record of that segment before that end
//! and outside those ranges was stored: recovery skips it. Everything else recovery finds (a
//! record past that end, a segment the checkpoint does not name) is live, so a checkpoint that
//! is old, missing or unreadable only means more replay, never a record skipped that was not
//! stored: releases are final and record ids are never reused.
//!
//! # Format (integers little-endian)
//! magic `CPSPCKPT` (8), segment count (u32), then per segment: id (u64), end (u64), range
//! count (u32), ranges as (start, end) pairs (u64, u64); then CRC32C of everything before
//! (u32). Written to `release.ckpt.tmp`, synced, renamed over `release.ckpt`: a crash leaves
//! the old checkpoint or the new one, never a mix (the CRC also rejects a torn file).

use super::RecordId;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

pub(super) const CKPT_FILE: &str = "release.ckpt";
pub(super) const CKPT_TMP: &str = "release.ckpt.tmp";
const MAGIC: [u8; 8] = *b"CPSPCKPT";

/// One segment's state when the checkpoint was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SegmentProgress {
    /// The end of its durable records: records at or past it are live.
    pub(super) end: u64,
    /// `[start, end)` byte ranges holding its records not yet released, ascending.
    pub(super) live: Vec<(u64, u64)>,
}

/// A snapshot of the release table (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Checkpoint {
    pub(super) segments: BTreeMap<u64, SegmentProgress>,
}

impl Checkpoint {
    /// Whether record `id` was stored when the checkpoint was taken.
    pub(super) fn released(&self, id: RecordId) -> bool {
        let Some(s) = self.segments.get(&id.segment) else {
            return false;
        };
        if id.offset >= s.end {
            return false;
        }
        // The last range starting at or before the offset.
        let i = s.live.partition_point(|&(start, _)| start <= id.offset);
        !(i > 0 && id.offset < s.live[i - 1].1)
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.segments.len() * 40);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for (id, s) in &self.segments {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&s.end.to_le_bytes());
            out.extend_from_slice(&(s.live.len() as u32).to_le_bytes());
            for (a, b) in &s.live {
                out.extend_from_slice(&a.to_le_bytes());
                out.extend_from_slice(&b.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// `None` if `buf` is not a whole, valid checkpoint.
    pub(super) fn decode(buf: &[u8]) -> Option<Checkpoint> {
        let (body, crc) = buf.split_at_checked(buf.len().checked_sub(4)?)?;
        if crc32c::crc32c(body).to_le_bytes() != crc || body.get(..8)? != MAGIC {
            return None;
        }
        let mut r = Reader { buf: body, at: 8 };
        let mut segments = BTreeMap::new();
        for _ in 0..r.u32()? {
            let (id, end) = (r.u64()?, r.u64()?);
            let n = r.u32()? as usize;
            // Each range takes 16 bytes: a count beyond what is left is corrupt.
            if n > (body.len() - r.at) / 16 {
                return None;
            }
            let mut live = Vec::with_capacity(n);
            for _ in 0..n {
                live.push((r.u64()?, r.u64()?));
            }
            segments.insert(id, SegmentProgress { end, live });
        }
        (r.at == body.len()).then_some(Checkpoint { segments })
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let b = self.buf.get(self.at..self.at + N)?.try_into().ok()?;
        self.at += N;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
}

/// The checkpoint in `dir`; none if there is no file, and none (logged) if it is unreadable
/// or invalid: then every record found is replayed.
pub(super) fn read(dir: &Path) -> Checkpoint {
    let _ = std::fs::remove_file(dir.join(CKPT_TMP));
    match std::fs::read(dir.join(CKPT_FILE)) {
        Ok(buf) => Checkpoint::decode(&buf).unwrap_or_else(|| {
            tracing::error!(dir = %dir.display(), "spool: release.ckpt is invalid; every record found is replayed");
            Checkpoint::default()
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Checkpoint::default(),
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "spool: cannot read release.ckpt; every record found is replayed");
            Checkpoint::default()
        }
    }
}

/// Writes `ckpt` as the directory's checkpoint: to a temporary file, synced, then renamed
/// over the last one (see the module doc for why no directory sync is needed).
pub(super) fn write(dir: &Path, ckpt: &Checkpoint) -> io::Result<()> {
    let tmp = dir.join(CKPT_TMP);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&ckpt.encode())?;
    f.sync_data()?;
    drop(f);
    crate::crash_point!("spool::checkpoint::before_rename");
    std::fs::rename(&tmp, dir.join(CKPT_FILE))?;
    crate::crash_point!("spool::checkpoint::after_rename");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(segment: u64, offset: u64) -> RecordId {
        RecordId { segment, offset }
    }

    #[test]
    fn released_is_what_lies_before_the_end_outside_the_live_ranges() {
        let mut segments = BTreeMap::new();
        segments.insert(
            7,
            SegmentProgress {
                end: 1000,
                live: vec![(100, 200), (400, 600)],
            },
        );
        let c = Checkpoint { segments };
        assert!(c.released(id(7, 40)));
        assert!(!c.released(id(7, 100)));
        assert!(!c.released(id(7, 199)));
        assert!(c.released(id(7, 200)));
        assert!(!c.released(id(7, 400)));
        assert!(c.released(id(7, 600)));
        assert!(c.released(id(7, 999)));
        assert!(!c.released(id(7, 1000)), "past the end: committed later");
        assert!(!c.released(id(8, 40)), "a segment it does not name is live");
    }

    #[test]
    fn encodes_and_decodes_and_rejects_damage() {
        let mut segments = BTreeMap::new();
        segments.insert(
            3,
            SegmentProgress {
                end: 4096,
                live: vec![(48, 96)],
            },
        );
        segments.insert(
            9,
            SegmentProgress {
                end: 48,
                live: vec![],
            },
        );
        let c = Checkpoint { segments };
        let buf = c.encode();
        assert_eq!(Checkpoint::decode(&buf), Some(c.clone()));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert_eq!(Checkpoint::decode(&bad), None, "flipped byte {i}");
        }
        for n in 0..buf.len() {
            assert_eq!(Checkpoint::decode(&buf[..n]), None, "cut at {n}");
        }
    }
}
