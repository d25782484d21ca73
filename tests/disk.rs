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
    let mut conf = tempfile::NamedTempFile::new().unwrap();
    conf.write_all(b"[server]\nack = \"durable\"\n").unwrap();
    let s = Server::start(
        &[
            "--cores",
            "1",
            "--sink",
            "fs",
            "--fs-root",
            root.to_str().unwrap(),
            "--config",
            conf.path().to_str().unwrap(),
            "--spool-dir",
            spool.path().to_str().unwrap(),
        ],
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
