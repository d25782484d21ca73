//! Compressed request bodies: `Content-Encoding: gzip`, `deflate` or `zstd`, decoded as the
//! compressed frames arrive into one buffer whose contents never pass the decoded-body cap
//! (`server.max_decoded_bytes`) nor the body's reservation in the queue budget.
//!
//! The decoders are the streaming *write* decoders of flate2 and zstd: each compressed frame
//! is pushed in, and they push decoded output, at most one internal buffer (32 KiB for
//! flate2, zstd's block size for zstd) at a time, into the output buffer, which refuses the
//! write that would pass a limit. Decoding therefore stops there, and no more than the cap
//! is ever allocated for the output, however much the input would expand.
#![forbid(unsafe_code)]

use super::body::BodyError;
use crate::queue::Reservation;
use http::header::CONTENT_ENCODING;
use std::io::{self, Write};

/// What `Accept-Encoding` lists on a `415`: the codings a request body may use.
pub const ACCEPTED: &str = "gzip, deflate, zstd";

/// A content coding the server decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// gzip (RFC 1952), also `x-gzip`; several members in a row are one body.
    Gzip,
    /// deflate: zlib-wrapped (RFC 1950, what HTTP means by it) or raw (RFC 1951, what some
    /// clients send), told apart by the first two bytes.
    Deflate,
    /// Zstandard (RFC 8878); several frames in a row are one body.
    Zstd,
}

impl Coding {
    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Zstd => "zstd",
        }
    }

    /// The request body's coding from its `Content-Encoding` header(s): `None` when there is
    /// none (no header, or only `identity`), `415` for anything but exactly one of gzip,
    /// deflate and zstd.
    pub fn of_request(headers: &http::HeaderMap) -> Result<Option<Coding>, BodyError> {
        let mut found = None;
        for value in headers.get_all(CONTENT_ENCODING) {
            let text = value.to_str().map_err(|_| {
                BodyError::UnsupportedEncoding(String::from_utf8_lossy(value.as_bytes()).into())
            })?;
            for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                let coding = match token.to_ascii_lowercase().as_str() {
                    "identity" => continue,
                    "gzip" | "x-gzip" => Coding::Gzip,
                    "deflate" => Coding::Deflate,
                    "zstd" => Coding::Zstd,
                    _ => return Err(BodyError::UnsupportedEncoding(token.into())),
                };
                if found.is_some() {
                    return Err(BodyError::UnsupportedEncoding(text.trim().into()));
                }
                found = Some(coding);
            }
        }
        Ok(found)
    }
}

/// The decoded body as it grows, within its limits: `cap` (`server.max_decoded_bytes`) and the
/// request's reservation in the shard's queue budget, which grows ahead of the output
/// (doubling, from 64 KiB, up to `cap` and `queue_max`) or refuses.
struct Decoded<'r> {
    buf: Vec<u8>,
    cap: usize,
    queue_max: usize,
    room: &'r mut Reservation,
    /// Why the last write was refused (a limit, not corrupt input).
    refused: Option<BodyError>,
}

impl Write for Decoded<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let need = self.buf.len() + data.len();
        if need > self.cap {
            return self.refuse(BodyError::DecodedTooLarge(self.cap));
        }
        if need > self.room.bytes() {
            let want = (self.room.bytes() * 2)
                .max(64 << 10)
                .min(self.cap)
                .min(self.queue_max)
                .max(need);
            if let Err(e) = self.room.grow_to(want) {
                return self.refuse(e.into());
            }
            self.buf.reserve_exact(self.room.bytes() - self.buf.len());
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Decoded<'_> {
    fn refuse(&mut self, e: BodyError) -> io::Result<usize> {
        self.refused = Some(e);
        Err(io::Error::other("decoded body refused"))
    }
}

/// The decoder of one coding, writing into [`Decoded`].
enum Inner<'r> {
    /// deflate before its first two bytes have arrived (they tell zlib from raw).
    DeflateStart(Decoded<'r>, Vec<u8>),
    Gzip(flate2::write::MultiGzDecoder<Decoded<'r>>),
    Zlib(flate2::write::ZlibDecoder<Decoded<'r>>),
    RawDeflate(flate2::write::DeflateDecoder<Decoded<'r>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Decoded<'r>>>),
    /// Between states (only while switching from `DeflateStart`).
    Empty,
}

/// Decodes one request body, fed its compressed frames in order with [`BodyDecoder::write`];
/// [`BodyDecoder::finish`] checks that the compressed data was complete and returns the
/// decoded body.
pub struct BodyDecoder<'r> {
    coding: Coding,
    /// zstd: the largest window accepted.
    window_max: usize,
    inner: Inner<'r>,
}

impl std::fmt::Debug for BodyDecoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyDecoder")
            .field("coding", &self.coding)
            .finish_non_exhaustive()
    }
}

impl<'r> BodyDecoder<'r> {
    /// A decoder for `coding` whose output may reach `cap` bytes, held in `room` (grown as
    /// the output grows, never past `queue_max`: the shard's whole queue).
    pub fn new(
        coding: Coding,
        cap: usize,
        queue_max: usize,
        room: &'r mut Reservation,
    ) -> Result<Self, BodyError> {
        // The whole cap at once, as address space: pages are only resident once written, so
        // this costs memory only as the output grows, and growing never copies (a doubling
        // buffer holds the old and the new copy at once, and the allocator keeps freed pages
        // for a while: 31 MiB resident to reach 16 MiB). Where address space is not
        // overcommitted, the buffer grows with the reservation instead.
        let mut buf = Vec::new();
        if buf.try_reserve_exact(cap).is_err() {
            buf.reserve_exact(room.bytes().min(cap));
        }
        let out = Decoded {
            buf,
            cap,
            queue_max,
            room,
            refused: None,
        };
        let window_log = (usize::BITS - 1 - cap.max(8 << 20).leading_zeros()).min(31);
        let inner = match coding {
            Coding::Gzip => Inner::Gzip(flate2::write::MultiGzDecoder::new(out)),
            Coding::Deflate => Inner::DeflateStart(out, Vec::with_capacity(2)),
            Coding::Zstd => {
                let mut d =
                    zstd::stream::write::Decoder::new(out).map_err(|e| BodyError::BadEncoding {
                        coding: coding.name(),
                        why: e.to_string(),
                    })?;
                // A frame may ask for a window (the history the decoder keeps, allocated when
                // the frame starts) of up to 2 GiB. Windows up to the cap are taken, and at
                // least 8 MiB (2^23, what zstd's levels 1 to 19 use when streaming without a
                // known size); a larger one is refused (`413`) rather than allocated.
                d.window_log_max(window_log)
                    .map_err(|e| BodyError::BadEncoding {
                        coding: coding.name(),
                        why: e.to_string(),
                    })?;
                Inner::Zstd(Box::new(d))
            }
        };
        Ok(BodyDecoder {
            coding,
            window_max: 1 << window_log,
            inner,
        })
    }

    /// Decodes the next compressed frame: `413` as soon as the output passes the cap or the
    /// whole queue, `503` when the queue has no room for it now, `400` for corrupt data.
    pub fn write(&mut self, data: &[u8]) -> Result<(), BodyError> {
        let r = match &mut self.inner {
            Inner::DeflateStart(..) => return self.start_deflate(data),
            Inner::Gzip(d) => d.write_all(data),
            Inner::Zlib(d) => d.write_all(data),
            Inner::RawDeflate(d) => d.write_all(data),
            Inner::Zstd(d) => d.write_all(data),
            Inner::Empty => Ok(()),
        };
        r.map_err(|e| self.error(e))
    }

    /// deflate: collects the first two bytes, then picks the zlib or raw decoder. A zlib
    /// header is `CMF FLG` with compression method 8, a window of at most 32 KiB and
    /// `(CMF * 256 + FLG) % 31 == 0`; raw deflate data starting like that would be a
    /// stored block with nonzero padding bits, which encoders do not write.
    fn start_deflate(&mut self, data: &[u8]) -> Result<(), BodyError> {
        let Inner::DeflateStart(_, head) = &mut self.inner else {
            return Ok(());
        };
        let take = (2 - head.len()).min(data.len());
        head.extend_from_slice(&data[..take]);
        if head.len() < 2 {
            return Ok(());
        }
        let Inner::DeflateStart(out, head) = std::mem::replace(&mut self.inner, Inner::Empty)
        else {
            return Ok(());
        };
        let (cmf, flg) = (head[0], head[1]);
        let zlib =
            cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0;
        self.inner = if zlib {
            Inner::Zlib(flate2::write::ZlibDecoder::new(out))
        } else {
            Inner::RawDeflate(flate2::write::DeflateDecoder::new(out))
        };
        self.write(&head)?;
        self.write(&data[take..])
    }

    /// Ends the body: `400` if the compressed data stopped before its end; otherwise the
    /// decoded body.
    pub fn finish(mut self) -> Result<Vec<u8>, BodyError> {
        let r = match &mut self.inner {
            Inner::DeflateStart(..) | Inner::Empty => {
                return Err(BodyError::BadEncoding {
                    coding: self.coding.name(),
                    why: "the body ends before the compressed data starts".into(),
                })
            }
            Inner::Gzip(d) => d.try_finish(),
            Inner::Zlib(d) => d.try_finish(),
            Inner::RawDeflate(d) => d.try_finish(),
            Inner::Zstd(d) => d.do_finish(),
        };
        r.map_err(|e| self.error(e))?;
        let out = match &mut self.inner {
            Inner::Gzip(d) => d.get_mut(),
            Inner::Zlib(d) => d.get_mut(),
            Inner::RawDeflate(d) => d.get_mut(),
            Inner::Zstd(d) => d.get_mut(),
            Inner::DeflateStart(out, _) => out,
            Inner::Empty => return Ok(Vec::new()),
        };
        Ok(std::mem::take(&mut out.buf))
    }

    /// The refusal behind a failed write: a limit the output hit, or corrupt input.
    fn error(&mut self, e: io::Error) -> BodyError {
        let out = match &mut self.inner {
            Inner::Gzip(d) => Some(d.get_mut()),
            Inner::Zlib(d) => Some(d.get_mut()),
            Inner::RawDeflate(d) => Some(d.get_mut()),
            Inner::Zstd(d) => Some(d.get_mut()),
            Inner::DeflateStart(out, _) => Some(out),
            Inner::Empty => None,
        };
        if let Some(refused) = out.and_then(|o| o.refused.take()) {
            return refused;
        }
        // zstd's words for a frame whose window is over `window_log_max`.
        if self.coding == Coding::Zstd && e.to_string().contains("too much memory") {
            return BodyError::WindowTooLarge(self.window_max);
        }
        let why = match e.kind() {
            // A decoder that reached the end of its stream takes no more input.
            io::ErrorKind::WriteZero => "data after the end of the compressed stream".into(),
            io::ErrorKind::UnexpectedEof => "the compressed data ends early".into(),
            _ => e.to_string(),
        };
        BodyError::BadEncoding {
            coding: self.coding.name(),
            why,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::answer::body_status;
    use crate::queue::Budget;
    use crate::queue::NoRoom;
    use std::sync::Arc;

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn zlib(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn zstd(b: &[u8]) -> Vec<u8> {
        zstd::encode_all(b, 3).unwrap()
    }

    /// Decodes `data` fed in `chunk`-byte frames with a fresh 64 MiB budget.
    fn decode(coding: Coding, data: &[u8], chunk: usize, cap: usize) -> Result<Vec<u8>, BodyError> {
        let budget = Arc::new(Budget::new(1000, 64 << 20));
        let mut room = budget.reserve_bytes(0).unwrap();
        let mut d = BodyDecoder::new(coding, cap, 64 << 20, &mut room)?;
        for c in data.chunks(chunk.max(1)) {
            d.write(c)?;
        }
        let out = d.finish()?;
        assert!(
            room.bytes() >= out.len(),
            "the reservation holds the output"
        );
        Ok(out)
    }

    fn body(n: usize) -> Vec<u8> {
        (0..n).map(|i| b"{\"data\":[1,2,3]}  "[i % 18]).collect()
    }

    #[test]
    fn each_coding_decodes_whatever_the_frame_sizes() {
        let plain = body(300_000);
        for (coding, data) in [
            (Coding::Gzip, gzip(&plain)),
            (Coding::Deflate, zlib(&plain)),
            (Coding::Deflate, raw_deflate(&plain)),
            (Coding::Zstd, zstd(&plain)),
        ] {
            for chunk in [1, 2, 3, 1000, usize::MAX] {
                let out = decode(coding, &data, chunk, 16 << 20)
                    .unwrap_or_else(|e| panic!("{coding:?} in {chunk}-byte frames: {e}"));
                assert!(out == plain, "{coding:?} in {chunk}-byte frames");
            }
        }
    }

    #[test]
    fn concatenated_gzip_members_and_zstd_frames_are_one_body() {
        let (a, b) = (b"{\"data\":[".to_vec(), b"1]}".to_vec());
        let two = [gzip(&a), gzip(&b)].concat();
        assert_eq!(
            decode(Coding::Gzip, &two, 7, 1 << 20).unwrap(),
            b"{\"data\":[1]}"
        );
        let two = [zstd(&a), zstd(&b)].concat();
        assert_eq!(
            decode(Coding::Zstd, &two, 7, 1 << 20).unwrap(),
            b"{\"data\":[1]}"
        );
    }

    #[test]
    fn output_stops_at_the_cap_without_allocating_past_it() {
        // 64 MiB of zeros, about 64 KiB compressed, against a 1 MiB cap.
        let zeros = vec![0u8; 64 << 20];
        for (coding, data) in [
            (Coding::Gzip, gzip(&zeros)),
            (Coding::Deflate, zlib(&zeros)),
            (Coding::Zstd, zstd(&zeros)),
        ] {
            let budget = Arc::new(Budget::new(1000, 64 << 20));
            let mut room = budget.reserve_bytes(0).unwrap();
            let mut d = BodyDecoder::new(coding, 1 << 20, 64 << 20, &mut room).unwrap();
            let e = data
                .chunks(16 << 10)
                .try_for_each(|c| d.write(c))
                .expect_err("over the cap");
            assert!(
                matches!(e, BodyError::DecodedTooLarge(c) if c == 1 << 20),
                "{coding:?}"
            );
            assert_eq!(body_status(&e), http::StatusCode::PAYLOAD_TOO_LARGE);
            assert_eq!(
                e.to_string(),
                "decoded body larger than 1048576 bytes (server.max_decoded_bytes)"
            );
            let out = match &mut d.inner {
                Inner::Gzip(d) => d.get_mut(),
                Inner::Zlib(d) => d.get_mut(),
                Inner::Zstd(d) => d.get_mut(),
                _ => unreachable!(),
            };
            assert!(
                out.buf.capacity() <= 1 << 20,
                "{coding:?}: {}",
                out.buf.capacity()
            );
            drop(d);
            assert!(room.bytes() <= 1 << 20);
        }
    }

    #[test]
    fn the_budget_counts_decoded_bytes() {
        let plain = body(1 << 20);
        // No room now: 503, as for a plain body.
        let budget = Arc::new(Budget::new(1000, 4 << 20));
        let held = budget.reserve_bytes(7 << 19).unwrap();
        let mut room = budget.reserve_bytes(0).unwrap();
        let mut d = BodyDecoder::new(Coding::Gzip, 16 << 20, 4 << 20, &mut room).unwrap();
        assert!(matches!(
            d.write(&gzip(&plain)),
            Err(BodyError::NoRoom(NoRoom::Overloaded))
        ));
        drop(d);
        drop(room);
        drop(held);
        assert_eq!(budget.depth(), (0, 0), "all room returned");
        // More than the whole queue holds: 413 naming queue.max_bytes.
        let budget = Arc::new(Budget::new(1000, 512 << 10));
        let mut room = budget.reserve_bytes(0).unwrap();
        let mut d = BodyDecoder::new(Coding::Zstd, 16 << 20, 512 << 10, &mut room).unwrap();
        let e = d.write(&zstd(&plain)).unwrap_err();
        assert!(
            matches!(e, BodyError::NoRoom(NoRoom::OverQueue { max, .. }) if max == 512 << 10),
            "{e}"
        );
        drop(d);
        // Within both: the reservation ends up holding the decoded length.
        let budget = Arc::new(Budget::new(1000, 4 << 20));
        let mut room = budget.reserve_bytes(1000).unwrap();
        let mut d = BodyDecoder::new(Coding::Deflate, 16 << 20, 4 << 20, &mut room).unwrap();
        d.write(&zlib(&plain)).unwrap();
        let out = d.finish().unwrap();
        assert_eq!(out.len(), plain.len());
        room.shrink_to(out.len());
        assert_eq!(budget.depth().1, plain.len());
    }

    #[test]
    fn corrupt_truncated_and_trailing_data_are_400() {
        let plain = body(10_000);
        let gz = gzip(&plain);
        let mut bad_crc = gz.clone();
        let n = bad_crc.len();
        bad_crc[n - 8] ^= 1;
        let z = zstd(&plain);
        for (coding, data, why) in [
            (Coding::Gzip, b"\x1f\x8b\x08\x00garbage".to_vec(), ""),
            (Coding::Gzip, b"not gzip".to_vec(), ""),
            (Coding::Gzip, gz[..gz.len() / 2].to_vec(), "ends early"),
            (Coding::Gzip, bad_crc, ""),
            (Coding::Gzip, [gz.clone(), b"junk".to_vec()].concat(), ""),
            (Coding::Deflate, b"\xff\xff\xff\xff".to_vec(), ""),
            (Coding::Deflate, zlib(&plain)[..30].to_vec(), "ends early"),
            (
                Coding::Deflate,
                [zlib(&plain), b"x".to_vec()].concat(),
                "after the end",
            ),
            (Coding::Deflate, b"x".to_vec(), "before the compressed data"),
            (Coding::Zstd, b"not zstd".to_vec(), ""),
            (Coding::Zstd, z[..z.len() - 3].to_vec(), ""),
            (Coding::Gzip, Vec::new(), ""),
            (Coding::Zstd, Vec::new(), ""),
        ] {
            let e = decode(coding, &data, 5, 1 << 20).expect_err("refused");
            assert_eq!(
                body_status(&e),
                http::StatusCode::BAD_REQUEST,
                "{coding:?} {e}"
            );
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("invalid {} data: ", coding.name())) && msg.contains(why),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_zstd_window_larger_than_the_cap_is_refused_not_allocated() {
        // Window log 27 (128 MiB) against a 1 MiB cap (which allows windows of 8 MiB).
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        e.window_log(27).unwrap();
        e.write_all(&body(2 << 20)).unwrap();
        let data = e.finish().unwrap();
        let err = decode(Coding::Zstd, &data, 1 << 20, 1 << 20).expect_err("refused");
        assert!(matches!(err, BodyError::WindowTooLarge(w) if w == 8 << 20));
        assert_eq!(body_status(&err), http::StatusCode::PAYLOAD_TOO_LARGE);
        // The same data with a cap that covers its window decodes.
        assert_eq!(
            decode(Coding::Zstd, &data, 1 << 20, 128 << 20).unwrap(),
            body(2 << 20)
        );
    }

    #[test]
    fn content_encoding_headers() {
        let of = |values: &[&str]| {
            let mut h = http::HeaderMap::new();
            for v in values {
                h.append(CONTENT_ENCODING, http::HeaderValue::from_str(v).unwrap());
            }
            Coding::of_request(&h)
        };
        assert_eq!(of(&[]).ok(), Some(None));
        assert_eq!(of(&["identity"]).ok(), Some(None));
        assert_eq!(of(&[""]).ok(), Some(None));
        assert_eq!(of(&["GZIP"]).ok(), Some(Some(Coding::Gzip)));
        assert_eq!(of(&["x-gzip"]).ok(), Some(Some(Coding::Gzip)));
        assert_eq!(of(&[" deflate "]).ok(), Some(Some(Coding::Deflate)));
        assert_eq!(of(&["zstd", "identity"]).ok(), Some(Some(Coding::Zstd)));
        for bad in [
            &["br"][..],
            &["snappy"],
            &["gzip, zstd"],
            &["gzip", "gzip"],
            &["compress"],
        ] {
            let e = of(bad).expect_err("refused");
            assert_eq!(
                body_status(&e),
                http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{bad:?}"
            );
        }
        assert_eq!(
            of(&["br"]).unwrap_err().to_string(),
            "unsupported Content-Encoding \"br\"; request bodies may be gzip, deflate or zstd"
        );
    }
}
