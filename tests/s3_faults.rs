//! Store failures against a real Garage that these tests stop and restart: an outage during
//! load loses nothing answered 200, and the drain deadline spills to disk for the next start.
//! The tests share one Garage and take turns (each stops it).

mod common;

use common::*;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

static TURN: Mutex<()> = Mutex::new(());

#[test]
fn garage_outage_during_load_loses_nothing() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let g = garage();
    let p = prefix("outage");
    let mut env = g.server_env(&p);
    env.push(("MAX_QUEUE".into(), "3000".into()));
    let s = Server::start(&["--cores", "2", "--sink", "s3"], &env);
    let load = NumberedLoad::start(s.addr, 8);
    std::thread::sleep(Duration::from_millis(800));
    garage_cmd("stop", &g.dir);
    // With the store down, queues fill and the server answers 503 instead of growing.
    wait_until(60, "503s while the store is down", || {
        s.metrics()
            .sum_with("corepost_requests_total", "status=\"503\"")
            > 0
    });
    assert_eq!(request(s.addr, "GET", "/readyz", &[], b"").status, 503);
    let queued = s.metrics().sum("corepost_queue_payloads");
    assert!(queued <= 2 * 3000, "queues stay bounded: {queued}");
    garage_cmd("start", &g.dir);
    std::thread::sleep(Duration::from_millis(800));
    let count = load.stop();
    let ok = count.ok.len() as u64;
    let m = s.wait_drained(Duration::from_secs(120));
    assert_eq!(m.sum("corepost_payloads_accepted_total"), ok);
    assert_eq!(m.sum("corepost_payloads_uploaded_total"), ok);
    assert_eq!(
        m.sum("corepost_payloads_spilled_total") + m.sum("corepost_payloads_failed_total"),
        0
    );
    assert!(count.requests_with(503) > 0, "{}", count.summary());
    wait_until(30, "ready again", || {
        request(s.addr, "GET", "/readyz", &[], b"").status == 200
    });
    // Every payload answered 200 is in the bucket exactly once, by value (a retried object
    // keeps its key); none answered 503 is.
    let objects = g.objects(&p);
    check_numbered(&numbered_copies(&objects), &count, true);
    assert_eq!(objects.len() as u64, ok, "{}", count.summary());
    eprintln!("outage: {}", count.summary());
    assert!(s.stop(30).success());
}

#[test]
fn drain_deadline_spills_and_next_start_delivers() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let g = garage();
    let p = prefix("spill");
    let spill = tempfile::tempdir().unwrap();
    let spill_dir = spill.path().to_str().unwrap().to_string();
    let conf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        conf.path(),
        "[upload]\ndrain_timeout_ms = 1500\n[server]\nshutdown_grace_ms = 1000\n",
    )
    .unwrap();
    let conf_path = conf.path().to_str().unwrap().to_string();
    let args = [
        "--cores",
        "2",
        "--sink",
        "s3",
        "--config",
        &conf_path,
        "--spill-dir",
        &spill_dir,
    ];

    // A small queue keeps the spill (and its replay into Garage) to a few thousand payloads.
    let mut env = g.server_env(&p);
    env.push(("MAX_QUEUE".into(), "2000".into()));
    let s = Server::start(&args, &env);
    let load = NumberedLoad::start(s.addr, 8);
    std::thread::sleep(Duration::from_millis(500));
    garage_cmd("stop", &g.dir);
    std::thread::sleep(Duration::from_millis(500));
    let status = s.stop(60);
    let count = load.stop();
    assert!(status.success(), "exit 0 after spilling: {status:?}");
    let spilled = spilled_objects(spill.path());
    assert!(
        !spilled.is_empty(),
        "the store was down: something must be spilled"
    );

    // Next start: the spill is uploaded first and emptied.
    garage_cmd("start", &g.dir);
    let s2 = Server::start(&args, &env);
    wait_until(120, "spill directory emptied", || {
        spilled_count(spill.path()) == 0
    });
    assert!(s2.stop(30).success());
    let objects = g.objects(&p);
    // A spilled object is uploaded under its original key, as it was spilled.
    let stored: HashMap<&str, &[u8]> = objects
        .iter()
        .map(|o| (o.key.as_str(), &o.data[..]))
        .collect();
    assert_eq!(stored.len(), objects.len(), "no key listed twice");
    for o in &spilled {
        assert_eq!(
            stored.get(o.key.as_str()).copied(),
            Some(&o.data[..]),
            "spilled {} is stored under its key, unchanged",
            o.key
        );
    }
    // Every payload answered 200 is in the bucket exactly once, by value: each payload has
    // one key, and a PUT retried or replayed from the spill overwrites that key. A payload
    // answered 503 (queue full, shutting down) was never queued and is not there.
    check_numbered(&numbered_copies(&objects), &count, true);
    eprintln!(
        "spill: {}; {} objects spilled and replayed, {} stored in all",
        count.summary(),
        spilled.len(),
        objects.len()
    );
}

fn spilled_count(dir: &std::path::Path) -> usize {
    files_under(dir)
        .iter()
        .filter(|f| !f.file_name().unwrap().to_string_lossy().starts_with('.'))
        .count()
}

#[test]
fn ack_uploaded_gives_503_while_the_store_is_down_and_duplicates_stay_bounded() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let g = garage();
    let p = prefix("ackdown");
    let conf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        conf.path(),
        "[server]\nack = \"uploaded\"\nack_timeout_ms = 1500\n[batch]\nmax_payloads = 20\nmax_age_ms = 100\n[upload]\nbackoff_max_ms = 500\n",
    )
    .unwrap();
    let conf_path = conf.path().to_str().unwrap().to_string();
    let s = Server::start(
        &["--cores", "2", "--sink", "s3", "--config", &conf_path],
        &g.server_env(&p),
    );
    // Store up: each request is answered 200 once stored.
    for i in 0..20 {
        assert_eq!(post(s.addr, &numbered_body(0, i * 5, 5)).status, 200);
    }
    garage_cmd("stop", &g.dir);
    // Store down: 4 clients, 10 requests each, every request retried until it gets 200.
    // An attempt "admitted" is one the server queued: answered 200, or 503 because it was
    // not stored in time; an attempt refused at the door ("overloaded") queued nothing.
    let clients: Vec<_> = (1..=4usize)
        .map(|c| {
            let addr = s.addr;
            std::thread::spawn(move || {
                let mut admitted = HashMap::new();
                let mut timeouts = 0;
                for i in 0..10 {
                    let body = numbered_body(c, i * 5, 5);
                    loop {
                        let resp = post(addr, &body);
                        let text = String::from_utf8_lossy(&resp.body).into_owned();
                        match resp.status {
                            200 => {
                                *admitted.entry(i).or_insert(0u32) += 1;
                                break;
                            }
                            503 if text.contains("overloaded") => {}
                            503 => {
                                // The answer says it came from the ack timeout (an elapsed-time
                                // bound would flake on a loaded machine).
                                assert!(text.contains("not stored within 1500 ms"), "{text}");
                                assert!(resp.header("retry-after").is_some());
                                *admitted.entry(i).or_insert(0u32) += 1;
                                timeouts += 1;
                            }
                            other => panic!("unexpected {other}: {text}"),
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
                (c, admitted, timeouts)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    garage_cmd("start", &g.dir);
    let mut admitted: HashMap<(usize, usize), u32> = HashMap::new();
    let mut timeouts = 0;
    for h in clients {
        let (c, a, t) = h.join().unwrap();
        timeouts += t;
        for (i, n) in a {
            admitted.insert((c, i), n);
        }
    }
    assert!(timeouts > 0, "the outage gave 503s");
    s.wait_drained(Duration::from_secs(120));
    let mut copies: HashMap<(u64, u64), u32> = HashMap::new();
    for o in g.objects(&p) {
        for v in lines(&o) {
            *copies
                .entry((v["c"].as_u64().unwrap(), v["n"].as_u64().unwrap()))
                .or_default() += 1;
        }
    }
    // Before the outage: exactly once.
    for n in 0..100 {
        assert_eq!(copies.get(&(0, n)), Some(&1), "payload 0/{n}");
    }
    // During it: at least once, and at most once per admitted attempt.
    let mut duplicated = 0;
    for ((c, i), n) in &admitted {
        for k in 0..5 {
            let got = copies
                .get(&(*c as u64, (*i * 5 + k) as u64))
                .copied()
                .unwrap_or(0);
            assert!(got >= 1, "payload {c}/{} lost", i * 5 + k);
            assert!(
                got <= *n,
                "payload {c}/{} stored {got} times for {n} admitted attempts",
                i * 5 + k
            );
            duplicated += usize::from(got > 1);
        }
    }
    assert_eq!(copies.len(), 100 + 4 * 50, "no payload that was never sent");
    eprintln!(
        "ack=uploaded outage: {timeouts} timeouts, {duplicated} payloads stored more than once"
    );
    assert!(s.stop(30).success());
}
