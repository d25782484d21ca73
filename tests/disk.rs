//! Real disks: the fs sink and the spool on a loop-mounted ext4 (the tests run as root).

mod common;

use common::*;
use std::io::Write;

/// With `ack = "durable"` and the fs sink, a spool record is released only once the files
/// holding its payloads are on stable storage: a power cut (a copy of the device's blocks
/// taken after the spool emptied, with the file system's own flushing held off by
/// `commit=300`) still holds every payload answered 200.
#[test]
fn fs_sink_objects_survive_a_power_cut_once_their_spool_record_is_released() {
    let disk = LoopFs::new(64, "commit=300");
    let root = disk.mount.join("out");
    let spool = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (s, _files) = fs_server(
        1,
        Some(&root),
        "[server]\nack = \"durable\"\n",
        &["--spool-dir", spool.path().to_str().unwrap()],
        &[],
    );
    for c in 0..20 {
        let r = post(s.addr, &numbered_body(c, 0, 10));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    wait_spool_empty(&s, 30);
    let cut = disk.power_cut_copy();
    s.signal("KILL");
    let mut got = std::collections::HashMap::new();
    for f in files_under(&cut.mount.join("out")) {
        if f.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue; // lock and temporary files
        }
        let v: serde_json::Value = match std::fs::read(&f) {
            Ok(bytes) if !bytes.is_empty() => serde_json::from_slice(&bytes).unwrap(),
            _ => continue, // an empty file: its data never reached the disk
        };
        *got.entry((v["c"].as_u64().unwrap(), v["n"].as_u64().unwrap()))
            .or_insert(0) += 1;
    }
    for c in 0..20u64 {
        for n in 0..10u64 {
            assert_eq!(
                got.get(&(c, n)),
                Some(&1),
                "payload {c}/{n}, released from the spool, survives the power cut"
            );
        }
    }
}

/// Spool, spill directory and fs sink on one small ext4, filled up: clients get `503` saying
/// the disk is full (not `500`), `/readyz` says why, nothing answered `200` is lost, and the
/// server takes requests again once space returns.
#[test]
fn a_full_disk_gives_503_and_readiness_says_why_and_recovers_when_space_returns() {
    let disk = LoopFs::new(48, "rw");
    let m = &disk.mount;
    let (spool, out, spill) = (m.join("spool"), m.join("out"), m.join("spill"));
    let (s, _files) = fs_server(
        1,
        Some(&out),
        "[server]\nack = \"durable\"\nmax_body_bytes = 65536\n[spool]\nsegment_bytes = 1048576\nmax_bytes = 67108864\n[upload]\nbackoff_max_ms = 200\n[batch]\nmax_payloads = 100\nmax_age_ms = 50\n",
        &[
            "--spool-dir",
            spool.to_str().unwrap(),
            "--spill-dir",
            spill.to_str().unwrap(),
        ],
        &[],
    );
    // Fill the file system.
    let filler = m.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![7u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let mut answered = Vec::new();
    let mut refused = None;
    for c in 0..2000 {
        let r = post(s.addr, &numbered_body(c, 0, 20));
        match r.status {
            200 => answered.push(c),
            503 => {
                refused = Some(r);
                break;
            }
            other => panic!("status {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    let refused = refused.expect("the full disk refused requests");
    let msg = refused.json()["error"].as_str().unwrap().to_string();
    assert!(msg.contains("disk is full"), "{msg}");
    assert!(refused.header("retry-after").is_some());
    let r = request(s.addr, "GET", "/readyz", &[], b"");
    assert_eq!(r.status, 503);
    assert!(
        String::from_utf8_lossy(&r.body).contains("No space left on device"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // Space returns: requests are taken again and everything answered 200 is stored.
    std::fs::remove_file(&filler).unwrap();
    let next = answered.len() + 10_000;
    wait_until(60, "accepting again", || {
        post(s.addr, &numbered_body(next, 0, 20)).status == 200
    });
    answered.push(next);
    wait_spool_empty(&s, 60);
    wait_until(30, "ready again", || {
        request(s.addr, "GET", "/readyz", &[], b"").status == 200
    });
    let mut got = std::collections::HashMap::new();
    for f in files_under(&out) {
        // One NDJSON object per request (batching within each spooled request).
        for line in std::fs::read(&f).unwrap().split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            *got.entry((v["c"].as_u64().unwrap(), v["n"].as_u64().unwrap()))
                .or_insert(0) += 1;
        }
    }
    for &c in &answered {
        for n in 0..20u64 {
            assert_eq!(
                got.get(&(c as u64, n)),
                Some(&1),
                "payload {c}/{n} answered 200"
            );
        }
    }
    assert!(s.stop(30).success());
}

/// The spool on an ext4 whose device starts failing: the loop device under it is shrunk
/// below the spool's blocks (`truncate` + `losetup -c`), so the kernel answers every write
/// there with EIO ("attempt to access beyond end of device"). Clients get `503` with
/// `Retry-After` saying the disk failed (not `500`), `/readyz` says why, and what was answered
/// `200` before is stored.
#[test]
fn a_spool_disk_failing_with_eio_gives_503_with_retry_after_and_readiness_says_why() {
    let disk = LoopFs::new(40, "rw");
    let out = tempfile::tempdir().unwrap();
    let (s, _files) = fs_server(
        1,
        Some(out.path()),
        "[server]\nack = \"durable\"\nmax_body_bytes = 65536\n[spool]\nsegment_bytes = 1048576\nmax_bytes = 8388608\n",
        &["--spool-dir", disk.mount.join("spool").to_str().unwrap()],
        &[],
    );
    assert_eq!(post(s.addr, &numbered_body(1, 0, 5)).status, 200);
    // The loop device behind the mount, shrunk to its first MiB.
    let found = std::process::Command::new("losetup")
        .arg("-j")
        .arg(&disk.image)
        .output()
        .unwrap();
    let text = String::from_utf8(found.stdout).unwrap();
    let dev = text.split(':').next().unwrap().trim().to_string();
    assert!(dev.starts_with("/dev/loop"), "{text:?}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk.image)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let st = std::process::Command::new("losetup")
        .args(["-c", &dev])
        .status()
        .unwrap();
    assert!(st.success(), "losetup -c {dev}");
    assert_refused_for_a_disk_error(&s, &numbered_body(2, 0, 5));
    // What was answered 200 before the disk failed is stored (the fs sink is elsewhere).
    wait_until(30, "the first request stored", || {
        numbered_copies(&spilled_objects(out.path())).len() == 5
    });
    drop(s);
}
