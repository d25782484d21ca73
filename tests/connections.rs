//! Connection slots: they fit the file descriptor limit, and a client that never reads its
//! answers does not hold one forever.

mod common;

use common::*;
use std::io::Write;

use std::time::Duration;

/// Soft and hard `Max open files` of a process, from `/proc/{pid}/limits`.
fn open_files_limit(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

#[test]
fn the_descriptor_limit_is_raised_and_connections_fit_within_it() {
    let out = tempfile::tempdir().unwrap();
    // The usual soft limit (1,024) under a hard limit of 2,048; two shards of 10,000
    // connections each (the default) cannot fit.
    let s = Server::start_under(
        &["prlimit", "--nofile=1024:2048", "--"],
        &[
            "--cores",
            "2",
            "--sink",
            "fs",
            "--fs-root",
            out.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(
        open_files_limit(s.child.id()),
        (2048, 2048),
        "soft raised to hard"
    );
    let m = s.metrics();
    let max = m.sum("corepost_connections_max");
    assert!(
        max > 0 && max + 2 * 64 < 2048,
        "both shards' connections fit: {max}"
    );
    // Clients beyond the limit are turned away (closed at once), but the server keeps
    // descriptors for its files and serves again once clients leave.
    let held: Vec<_> = (0..max)
        .map(|_| std::net::TcpStream::connect(s.addr).unwrap())
        .collect();
    wait_until(60, "a connection over the limit closed at once", || {
        let Ok(mut c) = std::net::TcpStream::connect(s.addr) else {
            return false;
        };
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        if c.write_all(&raw_request("GET", "/healthz", &[], b""))
            .is_err()
        {
            return true;
        }
        let mut b = [0u8; 1];
        match std::io::Read::read(&mut c, &mut b) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    });
    drop(held);
    wait_until(30, "served again", || post(s.addr, BODY10).status == 200);
    let m = s.wait_drained(Duration::from_secs(30));
    assert!(m.sum("corepost_connections_rejected_total") > 0);
    assert_eq!(
        files_under(out.path()).len(),
        10,
        "stored after the limit was reached"
    );
}

#[test]
fn a_client_that_never_reads_its_answers_loses_its_connection() {
    let (s, _files) = fs_server(1, None, "[server]\nwrite_timeout_ms = 500\n", &[], &[]);
    // A small receive buffer, then thousands of pipelined GET /metrics (each answer a few
    // KiB), never read: the server's writes stall.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    let mut w: std::net::TcpStream = sock.into();
    w.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let req = raw_request("GET", "/metrics", &[], b"");
    for _ in 0..5000 {
        if w.write_all(&req).is_err() {
            break; // the server stopped reading: its answers are stuck
        }
    }
    // The stalled connection is closed by the write timeout; only the probe's is open.
    wait_until(30, "the stalled connection closed", || {
        s.metrics().sum("corepost_connections_open") == 1
    });
    drop(w);
}
