//! A measurement, not a server (issue 23): how much of a core corepost's network path costs
//! once hyper is out of it. One glommio executor per `--cores` (corepost's patched glommio,
//! `vendor/glommio-ng`), each with its own `SO_REUSEPORT` listener; each connection read through
//! glommio's buffered stream (io_uring `RECV` completions) and written behind (io_uring `SEND`),
//! exactly as corepost's `HyperIo::plain`; each request head parsed by `httparse` in place, its
//! body (by `Content-Length`) copied once into a buffer of its own, as corepost's body reader
//! does; every request answered with corepost's `200 {"accepted":1}`, byte for byte (its
//! `date` header from a per-second cache, as hyper's). No validation, no queue, no routing, no
//! limits, no timeouts: the floor under a completion-native HTTP/1.1 path, to compare with
//! corepost's own floor (hyper on glommio, the request path cut off after the body) in
//! `benches/results/2026-12-08-floor.md`.
//!
//! `http-floor [serve] [--listen ADDR] [--cores N] [other corepost serve flags, ignored]`: the
//! same command line as `corepost serve`, so that `benches/e2e/ab.sh` runs it as a build.

use futures_lite::{AsyncBufReadExt, AsyncWriteExt};
use glommio::net::{Preallocated, TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use std::cell::RefCell;
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// corepost's answer to a request of one payload, up to its `date` value.
const HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 14\r\ndate: ";
/// What follows the `date` value.
const TAIL: &[u8] = b"\r\n\r\n{\"accepted\":1}";
/// corepost's read buffer of a plain connection (`src/http/io.rs`).
const READ_BUFFER: usize = 8 * 1024;

thread_local! {
    /// The `date` value and the second it is for.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

/// Appends the `date` value of now, formatted once per second.
fn put_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs || d.1.is_empty() {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(d.1.as_bytes());
    });
}

/// Reads what the stream has into `buf`; false at the end of the stream.
async fn fill(s: &mut TcpStream<Preallocated>, buf: &mut Vec<u8>) -> io::Result<bool> {
    let data = s.fill_buf().await?;
    let n = data.len();
    buf.extend_from_slice(data);
    s.consume(n);
    Ok(n > 0)
}

/// Serves one keep-alive connection until the client closes it or sends what is not HTTP.
async fn serve(stream: TcpStream) -> io::Result<()> {
    let mut s = stream.buffered_with(Preallocated::new(READ_BUFFER));
    s.set_send_behind(true);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BUFFER);
    let mut out: Vec<u8> = Vec::with_capacity(256);
    loop {
        let (head, body) = loop {
            if !buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let length = req
                            .headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                            .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok());
                        break (n, length.unwrap_or(0usize));
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return Ok(()),
                }
            }
            if !fill(&mut s, &mut buf).await? {
                return Ok(());
            }
        };
        while buf.len() < head + body {
            if !fill(&mut s, &mut buf).await? {
                return Ok(());
            }
        }
        // The one copy corepost's body reader makes (into the buffer the queue then holds).
        let taken = buf[head..head + body].to_vec();
        std::hint::black_box(&taken);
        buf.drain(..head + body);
        out.clear();
        out.extend_from_slice(HEAD);
        put_date(&mut out);
        out.extend_from_slice(TAIL);
        s.write_all(&out).await?;
    }
}

fn main() {
    let mut listen = "127.0.0.1:8080".to_string();
    let mut cores = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or(listen),
            "--cores" => cores = args.next().and_then(|c| c.parse().ok()).unwrap_or(cores),
            _ => {}
        }
    }
    let executors: Vec<_> = (0..cores)
        .map(|i| {
            let addr = listen.clone();
            // One executor: under `taskset`, on the CPU the process was given; more: one per CPU.
            let placement = if cores == 1 { Placement::Unbound } else { Placement::Fixed(i) };
            LocalExecutorBuilder::new(placement)
                .name(&format!("shard-{i}"))
                .io_memory(10 << 20)
                .ring_depth(128)
                .spawn(move || async move {
                    let listener = TcpListener::bind(addr.as_str()).expect("bind");
                    loop {
                        match listener.accept().await {
                            Ok(stream) => {
                                glommio::spawn_local(async move {
                                    let _ = serve(stream).await;
                                })
                                .detach();
                            }
                            Err(e) => eprintln!("accept: {e}"),
                        }
                    }
                })
                .expect("executor")
        })
        .collect();
    for e in executors {
        let _ = e.join();
    }
}
