//! `[auth] tokens_file` against a real Garage and real clients (curl, Python `requests`, the
//! Go service's body `token`): a listed token is needed for every payload request, anything
//! else is `401` with `WWW-Authenticate: Bearer` and stores nothing; a token's tenant puts its
//! payloads under `{prefix}/{tenant}/` when queued, batched (one tenant per object) and
//! durable (replayed after `kill -9` under the same tenant); SIGHUP revokes and adds tokens
//! and keeps the old set when the new file is bad; no token text ever reaches the logs,
//! `/metrics` or `check-config`.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Tokens used below; the tests check that none of them appears anywhere it must not.
const ACME: &str = "tok-acme-7f3a9c2e41d8b6";
const BETA: &str = "tok-beta-0c5e8a1f93b2d7";
const PLAIN: &str = "tok-plain-6d2b7e9a04c1f5";
const WRONG: &str = "tok-wrong-1a2b3c4d5e6f70";

fn tokens_file() -> tempfile::NamedTempFile {
    text_file(&format!(
        "# corepost tokens\n{ACME} acme\n\n{BETA}\tbeta\n{PLAIN}\n"
    ))
}

/// Starts the server with its stderr in `log` (under `sh`, which execs it: same pid).
fn start_logged(log: &Path, args: &[&str], env: &[(String, String)]) -> Server {
    let redirect = format!("exec \"$0\" \"$@\" 2>>'{}'", log.display());
    let mut env = env.to_vec();
    // Debug logging too: a token must not appear at any level corepost logs at.
    env.push(("RUST_LOG".into(), "info,corepost=debug".into()));
    Server::start_under(&["sh", "-c", &redirect], args, &env)
}

/// `numbered_body` with `token` in its `token` field (`None`: no `token` field at all).
fn body_with(token: Option<&str>, c: usize, count: usize) -> Vec<u8> {
    let body = String::from_utf8(numbered_body(c, 0, count)).unwrap();
    let body = match token {
        Some(t) => body.replace(r#""token":"t""#, &format!(r#""token":"{t}""#)),
        None => body.replace(r#""token":"t","#, ""),
    };
    body.into_bytes()
}

fn post_as(addr: std::net::SocketAddr, bearer: Option<&str>, body: &[u8]) -> Resp {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    request(addr, "POST", "/v1/payloads", &headers, body)
}

/// A `401` as the API promises it: the challenge, a JSON error, no token in it.
fn assert_401(r: &Resp, challenge: &str) {
    assert_eq!(r.status, 401, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("WWW-Authenticate"), Some(challenge));
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(msg.contains("token"), "{msg}");
    assert_no_token(&msg, "a 401 body");
}

fn assert_no_token(text: &str, what: &str) {
    for t in [ACME, BETA, PLAIN, WRONG] {
        assert!(!text.contains(t), "a token appears in {what}");
    }
}

/// The tenant of a key under `p`: its first segment after the prefix, unless that is the
/// year (a key without a tenant).
fn tenant_of(key: &str, p: &str) -> Option<String> {
    let rest = key.strip_prefix(&format!("{p}/")).unwrap();
    let first = rest.split('/').next().unwrap();
    (!first.bytes().all(|b| b.is_ascii_digit())).then(|| first.to_string())
}

/// Client number → the tenants its stored payloads were found under, and the count of
/// payloads, across every object under `p`; also checks that no object mixes clients of
/// different tenants (each client posts as one tenant).
fn stored_by_client(g: &Garage, p: &str) -> BTreeMap<u64, (BTreeSet<Option<String>>, usize)> {
    let mut out: BTreeMap<u64, (BTreeSet<Option<String>>, usize)> = BTreeMap::new();
    for o in g.objects(p) {
        let tenant = tenant_of(&o.key, p);
        for v in lines(&o) {
            let e = out.entry(v["c"].as_u64().unwrap()).or_default();
            e.0.insert(tenant.clone());
            e.1 += 1;
        }
    }
    out
}

fn tenants(names: &[Option<&str>]) -> BTreeSet<Option<String>> {
    names.iter().map(|t| t.map(str::to_string)).collect()
}

/// Posts with Python `requests`; prints `status www-authenticate body` per request.
const REQUESTS_CLIENT: &str = r#"
import sys
import requests
url, body = sys.argv[1], open(sys.argv[2], "rb").read()
for token in sys.argv[3:]:
    headers = {"Content-Type": "application/json"}
    if token != "-":
        headers["Authorization"] = "Bearer " + token
    r = requests.post(url, data=body, headers=headers, timeout=30)
    print(r.status_code, r.headers.get("WWW-Authenticate", "-"), r.text)
"#;

#[test]
fn listed_tokens_store_under_their_tenants_and_anything_else_is_401_storing_nothing() {
    let g = garage();
    let p = prefix("clients");
    let tokens = tokens_file();
    let log = tempfile::NamedTempFile::new().unwrap();
    let s = start_logged(
        log.path(),
        &[
            "--cores",
            "1",
            "--sink",
            "s3",
            "--tokens-file",
            tokens.path().to_str().unwrap(),
        ],
        &g.server_env(&p),
    );
    let url = format!("http://{}/v1/payloads", s.addr);

    // curl with the header: tenant acme (client 1).
    let curl = |token: &str, c: usize| {
        let body = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(body.path(), body_with(None, c, 3)).unwrap();
        let out = Command::new("curl")
            .args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
            .args(["-H", "Content-Type: application/json", "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .arg("--data-binary")
            .arg(format!("@{}", body.path().display()))
            .arg(&url)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(ACME, 1), "{\"accepted\":3}\n200");
    // curl with a wrong token (client 90): 401, nothing stored.
    let wrong = curl(WRONG, 90);
    assert!(wrong.ends_with("\n401"), "{wrong}");

    // Python requests: header with a tenant (client 2), then no token, then a wrong one, on
    // bodies whose own `token` field is absent.
    let py_body = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(py_body.path(), body_with(None, 2, 4)).unwrap();
    let run = Command::new("python3")
        .arg("-c")
        .arg(REQUESTS_CLIENT)
        .arg(&url)
        .arg(py_body.path())
        .args([BETA, "-", WRONG])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "python client failed: {stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0], r#"200 - {"accepted":4}"#);
    assert!(
        lines[1].starts_with("401 Bearer {\"error\":"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("401 Bearer error=\"invalid_token\" {\"error\":"),
        "{}",
        lines[2]
    );

    // The Go service's clients: the token in the body, no header. Without a tenant (client
    // 3) and with one (client 4).
    let r = post_as(s.addr, None, &body_with(Some(PLAIN), 3, 2));
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"{\"accepted\":2}"[..])
    );
    let r = post_as(s.addr, None, &body_with(Some(BETA), 4, 2));
    assert_eq!(r.status, 200);
    // The header decides when both are present: a valid header with a wrong body token is
    // accepted under the header's tenant (client 5); a wrong header with a valid body token
    // is refused (client 91).
    let r = post_as(s.addr, Some(ACME), &body_with(Some(WRONG), 5, 2));
    assert_eq!(r.status, 200);
    assert_401(
        &post_as(s.addr, Some(WRONG), &body_with(Some(ACME), 91, 2)),
        "Bearer error=\"invalid_token\"",
    );
    // Missing: no header, no body token (92); a body token that is not listed (93), or empty
    // (94); a header that is not Bearer (95).
    assert_401(&post_as(s.addr, None, &body_with(None, 92, 2)), "Bearer");
    assert_401(
        &post_as(s.addr, None, &body_with(Some(WRONG), 93, 2)),
        "Bearer error=\"invalid_token\"",
    );
    assert_401(
        &post_as(s.addr, None, &body_with(Some(""), 94, 2)),
        "Bearer error=\"invalid_token\"",
    );
    let basic = request(
        s.addr,
        "POST",
        "/",
        &[("Authorization", "Basic dG9rOmFjbWU=")],
        &body_with(Some(ACME), 95, 2),
    );
    assert_401(&basic, "Bearer error=\"invalid_token\"");
    // A token differing from a listed one only in its last byte (96), or a prefix of one
    // (97).
    let near = format!("{}x", &ACME[..ACME.len() - 1]);
    assert_401(
        &post_as(s.addr, Some(&near), &body_with(None, 96, 2)),
        "Bearer error=\"invalid_token\"",
    );
    assert_401(
        &post_as(s.addr, Some(&ACME[..10]), &body_with(None, 97, 2)),
        "Bearer error=\"invalid_token\"",
    );

    // The header is checked before any of the body is read or any room reserved: a wrong
    // token asking `Expect: 100-continue` for a body larger than any limit gets its 401 at
    // once, with no `100 Continue` and no 413.
    let (mut w, mut rd) = connect(s.addr);
    let auth = format!("Bearer {WRONG}");
    w.write_all(
        format!(
            "POST /v1/payloads HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nExpect: 100-continue\r\nContent-Length: 1073741824\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    assert_401(&read_response(&mut rd), "Bearer error=\"invalid_token\"");

    // The operational endpoints stay open.
    for path in ["/healthz", "/readyz", "/metrics"] {
        wait_until(30, "ready", || {
            request(s.addr, "GET", "/readyz", &[], b"").status == 200
        });
        assert_eq!(request(s.addr, "GET", path, &[], b"").status, 200, "{path}");
    }
    let m = s.wait_drained(Duration::from_secs(30));
    assert_eq!(m.sum("corepost_payloads_accepted_total"), 3 + 4 + 2 + 2 + 2);
    // 401s: missing = python's no-token + 92; invalid = the rest.
    assert_eq!(
        m.sum_with("corepost_auth_refused_total", "reason=\"missing\""),
        2
    );
    assert_eq!(
        m.sum_with("corepost_auth_refused_total", "reason=\"invalid\""),
        9
    );
    let metrics_text = request(s.addr, "GET", "/metrics", &[], b"");
    assert_no_token(&String::from_utf8_lossy(&metrics_text.body), "/metrics");

    let got = stored_by_client(g, &p);
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3, 4, 5],
        "only the accepted requests are stored"
    );
    assert_eq!(got[&1], (tenants(&[Some("acme")]), 3));
    assert_eq!(got[&2], (tenants(&[Some("beta")]), 4));
    assert_eq!(got[&3], (tenants(&[None]), 2));
    assert_eq!(got[&4], (tenants(&[Some("beta")]), 2));
    assert_eq!(got[&5], (tenants(&[Some("acme")]), 2));
    assert!(s.stop(30).success());
    let log_text = std::fs::read_to_string(log.path()).unwrap();
    assert!(log_text.contains("auth:"), "the start-up line: {log_text}");
    assert_no_token(&log_text, "the server's stderr");
}

#[test]
fn batched_objects_hold_one_tenants_payloads_each() {
    let g = garage();
    let p = prefix("batch");
    let tokens = tokens_file();
    let (s, _conf) = config_server(
        1,
        "[batch]\nmax_payloads = 1000\nmax_age_ms = 300\n",
        &[
            "--sink",
            "s3",
            "--tokens-file",
            tokens.path().to_str().unwrap(),
        ],
        &g.server_env(&p),
    );
    // Interleaved on one keep-alive connection, well within one batch's age: clients 0..30,
    // each as one of three tenants.
    let who = |c: usize| [Some(ACME), Some(BETA), Some(PLAIN)][c % 3];
    let (mut w, mut r) = connect(s.addr);
    for c in 0..30 {
        let auth = format!("Bearer {}", who(c).unwrap());
        let req = raw_request(
            "POST",
            "/v1/payloads",
            &[("Authorization", &auth)],
            &body_with(None, c, 5),
        );
        w.write_all(&req).unwrap();
        assert_eq!(read_response(&mut r).status, 200);
    }
    s.wait_drained(Duration::from_secs(30));
    let objects = g.objects(&p);
    // Three objects, one per tenant (the payloads arrived within one batch age).
    let mut by_tenant: BTreeMap<Option<String>, usize> = BTreeMap::new();
    for o in &objects {
        assert!(o.key.ends_with(".ndjson"), "{}", o.key);
        let tenant = tenant_of(&o.key, &p);
        let mut clients = BTreeSet::new();
        for v in lines(o) {
            clients.insert(v["c"].as_u64().unwrap() as usize % 3);
        }
        assert_eq!(clients.len(), 1, "{} mixes tenants", o.key);
        let want = [Some("acme"), Some("beta"), None][*clients.first().unwrap()];
        assert_eq!(tenant.as_deref(), want, "{}", o.key);
        *by_tenant.entry(tenant).or_default() += lines(o).len();
    }
    assert_eq!(
        by_tenant,
        BTreeMap::from([
            (None, 50),
            (Some("acme".into()), 50),
            (Some("beta".into()), 50)
        ])
    );
    assert!(s.stop(30).success());
}

#[test]
fn durable_requests_replay_after_kill_9_under_their_tenant_even_once_revoked() {
    let g = garage();
    let p = prefix("durable");
    let tokens = tokens_file();
    let spool = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let conf = text_file("[server]\nack = \"durable\"\n");
    let args = |tokens: &Path| -> Vec<String> {
        [
            "--cores",
            "1",
            "--sink",
            "s3",
            "--config",
            conf.path().to_str().unwrap(),
            "--spool-dir",
            spool.path().to_str().unwrap(),
            "--tokens-file",
            tokens.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let a = args(tokens.path());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    // The store is unreachable: everything stays in the spool until the kill.
    let s = Server::start(&a, &unreachable_store_env(g, &p));
    assert_eq!(
        post_as(s.addr, Some(ACME), &body_with(None, 1, 3)).status,
        200
    );
    assert_eq!(
        post_as(s.addr, None, &body_with(Some(BETA), 2, 3)).status,
        200
    );
    assert_eq!(
        post_as(s.addr, None, &body_with(Some(PLAIN), 3, 3)).status,
        200
    );
    assert_401(
        &post_as(s.addr, None, &body_with(Some(WRONG), 4, 3)),
        "Bearer error=\"invalid_token\"",
    );
    s.signal("KILL");
    drop(s);
    // Restart against the real store with acme and beta revoked: what was accepted is still
    // stored, under the tenant it was accepted for.
    let only_plain = text_file(&format!("{PLAIN}\n"));
    let a = args(only_plain.path());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let s = Server::start(&a, &g.server_env(&p));
    wait_spool_empty(&s, 60);
    assert!(s.metrics().sum("corepost_payloads_replayed_total") >= 9);
    let got = stored_by_client(g, &p);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[&1], (tenants(&[Some("acme")]), 3));
    assert_eq!(got[&2], (tenants(&[Some("beta")]), 3));
    assert_eq!(got[&3], (tenants(&[None]), 3));
    assert_401(
        &post_as(s.addr, Some(ACME), &body_with(None, 5, 1)),
        "Bearer error=\"invalid_token\"",
    );
    assert!(s.stop(30).success());
}

/// Payload files under the fs sink's root, by tenant (first directory under the prefix).
fn fs_tenants(root: &Path, p: &str) -> BTreeMap<Option<String>, usize> {
    let mut out = BTreeMap::new();
    for f in files_under(root) {
        let rel: PathBuf = f.strip_prefix(root).unwrap().to_path_buf();
        let key = rel.to_str().unwrap();
        *out.entry(tenant_of(key, p)).or_default() += 1;
    }
    out
}

#[test]
fn sighup_revokes_and_adds_tokens_and_a_bad_file_keeps_the_set_in_force() {
    let tokens = text_file(&format!("{ACME} acme\n"));
    let root = tempfile::tempdir().unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let p = "hup";
    let s = start_logged(
        log.path(),
        &[
            "--cores",
            "2",
            "--sink",
            "fs",
            "--fs-root",
            root.path().to_str().unwrap(),
            "--tokens-file",
            tokens.path().to_str().unwrap(),
        ],
        &[("S3_PREFIX".into(), p.into())],
    );
    let ok = |token: &str| post_as(s.addr, Some(token), &body_with(None, 1, 1)).status;
    assert_eq!(ok(ACME), 200);
    assert_eq!(ok(BETA), 401);
    // Revoke acme, add beta (written in place, as an editor would).
    std::fs::write(tokens.path(), format!("# rotated\n{BETA} beta\n")).unwrap();
    s.signal("HUP");
    // Each of the two shards sees it (connections land on either).
    wait_until(10, "beta accepted after SIGHUP", || {
        (0..8).all(|_| ok(BETA) == 200)
    });
    for _ in 0..8 {
        assert_401(
            &post_as(s.addr, Some(ACME), &body_with(None, 2, 1)),
            "Bearer error=\"invalid_token\"",
        );
    }
    // A bad file (line 3) is refused with a log line; beta keeps working, nothing else does.
    std::fs::write(
        tokens.path(),
        format!("{PLAIN}\n# next\n{WRONG} Not/A/Tenant\n"),
    )
    .unwrap();
    s.signal("HUP");
    wait_until(10, "the refusal logged", || {
        std::fs::read_to_string(log.path())
            .unwrap()
            .contains("reload refused")
    });
    assert_eq!(ok(BETA), 200);
    assert_eq!(ok(PLAIN), 401);
    assert_eq!(ok(WRONG), 401);
    let m = s.wait_drained(Duration::from_secs(30));
    let beta = m.sum("corepost_payloads_accepted_total") as usize - 1;
    let stored = fs_tenants(root.path(), p);
    assert_eq!(
        stored,
        BTreeMap::from([(Some("acme".into()), 1), (Some("beta".into()), beta)]),
        "the fs sink stores under the tenant, refused requests store nothing"
    );
    let metrics = request(s.addr, "GET", "/metrics", &[], b"");
    assert_no_token(&String::from_utf8_lossy(&metrics.body), "/metrics");
    assert!(s.stop(30).success());
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        text.contains("line 3"),
        "the refusal names the line: {text}"
    );
    assert!(text.contains("1 tokens, 1 tenants"), "{text}");
    assert_no_token(&text, "the server's stderr");
}

#[test]
fn check_config_prints_the_path_and_a_malformed_file_is_refused_naming_its_line() {
    let tokens = tokens_file();
    let path = tokens.path().to_str().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_corepost"))
        .args(["check-config", "--tokens-file", path])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("[auth]") && text.contains(path), "{text}");
    assert_no_token(&text, "check-config");
    // The environment variable works as well.
    let out = Command::new(env!("CARGO_BIN_EXE_corepost"))
        .arg("check-config")
        .env("COREPOST_TOKENS_FILE", path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(path));

    let bad = text_file(&format!("{ACME} acme\n{BETA} Beta\n"));
    let out = Command::new(env!("CARGO_BIN_EXE_corepost"))
        .args([
            "check-config",
            "--tokens-file",
            bad.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("auth.tokens_file") && err.contains("line 2"),
        "{err}"
    );
    assert_no_token(&err, "check-config's errors");
    let (status, err) = serve_refused(
        &[
            "--listen",
            "127.0.0.1:0",
            "--tokens-file",
            bad.path().to_str().unwrap(),
        ],
        30,
    );
    assert!(!status.success());
    assert!(err.contains("line 2"), "{err}");
    assert_no_token(&err, "serve's errors");
}
