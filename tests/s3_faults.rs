//! Store failures against a real Garage that these tests stop and restart: an outage during
//! load loses nothing answered 200, and the drain deadline spills to disk for the next start.
//! The tests share one Garage and take turns (each stops it).

mod common;

use common::*;
use std::sync::Mutex;
use std::time::Duration;

static TURN: Mutex<()> = Mutex::new(());

fn prefix(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

#[test]
fn garage_outage_during_load_loses_nothing() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let g = garage();
    let p = prefix("outage");
    let mut env = g.server_env(&p);
    env.push(("MAX_QUEUE".into(), "3000".into()));
    let s = Server::start(&["--cores", "2", "--sink", "s3"], &env);
    let load = Load::start(s.addr, 8);
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
    let m = s.wait_drained(Duration::from_secs(120));
    assert_eq!(m.sum("corepost_payloads_accepted_total"), count.ok_payloads);
    assert_eq!(m.sum("corepost_payloads_uploaded_total"), count.ok_payloads);
    assert_eq!(
        m.sum("corepost_payloads_spilled_total") + m.sum("corepost_payloads_failed_total"),
        0
    );
    assert!(count.other.get(&503).copied().unwrap_or(0) > 0, "{count:?}");
    wait_until(30, "ready again", || {
        request(s.addr, "GET", "/readyz", &[], b"").status == 200
    });
    assert_eq!(g.keys(&p).len() as u64, count.ok_payloads);
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
    let load = Load::start(s.addr, 8);
    std::thread::sleep(Duration::from_millis(500));
    garage_cmd("stop", &g.dir);
    std::thread::sleep(Duration::from_millis(500));
    let m = s.metrics();
    let status = s.stop(60);
    let count = load.stop();
    assert!(status.success(), "exit 0 after spilling: {status:?}");
    let stored_before = m.sum("corepost_payloads_uploaded_total");
    let spilled = spilled_count(spill.path());
    assert!(spilled > 0, "the store was down: something must be spilled");

    // Next start: the spill is uploaded first and emptied.
    garage_cmd("start", &g.dir);
    let s2 = Server::start(&args, &env);
    wait_until(120, "spill directory emptied", || {
        spilled_count(spill.path()) == 0
    });
    assert!(s2.stop(30).success());
    let keys = g.keys(&p);
    assert!(keys.len() as u64 >= stored_before);
    assert_eq!(
        keys.len() as u64,
        count.ok_payloads,
        "every payload answered 200 is in the bucket: {count:?}"
    );
}

fn spilled_count(dir: &std::path::Path) -> usize {
    files_under(dir)
        .iter()
        .filter(|f| !f.file_name().unwrap().to_string_lossy().starts_with('.'))
        .count()
}
