//! Batched objects against a real Garage: every payload exactly once and in order, objects
//! closed by count, age and shutdown, gzip/zstd and multipart objects that read back as sent,
//! and `ack = "uploaded"` answering only once the payloads can be read from the bucket.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

/// A config file for the server (kept alive by the caller).
fn start(g: &Garage, prefix: &str, conf: &tempfile::NamedTempFile) -> Server {
    let path = conf.path().to_str().unwrap().to_string();
    Server::start(
        &["--cores", "2", "--sink", "s3", "--config", &path],
        &g.server_env(prefix),
    )
}

/// `(shard, seq)` from a key `.../{instance}-{shard}-{start}-{seq}.ext`.
fn shard_and_seq(key: &str) -> (u64, u64) {
    let name = key.rsplit('/').next().unwrap();
    let stem = name.split('.').next().unwrap();
    let mut parts = stem.rsplitn(4, '-');
    let seq = parts.next().unwrap().parse().unwrap();
    let _start = parts.next();
    let shard = parts.next().unwrap().parse().unwrap();
    (shard, seq)
}

#[test]
fn every_payload_once_in_arrival_order_with_the_configured_object_count() {
    let g = garage();
    let p = prefix("order");
    let c = text_file("[batch]\nmax_payloads = 100\nmax_age_ms = 600000\n");
    let s = start(g, &p, &c);
    // 16 connections: the kernel spreads them over the two shards' SO_REUSEPORT sockets by a
    // hash, and with 8 all of them landed on one shard about once in 128 runs.
    let (clients, requests) = (16usize, 63usize);
    let total = (clients * requests * 10) as u64;
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let addr = s.addr;
            std::thread::spawn(move || {
                let (mut w, mut r) = connect(addr);
                for i in 0..requests {
                    let body = numbered_body(c, i * 10, 10);
                    w.write_all(&raw_request("POST", "/v1/payloads", &[], &body))
                        .unwrap();
                    let resp = read_response(&mut r);
                    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let m = s.metrics();
    let per_shard: Vec<u64> = (0..2)
        .map(|i| {
            m.sum_with(
                "corepost_payloads_accepted_total",
                &format!("shard=\"{i}\""),
            )
        })
        .collect();
    assert_eq!(per_shard.iter().sum::<u64>(), total);
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "both shards served: {per_shard:?}"
    );
    // Objects still open are closed by the shutdown (max_age is ten minutes).
    assert!(s.stop(60).success());

    let objects = g.objects(&p);
    let expected: u64 = per_shard.iter().map(|n| n.div_ceil(100)).sum();
    assert_eq!(
        objects.len() as u64,
        expected,
        "objects per shard = ceil(payloads / 100)"
    );
    let mut ordered: Vec<((u64, u64), Vec<serde_json::Value>)> = objects
        .iter()
        .map(|o| {
            assert_eq!(o.content_type.as_deref(), Some("application/x-ndjson"));
            (shard_and_seq(&o.key), lines(o))
        })
        .collect();
    ordered.sort_by_key(|(k, _)| *k);
    let mut seen: HashMap<(u64, u64), u32> = HashMap::new();
    let mut last: HashMap<(u64, u64), u64> = HashMap::new(); // (shard, client) -> last n
    for ((shard, _), payloads) in &ordered {
        assert!(payloads.len() <= 100);
        for v in payloads {
            let (c, n) = (v["c"].as_u64().unwrap(), v["n"].as_u64().unwrap());
            *seen.entry((c, n)).or_default() += 1;
            if let Some(prev) = last.insert((*shard, c), n) {
                assert!(
                    n > prev,
                    "client {c} on shard {shard}: {n} stored after {prev}"
                );
            }
        }
    }
    assert_eq!(seen.len() as u64, total, "every payload stored");
    assert!(seen.values().all(|&k| k == 1), "no payload stored twice");
}

#[test]
fn a_quiet_batch_is_closed_by_max_age_and_by_shutdown() {
    let g = garage();
    // max_age closes it with no further traffic.
    let p = prefix("age");
    let c = text_file("[batch]\nmax_payloads = 1000\nmax_age_ms = 500\ncompression = \"zstd\"\n");
    let s = start(g, &p, &c);
    let t0 = Instant::now();
    assert_eq!(post(s.addr, BODY10).status, 200);
    wait_until(20, "the quiet batch stored", || !g.keys(&p).is_empty());
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "not closed before max_age"
    );
    let objects = g.objects(&p);
    assert_eq!(objects.len(), 1);
    assert_eq!(lines(&objects[0]), payloads_of(BODY10));
    assert!(s.stop(30).success());

    // Shutdown closes it when max_age is far away.
    let p = prefix("shutdown");
    let c = text_file("[batch]\nmax_payloads = 1000\nmax_age_ms = 600000\n");
    let s = start(g, &p, &c);
    assert_eq!(post(s.addr, BODY10).status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        g.keys(&p).is_empty(),
        "nothing closes the batch before shutdown"
    );
    assert!(s.stop(30).success());
    let objects = g.objects(&p);
    assert_eq!(objects.len(), 1);
    assert_eq!(lines(&objects[0]), payloads_of(BODY10));
}

#[test]
fn gzip_and_zstd_objects_decompress_to_the_ndjson_sent() {
    let g = garage();
    // Pretty-printed payloads: line breaks between tokens become spaces on one line.
    let body = "{\"version\":\"1\",\"token\":\"t\",\"data\":[{\n  \"a\": 1,\n  \"s\": \"x\\ny é\"\n},[1,\r\n2],18446744073709551615]}";
    let expected: &[u8] =
        b"{   \"a\": 1,   \"s\": \"x\\ny \xc3\xa9\" }\n[1,  2]\n18446744073709551615\n";
    for (compression, suffix, encoding) in [
        ("gzip", ".ndjson.gz", "gzip"),
        ("zstd", ".ndjson.zst", "zstd"),
    ] {
        let p = prefix(compression);
        let c = text_file(&format!(
            "[batch]\nmax_payloads = 1000\nmax_age_ms = 200\ncompression = \"{compression}\"\nlevel = 5\n"
        ));
        let s = start(g, &p, &c);
        assert_eq!(post(s.addr, body.as_bytes()).status, 200);
        wait_until(20, "object stored", || !g.keys(&p).is_empty());
        let objects = g.objects(&p);
        assert_eq!(objects.len(), 1);
        let o = &objects[0];
        assert!(o.key.ends_with(suffix), "{}", o.key);
        assert_eq!(o.content_type.as_deref(), Some("application/x-ndjson"));
        assert_eq!(o.content_encoding.as_deref(), Some(encoding));
        assert_ne!(o.data, expected, "stored compressed");
        assert_eq!(ndjson(o), expected, "{compression}");
        assert!(s.stop(30).success());
    }
}

#[test]
fn large_objects_use_multipart_upload() {
    let g = garage();
    let p = prefix("multipart");
    // Eleven payloads of about 1 MB in one request: the count closes one 11 MB object.
    let c = text_file(
        "[server]\nmax_body_bytes = 16777216\n[batch]\nmax_payloads = 11\nmax_bytes = 12582912\nmax_age_ms = 600000\nmultipart_threshold_bytes = 5242880\npart_bytes = 5242880\n",
    );
    let s = start(g, &p, &c);
    let mut sent = Vec::new();
    let mut payloads = Vec::new();
    for i in 0..11u8 {
        let fill = char::from(b'a' + i).to_string().repeat(1_000_000);
        let payload = format!(r#"{{"i":{i},"fill":"{fill}"}}"#);
        sent.extend_from_slice(payload.as_bytes());
        sent.push(b'\n');
        payloads.push(payload);
    }
    let body = format!(r#"{{"data":[{}]}}"#, payloads.join(","));
    assert_eq!(post(s.addr, body.as_bytes()).status, 200);
    let m = s.wait_drained(Duration::from_secs(60));
    assert_eq!(m.sum("corepost_objects_uploaded_total"), 1);
    // 11 MB in 5 MiB parts: start, three parts, complete.
    assert_eq!(m.sum("corepost_put_requests_total"), 5);
    let objects = g.objects(&p);
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0].data.len(), sent.len());
    assert!(
        objects[0].data == sent,
        "multipart object reads back as sent"
    );
    assert!(s.stop(60).success());
}

#[test]
fn ack_uploaded_answers_once_the_payloads_are_readable() {
    let g = garage();
    let p = prefix("ack");
    let c = text_file(
        "[server]\nack = \"uploaded\"\n[batch]\nmax_payloads = 50\nmax_age_ms = 100\ncompression = \"zstd\"\n",
    );
    let s = start(g, &p, &c);
    for i in 0..5 {
        let body = numbered_body(7, i * 10, 10);
        let resp = post(s.addr, &body);
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
        // Right after the 200: every payload of the request is in the bucket.
        let stored: Vec<serde_json::Value> = g.objects(&p).iter().flat_map(lines).collect();
        for v in payloads_of(&body) {
            assert!(stored.contains(&v), "payload {v} not readable after 200");
        }
    }
    let m = s.metrics();
    assert_eq!(m.sum("corepost_payloads_accepted_total"), 50);
    assert_eq!(m.sum("corepost_payloads_uploaded_total"), 50);
    assert!(s.stop(30).success());
}
