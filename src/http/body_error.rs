//! Why a request's body could not be taken: the one error of the body path, shared by the
//! reading of bodies (`body`) and their decoding (`decode`), mapped to a status in `answer`.

use crate::parse::BodyTooLarge;
use crate::queue::NoRoom;

/// Why a request's body could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is larger than `server.max_body_bytes`.
    #[error(transparent)]
    TooLarge(#[from] BodyTooLarge),
    /// A compressed body whose decoded size passes `server.max_decoded_bytes` (decoding
    /// stops there).
    #[error("decoded body larger than {0} bytes (server.max_decoded_bytes)")]
    DecodedTooLarge(usize),
    /// A zstd frame whose window (memory the decoder must keep) is larger than the limit:
    /// `server.max_decoded_bytes` rounded down to a power of two, at least 8 MiB.
    #[error("zstd window larger than {0} bytes (set by server.max_decoded_bytes); compress with a smaller window")]
    WindowTooLarge(usize),
    /// A `Content-Encoding` other than gzip, deflate, zstd or identity, or more than one.
    #[error("unsupported Content-Encoding {0:?}; request bodies may be gzip, deflate or zstd")]
    UnsupportedEncoding(String),
    /// The compressed body could not be decoded (corrupt, truncated, trailing data).
    #[error("invalid {coding} data: {why}")]
    BadEncoding {
        /// The body's `Content-Encoding`.
        coding: &'static str,
        /// What the decoder found.
        why: String,
    },
    /// The body could not be read (connection error, bad chunked encoding).
    #[error("could not read the body: {0}")]
    Read(#[source] hyper::Error),
    /// The body did not arrive within `server.body_read_timeout_ms`.
    #[error("body not received within {0} ms")]
    Timeout(u64),
    /// The body outgrew its reservation and the queue has no more room.
    #[error(transparent)]
    NoRoom(#[from] NoRoom),
}
