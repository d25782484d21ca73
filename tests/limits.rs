//! Requests that could never fit: more payloads than the shard's whole queue holds get `413`
//! naming the limit (not a retryable `503` forever).

mod common;

use common::*;

fn start(env: &[(String, String)]) -> (Server, FsFiles) {
    fs_server(1, None, "", &[], env)
}

#[test]
fn more_payloads_than_the_queue_holds_is_413_naming_the_limit() {
    let (s, _out) = start(&[("MAX_QUEUE".into(), "50".into())]);
    let r = post(s.addr, &numbered_body(0, 0, 100));
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        msg.contains("100 payloads")
            && msg.contains("at most 50")
            && msg.contains("queue.max_payloads"),
        "{msg}"
    );
    assert!(r.header("retry-after").is_none(), "not worth retrying");
    // A request within the limit on the same idle server is accepted.
    assert_eq!(post(s.addr, &numbered_body(0, 0, 50)).status, 200);
}

#[test]
fn a_megabyte_of_tiny_payloads_is_413_with_the_default_limit() {
    let (s, _out) = start(&[]);
    let zeros = vec!["0"; 200_000].join(",");
    let body = format!(r#"{{"data":[{zeros}]}}"#);
    let r = post(s.addr, body.as_bytes());
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("at most 100000 per request"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}
