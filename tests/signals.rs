//! Signals: the first SIGTERM drains gracefully; a second one ends the drain at once, spilling
//! what is undelivered, so an operator can cut a long drain short.

mod common;

use common::*;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn a_second_sigterm_ends_a_long_drain_at_once_and_spills_what_is_left() {
    // A store that never answers and a drain deadline of ten minutes: only a second signal
    // can end this drain in time.
    let env: Vec<(String, String)> = [
        ("S3_ENDPOINT", "http://127.0.0.1:9"),
        ("S3_BUCKET", "b"),
        ("S3_REGION", "garage"),
        ("AWS_ACCESS_KEY_ID", "k"),
        ("AWS_SECRET_ACCESS_KEY", "s"),
        ("S3_PREFIX", "p"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let (mut s, _conf) = config_server(
        1,
        "[upload]\ndrain_timeout_ms = 600000\nbackoff_max_ms = 100\n",
        &["--sink", "s3"],
        &env,
    );
    for c in 0..3 {
        assert_eq!(post(s.addr, &numbered_body(c, 0, 4)).status, 200);
    }
    // Still draining (retrying the store) a second later.
    term_and_see_it_wait(&mut s, "the first signal drains, it does not exit");
    s.signal("TERM");
    // The drain deadline is ten minutes: only the second signal can end it within 30 s.
    assert!(s.wait_exit(30).success());
    let spilled: Vec<_> = files_under(&s.spill)
        .into_iter()
        .filter(|f| f.to_string_lossy().ends_with(".spill"))
        .collect();
    assert_eq!(
        spilled.len(),
        12,
        "every undelivered payload spilled: {spilled:?}"
    );
}

/// Sends SIGTERM and checks that the server is still running a second later (`why` it should
/// be).
fn term_and_see_it_wait(s: &mut Server, why: &str) {
    s.signal("TERM");
    std::thread::sleep(Duration::from_secs(1));
    assert!(s.child.try_wait().unwrap().is_none(), "{why}");
}

/// Opens a connection and sends a payload request's head and half of its `body`: a request
/// in progress for as long as the test holds it.
fn half_sent(addr: std::net::SocketAddr, body: &[u8]) -> (TcpStream, BufReader<TcpStream>) {
    let (mut w, rd) = connect(addr);
    let head = format!(
        "POST /v1/payloads HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes()).unwrap();
    w.write_all(&body[..body.len() / 2]).unwrap();
    w.flush().unwrap();
    // The server has the connection (and the one asking for its metrics).
    wait_until(10, "the request is in progress", || {
        let m = request(addr, "GET", "/metrics", &[], b"");
        Metrics::parse(&String::from_utf8_lossy(&m.body)).sum("corepost_connections_open") == 2
    });
    (w, rd)
}

/// A server whose shutdown grace and body timeout are ten minutes: only the request's end or
/// a second signal can end its shutdown in time.
fn patient_server() -> (Server, FsFiles) {
    fs_server(
        1,
        None,
        "[server]\nshutdown_grace_ms = 600000\nbody_read_timeout_ms = 600000\n",
        &[],
        &[],
    )
}

#[test]
fn shutdown_waits_for_the_request_in_progress_and_answers_it() {
    let (mut s, _files) = patient_server();
    let body = numbered_body(0, 0, 4);
    let (mut w, mut rd) = half_sent(s.addr, &body);
    term_and_see_it_wait(&mut s, "shutdown waits for the request in progress");
    w.write_all(&body[body.len() / 2..]).unwrap();
    let r = read_response(&mut rd);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["accepted"], 4);
    assert!(s.wait_exit(30).success());
}

#[test]
fn a_second_sigterm_ends_the_wait_for_requests_in_progress() {
    let (mut s, _files) = patient_server();
    let (_w, _rd) = half_sent(s.addr, &numbered_body(0, 0, 4));
    term_and_see_it_wait(&mut s, "the first signal waits for the request in progress");
    s.signal("TERM");
    assert!(s.wait_exit(30).success());
}

#[test]
fn a_request_stalled_past_the_shutdown_grace_does_not_hold_the_exit() {
    let (mut s, _files) = fs_server(
        1,
        None,
        "[server]\nshutdown_grace_ms = 500\nbody_read_timeout_ms = 600000\n",
        &[],
        &[],
    );
    let (_w, _rd) = half_sent(s.addr, &numbered_body(0, 0, 4));
    s.signal("TERM");
    assert!(s.wait_exit(30).success());
}
