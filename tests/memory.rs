//! Memory is bounded by the queue budget, also against clients that declare large bodies and
//! stall: room is reserved before a body is read, so bodies being read count like queued
//! ones. Reads the server's peak resident memory (`VmHWM`).

mod common;

use common::*;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// Peak resident set of a process, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The target: 1,000 connections each send 900 KiB of a declared 1 MiB body and
/// stall; `queue.max_bytes = 64 MiB`, one shard: peak RSS at most 256 MiB, and a normal
/// client is served (once the stalled bodies time out; until then it is told to retry).
#[test]
fn a_thousand_stalled_large_bodies_stay_within_the_queue_budget() {
    let (s, _conf) = config_server(
        1,
        "[queue]\nmax_bytes = 67108864\n[server]\nbody_read_timeout_ms = 4000\n[shards]\nmax_connections = 2000\n",
        &["--sink", "discard"],
        &[],
    );
    let addr = s.addr;
    let part: Arc<Vec<u8>> = Arc::new(vec![b' '; 900 << 10]);
    let head = b"POST /v1/payloads HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n";
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let stall = Arc::new(std::sync::Barrier::new(1001));
    let clients: Vec<_> = (0..1000)
        .map(|_| {
            let (part, stall, done) = (part.clone(), stall.clone(), done_tx.clone());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let c = std::net::TcpStream::connect(addr);
                    if let Ok(mut c) = c {
                        // Refused ones see the connection closed: their write fails.
                        let _ = c.write_all(head).and_then(|()| c.write_all(&part));
                        let _ = done.send(());
                        stall.wait(); // hold the connection, body unfinished
                        drop(c);
                    } else {
                        let _ = done.send(());
                        stall.wait();
                    }
                })
                .unwrap()
        })
        .collect();
    drop(done_tx);
    for _ in 0..1000 {
        done_rx.recv_timeout(Duration::from_secs(120)).unwrap();
    }
    let peak_mib = vm_hwm_kib(s.child.id()) / 1024;
    eprintln!("peak RSS with 1,000 stalled 1 MiB bodies: {peak_mib} MiB");
    assert!(peak_mib <= 256, "peak RSS {peak_mib} MiB");
    // A normal client: refused with 503 + Retry-After while the stalled bodies hold the
    // budget, served once they time out.
    wait_until(60, "a normal client served", || {
        let r = post(addr, BODY10);
        assert!(
            r.status == 200 || (r.status == 503 && r.header("retry-after").is_some()),
            "{}",
            r.status
        );
        r.status == 200
    });
    stall.wait();
    for c in clients {
        c.join().unwrap();
    }
    let peak_mib = vm_hwm_kib(s.child.id()) / 1024;
    eprintln!("peak RSS after the stalled bodies timed out: {peak_mib} MiB");
    assert!(peak_mib <= 256, "peak RSS {peak_mib} MiB");
}

/// The start of a gzip body: 6 KB of JSON in its first frames, flushed.
fn gzip_start() -> Vec<u8> {
    let mut plain = b"{\"data\":[".to_vec();
    plain.extend(b"1,".repeat(3000));
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&plain).unwrap();
    e.flush().unwrap();
    e.get_ref().clone()
}

/// 300 connections each send the start of a small gzip body (3,000 bytes declared) and
/// stall. Their decoders' memory and output buffers count in the queue budget, and peak RSS stays within the same 256 MiB target (`queue.max_bytes = 64 MiB`,
/// one shard); the output buffers were once reserved whole (16 MiB of address space each),
/// and where the allocator backs them with huge pages each such request held 2 MiB.
#[test]
fn stalled_compressed_bodies_stay_within_the_queue_budget() {
    let (s, _conf) = config_server(
        1,
        "[queue]\nmax_bytes = 67108864\n[server]\nbody_read_timeout_ms = 60000\n[shards]\nmax_connections = 2000\n",
        &["--sink", "discard"],
        &[],
    );
    let start = gzip_start();
    let head = b"POST /v1/payloads HTTP/1.1\r\nHost: t\r\nContent-Encoding: gzip\r\nContent-Length: 3000\r\nExpect: 100-continue\r\n\r\n";
    let conns: Vec<_> = (0..300)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(s.addr).unwrap();
            c.write_all(head).unwrap();
            // `100 Continue` comes once the body is first read: the request was admitted
            // (its room reserved) and its decoder and output buffer made.
            let r = read_response(&mut std::io::BufReader::new(c.try_clone().unwrap()));
            assert_eq!(r.status, 100);
            c.write_all(&start).unwrap();
            c
        })
        .collect();
    let peak_mib = vm_hwm_kib(s.child.id()) / 1024;
    eprintln!("peak RSS with 300 stalled gzip bodies: {peak_mib} MiB");
    assert!(peak_mib <= 256, "peak RSS {peak_mib} MiB");
    drop(conns);
}
