//! Raw HTTP/1.1 bytes against one in-process corepost server (1 shard, discard sink).
//!
//! For each input: connect, write the bytes as they are, shut down the write half, read what
//! the server answers until it closes (or a short timeout). A failed assertion is a finding:
//! 1. whatever the server answers is empty (it closed) or starts with a complete, parseable
//!    `HTTP/1.1` response head (`HTTP/1.0` when the first request was an HTTP/1.0 one; after a
//!    `100 Continue`, the next head must parse too);
//! 2. the server neither crashes nor hangs: a new connection still gets `200` from
//!    `GET /healthz`.
//!
//! `COREPOST_FUZZ_VERBOSE=1` prints a summary of each answer.
//! `COREPOST_FUZZ_PARSER=simd` runs the server with the simd body parser (default: serde, the
//! configuration's default).
#![no_main]

use corepost::config::{Config, Cores, ParserKind, SinkKind};
use corepost::shard::Server;
use libfuzzer_sys::fuzz_target;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest time spent reading one answer, however slowly it trickles in.
const ANSWER_DEADLINE: Duration = Duration::from_secs(3);
/// Bytes of answer kept (a pipelined input can ask for many `/metrics` pages).
const ANSWER_CAP: usize = 1 << 20;

fn server() -> SocketAddr {
    // The server lives here (never shut down) for the life of the fuzzing process; kept in a
    // static rather than forgotten so that LeakSanitizer sees it as reachable.
    static SERVER: OnceLock<(SocketAddr, Mutex<Server>)> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            // libFuzzer's own `main` runs instead of Rust's, which would have ignored SIGPIPE.
            // SAFETY: setting a signal disposition to SIG_IGN before any socket is written.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            }
            let mut config = Config::default();
            config.server.listen = "127.0.0.1:0".into();
            config.sink.kind = SinkKind::Discard;
            config.shards.cores = Cores::Count(1);
            config.server.parser = match std::env::var("COREPOST_FUZZ_PARSER").as_deref() {
                Ok("simd") => ParserKind::Simd,
                _ => ParserKind::Serde,
            };
            // The client half-closes right after writing, so nothing should ever wait on these;
            // they are kept below the client's read timeout so that a wait shows as an answer.
            config.server.header_read_timeout_ms = 1_000;
            config.server.body_read_timeout_ms = 1_000;
            config.server.shutdown_grace_ms = 100;
            let server = corepost::shard::start(config).expect("starting the corepost server");
            (server.local_addr(), Mutex::new(server))
        })
        .0
}

/// `COREPOST_FUZZ_VERBOSE=1` prints a line per answer (for looking at the seeds).
fn verbose() -> bool {
    static VERBOSE: OnceLock<bool> = OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("COREPOST_FUZZ_VERBOSE").is_some_and(|v| v == "1"))
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    s.set_write_timeout(Some(READ_TIMEOUT))?;
    Ok(s)
}

/// Reads until EOF, an error (a reset counts as the server closing), the cap or the deadline.
/// Returns the bytes and whether the read ended by timing out.
fn read_answer(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if start.elapsed() > ANSWER_DEADLINE {
            return (out, true);
        }
        match s.read(&mut buf) {
            Ok(0) => return (out, false),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() >= ANSWER_CAP {
                    return (out, false);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (out, true)
            }
            Err(_) => return (out, false),
        }
    }
}

/// Parses one response head at the start of `b`; returns (status, head length).
fn parse_head(b: &[u8], input: &[u8]) -> (u16, usize) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut headers);
    match r.parse(b) {
        Ok(httparse::Status::Complete(n)) => {
            assert!(
                r.version == Some(1) || (r.version == Some(0) && first_request_is_http10(input)),
                "answer is not HTTP/1.1: {:?} to {:?}",
                String::from_utf8_lossy(&b[..n]),
                String::from_utf8_lossy(input)
            );
            let code = r.code.expect("a complete head has a status");
            assert!(
                (100..=599).contains(&code),
                "status {code} to {:?}",
                String::from_utf8_lossy(input)
            );
            (code, n)
        }
        Ok(httparse::Status::Partial) => panic!(
            "truncated response head {:?} to {:?}",
            String::from_utf8_lossy(b),
            String::from_utf8_lossy(input)
        ),
        Err(e) => panic!(
            "unparseable response ({e}) {:?} to {:?}",
            String::from_utf8_lossy(&b[..b.len().min(512)]),
            String::from_utf8_lossy(input)
        ),
    }
}

/// Whether the input's first request line (after any empty lines) is an HTTP/1.0 one, to which
/// hyper rightly answers with an `HTTP/1.0` status line.
fn first_request_is_http10(input: &[u8]) -> bool {
    input
        .split(|&c| c == b'\n')
        .find(|l| !l.is_empty() && *l != b"\r")
        .is_some_and(|l| l.windows(8).any(|w| w == b"HTTP/1.0"))
}

fn check_answer(answer: &[u8], input: &[u8]) {
    if answer.is_empty() {
        return; // closed without answering
    }
    let http10 = first_request_is_http10(input);
    assert!(
        answer.starts_with(b"HTTP/1.1 ") || (http10 && answer.starts_with(b"HTTP/1.0 ")),
        "answer does not start with an HTTP/1.1 status line: {:?} to {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(512)]),
        String::from_utf8_lossy(input)
    );
    let (code, n) = parse_head(answer, input);
    if (100..200).contains(&code) && answer.len() > n {
        let (final_code, _) = parse_head(&answer[n..], input);
        assert!(
            final_code >= 200,
            "two informational answers in a row to {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

/// `GET /healthz` on a fresh connection must answer 200 (a few tries, to ride out a full
/// accept queue; a server that has died or wedged fails all of them).
fn check_alive(addr: SocketAddr, input: &[u8]) {
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut s = match connect(addr) {
            Ok(s) => s,
            Err(e) => {
                last = format!("connect: {e}");
                continue;
            }
        };
        if let Err(e) =
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n")
        {
            last = format!("write: {e}");
            continue;
        }
        let (answer, timed_out) = read_answer(&mut s);
        if answer.starts_with(b"HTTP/1.1 200 ") {
            return;
        }
        last = format!(
            "answer {:?} (timed out: {timed_out})",
            String::from_utf8_lossy(&answer)
        );
    }
    panic!(
        "server no longer answers GET /healthz with 200 ({last}) after {:?}",
        String::from_utf8_lossy(input)
    );
}

fuzz_target!(|input: &[u8]| {
    let addr = server();
    let mut s = connect(addr).expect("connecting to the server");
    // The server may close early (e.g. a 400 on a bad head) while the rest is still being
    // written: write errors are fine.
    let _ = s.write_all(input);
    let _ = s.shutdown(Shutdown::Write);
    let (answer, _timed_out) = read_answer(&mut s);
    drop(s);
    if verbose() {
        let first = answer.split(|&c| c == b'\n').next().unwrap_or_default();
        eprintln!(
            "answer: {} bytes, first line {:?}, {} status lines",
            answer.len(),
            String::from_utf8_lossy(first),
            answer
                .windows(9)
                .filter(|w| w.starts_with(b"HTTP/1."))
                .count()
        );
    }
    check_answer(&answer, input);
    check_alive(addr, input);
});
