//! The spool's on-disk encoding (segment header, record frame, meta file) and the recovery
//! scan. Pure functions over byte slices: no I/O, and no panic on any input.
#![forbid(unsafe_code)]

use super::{Corrupt, CorruptReason, RecordId, Recovered, TornTail};

/// First bytes of every segment file.
pub(super) const SEGMENT_MAGIC: [u8; 8] = *b"CPSPOOL\0";
/// Format version written in the segment header.
pub(super) const VERSION: u32 = 1;
/// Segment header length; the first record starts here.
pub(super) const HEADER_LEN: u64 = 32;
/// First bytes of every record. 0xC1 and 0xFF never occur in UTF-8, so a JSON payload can
/// never contain something the resync scan would take for a record start.
pub(super) const RECORD_MAGIC: [u8; 4] = [0xC1, 0xFF, b'S', b'R'];
/// Record frame header length: magic, length, CRC, reserved.
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

/// The 32-byte header of segment `id`.
pub(super) fn segment_header(id: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&id.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

fn check_header(buf: &[u8], id: u64) -> Result<(), CorruptReason> {
    let h = buf
        .get(..HEADER_LEN as usize)
        .ok_or(CorruptReason::BadHeader)?;
    if h[0..8] != SEGMENT_MAGIC
        || le32(h, 8) != Some(VERSION)
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

/// The framed record for `data` (the caller has checked that its length fits in a `u32`).
pub(super) fn encode_record(data: &[u8]) -> Vec<u8> {
    let len = data.len() as u32;
    let mut frame = Vec::with_capacity(framed_len(data.len()) as usize);
    frame.extend_from_slice(&RECORD_MAGIC);
    frame.extend_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), data);
    frame.extend_from_slice(&crc.to_le_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(data);
    frame.resize(framed_len(data.len()) as usize, 0);
    frame
}

/// The data of the record framed at `pos`, if a valid one starts there.
fn parse_record(buf: &[u8], pos: usize) -> Result<&[u8], CorruptReason> {
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
    let crc = crc32c::crc32c_append(crc32c::crc32c(&h[4..8]), data);
    if le32(h, 8) != Some(crc) {
        return Err(CorruptReason::BadCrc);
    }
    if h[12..16] != [0; 4] {
        return Err(CorruptReason::BadFrame);
    }
    Ok(data)
}

/// What the scan of one segment found.
#[derive(Debug, Default)]
pub(super) struct Scan {
    pub records: Vec<Recovered>,
    pub torn: Option<TornTail>,
    pub corrupt: Vec<Corrupt>,
}

/// Scans the content of segment `id`: every valid record, the torn tail (invalid bytes after
/// the last valid record) and every invalid range followed by a valid record. After an
/// invalid frame it resyncs at the next 8-byte position holding a record whose CRC checks.
pub(super) fn scan(id: u64, buf: &[u8]) -> Scan {
    let mut out = Scan::default();
    if buf.iter().all(|&b| b == 0) {
        // Created but never written (a crash before its header was synced): nothing to report.
        return out;
    }
    if let Err(reason) = check_header(buf, id) {
        let length = HEADER_LEN.min(buf.len() as u64);
        out.corrupt.push(Corrupt {
            segment: id,
            offset: 0,
            length,
            reason,
        });
    }
    let mut pos = HEADER_LEN as usize;
    while pos < buf.len() {
        let reason = match parse_record(buf, pos) {
            Ok(data) => {
                out.records.push(Recovered {
                    id: RecordId {
                        segment: id,
                        offset: pos as u64,
                    },
                    data: data.to_vec(),
                });
                pos = pos.saturating_add(framed_len(data.len()) as usize);
                continue;
            }
            Err(reason) => reason,
        };
        let rest = &buf[pos..];
        if reason == CorruptReason::Zeroed && rest.iter().all(|&b| b == 0) {
            break; // the clean end: zeros up to the end of the file
        }
        let next = (pos + 8..buf.len())
            .step_by(8)
            .find(|&p| parse_record(buf, p).is_ok());
        match next {
            Some(q) => {
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

    fn segment(id: u64, records: &[&[u8]], size: usize) -> Vec<u8> {
        let mut buf = segment_header(id).to_vec();
        for r in records {
            buf.extend_from_slice(&encode_record(r));
        }
        buf.resize(size, 0);
        buf
    }

    #[test]
    fn clean_segment_scans_back() {
        let buf = segment(7, &[b"a", b"", b"0123456789"], 4096);
        let s = scan(7, &buf);
        let data: Vec<&[u8]> = s.records.iter().map(|r| r.data.as_slice()).collect();
        assert_eq!(data, [&b"a"[..], b"", b"0123456789"]);
        assert_eq!(s.records[1].id.offset, HEADER_LEN + framed_len(1));
        assert!(s.torn.is_none() && s.corrupt.is_empty());
    }

    #[test]
    fn wrong_header_is_reported_and_records_still_read() {
        let buf = segment(7, &[b"x"], 4096);
        let s = scan(8, &buf);
        assert_eq!(s.corrupt[0].reason, CorruptReason::HeaderId { found: 7 });
        assert_eq!(s.records.len(), 1);
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
                let good = [encode_record(b"{\"k\":1}"), encode_record(b"[]")].concat();
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
                assert!(r.id.offset as usize + FRAME_HEADER as usize + r.data.len() <= buf.len());
            }
        }
    }
}
