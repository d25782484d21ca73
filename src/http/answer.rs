//! The API's answers, and the one table from every refusal to its HTTP status.

use super::body_error::BodyError;
use super::decode;
use crate::intake::Refusal;
use crate::parse::ParseError;
use crate::queue::NoRoom;
use bytes::Bytes;
use http::header::{
    HeaderValue, ACCEPT_ENCODING, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Response, StatusCode};
use http_body_util::Full;

/// Every answer is a small in-memory body.
pub type Resp = Response<Full<Bytes>>;

/// Why a payload request was not accepted: its body (HTTP's layer), or what intake said.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The body could not be taken.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// Intake refused the request.
    #[error(transparent)]
    Refused(#[from] Refusal),
}

impl Failure {
    /// The status that tells the client what happened.
    pub fn status(&self) -> StatusCode {
        match self {
            Failure::Body(e) => body_status(e),
            Failure::Refused(r) => refusal_status(r),
        }
    }
}

/// Statuses of body errors.
pub fn body_status(e: &BodyError) -> StatusCode {
    match e {
        BodyError::BadEncoding { .. } | BodyError::Read(_) => StatusCode::BAD_REQUEST,
        BodyError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        BodyError::TooLarge(_) | BodyError::DecodedTooLarge(_) | BodyError::WindowTooLarge(_) => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        BodyError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
        BodyError::NoRoom(e) => room_status(e),
    }
}

/// Statuses of intake's refusals.
pub fn refusal_status(r: &Refusal) -> StatusCode {
    match r {
        Refusal::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Refusal::Invalid(e) => parse_status(e),
        Refusal::NoRoom(e) => room_status(e),
        Refusal::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Refusal::ShuttingDown
        | Refusal::AckTimeout(_)
        | Refusal::NotStored
        | Refusal::SpoolFull
        | Refusal::SpoolDiskFull(_)
        // A disk error (EIO, a file system gone read-only) is the server's trouble, not the
        // request's: the same request can be taken once the disk (or another instance, since
        // the shard turns unready) takes it, so `503` with `Retry-After`, as for ENOSPC.
        | Refusal::SpoolFailed(_) => StatusCode::SERVICE_UNAVAILABLE,
        Refusal::StoreRefused => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Statuses of bodies that are not collections of payloads.
pub fn parse_status(e: &ParseError) -> StatusCode {
    match e {
        ParseError::Json { .. } | ParseError::Shape(_) | ParseError::TooDeep(_) => {
            StatusCode::BAD_REQUEST
        }
        ParseError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
    }
}

/// Statuses of a queue without room: `413` when it never could have any, `503` otherwise.
fn room_status(e: &NoRoom) -> StatusCode {
    match e {
        NoRoom::TooManyPayloads { .. }
        | NoRoom::OverQueue { .. }
        | NoRoom::OverUnverified { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        NoRoom::Overloaded | NoRoom::Closed | NoRoom::UnverifiedFull => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// A JSON answer.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `{"error": "..."}` with the message escaped.
pub fn error_body(msg: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "error": msg }).to_string())
}

/// `405` naming the methods the path takes.
pub fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = json(
        StatusCode::METHOD_NOT_ALLOWED,
        error_body(&format!("method not allowed; use {allow}")),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

/// `200 {"accepted": N}`.
pub fn accepted(n: usize) -> Resp {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n);
    // Exactly the length: `Bytes` takes a full `Vec` as it is, but allocates a shared header
    // for one with spare capacity.
    let mut body = Vec::with_capacity(13 + digits.len());
    body.extend_from_slice(b"{\"accepted\":");
    body.extend_from_slice(digits.as_bytes());
    body.push(b'}');
    json(StatusCode::OK, body)
}

/// The answer to a refused payload request: its status, the reason in words, and the
/// headers that status calls for.
pub fn refused(e: &Failure, retry_after_secs: u32) -> Resp {
    let status = e.status();
    let mut r = json(status, error_body(&e.to_string()));
    let headers = r.headers_mut();
    match status {
        StatusCode::SERVICE_UNAVAILABLE => {
            headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        // RFC 9110 15.5.16: a 415 for a content coding lists the accepted ones.
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            headers.insert(ACCEPT_ENCODING, HeaderValue::from_static(decode::ACCEPTED));
        }
        _ => {}
    }
    if let Failure::Refused(Refusal::Unauthorized(why)) = e {
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(why.challenge()));
    }
    r
}
