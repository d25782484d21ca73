//! The running server (two shards, fs sink): every status of the API, keep-alive, pipelining,
//! `Expect: 100-continue`, and payloads landing on disk equal in value to what was sent.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::Duration;

fn fs_server(dir: &std::path::Path, extra: &[&str]) -> Server {
    let root = dir.to_str().unwrap();
    let mut args = vec!["--cores", "2", "--fs-root", root];
    args.extend_from_slice(extra);
    Server::start(&args, &[])
}

#[test]
fn ready_line_names_address_and_shards() {
    let dir = tempfile::tempdir().unwrap();
    let s = fs_server(dir.path(), &[]);
    assert!(
        s.ready_line.contains("(2 shards, sink fs)"),
        "{}",
        s.ready_line
    );
    assert_eq!(request(s.addr, "GET", "/healthz", &[], b"").status, 200);
    assert_eq!(request(s.addr, "GET", "/readyz", &[], b"").status, 200);
}

#[test]
fn payloads_land_in_files_equal_in_value() {
    let dir = tempfile::tempdir().unwrap();
    let s = fs_server(dir.path(), &[]);
    let tricky = r#"{"version":"1","token":"t","data":[{"s":"quote \" backslash \\ newline \n tab \t \u00e9 \ud83d\ude00","big":9223372036854775807,"neg":-9223372036854775808,"u":18446744073709551615},"ünïcødé ✓ 日本語",[1,2,{"x":null}],42,true]}"#;
    for body in [BODY10, tricky.as_bytes()] {
        let r = post(s.addr, body);
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["accepted"], payloads_of(body).len());
    }
    let r = request(s.addr, "POST", "/", &[], BODY10); // the Go service's path
    assert_eq!(r.status, 200);
    s.wait_drained(Duration::from_secs(30));

    let files = files_under(&dir.path().join("corepost"));
    assert_eq!(files.len(), 10 + 5 + 10);
    let mut stored: Vec<String> = files
        .iter()
        .map(|f| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
            v.to_string()
        })
        .collect();
    let mut sent: Vec<String> = [BODY10, tricky.as_bytes(), BODY10]
        .iter()
        .flat_map(|b| payloads_of(b))
        .map(|v| v.to_string())
        .collect();
    stored.sort();
    sent.sort();
    assert_eq!(stored, sent);
    // 64-bit integers survive exactly (the bytes as sent are stored).
    let all: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert!(all.contains("18446744073709551615") && all.contains("-9223372036854775808"));
    assert!(all.contains("ünïcødé ✓ 日本語"));
    // Keys: prefix/yyyy/mm/dd/hh/instance-shard-start-seq.json
    for f in &files {
        let rel = f
            .strip_prefix(dir.path())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let parts: Vec<&str> = rel.split('/').collect();
        assert_eq!(parts.len(), 6, "{rel}");
        assert_eq!(parts[0], "corepost");
        assert!(
            parts[1..5].iter().all(|p| p.parse::<u32>().is_ok()),
            "{rel}"
        );
        let name = parts[5].strip_suffix(".json").unwrap();
        let fields: Vec<&str> = name.rsplitn(4, '-').collect(); // seq, start, shard, instance
        assert_eq!(fields.len(), 4, "{rel}");
        assert!(
            fields[..3].iter().all(|f| f.parse::<u64>().is_ok()),
            "{rel}"
        );
        assert!(fields[2] == "0" || fields[2] == "1", "{rel}");
    }
    assert!(s.stop(10).success());
}

#[test]
fn empty_data_is_accepted_with_zero() {
    let dir = tempfile::tempdir().unwrap();
    let s = fs_server(dir.path(), &[]);
    let r = post(s.addr, br#"{"version":"1","token":"t","data":[]}"#);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"accepted": 0}));
}

#[test]
fn malformed_and_wrong_shape_are_400_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = fs_server(dir.path(), &[]);
    let cases: [(&[u8], &str); 7] = [
        (
            b"{\"data\":[1,}",
            "invalid JSON at byte 11: expected a value",
        ),
        (b"not json", "invalid JSON at byte 0: expected a value"),
        (b"{\"data\":{}}", "wrong shape"),
        (b"{\"version\":3,\"data\":[]}", "wrong shape"),
        (b"[1,2]", "wrong shape"),
        (
            b"{\"data\":[\"\xff\xfe\"]}",
            "invalid JSON at byte 10: invalid UTF-8",
        ),
        (b"", "invalid JSON at byte 0: unexpected end of the body"),
    ];
    for (body, want) in cases {
        let r = post(s.addr, body);
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(body));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains(want), "{msg:?} lacks {want:?}");
    }
    // Deep nesting: a clear 400, and the server keeps serving.
    let deep = format!(
        r#"{{"data":[{}{}]}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let r = post(s.addr, deep.as_bytes());
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("nesting"));
    assert_eq!(post(s.addr, BODY10).status, 200);
}

#[test]
fn wrong_method_is_405_with_allow() {
    let dir = tempfile::tempdir().unwrap();
    let s = fs_server(dir.path(), &[]);
    for (m, p, allow) in [
        ("GET", "/v1/payloads", "POST"),
        ("PUT", "/", "POST"),
        ("DELETE", "/v1/payloads", "POST"),
        ("POST", "/metrics", "GET"),
    ] {
        let r = request(s.addr, m, p, &[], b"");
        assert_eq!(r.status, 405, "{m} {p}");
        assert_eq!(r.header("allow"), Some(allow));
        assert!(r.json()["error"].is_string());
    }
    let r = request(s.addr, "GET", "/nope", &[], b"");
    assert_eq!(r.status, 404);
}

#[test]
fn oversized_bodies_are_413_without_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = fs_server(dir.path(), &[]);
    // Declared too large: answered before any body byte is sent (nothing to read yet).
    let (mut w, mut r) = connect(s.addr);
    w.write_all(b"POST /v1/payloads HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n")
        .unwrap();
    let resp = read_response(&mut r);
    assert_eq!(resp.status, 413);
    assert!(resp.json()["error"].as_str().unwrap().contains("1048576"));
    // Chunked, growing past the limit: refused once it passes 1 MiB.
    let (mut w, mut r) = connect(s.addr);
    w.write_all(b"POST /v1/payloads HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    while sent <= (1 << 20) + 64 * 1024 {
        let head = format!("{:x}\r\n", chunk.len());
        if w.write_all(head.as_bytes()).is_err()
            || w.write_all(&chunk).is_err()
            || w.write_all(b"\r\n").is_err()
        {
            break; // the server may close once it has answered
        }
        sent += chunk.len();
    }
    // The body never ended (no last chunk was sent): the answer can only come from the
    // limit, decided while reading, not from a body read to its end.
    let resp = read_response(&mut r);
    assert_eq!(resp.status, 413);
    // A body exactly at the limit is fine.
    let mut body = br#"{"data":[1],"pad":""#.to_vec();
    body.resize((1 << 20) - 2, b'x');
    body.extend_from_slice(b"\"}");
    assert_eq!(body.len(), 1 << 20);
    assert_eq!(post(s.addr, &body).status, 200);
}

#[test]
fn keep_alive_and_pipelining() {
    let dir = tempfile::tempdir().unwrap();
    let s = fs_server(dir.path(), &[]);
    let (mut w, mut r) = connect(s.addr);
    // Sequential requests on one connection.
    for _ in 0..3 {
        w.write_all(&raw_request("POST", "/v1/payloads", &[], BODY10))
            .unwrap();
        let resp = read_response(&mut r);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json()["accepted"], 10);
    }
    // Three requests in one write, answered in order.
    let mut batch = raw_request("POST", "/v1/payloads", &[], br#"{"data":[1]}"#);
    batch.extend(raw_request(
        "POST",
        "/v1/payloads",
        &[],
        br#"{"data":[1,2]}"#,
    ));
    batch.extend(raw_request("GET", "/v1/payloads", &[], b""));
    w.write_all(&batch).unwrap();
    assert_eq!(read_response(&mut r).json()["accepted"], 1);
    assert_eq!(read_response(&mut r).json()["accepted"], 2);
    assert_eq!(read_response(&mut r).status, 405);
}

#[test]
fn expect_100_continue() {
    let dir = tempfile::tempdir().unwrap();
    let s = fs_server(dir.path(), &[]);
    let (mut w, mut r) = connect(s.addr);
    let head = format!(
        "POST /v1/payloads HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        BODY10.len()
    );
    w.write_all(head.as_bytes()).unwrap();
    assert_eq!(read_response(&mut r).status, 100);
    w.write_all(BODY10).unwrap();
    let resp = read_response(&mut r);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["accepted"], 10);
    // Too large: the final answer comes instead of `100 Continue`.
    let (mut w, mut r) = connect(s.addr);
    w.write_all(b"POST /v1/payloads HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5000000\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut r).status, 413);
}

#[test]
fn full_queue_gives_503_with_retry_after() {
    // An S3 endpoint that refuses connections: uploads retry, the queue (10 payloads) fills.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let env: Vec<(String, String)> = [
        ("S3_ENDPOINT", format!("http://{closed}")),
        ("S3_BUCKET", "nowhere".into()),
        ("S3_REGION", "garage".into()),
        ("AWS_ACCESS_KEY_ID", "GK0000".into()),
        ("AWS_SECRET_ACCESS_KEY", "secret".into()),
        ("MAX_QUEUE", "10".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let s = Server::start(&["--cores", "1", "--sink", "s3"], &env);
    assert_eq!(post(s.addr, BODY10).status, 200);
    // The store never comes back, so a handler that waited for room (the Go design's
    // blocking send) would never answer: any answer at all proves it does not wait.
    let r = post(s.addr, BODY10);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json(), serde_json::json!({"error": "overloaded"}));
    // Nothing was half-queued, and readiness reports the failing sink.
    let m = s.metrics();
    assert_eq!(m.sum("corepost_payloads_accepted_total"), 10);
    assert_eq!(m.sum("corepost_queue_payloads"), 10);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.metrics().sum("corepost_upload_retries_total") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "uploads are not being retried"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(request(s.addr, "GET", "/readyz", &[], b"").status, 503);
    assert_eq!(
        s.metrics().sum("corepost_payloads_failed_total"),
        0,
        "never given up on"
    );
}

#[test]
fn both_shards_serve_and_metrics_agree() {
    let dir = tempfile::tempdir().unwrap();
    let s = fs_server(dir.path(), &[]);
    let mut handles = Vec::new();
    for _ in 0..8 {
        let addr = s.addr;
        handles.push(std::thread::spawn(move || {
            for _ in 0..25 {
                assert_eq!(post(addr, BODY10).status, 200);
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(post(s.addr, b"{").status, 400);
    let m = s.wait_drained(Duration::from_secs(60));
    assert_eq!(m.sum("corepost_payloads_accepted_total"), 2000);
    assert_eq!(m.sum("corepost_payloads_uploaded_total"), 2000);
    assert_eq!(m.sum("corepost_bytes_in_total"), 200 * BODY10.len() as u64);
    let ok = |shard: &str| {
        m.sum_with(
            "corepost_requests_total",
            &format!("shard=\"{shard}\",route=\"payloads\",status=\"200\""),
        )
    };
    assert_eq!(ok("0") + ok("1"), 200);
    assert!(
        ok("0") > 0 && ok("1") > 0,
        "both shards should serve: {} / {}",
        ok("0"),
        ok("1")
    );
    assert_eq!(m.sum_with("corepost_requests_total", "status=\"400\""), 1);
    assert_eq!(files_under(&dir.path().join("corepost")).len(), 2000);
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let s = fs_server(dir.path(), &[]);
    for _ in 0..20 {
        assert_eq!(post(s.addr, BODY10).status, 200);
    }
    let status = s.stop(20);
    assert!(status.success(), "{status:?}");
    assert_eq!(files_under(&dir.path().join("corepost")).len(), 200);
}

#[test]
fn idle_and_byte_at_a_time_clients_do_not_block_others() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("c.toml");
    std::fs::write(
        &conf,
        "[server]\nheader_read_timeout_ms = 1000\n[shards]\nmax_connections = 250\n",
    )
    .unwrap();
    let s = fs_server(dir.path(), &["--config", conf.to_str().unwrap()]);
    // 100 clients that send half a request head and stall, 100 that send one byte at a time.
    let mut stalled = Vec::new();
    for _ in 0..100 {
        let (mut w, _r) = connect(s.addr);
        w.write_all(b"POST /v1/payloads HTTP/1.1\r\nHost: t\r\n")
            .unwrap();
        stalled.push(w);
    }
    for _ in 0..100 {
        let mut w = std::net::TcpStream::connect(s.addr).unwrap();
        w.write_all(b"P").unwrap();
        stalled.push(w);
    }
    for w in stalled.iter_mut().skip(100) {
        let _ = w.write_all(b"O");
    }
    // A normal client is served meanwhile.
    for _ in 0..10 {
        assert_eq!(post(s.addr, BODY10).status, 200);
    }
    // The slot limit holds: two shards of 250 slots, 200 taken; 320 more connections are
    // at least 20 too many, whichever shard the kernel gives each to.
    let extra: Vec<_> = (0..320)
        .map(|_| std::net::TcpStream::connect(s.addr).unwrap())
        .collect();
    // The header-read timeout cuts every stalled client: each sees its connection closed
    // (EOF or reset) without an answer.
    for w in stalled.iter_mut() {
        w.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 64];
        match w.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Ok(n) => {
                let answer = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
            }
            Err(e) => panic!("a stalled client was not cut: {e}"),
        }
    }
    drop(extra);
    wait_until(30, "stalled connections released", || {
        s.metrics().sum("corepost_connections_open") <= 1
    });
    let m = s.metrics();
    assert!(
        m.sum("corepost_connections_rejected_total") >= 20,
        "max_connections held: {} rejected",
        m.sum("corepost_connections_rejected_total")
    );
    assert_eq!(post(s.addr, BODY10).status, 200);
}

#[test]
fn hostile_inputs_get_clear_4xx_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let s = fs_server(dir.path(), &[]);
    // Oversized request head.
    let big = "x".repeat(20 * 1024);
    let r = request(
        s.addr,
        "POST",
        "/v1/payloads",
        &[("X-Big", big.as_str())],
        BODY10,
    );
    assert_eq!(r.status, 431);
    // Huge numbers (beyond 64 bits or f64 range) are refused by the default (simd) parser.
    for body in [
        r#"{"data":[1e400]}"#.to_string(),
        format!(r#"{{"data":[{}]}}"#, "9".repeat(1000)),
    ] {
        let r = post(s.addr, body.as_bytes());
        assert_eq!(r.status, 400, "{body:.40}");
        assert_eq!(r.json()["error"], "invalid JSON at byte 9: invalid number");
    }
    // A truncated body: the client promises 100 bytes, sends 10 and stops writing. Only the
    // client's write half is closed, so the server sees the body end early and can still
    // answer: a 400 naming the body.
    let (mut w, mut rd) = connect(s.addr);
    w.write_all(b"POST /v1/payloads HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"data\":[")
        .unwrap();
    w.shutdown(std::net::Shutdown::Write).unwrap();
    let resp = try_read_response(&mut rd).expect("an answer to the truncated body");
    assert_eq!(
        resp.status,
        400,
        "{:?}",
        String::from_utf8_lossy(&resp.body)
    );
    let msg = resp.json()["error"].as_str().unwrap().to_string();
    assert!(msg.contains("could not read the body"), "{msg:?}");
    // Nothing of the above was stored, and the server still answers.
    assert_eq!(post(s.addr, BODY10).status, 200);
    let m = s.wait_drained(Duration::from_secs(30));
    assert_eq!(m.sum("corepost_payloads_accepted_total"), 10);
}

#[test]
fn idle_keep_alive_connections_are_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("c.toml");
    std::fs::write(&conf, "[server]\nheader_read_timeout_ms = 500\n").unwrap();
    let s = fs_server(dir.path(), &["--config", conf.to_str().unwrap()]);
    let (mut w, mut r) = connect(s.addr);
    w.write_all(&raw_request("POST", "/v1/payloads", &[], BODY10))
        .unwrap();
    assert_eq!(read_response(&mut r).status, 200);
    // Idle after a complete exchange: the server closes the connection (the read would
    // time out, failing the test, if it did not).
    r.get_ref()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 64];
    match r.get_mut().read(&mut buf) {
        Ok(n) => assert_eq!(
            n,
            0,
            "closed without another answer: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

#[test]
fn a_second_server_on_a_port_in_use_is_refused() {
    // The shards bind with SO_REUSEPORT; without a check a second server would share the port
    // with the first and silently take part of its traffic.
    let dir = tempfile::tempdir().unwrap();
    let first = fs_server(dir.path(), &[]);
    let other = tempfile::tempdir().unwrap();
    let (out, spill) = (other.path().join("out"), other.path().join("spill"));
    let listen = first.addr.to_string();
    let (status, err) = serve_refused(
        &[
            "--cores",
            "1",
            "--listen",
            &listen,
            "--fs-root",
            out.to_str().unwrap(),
            "--spill-dir",
            spill.to_str().unwrap(),
        ],
        20,
    );
    assert!(!status.success(), "{status:?}");
    assert!(
        err.contains(&format!("cannot listen on {}", first.addr)) && err.contains("in use"),
        "{err}"
    );
    assert_eq!(post(first.addr, BODY10).status, 200);
}
