//! Request bodies on the wire: read within the request's queue reservation (decoded when they
//! have a `Content-Encoding`), within `server.body_read_timeout_ms`; refused bodies drained.

use super::body_error::BodyError;
use super::decode::{BodyDecoder, Coding};
use crate::parse::BodyTooLarge;
use crate::queue::Reservation;
use bytes::Bytes;
use futures_lite::future;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::time::Duration;

/// Most of a refused body read and dropped so that its client receives the answer.
const LINGER_BYTES: usize = 16 << 20;
/// The longest a refused body is read and dropped.
const LINGER: Duration = Duration::from_secs(5);

/// What bounds one body: `server.max_body_bytes` (as sent), `server.max_decoded_bytes` and
/// the queue budget (decoded, through the reservation), `server.body_read_timeout_ms`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `server.max_body_bytes`.
    pub max_body: usize,
    /// `server.max_decoded_bytes`.
    pub max_decoded: usize,
    /// `server.body_read_timeout_ms`.
    pub timeout_ms: u64,
}

/// Reads the whole body into one buffer held in `room` (decoded if `coding` says so). A body
/// that is already in hand (hyper read it with the head, as for most small requests) is taken
/// without arming a timer; only a read that has to wait gets one.
pub async fn read(
    body: &mut Incoming,
    coding: Option<Coding>,
    limits: Limits,
    room: &mut Reservation,
) -> Result<Bytes, BodyError> {
    let read = async {
        match coding {
            None => read_plain(body, limits.max_body, room).await,
            Some(coding) => {
                let decoder = BodyDecoder::new(coding, limits.max_decoded, room)?;
                read_decoded(body, limits.max_body, decoder).await
            }
        }
    };
    futures_lite::pin!(read);
    match future::poll_once(read.as_mut()).await {
        Some(body) => body,
        None => {
            future::or(read, async {
                glommio::timer::sleep(Duration::from_millis(limits.timeout_ms)).await;
                Err(BodyError::Timeout(limits.timeout_ms))
            })
            .await
        }
    }
}

/// Collects the body into one buffer, refusing it as soon as it passes `limit`. The buffer
/// never holds more than `room` has reserved: a body without `Content-Length` grows its
/// reservation (doubling, from 64 KiB) as it arrives, and is refused with `503` when the
/// budget has no more.
async fn read_plain(
    body: &mut Incoming,
    limit: usize,
    room: &mut Reservation,
) -> Result<Bytes, BodyError> {
    let mut buf: Vec<u8> = Vec::new();
    buf.reserve_exact(room.bytes());
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        if let Ok(data) = frame.into_data() {
            let need = buf.len() + data.len();
            if need > limit {
                return Err(BodyTooLarge(limit).into());
            }
            if need > room.bytes() {
                room.grow_to(need.max(room.bytes() * 2).max(64 << 10).min(limit))?;
                buf.reserve_exact(room.bytes() - buf.len());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(exact(buf))
}

/// Reads a compressed body and decodes each frame as it arrives, refusing the body as soon as
/// its compressed bytes pass `limit` (`server.max_body_bytes`) or the decoder refuses (see
/// [`BodyDecoder::write`]). Only the decoded output is kept; it is held in the request's
/// reservation.
async fn read_decoded(
    body: &mut Incoming,
    limit: usize,
    mut decoder: BodyDecoder<'_>,
) -> Result<Bytes, BodyError> {
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > limit {
                return Err(BodyTooLarge(limit).into());
            }
            decoder.write(&data)?;
            // Decoding is CPU work on the shard's thread: let other connections run between
            // frames.
            glommio::yield_if_needed().await;
        }
    }
    Ok(exact(decoder.finish()?))
}

/// The buffer as `Bytes`, its spare capacity given back when it is more than the body.
fn exact(mut buf: Vec<u8>) -> Bytes {
    if buf.capacity() > buf.len() * 2 {
        buf.shrink_to_fit();
    }
    Bytes::from(buf)
}

/// Reads what is left of a refused request's body and drops it, at most [`LINGER_BYTES`] for
/// at most [`LINGER`], in a task of its own while the answer is written (nginx's lingering
/// close): a client that writes its whole body before reading (Python's `http.client`,
/// curl without `Expect`) would otherwise be reset by the close of a socket holding unread
/// data, and never see the `413` or `503`. A body drained to its end even leaves the
/// connection usable.
pub fn linger(mut body: Incoming) {
    glommio::spawn_local(async move {
        let drain = async {
            let mut seen = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, |d| d.len());
                if seen > LINGER_BYTES {
                    break;
                }
            }
        };
        future::or(drain, glommio::timer::sleep(LINGER)).await;
    })
    .detach();
}
