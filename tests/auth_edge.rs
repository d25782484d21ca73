//! `[auth]` at the edges: a body `token` is not kept at rest (the durable spool and the
//! dead-letter files hold `*` in its place); an emptied tokens file on SIGHUP keeps the set
//! in force; requests whose token is in the body hold at most their share of the queue, so
//! clients with an `Authorization` header are served while such bodies stall. Real server,
//! real sockets, real signals; no store needed (fs sink, or a store nothing listens on).

mod common;

use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;

const TOKEN: &str = "tok-at-rest-5e1d9c3b7a2f48";
/// The same token as a JSON string with escapes (`\u0074` is `t`, `\/` is `/`-free here).
const TOKEN_ESCAPED: &str = r"\u0074ok-at-rest-5e1d9c3b7a2f48";

/// `numbered_body` whose `token` field is `token_json` (the JSON string's inner text).
fn body_with_token(token_json: &str, c: usize, count: usize) -> Vec<u8> {
    String::from_utf8(numbered_body(c, 0, count))
        .unwrap()
        .replace(r#""token":"t""#, &format!(r#""token":"{token_json}""#))
        .into_bytes()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir` (dot-files too) that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if contains(&std::fs::read(&p).unwrap(), needle) {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

/// Durable requests carrying a body token (plain, escaped, and beside an `Authorization`
/// header) leave no trace of it in the spool, nor in the dead-letter file of a record that
/// can no longer be delivered; the dead letter is still the request, as JSON.
#[test]
fn a_body_token_is_not_kept_in_the_spool_or_dead_letters() {
    let tokens = text_file(&format!("{TOKEN} acme\n"));
    let spool = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let conf = format!(
        "[server]\nack = \"durable\"\n[auth]\ntokens_file = {:?}\n[batch]\nmax_payloads = 100\nmax_age_ms = 50\n",
        tokens.path().to_str().unwrap()
    );
    // A store nothing listens on: the records stay in the spool.
    let nowhere: Vec<(String, String)> = [
        ("S3_ENDPOINT", "http://127.0.0.1:9"),
        ("S3_BUCKET", "corepost"),
        ("S3_REGION", "garage"),
        ("AWS_ACCESS_KEY_ID", "GK000000000000000000000000"),
        ("AWS_SECRET_ACCESS_KEY", "0000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let sp = spool.path().to_str().unwrap();
    let (s, _conf) = config_server(1, &conf, &["--sink", "s3", "--spool-dir", sp], &nowhere);
    let big = body_with_token(TOKEN, 1, 50);
    assert_eq!(post(s.addr, &big).status, 200);
    assert_eq!(
        post(s.addr, &body_with_token(TOKEN_ESCAPED, 2, 2)).status,
        200
    );
    let bearer = format!("Bearer {TOKEN}");
    let r = request(
        s.addr,
        "POST",
        "/v1/payloads",
        &[("Authorization", &bearer)],
        &body_with_token(TOKEN, 3, 2),
    );
    assert_eq!(r.status, 200);
    s.signal("KILL");
    drop(s);
    let held = files_holding(spool.path(), TOKEN.as_bytes());
    assert!(held.is_empty(), "the token is in {held:?}");

    // Restarted with a queue too small for the first request: it becomes a dead letter, the
    // others are delivered (to the fs sink).
    let out = tempfile::tempdir().unwrap();
    let conf = conf.replace("max_payloads = 100", "max_payloads = 10");
    let (s, _conf) = config_server(
        1,
        &conf,
        &[
            "--sink",
            "fs",
            "--fs-root",
            out.path().to_str().unwrap(),
            "--spool-dir",
            sp,
        ],
        &[("MAX_QUEUE".into(), "10".into())],
    );
    wait_spool_empty(&s, 60);
    assert_eq!(s.metrics().sum("corepost_spool_dead_letters_total"), 1);
    assert!(s.stop(30).success());
    let stored = numbered_copies(&spilled_objects_of(out.path()));
    for c in [2, 3] {
        assert_eq!(stored.get(&(c, 0)), Some(&1), "request {c} delivered");
    }
    let letters = files_under(&spool.path().join("dead-letter").join("shard-0"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = std::fs::read(&letters[0]).unwrap();
    assert_eq!(letter.len(), big.len(), "the same length as the request");
    assert_eq!(payloads_of(&letter), payloads_of(&big), "the same payloads");
    let v: serde_json::Value = serde_json::from_slice(&letter).unwrap();
    assert_eq!(v["token"], "*".repeat(TOKEN.len()));
    for needle in [TOKEN, TOKEN_ESCAPED, "5e1d9c3b7a2f48"] {
        let held = files_holding(spool.path(), needle.as_bytes());
        assert!(held.is_empty(), "{needle:?} is in {held:?}");
    }
}

/// The fs sink's objects under `root`, read as [`Object`]s (one payload per `.json` file).
fn spilled_objects_of(root: &Path) -> Vec<Object> {
    files_under(root)
        .into_iter()
        .map(|f| Object {
            key: f.strip_prefix(root).unwrap().to_string_lossy().into_owned(),
            content_type: None,
            content_encoding: None,
            data: std::fs::read(&f).unwrap(),
        })
        .collect()
}

/// `: > tokens; kill -HUP`: the reload is refused with an error in the log, and every token
/// listed before still gets `200`; so does a tokens file that was removed. A tokens file
/// readable by others is warned about at start.
#[test]
fn an_emptied_or_missing_tokens_file_on_sighup_keeps_the_tokens_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN} acme\n")).unwrap();
    // Readable by everyone: a warning at start says so.
    std::fs::set_permissions(&tokens, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
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
    assert!(
        text.contains("auth.tokens_file") && text.contains("readable by everyone (mode 644)"),
        "{text}"
    );
    assert!(!text.contains(TOKEN));
}

/// A request head declaring a 1 MiB body, with a few bytes of it, then nothing.
fn stall(addr: std::net::SocketAddr, auth: Option<&str>) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut head =
        String::from("POST /v1/payloads HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n");
    if let Some(a) = auth {
        head.push_str(&format!("Authorization: {a}\r\n"));
    }
    head.push_str("\r\n{\"data\":[");
    s.write_all(head.as_bytes()).unwrap();
    s
}

/// 80 connections without `Authorization` declare 1 MiB bodies and stall: they may hold a
/// quarter of the 64 MiB queue (the default `auth.unverified_queue_percent`); the rest get
/// `503`, and a client with a valid `Authorization: Bearer` header gets `200` meanwhile.
#[test]
fn stalled_bodies_without_a_header_leave_room_for_authenticated_clients() {
    let tokens = text_file(&format!("{TOKEN}\n"));
    let conf = format!(
        "[server]\nbody_read_timeout_ms = 120000\n[queue]\nmax_bytes = 67108864\n[auth]\ntokens_file = {:?}\n",
        tokens.path().to_str().unwrap()
    );
    let (s, _files) = fs_server(1, None, &conf, &[], &[]);
    let stalled: Vec<TcpStream> = (0..80).map(|_| stall(s.addr, None)).collect();
    // Every stalled request is either holding its room or was refused.
    wait_until(30, "the 80 requests admitted or refused", || {
        let m = s.metrics();
        let held = m.sum("corepost_queue_bytes") / (1 << 20);
        let refused = m.sum_with("corepost_requests_total", "status=\"503\"");
        held + refused == 80
    });
    let m = s.metrics();
    assert!(
        m.sum("corepost_queue_bytes") <= 16 << 20,
        "unverified bodies hold at most a quarter of the queue"
    );
    let bearer = format!("Bearer {TOKEN}");
    for c in 0..5 {
        let r = request(
            s.addr,
            "POST",
            "/v1/payloads",
            &[("Authorization", &bearer)],
            &numbered_body(c, 0, 10),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    // One more without the header is refused at once, saying what to do, with Retry-After.
    let one_more = stall(s.addr, None);
    let r = read_response(&mut std::io::BufReader::new(one_more));
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("Authorization"),
        "{:?}",
        r.body
    );
    drop(stalled);
    assert!(s.stop(30).success());
}
