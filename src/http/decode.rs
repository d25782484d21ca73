//! Compressed request bodies: `Content-Encoding: gzip`, `deflate` or `zstd`, decoded as the
//! compressed frames arrive into buffers whose contents never pass the decoded-body cap
//! (`server.max_decoded_bytes`) nor the body's reservation in the queue budget.
//!
//! The decoders are the streaming *write* decoders of flate2 and zstd: each compressed frame
//! is pushed in, and they push decoded output, at most one internal buffer (32 KiB for
//! flate2, zstd's block size for zstd) at a time, into the output buffer, which refuses the
//! write that would pass a limit. Decoding therefore stops there, and no more than the cap
//! is ever allocated for the output, however much the input would expand.

use super::body_error::BodyError;
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

/// Memory a flate2 decoder holds besides its output (the 32 KiB history and its tables, the
/// writer's 32 KiB buffer), rounded up; counted in the request's reservation.
const FLATE_STATE: usize = 128 << 10;
/// Memory a zstd decoder holds besides its output and window: its context (about 160 KiB),
/// its input block buffer and the writer's buffer (128 KiB each), the block slack of its
/// window buffer; rounded up.
const ZSTD_STATE: usize = 512 << 10;

/// The decoded body as it grows, within its limits: `cap` (`server.max_decoded_bytes`) and the
/// request's reservation in the shard's queue budget, which holds every buffer allocated for
/// the output (taken before it is allocated) or refuses. The reservation counts the decoder's
/// memory too: its fixed state, and for zstd its window, the history buffer the decoder
/// writes every decoded byte into before passing it on (allocated by zstd's own `malloc` at
/// the frame's window size, resident as far as output has been written into it: up to the
/// output's length, at most the window).
///
/// The output goes into a list of chunks (the first one sized by the room the request
/// already has, then from 64 KiB doubling up to 1 MiB), joined once at the end: growing never
/// copies nor leaves the allocator a trail of ever larger freed buffers (a doubling `Vec`
/// added 49 MiB to peak RSS to refuse a bomb at the 16 MiB cap; chunks add 21 MiB), and a
/// stalled body holds only what it was given. The join holds the body twice for a moment; it runs without yielding, so a
/// shard joins one body at a time.
struct Decoded<'r> {
    chunks: Vec<Vec<u8>>,
    /// Bytes written.
    len: usize,
    /// Capacity of every chunk.
    allocated: usize,
    cap: usize,
    room: &'r mut Reservation,
    /// The decoder's fixed state, in bytes.
    state: usize,
    /// zstd: the largest window a frame may have (`0` for the flate codings, whose 32 KiB
    /// history is in `state`).
    window: usize,
    /// Why the last write was refused (a limit, not corrupt input).
    refused: Option<BodyError>,
}

/// Largest output chunk.
const CHUNK_MAX: usize = 1 << 20;

impl Write for Decoded<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let need = self.len + data.len();
        if need > self.cap {
            return self.refuse(BodyError::DecodedTooLarge(self.cap));
        }
        let spare = self.chunks.last().map_or(0, |c| c.capacity() - c.len());
        let missing = data.len().saturating_sub(spare);
        let size = if missing > 0 {
            self.allocated
                .clamp(64 << 10, CHUNK_MAX)
                .max(missing)
                .min(self.cap - self.len)
        } else {
            0
        };
        let held = self.allocated + size + self.state + need.min(self.window);
        if held > self.room.bytes() {
            if let Err(e) = self.room.grow_to(held) {
                return self.refuse(e.into());
            }
        }
        let (now, later) = data.split_at(data.len() - missing);
        if let Some(last) = self.chunks.last_mut() {
            last.extend_from_slice(now);
        }
        if size > 0 {
            let mut chunk = Vec::with_capacity(size);
            chunk.extend_from_slice(later);
            self.allocated += chunk.capacity();
            self.chunks.push(chunk);
        }
        self.len = need;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Decoded<'_> {
    /// The whole body in one buffer (the chunks are freed as they are copied).
    fn take_body(&mut self) -> Vec<u8> {
        let mut chunks = std::mem::take(&mut self.chunks);
        if chunks.len() == 1 {
            return chunks.pop().unwrap_or_default();
        }
        let mut body = Vec::with_capacity(self.len);
        for chunk in chunks {
            body.extend_from_slice(&chunk);
        }
        body
    }

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
    /// the output grows; never past the shard's whole queue: `413`).
    pub fn new(coding: Coding, cap: usize, room: &'r mut Reservation) -> Result<Self, BodyError> {
        let window_log = (usize::BITS - 1 - cap.max(8 << 20).leading_zeros()).min(31);
        let (state, window) = match coding {
            Coding::Zstd => (ZSTD_STATE, 1usize << window_log),
            Coding::Gzip | Coding::Deflate => (FLATE_STATE, 0),
        };
        // The decoder's state is held from the start (it is allocated now, or with the
        // first frame). The first output chunk takes the rest of the room (the body's
        // declared length). The output is not reserved whole as address space up front: with
        // huge pages (mimalloc's arenas, where transparent huge pages are allowed) that cost
        // 2 MiB resident per request at once, and 512 stalled compressed requests of 3 KB
        // each held 1.2 GB against a 64 MiB queue.
        room.grow_to(room.bytes().max(state))?;
        let first = room.bytes().saturating_sub(state).min(cap);
        let chunks = if first > 0 {
            vec![Vec::with_capacity(first)]
        } else {
            Vec::new()
        };
        let out = Decoded {
            allocated: chunks.iter().map(Vec::capacity).sum(),
            chunks,
            len: 0,
            cap,
            room,
            state,
            window,
            refused: None,
        };
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
        Ok(out.take_body())
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
#[path = "decode_tests.rs"]
mod tests;
