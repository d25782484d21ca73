//! A spool write failing with a disk error other than a full disk (EIO), injected by the
//! `intake::spool_append` failpoint (built only with `--features failpoints`; `scripts/test.sh`
//! runs it): the client gets `503` with `Retry-After` (the request was not taken, a retry
//! can be), `/readyz` says the spool is failing, and once a write succeeds the server takes
//! requests and is ready again. Nothing refused is stored.
#![cfg(feature = "failpoints")]

mod common;

use common::*;

#[test]
fn a_spool_write_failing_with_eio_is_503_with_retry_after_and_unready() {
    let spool = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // The first append fails as a failing disk does, the next ones work.
    let env = [(
        "FAILPOINTS".to_string(),
        "intake::spool_append=1*return->off".to_string(),
    )];
    let (s, files) = fs_server(
        1,
        None,
        "[server]\nack = \"durable\"\n",
        &["--spool-dir", spool.path().to_str().unwrap()],
        &env,
    );
    wait_until(30, "ready", || {
        request(s.addr, "GET", "/readyz", &[], b"").status == 200
    });
    assert_refused_for_a_disk_error(&s, &numbered_body(1, 0, 3));
    // The disk works again: the next request is taken, and a successful write makes the
    // shard ready again.
    assert_eq!(post(s.addr, &numbered_body(2, 0, 3)).status, 200);
    wait_until(30, "ready again", || {
        request(s.addr, "GET", "/readyz", &[], b"").status == 200
    });
    wait_spool_empty(&s, 30);
    assert!(s.stop(30).success());
    let stored = numbered_copies(&spilled_objects(&files.root));
    let mut got: Vec<_> = stored.keys().copied().collect();
    got.sort();
    assert_eq!(
        got,
        vec![(2, 0), (2, 1), (2, 2)],
        "only the request answered 200"
    );
}
