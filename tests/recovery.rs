//! What a `200` becomes across ordinary operator events, without a restart to help: a clean
//! stop replays nothing already stored (release progress is checkpointed), a `kill -9`
//! replays only what was not yet checkpointed as stored, and a spool left by a run with other
//! settings (`ack`, `cores`) is delivered by whatever run starts next.

mod common;

use common::fault_proxy::{Fault, FaultProxy, Rule, When};
use common::*;
use std::path::Path;
use std::time::Duration;

/// A spool directory on the disk the build is on (direct I/O does not work on tmpfs).
fn spool_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Durable, one object per request, checkpoints every 50 ms, a short drain at shutdown.
const DURABLE: &str = "[server]\nack = \"durable\"\n[batch]\nmax_payloads = 100\nmax_age_ms = 20\n[spool]\ncheckpoint_ms = 50\n[upload]\ndrain_timeout_ms = 1000\n";

/// [`DURABLE`] with periodic checkpoints too rare to happen in a test: only the one written
/// at a clean stop can keep the next start from replaying.
fn only_at_stop() -> String {
    DURABLE.replace("checkpoint_ms = 50", "checkpoint_ms = 3600000")
}

fn durable_fs_server(root: &Path, spool: &Path, conf: &str) -> (Server, FsFiles) {
    fs_server(
        1,
        Some(root),
        conf,
        &["--spool-dir", spool.to_str().unwrap()],
        &[],
    )
}

/// Every object file under the fs sink's root (not the sink's own lock file).
fn objects(root: &Path) -> Vec<std::path::PathBuf> {
    files_under(root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json" || e == "ndjson"))
        .collect()
}

/// Posts `n` requests of three payloads, and waits until they are stored and released.
fn post_and_store(s: &Server, first: usize, n: usize) {
    for c in first..first + n {
        assert_eq!(post(s.addr, &numbered_body(c, 0, 3)).status, 200);
    }
    wait_spool_empty(s, 30);
}

/// What a start found in the spool and replays: both must be zero when everything was
/// stored and that progress persisted. The spool is recovered before the server listens, so
/// these are final by the time /metrics answers.
fn assert_nothing_replayed(s: &Server, when: &str) {
    let m = s.metrics();
    assert_eq!(
        m.sum("corepost_spool_live_records"),
        0,
        "{when}: stored records found live again"
    );
    assert_eq!(
        m.sum("corepost_payloads_replayed_total"),
        0,
        "{when}: stored payloads replayed"
    );
}

/// Live record ranges a release checkpoint lists (its format is in `src/spool/checkpoint.rs`:
/// magic, segment count, then per segment id, end, range count and ranges; CRC32C last);
/// `None` if there is no whole file.
fn live_ranges(path: &Path) -> Option<u64> {
    let b = std::fs::read(path).ok()?;
    let u32_at = |at: usize| Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?));
    if b.get(..8)? != b"CPSPCKPT" {
        return None;
    }
    let mut at = 12;
    let mut ranges = 0;
    for _ in 0..u32_at(8)? {
        let n = u32_at(at + 16)?;
        ranges += u64::from(n);
        at += 20 + 16 * n as usize;
    }
    (at + 4 == b.len()).then_some(ranges)
}

#[test]
fn a_clean_stop_replays_nothing_already_stored() {
    let (root, spool) = (tempfile::tempdir().unwrap(), spool_dir());
    let (s, _f) = durable_fs_server(root.path(), spool.path(), &only_at_stop());
    post_and_store(&s, 0, 10);
    assert!(s.stop(30).success());
    // A consumer takes the objects away.
    let taken = objects(root.path());
    assert_eq!(taken.len(), 10, "{taken:?}");
    for p in &taken {
        std::fs::remove_file(p).unwrap();
    }
    let (s, _f) = durable_fs_server(root.path(), spool.path(), &only_at_stop());
    assert_nothing_replayed(&s, "after a clean stop");
    // The server works, and what the consumer took does not come back.
    post_and_store(&s, 100, 1);
    s.wait_drained(Duration::from_secs(30));
    assert_eq!(
        objects(root.path()).len(),
        1,
        "only the new request's object"
    );
    assert!(s.stop(30).success());
}

#[test]
fn a_kill_after_the_checkpoint_replays_nothing_already_stored() {
    let (root, spool) = (tempfile::tempdir().unwrap(), spool_dir());
    let (s, _f) = durable_fs_server(root.path(), spool.path(), DURABLE);
    post_and_store(&s, 0, 10);
    // Stored and released: wait until a written checkpoint covers every release, then kill.
    wait_until(10, "every release in a written checkpoint", || {
        s.metrics().sum("corepost_spool_releases_unpersisted") == 0
    });
    let ckpt = spool.path().join("shard-0").join("release.ckpt");
    assert_eq!(
        live_ranges(&ckpt),
        Some(0),
        "the checkpoint lists nothing live"
    );
    s.signal("KILL");
    drop(s);
    let (s, _f) = durable_fs_server(root.path(), spool.path(), DURABLE);
    assert_nothing_replayed(&s, "after kill -9 past a checkpoint");
    assert!(s.stop(30).success());
}

#[test]
fn a_spool_left_by_durable_on_two_cores_is_delivered_by_queued_on_one() {
    let g = garage();
    let p = prefix("adopt");
    let spool = spool_dir();
    let durable = text_file(DURABLE);
    let args = |conf: &tempfile::NamedTempFile, cores: &'static str| {
        vec![
            "--cores".to_string(),
            cores.into(),
            "--sink".into(),
            "s3".into(),
            "--config".into(),
            conf.path().to_str().unwrap().into(),
            "--spool-dir".into(),
            spool.path().to_str().unwrap().into(),
        ]
    };
    // The store cannot be reached: the requests answered 200 stay in both shards' spools.
    let a = args(&durable, "2");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let s = Server::start(&a, &unreachable_store_env(g, &p));
    for c in 0..40 {
        assert_eq!(post(s.addr, &numbered_body(c, 0, 3)).status, 200);
    }
    let m = s.metrics();
    for shard in ["0", "1"] {
        assert!(
            m.0.get(&format!("corepost_spool_live_records{{shard=\"{shard}\"}}"))
                .is_some_and(|&v| v > 0.0),
            "shard {shard} holds some of the requests"
        );
    }
    assert!(s.stop(60).success());

    // Started again with the defaults (`ack = "queued"`) on one core, same directory.
    let queued = text_file("[batch]\nmax_payloads = 100\nmax_age_ms = 20\n");
    let a = args(&queued, "1");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let s = Server::start(&a, &g.server_env(&p));
    wait_spool_empty(&s, 60);
    let got = copies(g, &p);
    for c in 0..40u64 {
        for n in 0..3u64 {
            assert_eq!(got.get(&(c, n)), Some(&1), "payload {c}/{n} stored once");
        }
    }
    assert_eq!(got.len(), 120);
    assert!(s.stop(30).success());
}

/// `403 AccessDenied`, as S3 answers a key whose write access was revoked.
fn access_denied() -> Fault {
    Fault::Status {
        status: 403,
        body: "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message><RequestId>fault-proxy</RequestId><HostId>fault-proxy</HostId></Error>".into(),
    }
}

/// The store refuses every object (403) for a while, then accepts again: every request
/// answered 200 meanwhile is stored, once, without a restart; while it refuses, `/metrics`
/// and `/readyz` say so and what waits.
fn refused_then_accepted(ack: &str) {
    let g = garage();
    let p = prefix(&format!("refused-{ack}"));
    let proxy = FaultProxy::start(&g.var("S3_ENDPOINT"));
    let rule = proxy.add(Rule::object_puts(access_denied(), When::EveryNth(1)));
    let mut env = g.server_env(&p);
    env.push(("S3_ENDPOINT".into(), proxy.endpoint()));
    let spool = spool_dir();
    let spill = tempfile::tempdir().unwrap();
    let conf = format!(
        "[server]\nack = \"{ack}\"\n[batch]\nmax_payloads = 100\nmax_age_ms = 20\n[upload]\nbackoff_max_ms = 200\nrefused_backoff_max_ms = 2000\nspill_dir = \"{}\"\n",
        spill.path().display()
    );
    let (s, _conf) = config_server(
        2,
        &conf,
        &[
            "--sink",
            "s3",
            "--spool-dir",
            spool.path().to_str().unwrap(),
        ],
        &env,
    );
    for c in 0..20 {
        assert_eq!(post(s.addr, &numbered_body(c, 0, 3)).status, 200);
    }
    wait_until(30, "the refusal seen in /metrics", || {
        s.metrics().sum("corepost_sink_refusing") > 0
    });
    // What was refused is kept: in the spool already (durable), or in the spill directory
    // once the worker has written it there, right after the refusal (queued); /readyz shows
    // it from then on.
    let mut why = serde_json::Value::Null;
    let mut status = 0;
    wait_until(30, "/readyz: refusing, and what waits", || {
        let ready = request(s.addr, "GET", "/readyz", &[], b"");
        status = ready.status;
        why = ready.json();
        let w = &why["waiting"];
        let waiting =
            w["spool_records"].as_u64().unwrap_or(0) + w["spill_files"].as_u64().unwrap_or(0);
        status != 200 && why["reasons"].to_string().contains("refusing") && waiting > 0
    });
    assert_eq!(status, 503, "{why}");
    // Keep refusing a little longer (several retries), then write access comes back.
    let refused = proxy.fired(rule);
    wait_until(30, "retries while refused", || {
        proxy.fired(rule) > refused + 4
    });
    proxy.heal();
    wait_until(
        60,
        "every payload answered 200 stored, without a restart",
        || {
            let m = s.metrics();
            m.sum("corepost_spool_live_records") == 0
                && m.sum("corepost_spill_files") == 0
                && copies(g, &p).len() == 60
        },
    );
    let got = copies(g, &p);
    assert!(got.values().all(|&n| n == 1), "each stored once: {got:?}");
    wait_until(30, "ready again", || {
        request(s.addr, "GET", "/readyz", &[], b"").status == 200
    });
    let m = s.metrics();
    assert_eq!(m.sum("corepost_sink_refusing"), 0);
    assert_eq!(m.sum("corepost_payloads_failed_total"), 0);
    assert!(s.stop(30).success());
    assert!(files_under(spill.path())
        .iter()
        .all(|f| !f.to_string_lossy().ends_with(".spill")));
}

#[test]
fn a_store_refusing_then_accepting_gets_every_durable_request_without_a_restart() {
    refused_then_accepted("durable");
}

#[test]
fn a_store_refusing_then_accepting_gets_every_queued_request_without_a_restart() {
    refused_then_accepted("queued");
}
