//! The S3 sink against a real Garage (started by `scripts/garage.sh`): objects, keys, content
//! type, and 1,000 concurrent POSTs over two shards giving exactly 10,000 objects.

mod common;

use common::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

#[test]
fn s3_round_trip_keeps_values_and_content_type() {
    let g = garage();
    let p = prefix("roundtrip");
    let s = Server::start(&["--cores", "2", "--sink", "s3"], &g.server_env(&p));
    let body = r#"{"version":"1","token":"t","data":[{"s":"\"q\" \\ \u00e9 ✓ 日本","n":18446744073709551615},[1,{"a":[]}],"plain"]}"#;
    assert_eq!(post(s.addr, body.as_bytes()).status, 200);
    assert_eq!(post(s.addr, BODY10).status, 200);
    let m = s.wait_drained(Duration::from_secs(60));
    assert_eq!(m.sum("corepost_payloads_uploaded_total"), 13);
    assert_eq!(m.sum("corepost_payloads_failed_total"), 0);
    assert_eq!(request(s.addr, "GET", "/readyz", &[], b"").status, 200);

    let objects = g.objects(&p);
    assert_eq!(objects.len(), 13);
    let mut stored: Vec<String> = Vec::new();
    for o in &objects {
        let (key, ct, bytes) = (&o.key, &o.content_type, &o.data);
        assert_eq!(ct.as_deref(), Some("application/json"), "{key}");
        assert!(
            key.starts_with(&format!("{p}/")) && key.ends_with(".json"),
            "{key}"
        );
        let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        stored.push(v.to_string());
    }
    let mut sent: Vec<String> = payloads_of(body.as_bytes())
        .into_iter()
        .chain(payloads_of(BODY10))
        .map(|v| v.to_string())
        .collect();
    stored.sort();
    sent.sort();
    assert_eq!(stored, sent);
    let raw: Vec<u8> = objects.iter().flat_map(|o| o.data.clone()).collect();
    let raw = String::from_utf8(raw).unwrap();
    assert!(
        raw.contains("18446744073709551615"),
        "64-bit integers survive"
    );
    assert!(raw.contains("✓ 日本"));
    assert!(s.stop(20).success());
}

#[test]
fn thousand_concurrent_posts_give_ten_thousand_objects() {
    let g = garage();
    let p = prefix("thousand");
    let s = Server::start(&["--cores", "2", "--sink", "s3"], &g.server_env(&p));
    let addr = s.addr;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(1000));
    // Client `c` sends payloads c/0..c/9, so every object can be traced to what was sent.
    let handles: Vec<_> = (0..1000)
        .map(|c| {
            let b = barrier.clone();
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    let (mut w, mut r) = connect(addr);
                    let req = raw_request("POST", "/v1/payloads", &[], &numbered_body(c, 0, 10));
                    b.wait();
                    std::io::Write::write_all(&mut w, &req).unwrap();
                    read_response(&mut r).status
                })
                .unwrap()
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        statuses.iter().all(|&st| st == 200),
        "all 1,000 POSTs answered 200"
    );

    let m = s.wait_drained(Duration::from_secs(300));
    assert_eq!(m.sum("corepost_payloads_accepted_total"), 10_000);
    assert_eq!(m.sum("corepost_payloads_uploaded_total"), 10_000);
    assert_eq!(m.sum("corepost_payloads_failed_total"), 0);
    let served = |shard: &str| {
        m.sum_with(
            "corepost_requests_total",
            &format!("shard=\"{shard}\",route=\"payloads\""),
        )
    };
    assert!(
        served("0") > 0 && served("1") > 0,
        "both cores served: {} / {}",
        served("0"),
        served("1")
    );

    let objects = g.objects(&p);
    assert_eq!(objects.len(), 10_000, "exactly 10,000 objects");
    let keys: HashSet<&String> = objects.iter().map(|o| &o.key).collect();
    assert_eq!(keys.len(), 10_000, "distinct keys");
    for o in &objects {
        assert_eq!(
            o.content_type.as_deref(),
            Some("application/json"),
            "{}",
            o.key
        );
        assert!(
            o.key.ends_with(".json"),
            "one payload per object: {}",
            o.key
        );
    }
    // Each object holds one payload equal in value to one that was sent, and each payload
    // sent is held by exactly one object.
    let copies = numbered_copies(&objects);
    let expected: HashMap<Numbered, u32> = (0..1000u64)
        .flat_map(|c| (0..10u64).map(move |n| ((c, n), 1)))
        .collect();
    if copies != expected {
        let mut lost: Vec<_> = expected
            .keys()
            .filter(|k| !copies.contains_key(k))
            .collect();
        let mut twice: Vec<_> = copies.iter().filter(|(_, &n)| n > 1).collect();
        let mut unsent: Vec<_> = copies
            .keys()
            .filter(|k| !expected.contains_key(k))
            .collect();
        lost.sort();
        twice.sort();
        unsent.sort();
        panic!(
            "{} payloads lost (e.g. {:?}), {} stored more than once (e.g. {:?}), never sent: {:?}",
            lost.len(),
            &lost[..lost.len().min(10)],
            twice.len(),
            &twice[..twice.len().min(10)],
            &unsent[..unsent.len().min(10)]
        );
    }
    assert!(s.stop(30).success());
}

#[test]
fn sigterm_during_load_loses_nothing() {
    let g = garage();
    let p = prefix("sigterm");
    let s = Server::start(&["--cores", "2", "--sink", "s3"], &g.server_env(&p));
    // Numbered payloads: each one answered 200 is looked for by value, so a loss cannot hide
    // behind an extra copy of another.
    let load = NumberedLoad::start(s.addr, 8);
    wait_until(30, "payloads accepted before SIGTERM", || {
        s.metrics().sum("corepost_payloads_accepted_total") >= 1000
    });
    let mut s = s;
    s.signal("TERM"); // while the load runs
    let status = s.child.wait().unwrap();
    let count = load.stop();
    assert!(status.success(), "{status:?}");
    assert!(!count.ok.is_empty(), "{}", count.summary());
    // With ack=queued and a graceful stop, every payload answered 200 is stored exactly once:
    // in the bucket, or (past the drain deadline, when the store is slow) in the spill
    // directory for the next start, never in both. A payload queued just as its connection
    // was cut may be stored without its client seeing the 200, but only once; one answered
    // 503 (shutting down) was never queued and is not stored.
    let mut objects = g.objects(&p);
    let in_bucket = objects.len();
    let spilled = spilled_objects(&s.spill);
    let spilled_keys: HashSet<&String> = spilled.iter().map(|o| &o.key).collect();
    let both: Vec<&String> = objects
        .iter()
        .map(|o| &o.key)
        .filter(|k| spilled_keys.contains(k))
        .collect();
    assert!(
        both.is_empty(),
        "{} keys both stored and spilled, e.g. {:?}",
        both.len(),
        &both[..both.len().min(3)]
    );
    for o in &objects {
        assert_eq!(
            o.content_type.as_deref(),
            Some("application/json"),
            "{}",
            o.key
        );
    }
    objects.extend(spilled);
    let copies = numbered_copies(&objects);
    check_numbered(&copies, &count, true);
    eprintln!(
        "sigterm: {}; {in_bucket} objects stored, {} spilled",
        count.summary(),
        objects.len() - in_bucket
    );
}

#[test]
fn bad_credentials_fail_readiness_and_nothing_is_dropped() {
    let g = garage();
    let p = prefix("badcreds");
    let mut env = g.server_env(&p);
    for (k, v) in env.iter_mut() {
        if k == "AWS_SECRET_ACCESS_KEY" {
            *v = "0".repeat(64);
        }
    }
    let s = Server::start(&["--cores", "1", "--sink", "s3"], &env);
    // The start-up probe is refused (403): not ready, reported in the log.
    wait_until(30, "/readyz to fail", || {
        request(s.addr, "GET", "/readyz", &[], b"").status == 503
    });
    // A payload answered 200 that the store refuses for good is kept in the spill directory.
    assert_eq!(post(s.addr, br#"{"data":[{"kept":true}]}"#).status, 200);
    let m = s.wait_drained(Duration::from_secs(30));
    assert_eq!(m.sum("corepost_payloads_spilled_total"), 1);
    assert_eq!(m.sum("corepost_payloads_failed_total"), 0);
    let files = files_under(&s.spill);
    assert_eq!(files.len(), 1);
    assert_eq!(std::fs::read(&files[0]).unwrap(), br#"{"kept":true}"#);
    assert!(
        files[0].to_string_lossy().contains(&p),
        "spilled under its key"
    );
}
