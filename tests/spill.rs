//! The spill directory and earlier runs' data: replay takes only what corepost wrote there,
//! and `--sink discard` never throws away what an earlier run left (spill files, spooled
//! requests). Against a real Garage.

mod common;

use common::*;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

fn put_file(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

#[test]
fn replay_uploads_only_corepost_spill_files_and_leaves_the_rest() {
    let g = garage();
    let p = prefix("own");
    let spill = tempfile::tempdir().unwrap();
    let key = format!("{p}/2026/11/30/06/host-0-1-7.json");
    let ours = spill.path().join(format!("{key}.spill"));
    put_file(&ours, br#"{"spilled":1}"#);
    // Not corepost's: an operator's file, and an object-like file without the suffix (as in
    // an fs sink root mistaken for the spill directory).
    let foreign = spill.path().join(format!("{p}/notes.json"));
    put_file(&foreign, br#"{"mine":true}"#);
    let s = Server::start(
        &[
            "--cores",
            "1",
            "--sink",
            "s3",
            "--spill-dir",
            spill.path().to_str().unwrap(),
        ],
        &g.server_env(&p),
    );
    wait_until(30, "the spill file uploaded and deleted", || !ours.exists());
    assert_eq!(
        g.keys(&p),
        std::slice::from_ref(&key),
        "only the spill file was uploaded"
    );
    let objects = g.objects(&p);
    assert_eq!(objects[0].data, br#"{"spilled":1}"#);
    assert!(
        foreign.exists(),
        "a file corepost did not write is left alone"
    );
    // The shard's own requests are served while (and after) replay runs.
    assert_eq!(post(s.addr, &numbered_body(1, 0, 2)).status, 200);
    s.wait_drained(Duration::from_secs(30));
    assert!(s.stop(30).success());
}

#[test]
fn sink_discard_keeps_an_earlier_runs_spill_files_and_spooled_requests() {
    let g = garage();
    let p = prefix("discard");
    let spill = tempfile::tempdir().unwrap();
    let ours = spill
        .path()
        .join(format!("{p}/2026/11/30/06/host-0-1-9.json.spill"));
    put_file(&ours, br#"{"c":99,"n":0}"#);
    let spool = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut conf = tempfile::NamedTempFile::new().unwrap();
    conf.write_all(b"[server]\nack = \"durable\"\n").unwrap();
    let args = |sink: &'static str| {
        vec![
            "--cores".to_string(),
            "1".into(),
            "--sink".into(),
            sink.into(),
            "--config".into(),
            conf.path().to_str().unwrap().into(),
            "--spool-dir".into(),
            spool.path().to_str().unwrap().into(),
            "--spill-dir".into(),
            spill.path().to_str().unwrap().into(),
        ]
    };
    // A first run whose store is unreachable: three requests stay in the spool.
    let dead = unreachable_store_env(g, &p);
    let a = args("s3");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let s = Server::start(&a, &dead);
    for c in 0..3 {
        assert_eq!(post(s.addr, &numbered_body(c, 0, 4)).status, 200);
    }
    s.signal("KILL");
    drop(s);

    // A benchmark run with the discard sink on the same directories.
    let d = args("discard");
    let d: Vec<&str> = d.iter().map(String::as_str).collect();
    let s = Server::start(&d, &[]);
    assert_eq!(post(s.addr, &numbered_body(7, 0, 4)).status, 200);
    s.wait_drained(Duration::from_secs(30));
    let m = s.metrics();
    assert_eq!(
        m.sum("corepost_spool_live_records"),
        3,
        "the earlier run's requests are kept"
    );
    assert!(ours.exists(), "the earlier run's spill file is kept");
    assert!(s.stop(30).success());

    // A run with the real store delivers both.
    let s = Server::start(&a, &g.server_env(&p));
    wait_spool_empty(&s, 60);
    wait_until(30, "the spill file uploaded", || !ours.exists());
    let got = copies(g, &p);
    assert_eq!(got.get(&(99, 0)), Some(&1), "the spill file's payload");
    for c in 0..3u64 {
        for n in 0..4u64 {
            assert_eq!(got.get(&(c, n)), Some(&1), "payload {c}/{n}");
        }
    }
    assert!(s.stop(30).success());
}

#[test]
fn spill_replay_does_not_starve_the_queue() {
    use common::fault_proxy::{Fault, FaultProxy, Rule, When};
    let g = garage();
    let p = prefix("beside");
    let spill = tempfile::tempdir().unwrap();
    let files: Vec<_> = (0..8)
        .map(|i| {
            let f = spill
                .path()
                .join(format!("{p}/2026/11/30/06/spilled-{i}.json.spill"));
            put_file(&f, format!(r#"{{"c":9,"n":{i}}}"#).as_bytes());
            f
        })
        .collect();
    let proxy = FaultProxy::start(&g.var("S3_ENDPOINT"));
    proxy.add(
        Rule::object_puts(Fault::Delay(Duration::from_secs(3)), When::First(1000))
            .path_has("spilled-"),
    );
    let mut conf = tempfile::NamedTempFile::new().unwrap();
    conf.write_all(b"[upload]\nmax_in_flight = 4\n").unwrap();
    let mut env = g.server_env(&p);
    env.retain(|(k, _)| k != "S3_ENDPOINT");
    env.push(("S3_ENDPOINT".into(), proxy.endpoint()));
    let s = Server::start(
        &[
            "--cores",
            "1",
            "--sink",
            "s3",
            "--spill-dir",
            spill.path().to_str().unwrap(),
            "--config",
            conf.path().to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(post(s.addr, &numbered_body(1, 0, 2)).status, 200);
    wait_until(60, "the new request stored", || {
        let got = copies(g, &p);
        got.contains_key(&(1, 0)) && got.contains_key(&(1, 1))
    });
    let left = files.iter().filter(|f| f.exists()).count();
    assert!(
        left > 0,
        "the new request waited for the whole spill replay"
    );
    wait_until(120, "the spill replay finished", || {
        files.iter().all(|f| !f.exists())
    });
    let got = copies(g, &p);
    for n in 0..8u64 {
        assert_eq!(got.get(&(9, n)), Some(&1), "spilled payload {n}");
    }
    assert!(s.stop(30).success());
}
