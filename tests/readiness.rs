//! Readiness: not ready until the sink's check has passed, checked again (with backoff) while
//! failing, so it comes back with the store and without traffic; reported per shard in
//! /metrics and with reasons in /readyz. Against a real Garage, stopped and started.

mod common;

use common::*;

#[test]
fn readiness_waits_for_the_store_and_comes_back_with_it() {
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
