//! Readiness: not ready until the sink's check has passed, checked again (with backoff) while
//! failing, so it comes back with the store and without traffic; reported per shard in
//! /metrics and with reasons in /readyz. Against a real Garage, stopped and started; keys
//! with write access only are ready. The tests take turns (one stops Garage).

mod common;

use common::*;
use std::sync::Mutex;

static TURN: Mutex<()> = Mutex::new(());

#[test]
fn readiness_waits_for_the_store_and_comes_back_with_it() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let g = garage();
    let p = format!("ready-{}", std::process::id());
    garage_cmd("stop", &g.dir);
    let s = Server::start(&["--cores", "2", "--sink", "s3"], &g.server_env(&p));
    let r = request(s.addr, "GET", "/readyz", &[], b"");
    assert_eq!(r.status, 503, "not ready before the sink check has passed");
    let why = r.json()["reasons"].to_string();
    assert!(why.contains("shard 0") && why.contains("sink"), "{why}");
    let m = s.metrics();
    assert_eq!(
        m.sum("corepost_shard_ready"),
        0,
        "both shards report not ready"
    );
    // Wait until a check has actually failed (not merely "not checked yet"), so that only a
    // check repeated by the server itself can turn it ready.
    wait_until(60, "a failed sink check reported", || {
        let r = request(s.addr, "GET", "/readyz", &[], b"");
        r.status == 503
            && r.json()["reasons"]
                .to_string()
                .contains("sink check failed")
    });
    // No traffic: the server checks again by itself and turns ready when the store is back.
    garage_cmd("start", &g.dir);
    wait_until(60, "ready once the store is back", || {
        request(s.addr, "GET", "/readyz", &[], b"").status == 200
    });
    assert_eq!(s.metrics().sum("corepost_shard_ready"), 2);
    assert_eq!(post(s.addr, &numbered_body(0, 0, 3)).status, 200);
    wait_until(30, "stored", || copies(g, &p).len() == 3);
    assert!(s.stop(30).success());
}

/// Runs the `garage` CLI against the test Garage.
fn garage_cli(g: &Garage, args: &[&str]) {
    let out = std::process::Command::new("bash")
        .arg(repo().join("scripts/garage.sh"))
        .arg("ensure")
        .output()
        .unwrap();
    let bin = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let out = std::process::Command::new(&bin)
        .arg("-c")
        .arg(g.dir.join("garage.toml"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "garage {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `g.server_env(prefix)` with the credentials replaced.
fn env_with_key(g: &Garage, prefix: &str, id: &str, secret: &str) -> Vec<(String, String)> {
    let mut env = g.server_env(prefix);
    env.retain(|(k, _)| k != "AWS_ACCESS_KEY_ID" && k != "AWS_SECRET_ACCESS_KEY");
    env.push(("AWS_ACCESS_KEY_ID".into(), id.into()));
    env.push(("AWS_SECRET_ACCESS_KEY".into(), secret.into()));
    env
}

/// Waits until `/readyz` reports a failed sink check (not merely "not checked yet") and
/// returns the reasons.
fn failed_check_reason(s: &Server) -> String {
    let mut why = String::new();
    wait_until(60, "a failed sink check reported", || {
        let r = request(s.addr, "GET", "/readyz", &[], b"");
        why = String::from_utf8_lossy(&r.body).into_owned();
        r.status == 503 && why.contains("sink check failed")
    });
    why
}

/// Least privilege: a key that may write to the bucket but not read it (Garage's `bucket
/// allow --write` without `--read`, as a PutObject-only policy) makes the server ready and its
/// payloads are stored; wrong credentials and a missing bucket keep it unready, saying why.
#[test]
fn write_only_credentials_are_ready_and_wrong_ones_or_a_missing_bucket_are_not() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let g = garage();
    let p = format!("write-only-{}", std::process::id());
    // Garage key ids are "GK" and 24 hex digits, secrets 64 hex digits.
    let id = format!("GK{:024x}", std::process::id());
    let secret = format!("{:064x}", std::process::id());
    garage_cli(g, &["key", "import", "--yes", "-n", &p, &id, &secret]);
    garage_cli(g, &["bucket", "allow", "--write", "corepost", "--key", &id]);
    let s = Server::start(
        &["--cores", "2", "--sink", "s3"],
        &env_with_key(g, &p, &id, &secret),
    );
    wait_until(60, "ready with write-only credentials", || {
        request(s.addr, "GET", "/readyz", &[], b"").status == 200
    });
    assert_eq!(post(s.addr, &numbered_body(0, 0, 3)).status, 200);
    wait_until(30, "stored", || copies(g, &p).len() == 3);
    let left: Vec<String> = g
        .keys(&p)
        .into_iter()
        .filter(|k| k.contains("readiness"))
        .collect();
    assert!(left.is_empty(), "the check writes no object: {left:?}");
    assert!(s.stop(30).success());

    // The same key with a wrong secret.
    let wrong = format!("{:064x}", u64::from(std::process::id()) + 1);
    let s = Server::start(&["--sink", "s3"], &env_with_key(g, &p, &id, &wrong));
    let why = failed_check_reason(&s);
    assert!(why.contains("403"), "{why}");
    assert_eq!(request(s.addr, "GET", "/readyz", &[], b"").status, 503);
    drop(s);

    // A bucket that does not exist.
    let mut env = env_with_key(g, &p, &id, &secret);
    env.retain(|(k, _)| k != "S3_BUCKET");
    env.push(("S3_BUCKET".into(), "no-such-bucket".into()));
    let s = Server::start(&["--sink", "s3"], &env);
    let why = failed_check_reason(&s);
    assert!(why.contains("NoSuchBucket") || why.contains("404"), "{why}");
    assert_eq!(request(s.addr, "GET", "/readyz", &[], b"").status, 503);
}
