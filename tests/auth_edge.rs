//! `[auth]` at the edges: an emptied tokens file on SIGHUP keeps the set in force. Real
//! server, real signals; no store needed (fs sink).

mod common;

use common::*;

const TOKEN: &str = "tok-at-rest-5e1d9c3b7a2f48";

/// `: > tokens; kill -HUP`: the reload is refused with an error in the log, and every token
/// listed before still gets `200`; so does a tokens file that was removed.
#[test]
fn an_emptied_or_missing_tokens_file_on_sighup_keeps_the_tokens_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN} acme\n")).unwrap();
    let log = dir.path().join("stderr");
    let redirect = format!("exec \"$0\" \"$@\" 2>>'{}'", log.display());
    let root = dir.path().join("out");
    let s = Server::start_under(
        &["sh", "-c", &redirect],
        &[
            "--cores",
            "2",
            "--sink",
            "fs",
            "--fs-root",
            root.to_str().unwrap(),
            "--tokens-file",
            tokens.to_str().unwrap(),
        ],
        &[],
    );
    let bearer = format!("Bearer {TOKEN}");
    let ok = || {
        request(
            s.addr,
            "POST",
            "/v1/payloads",
            &[("Authorization", &bearer)],
            &numbered_body(1, 0, 1),
        )
        .status
    };
    assert_eq!(ok(), 200);
    let refusals = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("reload refused")
            .count()
    };
    std::fs::File::create(&tokens).unwrap(); // `: > tokens`
    s.signal("HUP");
    wait_until(10, "the emptied file refused", || refusals() == 1);
    // Connections land on either shard: each must still take the token.
    for _ in 0..8 {
        assert_eq!(ok(), 200);
    }
    std::fs::remove_file(&tokens).unwrap();
    s.signal("HUP");
    wait_until(10, "the missing file refused", || refusals() == 2);
    for _ in 0..8 {
        assert_eq!(ok(), 200);
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("no tokens"), "{text}");
    assert!(!text.contains(TOKEN));
}
