//! HTTP: hyper http1 connections on glommio, routing, and the answers the API promises.
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /v1/payloads`, `POST /` | `200 {"accepted": N}`, `400`, `401`, `408`, `413`, `415`, `503` |
//! | other method on a payload path | `405` with `Allow: POST` |
//! | `GET /healthz`, `/readyz`, `/metrics` | liveness, readiness, Prometheus text |

pub mod decode;
mod io;

pub use io::{GlommioTimer, HyperIo, Scratch};

use crate::config::Ack;
use crate::ingest::IngestError;
use crate::metrics::{inc, render, Route};
use crate::queue::{Delivery, Job, Spooled};
use crate::shard::ShardCtx;
use bytes::Bytes;
use decode::{BodyDecoder, Coding};
use futures_lite::future;
use http::header::{
    HeaderValue, ACCEPT_ENCODING, ALLOW, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE,
    RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use std::convert::Infallible;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Every answer is a small in-memory body.
pub type Resp = Response<Full<Bytes>>;

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `server.listen`: payloads, and the operational routes unless an admin listener is set.
    Public,
    /// `server.admin_listen`: `/metrics`, `/healthz` and `/readyz` only.
    Admin,
}

/// Serves one connection until the client closes it, an error ends it, or shutdown asks it to
/// finish (the request in progress completes, keep-alive stops).
pub async fn serve_connection(stream: glommio::net::TcpStream, shard: Rc<ShardCtx>, on: Listener) {
    let cfg = &shard.config.server;
    if let Err(e) = stream.set_write_timeout(Some(Duration::from_millis(cfg.write_timeout_ms))) {
        tracing::debug!(error = %e, "cannot set the write timeout; closing the connection");
        return;
    }
    // `[tls]` covers the public listener only; the admin listener stays plain HTTP.
    match (&shard.tls, on) {
        (Some(tls), Listener::Public) => {
            // A handshake in progress at shutdown is dropped: no request has started on it.
            let handshake = future::or(async { Some(tls.accept(stream).await) }, async {
                shard.shutdown.wait().await;
                None
            });
            match handshake.await {
                None => {}
                Some(Ok(tls_stream)) => {
                    serve_http(HyperIo::new(tls_stream, shard.scratch.clone()), shard, on).await
                }
                Some(Err(e)) => {
                    inc(&shard.stats.tls_handshake_failures, 1);
                    tracing::debug!(shard = shard.id, error = %e, "TLS handshake failed; connection closed");
                }
            }
        }
        _ => serve_http(HyperIo::new(stream, shard.scratch.clone()), shard, on).await,
    }
}

/// Serves HTTP/1.1 on a connection (plain, or TLS once its handshake is done).
async fn serve_http<S>(io: HyperIo<S>, shard: Rc<ShardCtx>, on: Listener)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    let cfg = &shard.config.server;
    let closes_at = closes_at(cfg.max_connection_age_ms);
    let svc_shard = shard.clone();
    let svc = service_fn(move |req| {
        let shard = svc_shard.clone();
        async move {
            let mut resp = handle(&shard, req, on).await;
            // One clock read per request, and only with the setting on.
            if closes_at.is_some_and(|t| Instant::now() >= t) && resp.status().is_success() {
                // hyper closes the connection once this answer is written.
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
                inc(&shard.stats.connections_aged, 1);
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(GlommioTimer::new())
        .header_read_timeout(Duration::from_millis(cfg.header_read_timeout_ms))
        // hyper refuses a head larger than its read buffer with 431; 8 KiB is hyper's minimum.
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .writev(false)
        .keep_alive(true);
    let conn = builder.serve_connection(io, svc);
    futures_lite::pin!(conn);
    let stop = shard.shutdown.wait();
    let finished_first = future::or(
        async {
            let _ = conn.as_mut().await;
            true
        },
        async {
            stop.await;
            false
        },
    )
    .await;
    if !finished_first {
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}

/// When a connection accepted now reaches `server.max_connection_age_ms` (`None`: never):
/// between 90% and 100% of the age, drawn per connection, so that connections opened
/// together (clients reconnecting after a restart) do not all close together.
///
/// Only answers that accepted their request (2xx) close the connection: a refusal may leave
/// part of its body unread (read and dropped by `linger`), and closing then could reset the
/// connection before the client reads the answer.
fn closes_at(age_ms: u64) -> Option<Instant> {
    (age_ms > 0)
        .then(|| Instant::now() + Duration::from_millis(age_ms - fastrand::u64(0..=age_ms / 10)))
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Resp {
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

fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = json(
        StatusCode::METHOD_NOT_ALLOWED,
        error_body(&format!("method not allowed; use {allow}")),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

fn refuse(shard: &ShardCtx, e: &IngestError) -> Resp {
    let mut r = json(e.status(), error_body(&e.to_string()));
    if e.status() == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(
            RETRY_AFTER,
            HeaderValue::from(shard.config.server.retry_after_secs),
        );
    }
    if let IngestError::Unauthorized(why) = e {
        // RFC 6750 3: a request without a token gets the bare challenge; a wrong one says
        // `invalid_token`.
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(match why {
                crate::auth::Refusal::Missing => "Bearer",
                crate::auth::Refusal::Invalid => "Bearer error=\"invalid_token\"",
            }),
        );
    }
    if e.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        // RFC 9110 15.5.16: a 415 for a content coding lists the accepted ones.
        r.headers_mut()
            .insert(ACCEPT_ENCODING, HeaderValue::from_static(decode::ACCEPTED));
    }
    r
}

async fn handle(shard: &Rc<ShardCtx>, req: Request<Incoming>, on: Listener) -> Resp {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    let path = req.uri().path();
    // With an admin listener, each listener serves only its own routes.
    let operational = matches!(path, "/healthz" | "/readyz" | "/metrics");
    let elsewhere = match on {
        Listener::Admin => !operational,
        Listener::Public => operational && shard.config.server.admin_listen.is_some(),
    };
    if elsewhere {
        let resp = json(
            StatusCode::NOT_FOUND,
            error_body(&format!("no such path on this listener: {path}")),
        );
        shard.stats.request(Route::Other, resp.status().as_u16());
        return resp;
    }
    let (route, resp) = match path {
        "/v1/payloads" | "/" => (
            Route::Payloads,
            if req.method() == Method::POST {
                match ingest(shard, req).await {
                    Ok(n) => accepted(n),
                    Err(e) => refuse(shard, &e),
                }
            } else {
                method_not_allowed("POST")
            },
        ),
        "/healthz" if get => (
            Route::Health,
            json(StatusCode::OK, &b"{\"status\":\"ok\"}"[..]),
        ),
        "/readyz" if get => (Route::Ready, readiness(shard)),
        "/metrics" if get => {
            let mut r = Response::new(Full::new(Bytes::from(render(&shard.views, shard.ready()))));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            (Route::Metrics, r)
        }
        "/healthz" | "/readyz" | "/metrics" => (Route::Other, method_not_allowed("GET")),
        path => (
            Route::Other,
            json(
                StatusCode::NOT_FOUND,
                error_body(&format!("no such path: {path}")),
            ),
        ),
    };
    shard.stats.request(route, resp.status().as_u16());
    resp
}

/// `200 {"status":"ready"}`, or `503` with every reason (per shard) it is not.
fn readiness(shard: &ShardCtx) -> Resp {
    let why = shard.not_ready();
    if why.is_empty() {
        return json(StatusCode::OK, &b"{\"status\":\"ready\"}"[..]);
    }
    let body = serde_json::json!({ "status": "not ready", "reasons": why }).to_string();
    json(StatusCode::SERVICE_UNAVAILABLE, body)
}

fn accepted(n: usize) -> Resp {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n);
    let mut body = Vec::with_capacity(14 + digits.len());
    body.extend_from_slice(b"{\"accepted\":");
    body.extend_from_slice(digits.as_bytes());
    body.push(b'}');
    json(StatusCode::OK, body)
}

/// Most of a refused body read and dropped so that its client receives the answer.
const LINGER_BYTES: usize = 16 << 20;
/// The longest a refused body is read and dropped.
const LINGER: Duration = Duration::from_secs(5);

/// Reads, validates and queues one collection; returns how many payloads were accepted.
/// When it refuses a request before reading all of its body, what is left is read and
/// dropped in the background (see [`linger`]).
async fn ingest(shard: &Rc<ShardCtx>, req: Request<Incoming>) -> Result<usize, IngestError> {
    let (head, mut body) = req.into_parts();
    let mut started = false;
    let result = accept(shard, &head.headers, &mut body, &mut started).await;
    if result.is_err() && !hyper::body::Body::is_end_stream(&body) {
        // A client that asked `Expect: 100-continue` has not sent its body (hyper sends the
        // 100 only when the body is first read): nothing to drain.
        let waits_for_continue = head
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !waits_for_continue || started {
            linger(body);
        }
    }
    result
}

/// Reads what is left of a refused request's body and drops it, at most [`LINGER_BYTES`] for
/// at most [`LINGER`], in a task of its own while the answer is written (nginx's lingering
/// close): a client that writes its whole body before reading (Python's `http.client`,
/// curl without `Expect`) would otherwise be reset by the close of a socket holding unread
/// data, and never see the `413` or `503`. A body drained to its end even leaves the
/// connection usable.
fn linger(mut body: Incoming) {
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

/// The request path behind [`ingest`]: read the body (within its reservation; decoded if it
/// has a `Content-Encoding`), parse, queue.
async fn accept(
    shard: &Rc<ShardCtx>,
    headers: &http::HeaderMap,
    body_in: &mut Incoming,
    started: &mut bool,
) -> Result<usize, IngestError> {
    let cfg = &shard.config.server;
    // With `[auth]`: an `Authorization` header decides, before any of the body is read or
    // any room reserved (a body `token` is then not looked at); without one, the body's
    // `token` field is checked once the body is parsed, before anything is queued.
    let mut tenant = None;
    let mut body_token_due = false;
    if let Some(tokens) = &shard.tokens {
        match headers.get(AUTHORIZATION) {
            Some(v) => {
                let checked = crate::auth::bearer(v.as_bytes())
                    .ok_or(crate::auth::Refusal::Invalid)
                    .and_then(|t| tokens.check(t));
                tenant = shard.authorized(checked)?;
            }
            None => body_token_due = true,
        }
    }
    // An unknown coding is refused before any of the body is read.
    let coding = Coding::of_request(headers)?;
    let limit = cfg.max_body_bytes;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        // Refused before any of the body is read (and before `100 Continue` is sent).
        return Err(IngestError::TooLarge(limit));
    }
    if shard.shutdown.is_triggered() {
        return Err(IngestError::ShuttingDown);
    }
    // Room for the body is reserved before any of it is read (from Content-Length; a
    // chunked body's room grows as it arrives), so bodies being read count against the queue
    // budget like queued ones: memory stays bounded however many clients send at once. A
    // compressed body's room starts at its compressed length and grows with its decoded
    // output: the decoded bytes are what is held.
    let mut room = shard.budget.reserve_bytes(declared.unwrap_or(0))?;
    let timeout = cfg.body_read_timeout_ms;
    *started = true;
    let read = async {
        match coding {
            None => read_body(body_in, limit, &mut room).await,
            Some(coding) => {
                let decoder = BodyDecoder::new(
                    coding,
                    cfg.max_decoded_bytes,
                    shard.config.queue.max_bytes,
                    &mut room,
                )?;
                read_decoded(body_in, limit, decoder).await
            }
        }
    };
    // A body that is already in hand (hyper read it with the head, as for most small
    // requests) is taken without arming a timer; only a read that has to wait gets one.
    let body = {
        futures_lite::pin!(read);
        match future::poll_once(read.as_mut()).await {
            Some(body) => body,
            None => {
                future::or(read, async {
                    glommio::timer::sleep(Duration::from_millis(timeout)).await;
                    Err(IngestError::BodyTimeout(timeout))
                })
                .await
            }
        }
    }?;
    room.shrink_to(body.len());
    let mut spans = Vec::new();
    {
        let token = shard.parser.borrow_mut().parse(&body, &mut spans)?;
        if body_token_due {
            let checked = match (&shard.tokens, token) {
                (Some(tokens), Some(t)) => tokens.check(&t),
                _ => Err(crate::auth::Refusal::Missing),
            };
            tenant = shard.authorized(checked)?;
        }
    }
    let n = spans.len();
    if n == 0 {
        return Ok(0);
    }
    let len = body.len();
    room.add_payloads(n)?;
    if shard.spool.is_some() {
        // Durable: room in the queue first (so a spooled request is never refused after it
        // was written), then the spool; 200 only once the commit holding it is on disk.
        // The append and the hand-off to the worker run in a task of their own, not in this
        // request's future: hyper drops that future when the client goes away, and a record
        // the committer writes must then still be queued (else it sits live in the spool,
        // undelivered, until a restart). The request only waits for the task's outcome.
        let delivery =
            glommio::spawn_local(spool_and_queue(shard.clone(), body, spans, tenant, room))
                .detach();
        return delivery.await.unwrap_or(Err(IngestError::SpoolFailed));
    }
    let (ack, stored) = match cfg.ack {
        Ack::Uploaded => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some(rx))
        }
        Ack::Queued | Ack::Durable => (None, None),
    };
    let job = Job {
        body,
        spans,
        first_seq: shard.take_seq(n),
        received_secs: crate::keys::unix_secs(),
        tenant,
        ack,
        spooled: None,
    };
    shard.send_reserved(job, room)?;
    if let Some(stored) = stored {
        // The worker answers over the channel; this task waits without blocking the shard.
        let timeout = cfg.ack_timeout_ms;
        let delivery = future::or(async { Some(stored.await) }, async {
            glommio::timer::sleep(Duration::from_millis(timeout)).await;
            None
        })
        .await;
        match delivery {
            Some(Ok(Delivery::Stored)) => {}
            Some(Ok(Delivery::Refused)) => return Err(IngestError::StoreRefused),
            Some(Ok(Delivery::Deferred)) | Some(Err(_)) => return Err(IngestError::NotStored),
            None => return Err(IngestError::AckTimeout(timeout)),
        }
    }
    inc(&shard.stats.payloads_accepted, n as u64);
    inc(&shard.stats.bytes_in, len as u64);
    Ok(n)
}

/// Appends one request to the shard's spool and, once its commit is on disk, queues it for
/// upload. Runs detached from the connection (see `ingest`): once the record is in the spool,
/// its delivery does not depend on the client.
async fn spool_and_queue(
    shard: Rc<ShardCtx>,
    body: Bytes,
    spans: Vec<crate::ingest::Span>,
    tenant: Option<crate::auth::Tenant>,
    reservation: crate::queue::Reservation,
) -> Result<usize, IngestError> {
    let Some((spool, releaser)) = shard.spool.clone() else {
        return Err(IngestError::SpoolFailed);
    };
    let (n, len) = (spans.len(), body.len());
    let received_secs = crate::keys::unix_secs();
    // One buffer for both: the spool writes the record, the worker reads the body part of it
    // (the spans are relative to the body). The tenant is recorded, so a replay stores the
    // payloads under it whatever the tokens file says by then.
    let record = crate::spool::request_record(received_secs, tenant.as_deref(), &body);
    let header = record.len() - body.len();
    let record = Bytes::from(record);
    drop(body);
    let body = record.slice(header..);
    let appended = spool.append(record).await;
    match &appended {
        Ok(_) => shard.stats.spool_write(Ok(())),
        Err(crate::spool::SpoolError::Io(e)) => shard.stats.spool_write(Err(&e.to_string())),
        Err(_) => {}
    }
    let id = appended.map_err(|e| match e {
        crate::spool::SpoolError::Full => IngestError::SpoolFull,
        crate::spool::SpoolError::TooLarge { max, .. } => {
            IngestError::TooLarge(max.saturating_sub(crate::spool::RECORD_HEADER))
        }
        crate::spool::SpoolError::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => {
            tracing::warn!(shard = shard.id, error = %e, "spool write failed: disk full");
            IngestError::SpoolDiskFull
        }
        e => {
            tracing::error!(shard = shard.id, error = %e, "spool write failed");
            IngestError::SpoolFailed
        }
    })?;
    let job = Job {
        body,
        spans,
        first_seq: 0,
        received_secs,
        tenant,
        ack: None,
        spooled: Some(Spooled {
            id,
            releaser,
            naming: None,
        }),
    };
    // If the worker is gone (shutdown) the request stays in the spool for the next start: it
    // is durable, so the answer is still 200.
    let _ = shard.send_reserved(job, reservation);
    inc(&shard.stats.payloads_accepted, n as u64);
    inc(&shard.stats.bytes_in, len as u64);
    Ok(n)
}

/// Collects the body into one buffer, refusing it as soon as it passes `limit`. The buffer
/// never holds more than `room` has reserved: a body without `Content-Length` grows its
/// reservation (doubling, from 64 KiB) as it arrives, and is refused with `503` when the
/// budget has no more.
async fn read_body(
    body: &mut Incoming,
    limit: usize,
    room: &mut crate::queue::Reservation,
) -> Result<Bytes, IngestError> {
    let mut buf: Vec<u8> = Vec::new();
    buf.reserve_exact(room.bytes());
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| IngestError::Body(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            let need = buf.len() + data.len();
            if need > limit {
                return Err(IngestError::TooLarge(limit));
            }
            if need > room.bytes() {
                room.grow_to(need.max(room.bytes() * 2).max(64 << 10).min(limit))?;
                buf.reserve_exact(room.bytes() - buf.len());
            }
            buf.extend_from_slice(&data);
        }
    }
    if buf.capacity() > buf.len() * 2 {
        buf.shrink_to_fit();
    }
    Ok(Bytes::from(buf))
}

/// Reads a compressed body and decodes each frame as it arrives, refusing the body as soon as
/// its compressed bytes pass `limit` (`server.max_body_bytes`) or the decoder refuses (see
/// [`BodyDecoder::write`]). Only the decoded output is kept; it is held in the request's
/// reservation.
async fn read_decoded(
    body: &mut Incoming,
    limit: usize,
    mut decoder: BodyDecoder<'_>,
) -> Result<Bytes, IngestError> {
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| IngestError::Body(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > limit {
                return Err(IngestError::TooLarge(limit));
            }
            decoder.write(&data)?;
            // Decoding is CPU work on the shard's thread: let other connections run between
            // frames.
            glommio::yield_if_needed().await;
        }
    }
    let mut buf = decoder.finish()?;
    if buf.capacity() > buf.len() * 2 {
        buf.shrink_to_fit();
    }
    Ok(Bytes::from(buf))
}
