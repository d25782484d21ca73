//! `keys.template` with the fs sink: hostile payload and header values never leave their
//! partition directory and every partition holds exactly its payloads; past
//! `batch.max_open_partitions` the oldest object closes and nothing is lost; with
//! `ack = "durable"` a `kill -9` and a restart under other settings store every payload
//! answered 200 once, under the keys the first run chose; `check-config` explains a bad
//! template; pyarrow (a real query engine, installed by `scripts/test.sh`) reads the objects
//! as a Hive-partitioned dataset with exact counts per partition value.

mod common;

use common::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const DEFAULT: &str = "__HIVE_DEFAULT_PARTITION__";

/// The id of a payload `{"i":N,...}`, read as text (a payload holding `\ud800` is not
/// something serde_json reads).
fn id_of(line: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(line);
    let rest = text
        .split("\"i\":")
        .nth(1)
        .unwrap_or_else(|| panic!("no id in {text}"));
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// The NDJSON lines of every object under `root`, with the object's path below `root`.
fn stored_lines(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for f in files_under(root) {
        let rel = f.strip_prefix(root).unwrap().to_path_buf();
        let data = std::fs::read(&f).unwrap();
        for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            out.push((rel.clone(), line.to_vec()));
        }
    }
    out
}

/// A value as the key template writes it, restated here: `[A-Za-z0-9._-]` kept, every other
/// byte `%XX`; empty or missing is Hive's default partition. `None` for a value longer than
/// 128 bytes once encoded (cut and hashed; checked apart).
fn encoded(text: Option<&str>) -> Option<String> {
    let Some(t) = text.filter(|t| !t.is_empty()) else {
        return Some(DEFAULT.into());
    };
    let mut out = String::new();
    for b in t.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    (out.len() <= 128).then_some(out)
}

/// Field values sent as `event`, as JSON text (`None`: the field is left out), with the text
/// the key should carry (`None`: the default partition).
fn hostile_events() -> Vec<(Option<String>, Option<String>)> {
    let s = |json: &str, text: &str| (Some(json.to_string()), Some(text.to_string()));
    let long = "a/".repeat(300);
    vec![
        s(r#""click""#, "click"),
        s(r#""/""#, "/"),
        s(r#"".""#, "."),
        s(r#""..""#, ".."),
        s(r#""../../escape""#, "../../escape"),
        s(r#""a/../../b""#, "a/../../b"),
        s(r#""..\/..\/x""#, "../../x"),
        s(r#""\u002e\u002e""#, ".."),
        s(r#""%2e%2e%2f""#, "%2e%2e%2f"),
        s(r#""100% sure""#, "100% sure"),
        s(r#""é 日本 😀""#, "é 日本 😀"),
        s(r#""\ud800""#, "\u{FFFD}"),
        s(r#""C:\\Windows""#, "C:\\Windows"),
        s(r#""tab\there""#, "tab\there"),
        s(&format!("\"{long}\""), &long),
        s(&format!("\"{long}b\""), &format!("{long}b")),
        s("42", "42"),
        s("true", "true"),
        (Some("null".into()), None),
        (Some(r#""""#.into()), None),
        (Some(r#"{"x":"/"}"#.into()), None),
        (None, None),
    ]
}

#[test]
fn hostile_values_stay_inside_their_partition_directory_and_counts_are_exact() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    // The serde parser takes `\ud800` (simd-json refuses it with a 400).
    let conf = "[server]\nparser = \"serde\"\n[keys]\nprefix = \"ev\"\ntemplate = \"{prefix}/event={payload.event}/{header.X-Source}/{instance}-{shard}-{start}-{seq}\"\n[batch]\nmax_payloads = 7\nmax_age_ms = 50\n";
    let (s, _files) = fs_server(2, Some(&root), conf, &[], &[]);
    let events = hostile_events();
    let sources: [(Option<&str>, &str); 5] = [
        (Some("web"), "web"),
        (Some(".."), "%2E."),
        (Some("."), "%2E"),
        (Some("a/b c"), "a%2Fb%20c"),
        (None, DEFAULT),
    ];
    // Payload i: event i % events, in request (i / 5) with source (i / 5) % sources.
    let mut expected: HashMap<u64, (usize, usize)> = HashMap::new();
    let mut i = 0u64;
    for r in 0..60 {
        let src = r % sources.len();
        let mut data = Vec::new();
        for _ in 0..5 {
            let e = (i as usize) % events.len();
            data.push(match &events[e].0 {
                Some(json) => format!(r#"{{"i":{i},"event":{json}}}"#),
                None => format!(r#"{{"i":{i}}}"#),
            });
            expected.insert(i, (e, src));
            i += 1;
        }
        let body = format!(r#"{{"data":[{}]}}"#, data.join(","));
        let headers: Vec<(&str, &str)> = sources[src]
            .0
            .map(|v| ("X-Source", v))
            .into_iter()
            .collect();
        let resp = request(s.addr, "POST", "/v1/payloads", &headers, body.as_bytes());
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    }
    s.wait_drained(Duration::from_secs(30));

    // Nothing outside the root, everything inside it in a directory of its partition.
    let outside: Vec<_> = std::fs::read_dir(outer.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside, ["root"], "only the fs root is in its parent");
    let real_root = root.canonicalize().unwrap();
    for f in files_under(&root) {
        assert!(
            f.canonicalize().unwrap().starts_with(&real_root),
            "{} escapes the root",
            f.display()
        );
    }
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let mut per_dir: BTreeMap<String, usize> = BTreeMap::new();
    let mut long_dirs: HashMap<usize, String> = HashMap::new();
    for (rel, line) in stored_lines(&root) {
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            parts.len(),
            4,
            "{}: prefix, event, source, name",
            rel.display()
        );
        for p in &parts {
            assert!(
                p != "." && p != ".." && !p.starts_with('.'),
                "{}",
                rel.display()
            );
        }
        assert_eq!(parts[0], "ev");
        assert!(parts[3].ends_with(".ndjson"), "{}", rel.display());
        let id = id_of(&line);
        *seen.entry(id).or_default() += 1;
        let (e, src) = expected[&id];
        assert_eq!(parts[2], sources[src].1, "payload {id}: {}", rel.display());
        let value = parts[1]
            .strip_prefix("event=")
            .unwrap_or_else(|| panic!("{}", rel.display()));
        match encoded(events[e].1.as_deref()) {
            Some(want) => assert_eq!(value, want, "payload {id}: {}", rel.display()),
            None => {
                // Cut to at most 128 bytes (an escape is never split), ending `~` and 16 hex
                // digits; always the same name.
                assert!(value.len() <= 128 && value.len() > 120, "{value}");
                let (head, hash) = value.rsplit_once('~').unwrap();
                assert_eq!(hash.len(), 16);
                assert!(head.starts_with("a%2Fa%2F"), "{value}");
                let first = long_dirs.entry(e).or_insert_with(|| value.to_string());
                assert_eq!(first, value, "one long value, one directory");
            }
        }
        *per_dir
            .entry(format!("{}/{}", parts[1], parts[2]))
            .or_default() += 1;
    }
    assert_eq!(long_dirs.len(), 2);
    assert_ne!(
        long_dirs.values().next(),
        long_dirs.values().nth(1),
        "distinct long values stay distinct"
    );
    // Every payload once, and each partition holds exactly the payloads sent to it.
    assert_eq!(seen.len(), expected.len(), "every payload stored");
    assert!(seen.values().all(|&n| n == 1), "each payload once");
    let mut want_dir: BTreeMap<String, usize> = BTreeMap::new();
    for (e, src) in expected.values() {
        let value = encoded(events[*e].1.as_deref()).unwrap_or_else(|| long_dirs[e].clone());
        *want_dir
            .entry(format!("event={value}/{}", sources[*src].1))
            .or_default() += 1;
    }
    assert_eq!(per_dir, want_dir);
}

#[test]
fn past_max_open_partitions_the_oldest_object_closes_and_every_payload_is_stored_once() {
    // One shard, requests one after another: objects close only to keep the bound (they
    // never fill, and do not age within the test), the rest at shutdown.
    let bound = 3;
    let conf = format!("[keys]\ntemplate = \"{{prefix}}/p={{payload.p}}/{{instance}}-{{shard}}-{{start}}-{{seq}}\"\n[batch]\nmax_payloads = 1000\nmax_age_ms = 3600000\nmax_open_partitions = {bound}\n");
    let (s, files) = fs_server(1, None, &conf, &[], &[]);
    let partitions = 25u64;
    let mut sent: Vec<(u64, u64)> = Vec::new();
    for r in 0..40u64 {
        let data: Vec<String> = (0..10)
            .map(|k| {
                let (id, p) = (sent.len() as u64, (r * 7 + k * 3) % partitions);
                sent.push((id, p));
                format!(r#"{{"i":{id},"p":{p}}}"#)
            })
            .collect();
        let body = format!(r#"{{"data":[{}]}}"#, data.join(","));
        assert_eq!(post(s.addr, body.as_bytes()).status, 200);
    }
    // The objects the bound makes: a payload of a partition with no open object, while
    // `bound` are open, first closes the one opened longest ago.
    let mut open: Vec<(u64, Vec<u64>)> = Vec::new();
    let mut want: Vec<Vec<u64>> = Vec::new();
    for &(id, p) in &sent {
        match open.iter_mut().find(|(q, _)| *q == p) {
            Some((_, ids)) => ids.push(id),
            None => {
                if open.len() == bound {
                    want.push(open.remove(0).1);
                }
                open.push((p, vec![id]));
            }
        }
    }
    let evicted = want.len() as u64;
    want.extend(open.into_iter().map(|(_, ids)| ids));
    wait_until(30, "the bound closed the objects it must", || {
        s.metrics().sum("corepost_partitions_evicted_total") >= evicted
    });
    assert_eq!(
        s.metrics().sum("corepost_partitions_evicted_total"),
        evicted
    );
    assert!(s.stop(30).success());

    let mut got: Vec<Vec<u64>> = Vec::new();
    let mut seen: HashMap<u64, u32> = HashMap::new();
    for f in files_under(&files.root) {
        let dir = f
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut ids = Vec::new();
        for line in std::fs::read(&f)
            .unwrap()
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert_eq!(dir, format!("p={}", v["p"]), "{}", f.display());
            let id = v["i"].as_u64().unwrap();
            *seen.entry(id).or_default() += 1;
            ids.push(id);
        }
        got.push(ids);
    }
    assert_eq!(seen.len(), sent.len(), "every payload stored");
    assert!(seen.values().all(|&n| n == 1), "each payload once");
    got.sort();
    want.sort();
    assert!(want.len() as u64 > partitions, "{} objects", want.len());
    assert_eq!(
        got, want,
        "objects as the bound closes them, payloads in order"
    );
}

#[test]
fn check_config_explains_a_bad_template() {
    for (template, why) in [
        (
            "{prefix}/{payload.event/{instance}-{shard}-{start}-{seq}",
            "unbalanced braces",
        ),
        (
            "{prefix}/{event}/{instance}-{shard}-{start}-{seq}",
            "unknown variable {event}",
        ),
        (
            "{prefix}/{payload.e}/{instance}-{shard}-{seq}",
            "{start} is missing",
        ),
    ] {
        let conf = text_file(&format!("[keys]\ntemplate = \"{template}\"\n"));
        let out = Command::new(env!("CARGO_BIN_EXE_corepost"))
            .args(["check-config", "--config", conf.path().to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("keys.template: ") && err.contains(why),
            "{err}"
        );
    }
}

/// A spool directory on the disk the build is on (direct I/O does not work on tmpfs).
fn spool_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Client `c`'s request `n`: six payloads `{"i":ID,"p":"v{ID % 3}"}` (ids from
/// `c * 1_000_000 + n * 6`), with `X-Source: c{c}/{n % 2}`.
fn six_payloads_in_three_partitions(c: u64, n: u64) -> (Vec<u8>, Vec<u64>) {
    let ids: Vec<u64> = (0..6).map(|k| c * 1_000_000 + n * 6 + k).collect();
    let data: Vec<String> = ids
        .iter()
        .map(|i| format!(r#"{{"i":{i},"p":"v{}"}}"#, i % 3))
        .collect();
    let body = format!(r#"{{"data":[{}]}}"#, data.join(","));
    let src = format!("c{c}/{}", n % 2);
    let req = raw_request(
        "POST",
        "/v1/payloads",
        &[("X-Source", &src)],
        body.as_bytes(),
    );
    (req, ids)
}

#[test]
fn durable_requests_replayed_after_kill_9_keep_the_keys_of_the_template_they_were_taken_with() {
    let spool = spool_dir();
    let root = tempfile::tempdir().unwrap();
    let spool_arg = spool.path().to_str().unwrap().to_string();
    // Releases are checkpointed once an hour: after the kill everything taken is replayed,
    // also what was already stored, which must land on the same keys again. Each request's
    // six payloads fall in three partitions, two open at most: the bound splits a request's
    // objects, and a replay must split them the same way.
    let conf = "[server]\nack = \"durable\"\n[spool]\ncheckpoint_ms = 3600000\n[keys]\ntemplate = \"{prefix}/p={payload.p}/src={header.x-source}/{yyyy}/{instance}-{shard}-{start}-{seq}\"\n[batch]\nmax_payloads = 4\nmax_age_ms = 20\nmax_open_partitions = 2\n";
    let (s, _f) = fs_server(
        2,
        Some(root.path()),
        conf,
        &["--spool-dir", &spool_arg],
        &[],
    );
    let clients = post_until_stopped(s.addr, 4, six_payloads_in_three_partitions);
    wait_until(30, "a few hundred payloads stored", || {
        files_under(root.path()).len() > 200
    });
    s.signal("KILL");
    drop(s);
    let (ok, sent) = clients.stop();
    assert!(ok.len() > 100, "{} payloads answered 200", ok.len());

    // Restart with another template and other batches: the spool's records are built and
    // named as the first run did (its recorded template, headers and batches), so what was
    // stored before the kill is overwritten, never stored again under other keys.
    let other = "[server]\nack = \"durable\"\n[batch]\nmax_payloads = 1000\nmax_age_ms = 20\n";
    let (s, _f) = fs_server(
        1,
        Some(root.path()),
        other,
        &["--spool-dir", &spool_arg],
        &[],
    );
    wait_spool_empty(&s, 60);
    assert!(s.metrics().sum("corepost_payloads_replayed_total") > 0);
    assert!(s.stop(30).success());

    let mut seen: HashMap<u64, u32> = HashMap::new();
    for (rel, line) in stored_lines(root.path()) {
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let id = v["i"].as_u64().unwrap();
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        assert_eq!(parts.len(), 5, "{}: the first run's layout", rel.display());
        assert_eq!(parts[1], format!("p=v{}", id % 3), "{}", rel.display());
        let (c, n) = (id / 1_000_000, (id % 1_000_000) / 6);
        assert_eq!(
            parts[2],
            format!("src=c{c}%2F{}", n % 2),
            "{}",
            rel.display()
        );
        assert!(parts[4].contains("-s"), "spooled keys: {}", rel.display());
        *seen.entry(id).or_default() += 1;
    }
    let lost: Vec<_> = ok.iter().filter(|i| !seen.contains_key(i)).collect();
    assert!(lost.is_empty(), "answered 200, not stored: {lost:?}");
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let unknown: Vec<_> = seen.keys().filter(|i| !sent.contains(i)).collect();
    assert!(unknown.is_empty(), "never sent: {unknown:?}");
}

/// Counts rows per partition value of the fs sink's objects under `root`, read by pyarrow as
/// a Hive-partitioned JSON dataset (`k` the partition key); also the rows whose nested
/// `os.name` and list `metrics` came through. Prints JSON.
const PYARROW_COUNT: &str = r#"
import collections, json, sys
import pyarrow as pa, pyarrow.dataset as ds
root = sys.argv[1]
schema = pa.schema([("i", pa.int64()), ("event", pa.string()),
                    ("os", pa.struct([("name", pa.string())])),
                    ("metrics", pa.list_(pa.int64())), ("k", pa.string())])
part = ds.partitioning(pa.schema([("k", pa.string())]), flavor="hive")
table = ds.dataset(root, format="json", partitioning=part, schema=schema).to_table()
rows = table.to_pylist()
counts = collections.Counter("<null>" if r["k"] is None else r["k"] for r in rows)
nested = sum(1 for r in rows if r["os"]["name"] == "os-%d" % (r["i"] % 3)
             and len(r["metrics"]) == r["i"] % 4)
same = sum(1 for r in rows if r["k"] == (r["event"] or None))
print(json.dumps({"counts": counts, "nested": nested, "same": same, "rows": len(rows)}))
"#;

#[test]
fn pyarrow_reads_the_objects_as_a_hive_partitioned_dataset_with_exact_counts() {
    let conf = "[keys]\ntemplate = \"{prefix}/k={payload.event}/dt={yyyy}-{mm}-{dd}/{instance}-{shard}-{start}-{seq}\"\n[batch]\nmax_payloads = 50\nmax_age_ms = 50\n";
    let (s, files) = fs_server(2, None, conf, &[], &[]);
    let events = ["click", "view", "a/b", "日本 x", "..", "100%", ""];
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    let mut i = 0u64;
    for r in 0..200u64 {
        let data: Vec<String> = (0..10)
            .map(|k| {
                let e = events[((r * 3 + k) % events.len() as u64) as usize];
                let metrics: Vec<String> = (0..i % 4).map(|m| m.to_string()).collect();
                let p = format!(
                    r#"{{"i":{i},"event":{},"os":{{"name":"os-{}"}},"metrics":[{}]}}"#,
                    serde_json::Value::from(e),
                    i % 3,
                    metrics.join(",")
                );
                let key = if e.is_empty() { "<null>" } else { e };
                *want.entry(key.to_string()).or_default() += 1;
                i += 1;
                p
            })
            .collect();
        let body = format!(r#"{{"data":[{}]}}"#, data.join(","));
        assert_eq!(post(s.addr, body.as_bytes()).status, 200);
    }
    s.wait_drained(Duration::from_secs(30));
    assert!(s.stop(30).success());
    let out = Command::new("python3")
        .args(["-c", PYARROW_COUNT, files.root.to_str().unwrap()])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "pyarrow (scripts/test.sh installs it) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let counts: BTreeMap<String, u64> = got["counts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    assert_eq!(
        counts, want,
        "rows per partition value, as pyarrow reads them"
    );
    assert_eq!(got["rows"], i);
    assert_eq!(got["nested"], i, "nested fields and list lengths intact");
    assert_eq!(got["same"], i, "each row's partition value is its event");
}

#[test]
fn in_s3_keys_keep_their_escapes_and_every_payload_is_stored_once() {
    let g = garage();
    let p = prefix("keys-s3");
    let conf = text_file("[keys]\ntemplate = \"{prefix}/event={payload.event}/{instance}-{shard}-{start}-{seq}\"\n[batch]\nmax_payloads = 10\nmax_age_ms = 50\n");
    let path = conf.path().to_str().unwrap().to_string();
    let s = Server::start(
        &["--cores", "1", "--sink", "s3", "--config", &path],
        &g.server_env(&p),
    );
    // Characters S3 and URLs treat specially: the listed keys must hold them encoded as
    // rendered, never decoded by the way to the store.
    let events = ["a/b", "100%", "%2F", "é x", "..", "a+b", "?#&=", "~"];
    let data: Vec<String> = (0..40)
        .map(|i| {
            let e = serde_json::Value::from(events[i % events.len()]);
            format!(r#"{{"i":{i},"event":{e}}}"#)
        })
        .collect();
    let body = format!(r#"{{"data":[{}]}}"#, data.join(","));
    assert_eq!(post(s.addr, body.as_bytes()).status, 200);
    s.wait_drained(Duration::from_secs(30));
    let mut seen: HashMap<u64, u32> = HashMap::new();
    for o in g.objects(&p) {
        let rest = o.key.strip_prefix(&format!("{p}/")).unwrap();
        let (dir, _name) = rest.split_once('/').unwrap();
        assert!(!_name.contains('/'), "{}", o.key);
        for v in lines(&o) {
            let e = v["event"].as_str().unwrap();
            assert_eq!(
                dir,
                format!("event={}", encoded(Some(e)).unwrap()),
                "{}",
                o.key
            );
            *seen.entry(v["i"].as_u64().unwrap()).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 40, "every payload stored");
    assert!(seen.values().all(|&n| n == 1), "each payload once");
    assert!(s.stop(30).success());
}
