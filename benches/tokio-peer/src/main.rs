//! The conventional peer in corepost's end-to-end benchmark (issue 23): corepost's API with
//! `ack = "queued"` and `--sink discard`, written the way most Rust teams would write it in an
//! afternoon. A multi-threaded tokio runtime (one worker per CPU the process may use, so one
//! under `taskset -c 1`), one listener, a hyper http1 connection per socket, the body read with
//! a 1 MiB limit, serde_json into borrowed raw values, every payload into one bounded mpsc
//! (bounded by payloads, full → 503 at once), a consumer task that drops what it receives.
//!
//! `tokio-peer [--listen ADDR] [--max-payloads N]` (127.0.0.1:8080, 100000 = corepost's
//! `queue.max_payloads`). Built and run by `benches/e2e/run.sh` (system `peer`).

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::{net::TcpListener, sync::mpsc};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// corepost's default `server.max_body_bytes`.
const MAX_BODY: usize = 1 << 20;

/// The request body: the same shape as corepost's. `version` and `token` are optional but must
/// be strings (checked on the raw value: no allocation); other fields are ignored.
#[derive(Deserialize)]
struct Collection<'a> {
    #[serde(borrow, default)]
    version: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
}

type Answer = Response<Full<Bytes>>;

fn json(status: StatusCode, body: String) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `{"error": "..."}` with the headers its status calls for.
fn refuse(status: StatusCode, msg: impl std::fmt::Display) -> Answer {
    let mut r = json(status, serde_json::json!({ "error": msg.to_string() }).to_string());
    match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            r.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"))
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(1))
        }
        _ => None,
    };
    r
}

async fn handle(req: Request<Incoming>, queue: mpsc::Sender<Bytes>) -> Result<Answer, Infallible> {
    Ok(match ingest(req, &queue).await {
        Ok(n) => json(StatusCode::OK, format!("{{\"accepted\":{n}}}")),
        Err(refusal) => refusal,
    })
}

/// Validates the body, splits it into payloads and queues them: the number queued.
async fn ingest(req: Request<Incoming>, queue: &mpsc::Sender<Bytes>) -> Result<usize, Answer> {
    if !matches!(req.uri().path(), "/v1/payloads" | "/") {
        return Err(refuse(StatusCode::NOT_FOUND, "not found"));
    }
    if req.method() != Method::POST {
        return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "method not allowed; use POST"));
    }
    let too_large =
        || refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {MAX_BODY} bytes"));
    let declared =
        req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(refuse(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}")))
        }
    };
    let c: Collection<'_> = serde_json::from_slice(&body)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("invalid body: {e}")))?;
    for (name, v) in [("version", c.version), ("token", c.token)] {
        if v.is_some_and(|v| !v.get().starts_with('"')) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("wrong shape: `{name}` must be a string"),
            ));
        }
    }
    let n = c.data.len();
    match queue.try_reserve_many(n) {
        // Each payload is a slice of the body (its bytes as sent), not a copy.
        Ok(permits) => {
            permits.zip(&c.data).for_each(|(p, raw)| p.send(body.slice_ref(raw.get().as_bytes())))
        }
        Err(_) if n > queue.max_capacity() => {
            return Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "more payloads than the whole queue holds",
            ))
        }
        Err(_) => return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "overloaded")),
    }
    Ok(n)
}

async fn serve(listen: String, max_payloads: usize) -> std::io::Result<()> {
    let listener = TcpListener::bind(&listen).await?;
    let (tx, mut rx) = mpsc::channel::<Bytes>(max_payloads);
    tokio::spawn(async move {
        // corepost's `--sink discard`: drain and drop.
        let mut batch = Vec::with_capacity(1024);
        while rx.recv_many(&mut batch, 1024).await > 0 {
            batch.clear();
        }
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let tx = tx.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, tx.clone()));
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn main() -> std::io::Result<()> {
    let (mut listen, mut max_payloads) = ("127.0.0.1:8080".to_string(), 100_000);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = v,
            ("--max-payloads", Some(v)) => max_payloads = v.parse().expect("--max-payloads N"),
            _ => panic!("usage: tokio-peer [--listen ADDR] [--max-payloads N]"),
        }
    }
    // available_parallelism follows the affinity mask: 1 worker under `taskset -c 1`.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!("tokio-peer: {listen}, {workers} worker threads, queue of {max_payloads} payloads");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?;
    rt.block_on(serve(listen, max_payloads))
}
