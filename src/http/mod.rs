//! HTTP: hyper http1 connections on glommio, routing, and the answers the API promises.
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /v1/payloads`, `POST /` | `200 {"accepted": N}`, `400`, `401`, `408`, `413`, `415`, `503` |
//! | other method on a payload path | `405` with `Allow: POST` |
//! | `GET /healthz`, `/readyz`, `/metrics` | liveness, readiness, Prometheus text |

pub mod answer;
pub mod body;
pub mod body_error;
pub mod decode;
mod io;

pub use answer::{Failure, Resp};
pub use io::{GlommioTimer, HyperIo, Scratch};

use crate::intake::Intake;
use crate::metrics::{dec, inc, render, Route, ShardStats, ShardView};
use crate::shutdown::Local;
use answer::{accepted, error_body, json, method_not_allowed, refused};
use bytes::Bytes;
use decode::Coding;
use futures_lite::future;
use glommio::net::TcpListener;
use glommio::sync::Gate;
use http::header::{HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use std::cell::Cell;
use std::convert::Infallible;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `server.listen`: payloads, and the operational routes unless an admin listener is set.
    Public,
    /// `server.admin_listen`: `/metrics`, `/healthz` and `/readyz` only.
    Admin,
}

/// A shard's HTTP front: its connections and what their requests need. Lives in an `Rc` on
/// the shard's executor.
#[derive(Debug)]
pub struct Front {
    id: usize,
    config: Arc<crate::config::Config>,
    intake: Rc<Intake>,
    stats: Arc<ShardStats>,
    /// Every shard's counters, for `/metrics` and `/readyz`.
    views: Arc<Vec<ShardView>>,
    /// Read scratch for the hyper adapter on TLS connections.
    scratch: Scratch,
    /// The shard's copy of the shutdown signal (also `/readyz`'s "shutting down").
    shutdown: Rc<Local>,
    /// TLS of the public listener (`[tls]`), with this shard's certificate slot.
    tls: Option<crate::tls::ShardTls>,
    /// Open connections (bounded by `shards.max_connections`).
    open: Cell<usize>,
    /// Every connection's task: closed at shutdown, which waits for them.
    connections: Gate,
}

/// What a shard's front is built from.
#[derive(Debug)]
pub struct FrontParts {
    /// Shard index.
    pub id: usize,
    /// The configuration.
    pub config: Arc<crate::config::Config>,
    /// The shard's intake.
    pub intake: Rc<Intake>,
    /// Every shard's counters (this shard's at `id`).
    pub views: Arc<Vec<ShardView>>,
    /// The shard's copy of the shutdown signal.
    pub shutdown: Rc<Local>,
    /// TLS of the public listener.
    pub tls: Option<crate::tls::ShardTls>,
}

impl Front {
    /// A shard's front.
    pub fn new(p: FrontParts) -> Self {
        Self {
            id: p.id,
            stats: p.views[p.id].stats.clone(),
            config: p.config,
            intake: p.intake,
            views: p.views,
            scratch: Rc::new(std::cell::RefCell::new(
                vec![0u8; 64 * 1024].into_boxed_slice(),
            )),
            shutdown: p.shutdown,
            tls: p.tls,
            open: Cell::new(0),
            connections: Gate::new(),
        }
    }

    /// Accepts connections on `listener` until shutdown (within the shard's connection limit)
    /// and returns it.
    pub async fn accept_loop(self: Rc<Self>, listener: TcpListener, on: Listener) -> TcpListener {
        let max = self.config.shards.max_connections;
        loop {
            let accepted = future::or(async { Some(listener.accept().await) }, async {
                self.shutdown.stopping().await;
                None
            })
            .await;
            match accepted {
                None => return listener,
                Some(Ok(stream)) => {
                    if self.open.get() >= max {
                        inc(&self.stats.connections_rejected, 1);
                        drop(stream);
                        continue;
                    }
                    self.open.set(self.open.get() + 1);
                    inc(&self.stats.connections_open, 1);
                    let front = self.clone();
                    let served = self.connections.spawn(async move {
                        serve_connection(stream, front.clone(), on).await;
                        front.open.set(front.open.get() - 1);
                        dec(&front.stats.connections_open, 1);
                    });
                    match served {
                        Ok(task) => drop(task.detach()),
                        // The gate closes only after the accept loops have ended; should it
                        // refuse anyway, the connection is dropped and not counted.
                        Err(_) => {
                            self.open.set(self.open.get() - 1);
                            dec(&self.stats.connections_open, 1);
                        }
                    }
                }
                Some(Err(e)) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(shard = self.id, error = %e, "accept failed");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// After shutdown: waits for every connection to end (each finishes the request in
    /// progress, then closes), at most until `hurry` resolves (the grace period's end or a
    /// second signal); connections still open then are dropped with the executor.
    pub async fn connections_closed(&self, hurry: impl std::future::Future<Output = ()>) {
        let _ = future::or(
            async {
                let _ = self.connections.close().await;
            },
            hurry,
        )
        .await;
    }

    /// Ready: not shutting down, and every shard ready (its worker running, its sink checked
    /// and not failing, its spool writing): connections are spread over all shards, so one
    /// that cannot deliver fails its share of clients.
    fn ready(&self) -> bool {
        self.not_ready().is_empty()
    }

    /// Why the server is not ready (empty when it is).
    fn not_ready(&self) -> Vec<String> {
        if self.shutdown.is_stopping() {
            return vec!["shutting down".into()];
        }
        self.views
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                v.stats
                    .readiness
                    .not_ready()
                    .map(|why| format!("shard {i}: {why}"))
            })
            .collect()
    }
}

/// Serves one connection until the client closes it, an error ends it, or shutdown asks it to
/// finish (the request in progress completes, keep-alive stops).
pub async fn serve_connection(stream: glommio::net::TcpStream, front: Rc<Front>, on: Listener) {
    let cfg = &front.config.server;
    if let Err(e) = stream.set_write_timeout(Some(Duration::from_millis(cfg.write_timeout_ms))) {
        tracing::debug!(error = %e, "cannot set the write timeout; closing the connection");
        return;
    }
    // `[tls]` covers the public listener only; the admin listener stays plain HTTP.
    match (&front.tls, on) {
        (Some(tls), Listener::Public) => {
            // A handshake in progress at shutdown is dropped: no request has started on it.
            let handshake = future::or(async { Some(tls.accept(stream).await) }, async {
                front.shutdown.stopping().await;
                None
            });
            match handshake.await {
                None => {}
                Some(Ok(tls_stream)) => {
                    serve_http(
                        HyperIo::with_scratch(tls_stream, front.scratch.clone()),
                        front,
                        on,
                    )
                    .await
                }
                Some(Err(e)) => {
                    inc(&front.stats.tls_handshake_failures, 1);
                    tracing::debug!(shard = front.id, error = %e, "TLS handshake failed; connection closed");
                }
            }
        }
        _ => serve_http(HyperIo::plain(stream), front, on).await,
    }
}

/// Serves HTTP/1.1 on a connection (plain, or TLS once its handshake is done).
async fn serve_http<S, R>(io: HyperIo<S, R>, front: Rc<Front>, on: Listener)
where
    HyperIo<S, R>: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    let cfg = &front.config.server;
    let closes_at = closes_at(cfg.max_connection_age_ms);
    let svc_front = front.clone();
    let svc = service_fn(move |req| {
        let front = svc_front.clone();
        async move {
            let mut resp = handle(&front, req, on).await;
            // One clock read per request, and only with the setting on.
            if closes_at.is_some_and(|t| Instant::now() >= t) && resp.status().is_success() {
                // hyper closes the connection once this answer is written.
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
                inc(&front.stats.connections_aged, 1);
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
    let stop = front.shutdown.stopping();
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

async fn handle(front: &Rc<Front>, req: Request<Incoming>, on: Listener) -> Resp {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    let path = req.uri().path();
    // With an admin listener, each listener serves only its own routes.
    let operational = matches!(path, "/healthz" | "/readyz" | "/metrics");
    let elsewhere = match on {
        Listener::Admin => !operational,
        Listener::Public => operational && front.config.server.admin_listen.is_some(),
    };
    if elsewhere {
        let resp = json(
            StatusCode::NOT_FOUND,
            error_body(&format!("no such path on this listener: {path}")),
        );
        front.stats.request(Route::Other, resp.status().as_u16());
        return resp;
    }
    let (route, resp) = match path {
        "/v1/payloads" | "/" => (
            Route::Payloads,
            if req.method() == Method::POST {
                match post_payloads(front, req).await {
                    Ok(n) => accepted(n),
                    Err(e) => refused(&e, front.config.server.retry_after_secs),
                }
            } else {
                method_not_allowed("POST")
            },
        ),
        "/healthz" if get => (
            Route::Health,
            json(StatusCode::OK, &b"{\"status\":\"ok\"}"[..]),
        ),
        "/readyz" if get => (Route::Ready, readiness(front)),
        "/metrics" if get => {
            let mut r = Response::new(Full::new(Bytes::from(render(&front.views, front.ready()))));
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
    front.stats.request(route, resp.status().as_u16());
    resp
}

/// `200 {"status":"ready"}`, or `503` with every reason (per shard) it is not.
fn readiness(front: &Front) -> Resp {
    let why = front.not_ready();
    // What waits for the store in the spools and the spill directory: shown either way (a
    // shard that is ready again may still be delivering a backlog).
    let waiting = crate::metrics::Waiting::of(&front.views);
    if why.is_empty() {
        let body = serde_json::json!({ "status": "ready", "waiting": waiting }).to_string();
        return json(StatusCode::OK, body);
    }
    let body = serde_json::json!({ "status": "not ready", "reasons": why, "waiting": waiting })
        .to_string();
    json(StatusCode::SERVICE_UNAVAILABLE, body)
}

/// Reads, validates and takes one collection; returns how many payloads were accepted.
/// When it refuses a request before reading all of its body, what is left is read and
/// dropped in the background (see [`body::linger`]).
async fn post_payloads(front: &Front, req: Request<Incoming>) -> Result<usize, Failure> {
    let (head, mut body) = req.into_parts();
    let mut started = false;
    let result = admit_and_accept(front, &head.headers, &mut body, &mut started).await;
    if result.is_err() && !hyper::body::Body::is_end_stream(&body) {
        // A client that asked `Expect: 100-continue` has not sent its body (hyper sends the
        // 100 only when the body is first read): nothing to drain.
        let waits_for_continue = head
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !waits_for_continue || started {
            body::linger(body);
        }
    }
    result
}

/// The request path behind [`post_payloads`]: the head's checks, admission (token, room), the
/// body, then intake's acceptance; sets `started` once the body may be read.
async fn admit_and_accept(
    front: &Front,
    headers: &http::HeaderMap,
    body_in: &mut Incoming,
    started: &mut bool,
) -> Result<usize, Failure> {
    let cfg = &front.config.server;
    let pass = front
        .intake
        .authorize(headers.get(AUTHORIZATION).map(HeaderValue::as_bytes))?;
    // An unknown coding is refused before any of the body is read.
    let coding = Coding::of_request(headers)?;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut admitted = front.intake.admit(pass, declared)?;
    *started = true;
    let limits = body::Limits {
        max_body: cfg.max_body_bytes,
        max_decoded: cfg.max_decoded_bytes,
        timeout_ms: cfg.body_read_timeout_ms,
    };
    let body = body::read(body_in, coding, limits, &mut admitted.room).await?;
    // Only the headers the key template names, usually none (no allocation then).
    let wanted = front
        .intake
        .header_names()
        .iter()
        .map(|name| {
            headers
                .get(name.as_str())
                .map(|v| Box::<[u8]>::from(v.as_bytes()))
        })
        .collect();
    Ok(front.intake.accept(admitted, body, wanted).await?.payloads)
}
