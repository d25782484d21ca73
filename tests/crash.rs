//! The durable spool's lifecycle against crashes at every step (built only with
//! `--features failpoints`; `scripts/test.sh` runs it). For each crash point the server runs
//! `ack = "durable"` with small segments (so the load rolls over, recycles and retires
//! segments), aborts at that point under load (`FAILPOINTS`, see `crash_point!`), and is
//! started again on the same spool without crash points. The check is the user's: every
//! payload answered 200 is in the bucket (real Garage), exactly once.

mod common;

use common::*;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// 16 KiB segments: about a dozen ~1 KiB requests each. Objects are per request (NDJSON);
/// short backoff so the restarted server drains quickly; release checkpoints every 100 ms, so
/// they happen while segments roll over, recycle and retire.
const CONF: &str = "[server]\nack = \"durable\"\nmax_body_bytes = 8192\n[spool]\nsegment_bytes = 16384\nmax_bytes = 1048576\ncommit_wait_us = 500\ncheckpoint_ms = 100\n[batch]\nmax_payloads = 100\nmax_age_ms = 20\n[upload]\nbackoff_max_ms = 200\n";

/// Runs the server with `point` armed to abort on pass `skip + 1`, under load from four
/// clients, until it aborts; restarts it and checks every payload answered 200.
fn crash_at(point: &str, skip: usize) {
    crash_then_restart_with("same", point, skip, CONF);
}

/// As [`crash_at`], restarting with configuration `restart` instead of [`CONF`]; `case`
/// keeps this test's objects apart from another test's at the same crash point.
fn crash_then_restart_with(case: &str, point: &str, skip: usize, restart: &str) {
    let g = garage();
    let p = format!(
        "crash-{case}-{}-{}",
        point.replace("::", "-"),
        std::process::id()
    );
    let spool = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut conf = tempfile::NamedTempFile::new().unwrap();
    conf.write_all(CONF.as_bytes()).unwrap();
    let args = [
        "--cores",
        "1",
        "--sink",
        "s3",
        "--config",
        conf.path().to_str().unwrap(),
        "--spool-dir",
        spool.path().to_str().unwrap(),
    ];
    let mut env = g.server_env(&p);
    env.push(("FAILPOINTS".into(), format!("{point}={skip}*off->return")));
    let mut s = Server::start(&args, &env);

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4usize)
        .map(|c| {
            let (addr, stop) = (s.addr, stop.clone());
            std::thread::spawn(move || {
                let mut ok = Vec::new();
                let (mut w, mut r) = connect(addr);
                for i in 0.. {
                    if stop.load(Relaxed) {
                        break;
                    }
                    let body = numbered_body(c, i * 8, 8);
                    if w.write_all(&raw_request("POST", "/v1/payloads", &[], &body))
                        .is_err()
                    {
                        break;
                    }
                    match try_read_response(&mut r) {
                        Some(resp) if resp.status == 200 => ok.push(i),
                        // A full spool while the store catches up: no promise made.
                        Some(resp) if resp.status == 503 => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        Some(resp) => panic!("status {}", resp.status),
                        None => break, // the server died mid-request: no answer, no promise
                    }
                }
                (c, ok)
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "crash point {point} (pass {}) was never reached",
            skip + 1
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    stop.store(true, Relaxed);
    assert_eq!(
        status.signal(),
        Some(6),
        "the server aborted at {point}: {status:?}"
    );
    let mut answered = Vec::new();
    for h in clients {
        let (c, ok) = h.join().unwrap();
        answered.extend(ok.into_iter().map(|i| (c, i)));
    }
    drop(s);
    assert!(!answered.is_empty(), "some requests were answered 200");

    // Restart on the same spool, no crash points: what it holds is delivered.
    let mut conf2 = tempfile::NamedTempFile::new().unwrap();
    conf2.write_all(restart.as_bytes()).unwrap();
    let mut args = args;
    args[5] = conf2.path().to_str().unwrap();
    let s = Server::start(&args, &g.server_env(&p));
    wait_spool_empty(&s, 120);
    let got = copies(g, &p);
    for &(c, i) in &answered {
        for n in i * 8..i * 8 + 8 {
            assert_eq!(
                got.get(&(c as u64, n as u64)),
                Some(&1),
                "payload {c}/{n} answered 200: in the bucket exactly once"
            );
        }
    }
    let dup: Vec<_> = got.iter().filter(|(_, &k)| k > 1).collect();
    assert!(dup.is_empty(), "stored more than once: {dup:?}");
    eprintln!(
        "{point}: {} requests answered 200 before the crash, {} payloads in the bucket",
        answered.len(),
        got.len()
    );
    assert!(s.stop(30).success());
}

#[test]
fn crash_after_the_commit_write_before_the_answer() {
    crash_at("spool::commit::after_write", 40);
}

#[test]
fn crash_when_creating_a_segment_after_spool_meta() {
    crash_at("spool::create::after_meta", 2);
}

#[test]
fn crash_when_creating_a_segment_after_the_zero_fill() {
    crash_at("spool::create::after_fill", 2);
}

#[test]
fn crash_after_a_new_segments_directory_sync() {
    crash_at("spool::activate::after_dir_sync", 4);
}

#[test]
fn crash_when_recycling_a_file_after_spool_meta() {
    crash_at("spool::reuse::after_meta", 2);
}

#[test]
fn crash_when_recycling_a_file_after_its_new_header() {
    crash_at("spool::reuse::after_header", 2);
}

#[test]
fn crash_when_recycling_a_file_after_the_rename() {
    crash_at("spool::reuse::after_rename", 2);
}

#[test]
fn crash_when_retiring_a_segment() {
    crash_at("spool::retire::before", 3);
}

#[test]
fn crash_when_retiring_a_segment_after_its_rename_to_the_free_pool() {
    crash_at("spool::retire::after_rename", 3);
}

#[test]
fn crash_when_writing_the_release_checkpoint_before_its_rename() {
    crash_at("spool::checkpoint::before_rename", 5);
}

#[test]
fn crash_when_writing_the_release_checkpoint_after_its_rename() {
    crash_at("spool::checkpoint::after_rename", 5);
}

#[test]
fn crash_after_an_object_is_stored_before_its_record_is_released() {
    crash_at("upload::stored::before_release", 30);
}

/// Item "configuration changed between a crash and the restart": the restart builds objects
/// one per payload (`.json`) under another instance name, but the records the crashed run
/// wrote are replayed as that run named them, so the objects it already stored are
/// overwritten in place, not stored again under new keys.
#[test]
fn a_restart_with_other_batch_and_instance_settings_replays_under_the_recorded_naming() {
    let restart = CONF.replace("max_payloads = 100", "max_payloads = 1")
        + "[keys]\ninstance = \"renamed-after-the-crash\"\n";
    crash_then_restart_with("renamed", "upload::stored::before_release", 20, &restart);
}
