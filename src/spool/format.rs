//! The spool's on-disk encoding (segment header, record frame, meta file) and the recovery
//! scan. Pure functions over byte slices: no I/O, and no panic on any input.

use super::{Corrupt, CorruptReason, RecordId, Recovered, TornTail};

/// First bytes of every segment file.
pub(super) const SEGMENT_MAGIC: [u8; 8] = *b"CPSPOOL\0";
/// Format version written in the segment header: 2 carries the spool's context after the
/// header (see [`segment_prefix`]); 1 (no context, records from offset 32) is still read.
pub(super) const VERSION: u32 = 2;
/// The version without a context.
const VERSION_1: u32 = 1;
/// Largest context a segment carries (it must fit in the first block with the header).
pub(super) const MAX_CONTEXT: usize = 1024;
/// Segment header length; the first record starts here.
pub(super) const HEADER_LEN: u64 = 32;
/// First bytes of every record. 0xC1 and 0xFF never occur in UTF-8, so a JSON payload can
/// never contain something the resync scan would take for a record start.
pub(super) const RECORD_MAGIC: [u8; 4] = [0xC1, 0xFF, b'S', b'R'];
/// Record frame header length: magic, length, CRC, segment tag.
pub(super) const FRAME_HEADER: u64 = 16;
/// First bytes of the meta file.
pub(super) const META_MAGIC: [u8; 8] = *b"CPSPMETA";
/// Meta file content length (magic, highest segment id, CRC).
pub(super) const META_LEN: usize = 20;

/// Bytes a record of `len` data bytes takes on disk: frame header, data, padding to 8.
pub(super) fn framed_len(len: usize) -> u64 {
    FRAME_HEADER + (len as u64).div_ceil(8) * 8
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Where the records of a segment with a context of `len` bytes start.
pub(super) fn data_start(context_len: usize) -> u64 {
    (HEADER_LEN + 8 + context_len as u64).div_ceil(8) * 8
}

/// Everything before the first record of segment `id` (version 2): the header, then the
/// context's length (u32), its CRC32C (u32) and the context, zero-padded to a multiple of 8.
/// The caller has checked that the context is at most [`MAX_CONTEXT`] bytes.
pub(super) fn segment_prefix(id: u64, size: u64, context: &[u8]) -> Vec<u8> {
    let mut p = header(VERSION, id, size).to_vec();
    p.extend_from_slice(&(context.len() as u32).to_le_bytes());
    p.extend_from_slice(&crc32c::crc32c(context).to_le_bytes());
    p.extend_from_slice(context);
    p.resize(data_start(context.len()) as usize, 0);
    p
}

/// The 32-byte header of a version 1 segment (no context; records from offset 32), as
/// earlier versions wrote it.
#[cfg(test)]
pub(super) fn segment_header(id: u64, size: u64) -> [u8; HEADER_LEN as usize] {
    header(VERSION_1, id, size)
}

/// The 32-byte header of segment `id`, whose file is `size` bytes long (a multiple of 4096;
/// recorded in 4096-byte blocks so that recovery can tell a truncated file from a torn tail;
/// 0 in files of earlier versions: size unknown).
fn header(version: u32, id: u64, size: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    let blocks = u32::try_from(size / 4096).unwrap_or(0);
    h[12..16].copy_from_slice(&blocks.to_le_bytes());
    h[16..24].copy_from_slice(&id.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The context of a version 2 segment and where its records start; `None` if the context
/// cannot be read (its records are then found by the resync scan).
fn read_context(buf: &[u8]) -> Option<(Vec<u8>, usize)> {
    let len = le32(buf, HEADER_LEN as usize)? as usize;
    if len > MAX_CONTEXT {
        return None;
    }
    let at = HEADER_LEN as usize + 8;
    let context = buf.get(at..at + len)?;
    (le32(buf, HEADER_LEN as usize + 4)? == crc32c::crc32c(context))
        .then(|| (context.to_vec(), data_start(len) as usize))
}

/// The file size a valid header records (0: not recorded).
fn recorded_size(buf: &[u8]) -> u64 {
    le32(buf, 12).map_or(0, |b| u64::from(b) * 4096)
}

fn check_header(buf: &[u8], id: u64) -> Result<(), CorruptReason> {
    let h = buf
        .get(..HEADER_LEN as usize)
        .ok_or(CorruptReason::BadHeader)?;
    if h[0..8] != SEGMENT_MAGIC
        || !matches!(le32(h, 8), Some(VERSION | VERSION_1))
        || le32(h, 24) != Some(crc32c::crc32c(&h[0..24]))
    {
        return Err(CorruptReason::BadHeader);
    }
    match le64(h, 16) {
        Some(found) if found == id => Ok(()),
        Some(found) => Err(CorruptReason::HeaderId { found }),
        None => Err(CorruptReason::BadHeader),
    }
}

/// The tag every record of segment `id` carries: segment files are recycled, and a record
/// left from a file's earlier use (another tag) must read as the end of the data, not as a
/// record. Tags of two segments are equal with probability 2^-32 (then old, already stored
/// records would be replayed once more: duplicates, never loss).
pub(super) fn segment_tag(id: u64) -> u32 {
    crc32c::crc32c(&id.to_le_bytes())
}

fn record_crc(len: &[u8], tag: &[u8], data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c_append(crc32c::crc32c(len), tag), data)
}

/// Writes the framed record for `data` into `out` (exactly [`framed_len`] bytes; the caller
/// has checked that the length fits in a `u32`).
pub(super) fn encode_record_into(out: &mut [u8], data: &[u8], tag: u32) {
    let len = (data.len() as u32).to_le_bytes();
    let tag = tag.to_le_bytes();
    out[0..4].copy_from_slice(&RECORD_MAGIC);
    out[4..8].copy_from_slice(&len);
    out[8..12].copy_from_slice(&record_crc(&len, &tag, data).to_le_bytes());
    out[12..16].copy_from_slice(&tag);
    let start = FRAME_HEADER as usize;
    out[start..start + data.len()].copy_from_slice(data);
    out[start + data.len()..].fill(0);
}

/// The framed record for `data` in segment `tag`.
#[cfg(test)]
pub(super) fn encode_record(data: &[u8], tag: u32) -> Vec<u8> {
    let mut frame = vec![0; framed_len(data.len()) as usize];
    encode_record_into(&mut frame, data, tag);
    frame
}

/// The data of the record framed at `pos`, if a valid one of this segment (`tag`) starts
/// there; `Stale` for a valid record of the file's earlier use.
fn parse_record(buf: &[u8], pos: usize, tag: u32) -> Result<&[u8], CorruptReason> {
    let h = buf
        .get(pos..pos.saturating_add(FRAME_HEADER as usize))
        .ok_or(CorruptReason::BadLength)?;
    if h[0..4] != RECORD_MAGIC {
        return Err(if h.iter().all(|&b| b == 0) {
            CorruptReason::Zeroed
        } else {
            CorruptReason::BadMagic
        });
    }
    let len = le32(h, 4).ok_or(CorruptReason::BadLength)? as usize;
    let start = pos + FRAME_HEADER as usize;
    let data = buf
        .get(start..start.saturating_add(len))
        .ok_or(CorruptReason::BadLength)?;
    if le32(h, 8) != Some(record_crc(&h[4..8], &h[12..16], data)) {
        return Err(CorruptReason::BadCrc);
    }
    if le32(h, 12) != Some(tag) {
        return Err(CorruptReason::Stale);
    }
    Ok(data)
}

/// What the scan of one segment found.
#[derive(Debug, Default)]
pub(super) struct Scan {
    pub records: Vec<Recovered>,
    pub torn: Option<TornTail>,
    pub corrupt: Vec<Corrupt>,
    /// Set when the file holds the header of another segment: a recycled file whose new
    /// header never reached the disk, so it holds none of this segment's records.
    pub stale: Option<CorruptReason>,
    /// The context the segment was written with (version 2).
    pub context: Option<Vec<u8>>,
}

/// Scans the content of segment `id`: every valid record, the torn tail (invalid bytes after
/// the last valid record) and every invalid range followed by a valid record. After an
/// invalid frame it resyncs at the next 8-byte position holding a record whose CRC checks.
/// The data ends cleanly at zeros up to the end of the file, or at a record left from the
/// file's earlier use (a recycled segment), after nothing but zeros.
pub(super) fn scan(id: u64, buf: &[u8]) -> Scan {
    let mut out = Scan::default();
    if buf.iter().all(|&b| b == 0) {
        // Created but never written (a crash before its header was synced): nothing to report.
        return out;
    }
    let tag = segment_tag(id);
    let mut pos = HEADER_LEN as usize;
    match check_header(buf, id) {
        Ok(()) => {
            if le32(buf, 8) == Some(VERSION) {
                match read_context(buf) {
                    Some((context, start)) => {
                        out.context = Some(context);
                        pos = start;
                    }
                    None => out.corrupt.push(Corrupt {
                        segment: id,
                        offset: HEADER_LEN,
                        length: 8,
                        reason: CorruptReason::BadHeader,
                    }),
                }
            }
            let size = recorded_size(buf);
            if (buf.len() as u64) < size {
                // Shorter than it was created: whatever lay past the end (acknowledged
                // records among it) is gone. Not a crash of ours: every segment is written
                // to its full size before it takes a record.
                out.corrupt.push(Corrupt {
                    segment: id,
                    offset: buf.len() as u64,
                    length: size - buf.len() as u64,
                    reason: CorruptReason::Truncated { size },
                });
            }
        }
        Err(reason @ CorruptReason::HeaderId { .. }) => {
            // A recycled file that took this segment's name before its new header reached the
            // disk (the order of earlier versions): records are written only after the header
            // is synced, so none of this segment's are here, and the records of the file's
            // earlier use were all stored before it was recycled. Replaying them would store
            // them again under new keys.
            out.stale = Some(reason);
            return out;
        }
        Err(reason) => {
            let length = HEADER_LEN.min(buf.len() as u64);
            out.corrupt.push(Corrupt {
                segment: id,
                offset: 0,
                length,
                reason,
            });
        }
    }
    while pos < buf.len() {
        let reason = match parse_record(buf, pos, tag) {
            Ok(data) => {
                out.records.push(Recovered {
                    id: RecordId {
                        segment: id,
                        offset: pos as u64,
                    },
                    len: data.len(),
                });
                pos = pos.saturating_add(framed_len(data.len()) as usize);
                continue;
            }
            Err(reason) => reason,
        };
        let rest = &buf[pos..];
        if reason == CorruptReason::Stale
            || (reason == CorruptReason::Zeroed && rest.iter().all(|&b| b == 0))
        {
            break; // the clean end
        }
        let next = (pos + 8..buf.len())
            .step_by(8)
            .find_map(|p| match parse_record(buf, p, tag) {
                Ok(_) => Some((p, true)),
                Err(CorruptReason::Stale) => Some((p, false)),
                Err(_) => None,
            });
        match next {
            Some((q, false)) if buf[pos..q].iter().all(|&b| b == 0) => break, // clean end
            Some((q, false)) => {
                // Our last record was torn, and the earlier use's records follow it.
                out.torn = Some(TornTail {
                    segment: id,
                    offset: pos as u64,
                    bytes: (q - pos) as u64,
                    reason,
                });
                break;
            }
            Some((q, true)) => {
                out.corrupt.push(Corrupt {
                    segment: id,
                    offset: pos as u64,
                    length: (q - pos) as u64,
                    reason,
                });
                pos = q;
            }
            None => {
                let bytes = rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                out.torn = Some(TornTail {
                    segment: id,
                    offset: pos as u64,
                    bytes: bytes as u64,
                    reason,
                });
                break;
            }
        }
    }
    out
}

/// The meta file content recording `hwm`, the highest segment id ever created.
pub(super) fn encode_meta(hwm: u64) -> [u8; META_LEN] {
    let mut m = [0u8; META_LEN];
    m[0..8].copy_from_slice(&META_MAGIC);
    m[8..16].copy_from_slice(&hwm.to_le_bytes());
    let crc = crc32c::crc32c(&m[0..16]);
    m[16..20].copy_from_slice(&crc.to_le_bytes());
    m
}

/// The highest segment id recorded in a meta file, if its content is valid.
pub(super) fn decode_meta(buf: &[u8]) -> Option<u64> {
    let m = buf.get(..META_LEN)?;
    (m[0..8] == META_MAGIC && le32(m, 16)? == crc32c::crc32c(&m[0..16])).then_some(())?;
    le64(m, 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data of a record the scan found in `buf`.
    fn data_of<'a>(buf: &'a [u8], r: &Recovered) -> &'a [u8] {
        let start = r.id.offset as usize + FRAME_HEADER as usize;
        &buf[start..start + r.len]
    }

    fn segment(id: u64, records: &[&[u8]], size: usize) -> Vec<u8> {
        let mut buf = segment_header(id, size as u64).to_vec();
        for r in records {
            buf.extend_from_slice(&encode_record(r, segment_tag(id)));
        }
        buf.resize(size.max(buf.len()), 0);
        buf
    }

    #[test]
    fn clean_segment_scans_back() {
        let buf = segment(7, &[b"a", b"", b"0123456789"], 4096);
        let s = scan(7, &buf);
        let data: Vec<&[u8]> = s.records.iter().map(|r| data_of(&buf, r)).collect();
        assert_eq!(data, [&b"a"[..], b"", b"0123456789"]);
        assert_eq!(s.records[1].id.offset, HEADER_LEN + framed_len(1));
        assert!(s.torn.is_none() && s.corrupt.is_empty());
    }

    #[test]
    fn a_file_with_another_segments_header_holds_none_of_its_records() {
        // Segment 7's file named as segment 8: a recycled file whose new header never
        // reached the disk. Its records (segment 7's, stored before it was recycled) must not
        // be replayed as segment 8's.
        let buf = segment(7, &[b"x"], 4096);
        let s = scan(8, &buf);
        assert_eq!(s.stale, Some(CorruptReason::HeaderId { found: 7 }));
        assert!(s.records.is_empty() && s.corrupt.is_empty() && s.torn.is_none());
    }

    #[test]
    fn a_truncated_file_is_reported_as_corruption_not_as_a_torn_tail() {
        let mut buf = segment(7, &[b"a", b"b"], 8192);
        buf.truncate(4096);
        let s = scan(7, &buf);
        assert_eq!(s.records.len(), 2);
        assert_eq!(
            s.corrupt,
            [Corrupt {
                segment: 7,
                offset: 4096,
                length: 4096,
                reason: CorruptReason::Truncated { size: 8192 },
            }]
        );
        // A file of the size it was created with: no report.
        assert!(scan(7, &segment(7, &[b"a"], 8192)).corrupt.is_empty());
    }

    #[test]
    fn records_of_a_recycled_files_earlier_use_end_the_data() {
        // Segment 5's file, recycled as segment 9: two new records, zero padding to the
        // block, then segment 5's old records.
        let old = segment(5, &[b"old-1", b"old-2", b"old-3", b"old-4"], 8192);
        let mut buf = old.clone();
        let fresh = segment(9, &[b"new-1", b"new-2"], 4096);
        buf[..4096].copy_from_slice(&fresh);
        let s = scan(9, &buf);
        let data: Vec<&[u8]> = s.records.iter().map(|r| data_of(&buf, r)).collect();
        assert_eq!(data, [&b"new-1"[..], b"new-2"]);
        assert!(s.torn.is_none() && s.corrupt.is_empty(), "{s:?}");
        // Directly followed by an old record (no padding): also the clean end.
        let mut buf = old.clone();
        let mut head = segment(9, &[b"new-1"], 0);
        head.truncate(HEADER_LEN as usize + framed_len(5) as usize);
        buf[..head.len()].copy_from_slice(&head);
        let s = scan(9, &buf);
        assert_eq!(s.records.len(), 1);
        assert!(s.torn.is_none() && s.corrupt.is_empty(), "{s:?}");
        // A torn new record before the old ones: a torn tail up to them.
        let mut buf = old;
        let mut head = segment(9, &[b"new-1", b"new-2-torn"], 0);
        let torn_data = (HEADER_LEN + framed_len(5) + FRAME_HEADER) as usize;
        head[torn_data + 3] ^= 0x55;
        head.truncate(torn_data + 6);
        buf[..head.len()].copy_from_slice(&head);
        let s = scan(9, &buf);
        assert_eq!(s.records.len(), 1);
        let torn = s.torn.clone().expect("torn tail");
        assert_eq!(torn.offset, HEADER_LEN + framed_len(5));
        assert!(s.corrupt.is_empty(), "{s:?}");
    }

    #[test]
    fn meta_roundtrip_and_rejects_garbage() {
        assert_eq!(decode_meta(&encode_meta(42)), Some(42));
        let mut m = encode_meta(42);
        m[9] ^= 1;
        assert_eq!(decode_meta(&m), None);
        assert_eq!(decode_meta(b"short"), None);
    }

    #[test]
    fn never_panics_on_garbage() {
        let mut rng = fastrand::Rng::with_seed(6);
        for round in 0..2000 {
            let len = rng.usize(0..600);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if round % 2 == 0 {
                // Plant record magics with random lengths and CRCs, and valid records.
                let good = [
                    encode_record(b"{\"k\":1}", segment_tag(1)),
                    encode_record(b"[]", segment_tag(2)),
                ]
                .concat();
                for _ in 0..rng.usize(0..6) {
                    let at = rng.usize(0..=len) & !7;
                    let end = (at + 24).min(len);
                    if round % 4 == 0 {
                        let src = &good[..(end - at).min(good.len())];
                        buf[at..at + src.len()].copy_from_slice(src);
                    } else if end >= at + 4 {
                        buf[at..at + 4].copy_from_slice(&RECORD_MAGIC);
                    }
                }
            }
            let s = scan(1, &buf);
            for r in &s.records {
                assert!(r.id.offset as usize + FRAME_HEADER as usize + r.len <= buf.len());
            }
        }
    }
}
