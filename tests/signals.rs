//! Signals: the first SIGTERM drains gracefully; a second one ends the drain at once, spilling
//! what is undelivered, so an operator can cut a long drain short.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn a_second_sigterm_ends_a_long_drain_at_once_and_spills_what_is_left() {
    // A store that never answers and a drain deadline of ten minutes: only a second signal
    // can end this drain in time.
    let env: Vec<(String, String)> = [
        ("S3_ENDPOINT", "http://127.0.0.1:9"),
        ("S3_BUCKET", "b"),
        ("S3_REGION", "garage"),
        ("AWS_ACCESS_KEY_ID", "k"),
        ("AWS_SECRET_ACCESS_KEY", "s"),
        ("S3_PREFIX", "p"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let (mut s, _conf) = config_server(
        1,
        "[upload]\ndrain_timeout_ms = 600000\nbackoff_max_ms = 100\n",
        &["--sink", "s3"],
        &env,
    );
    for c in 0..3 {
        assert_eq!(post(s.addr, &numbered_body(c, 0, 4)).status, 200);
    }
    s.signal("TERM");
    // Still draining (retrying the store) a second later.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "the first signal drains, it does not exit"
    );
    s.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "still draining 30 s after the second SIGTERM (drain deadline: 10 minutes)"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let spilled: Vec<_> = files_under(&s.spill)
        .into_iter()
        .filter(|f| f.to_string_lossy().ends_with(".spill"))
        .collect();
    assert_eq!(
        spilled.len(),
        12,
        "every undelivered payload spilled: {spilled:?}"
    );
}
