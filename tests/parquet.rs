//! `batch.format = "parquet"` against a real Garage and a real query engine (DuckDB, from
//! PyPI, installed by `scripts/test.sh`): thousands of body10 requests through a partitioning
//! template come back from the bucket with exactly the posted payloads per partition value,
//! nested fields and list lengths intact; the same after `kill -9` with `ack = "durable"`;
//! the query documented in docs/operations.md runs as written; payloads that do not fit a
//! fixed schema land in the error output and are counted in `/metrics`, and a replay after a
//! crash encodes with the schema file its requests were taken with.

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::Command;

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The Garage tests load the machine; they take turns.
static TURN: Mutex<()> = Mutex::new(());

const TEMPLATE: &str =
    "{prefix}/type={payload.event}/dt={yyyy}-{mm}-{dd}/{instance}-{shard}-{start}-{seq}";

fn parquet_conf(extra: &str) -> String {
    format!("{extra}[keys]\ntemplate = \"{TEMPLATE}\"\n[batch]\nformat = \"parquet\"\ncompression = \"zstd\"\nmax_payloads = 2000\nmax_age_ms = 200\n")
}

/// Request `r` in the shape of `benches/workload/body10.json`: its ten payloads, payload `k`
/// given the id `i = r * 10 + k`, `os.name` = `os-{i % 3}` and `i % 6` metrics. Returns the
/// body and each payload's (id, event).
fn body10_request(r: u64) -> (Vec<u8>, Vec<(u64, String)>) {
    static BODY10_PAYLOADS: OnceLock<Vec<Value>> = OnceLock::new();
    let base = BODY10_PAYLOADS.get_or_init(|| payloads_of(BODY10));
    let mut ids = Vec::new();
    let data: Vec<Value> = base
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let i = r * 10 + k as u64;
            let mut p = p.clone();
            p["i"] = i.into();
            p["os"]["name"] = format!("os-{}", i % 3).into();
            let metrics = p["metrics"].as_array().unwrap()[..(i % 6) as usize].to_vec();
            p["metrics"] = metrics.into();
            ids.push((i, p["event"].as_str().unwrap().to_string()));
            p
        })
        .collect();
    let body = serde_json::json!({"version": "10", "token": "t", "data": data});
    (serde_json::to_vec(&body).unwrap(), ids)
}

/// Runs `sql` in DuckDB (from Python) and returns its rows as JSON arrays. The rows go
/// to a file of their own: DuckDB draws a progress bar on stdout when a query runs long.
fn duckdb(sql: &str) -> Vec<Vec<Value>> {
    const RUN: &str = r#"
import duckdb, json, sys
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
rows = con.execute(sys.argv[1]).fetchall()
with open(sys.argv[2], "w") as f:
    json.dump([list(r) for r in rows], f, default=str)
"#;
    let rows = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new("python3")
        .args(["-c", RUN, sql])
        .arg(rows.path())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "DuckDB (scripts/test.sh installs it) failed on {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read(rows.path()).unwrap();
    serde_json::from_slice(&text).unwrap_or_else(|e| {
        panic!(
            "DuckDB's rows for {sql}: {e}: {}",
            String::from_utf8_lossy(&text)
        )
    })
}

/// Writes every object under `prefix` in the bucket to `dir/{key}`; returns the keys.
fn download(g: &Garage, prefix: &str, dir: &Path) -> Vec<String> {
    let mut keys = Vec::new();
    for o in g.objects(prefix) {
        let path = dir.join(&o.key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &o.data).unwrap();
        keys.push(o.key);
    }
    keys
}

/// Every row of the Parquet objects under `root/{prefix}` as DuckDB reads them with Hive
/// partitioning, checked row by row: its partition value is its event, its nested
/// `os.name` and its list of `metrics` came through. Returns the ids and rows per
/// partition value.
fn rows_by_duckdb(root: &Path, prefix: &str) -> (Vec<u64>, BTreeMap<String, u64>) {
    let glob = format!("{}/{prefix}/*/*/*.parquet", root.display());
    let rows = duckdb(&format!(
        "SELECT type, i, event, os.name, len(metrics) FROM read_parquet('{glob}', hive_partitioning = true, union_by_name = true)"
    ));
    let (mut ids, mut per_type) = (Vec::new(), BTreeMap::new());
    for r in rows {
        let (ty, i, event) = (r[0].as_str().unwrap(), r[1].as_u64().unwrap(), &r[2]);
        assert_eq!(
            Some(ty),
            event.as_str(),
            "row {i}: partition value and field"
        );
        assert_eq!(r[3], format!("os-{}", i % 3), "row {i}: os.name");
        assert_eq!(r[4], i % 6, "row {i}: list length of metrics");
        *per_type.entry(ty.to_string()).or_default() += 1;
        ids.push(i);
    }
    (ids, per_type)
}

fn count_events<'a>(events: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for e in events {
        *out.entry(e.clone()).or_default() += 1;
    }
    out
}

/// The SQL of the "Querying the objects" example in docs/operations.md, with its data
/// directory and prefix (`corepost-data/corepost/`) replaced by `root` and `prefix`.
fn documented_query(root: &Path, prefix: &str) -> String {
    let doc = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let start = doc
        .find("<!-- query: tests/parquet.rs -->\n```sql\n")
        .expect("docs/operations.md: the marked query");
    let rest = &doc[start..];
    let sql = &rest[rest.find("```sql\n").unwrap() + 7..];
    let sql = &sql[..sql.find("```").unwrap()];
    assert!(sql.contains("'corepost-data/corepost/"), "{sql}");
    sql.replace(
        "'corepost-data/corepost/",
        &format!("'{}/{prefix}/", root.display()),
    )
}

#[test]
fn duckdb_reads_the_parquet_objects_in_garage_with_exact_counts_per_partition() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let g = garage();
    let p = prefix("parquet");
    let (s, _conf) = config_server(2, &parquet_conf(""), &["--sink", "s3"], &g.server_env(&p));
    let requests = 2_000u64;
    let sent: Vec<(u64, String)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let addr = s.addr;
                scope.spawn(move || {
                    let mut sent = Vec::new();
                    for r in (t..requests).step_by(4) {
                        let (body, ids) = body10_request(r);
                        let resp = post(addr, &body);
                        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
                        sent.extend(ids);
                    }
                    sent
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    s.wait_drained(Duration::from_secs(120));
    assert_eq!(s.metrics().sum("corepost_payloads_unfit_total"), 0);
    assert!(s.stop(30).success());

    let dir = tempfile::tempdir().unwrap();
    let keys = download(g, &p, dir.path());
    assert!(
        keys.iter().all(|k| k.ends_with(".parquet")),
        "Parquet objects only: {keys:?}"
    );
    let (mut ids, per_type) = rows_by_duckdb(dir.path(), &p);
    let want = count_events(sent.iter().map(|(_, e)| e));
    assert!(want.len() > 3, "several partitions: {want:?}");
    assert_eq!(per_type, want, "rows per partition value");
    ids.sort();
    let all: Vec<u64> = (0..requests * 10).collect();
    assert_eq!(ids, all, "every payload once");

    // The query of docs/operations.md, as written there.
    let rows = duckdb(&documented_query(dir.path(), &p));
    let got: BTreeMap<String, u64> = rows
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_u64().unwrap()))
        .collect();
    assert_eq!(got, want, "the documented query's counts");
    let metrics: u64 = rows.iter().map(|r| r[2].as_u64().unwrap()).sum();
    assert_eq!(metrics, all.iter().map(|i| i % 6).sum::<u64>());
}

/// A spool directory on the disk the build is on (direct I/O does not work on tmpfs).
fn spool_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

#[test]
fn after_kill_9_durable_parquet_objects_hold_every_200_once() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let g = garage();
    let p = prefix("parquet-kill");
    let spool = spool_dir();
    let spool_arg = spool.path().to_str().unwrap().to_string();
    // Releases are checkpointed once an hour: everything taken before the kill is replayed,
    // also what was stored, whose objects must be encoded and named the same again.
    let conf = parquet_conf("[server]\nack = \"durable\"\n[spool]\ncheckpoint_ms = 3600000\n");
    let args = ["--sink", "s3", "--spool-dir", &spool_arg];
    let (s, _c) = config_server(2, &conf, &args, &g.server_env(&p));
    let clients = post_until_stopped(s.addr, 4, |c, n| {
        let (body, ids) = body10_request(c * 100_000 + n);
        (raw_request("POST", "/v1/payloads", &[], &body), ids)
    });
    wait_until(60, "a few thousand payloads stored", || {
        s.metrics().sum("corepost_payloads_uploaded_total") >= 3_000
    });
    s.signal("KILL");
    drop(s);
    let (ok, sent) = clients.stop();
    assert!(ok.len() > 1_000, "{} payloads answered 200", ok.len());

    let (s, _c) = config_server(1, &conf, &args, &g.server_env(&p));
    wait_spool_empty(&s, 120);
    assert!(s.metrics().sum("corepost_payloads_replayed_total") > 0);
    assert!(s.stop(30).success());

    let dir = tempfile::tempdir().unwrap();
    download(g, &p, dir.path());
    let (ids, per_type) = rows_by_duckdb(dir.path(), &p);
    let mut seen: HashMap<u64, u32> = HashMap::new();
    for i in ids {
        *seen.entry(i).or_default() += 1;
    }
    let lost: Vec<_> = ok.iter().filter(|(i, _)| !seen.contains_key(i)).collect();
    assert!(lost.is_empty(), "answered 200, not stored: {lost:?}");
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let events: HashMap<u64, String> = sent.into_iter().collect();
    let unknown: Vec<_> = seen.keys().filter(|i| !events.contains_key(i)).collect();
    assert!(unknown.is_empty(), "never sent: {unknown:?}");
    let want = count_events(seen.keys().map(|i| &events[i]));
    assert_eq!(per_type, want, "rows per partition value");
}

#[test]
fn a_replay_after_kill_9_encodes_with_the_schema_file_its_records_were_taken_with() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let g = garage();
    let p = prefix("parquet-schema");
    let spool = spool_dir();
    let spool_arg = spool.path().to_str().unwrap().to_string();
    let schema = text_file(r#"{"i": "int64", "event": "string", "a": "string"}"#);
    let conf = format!(
        "[server]\nack = \"durable\"\n[keys]\ntemplate = \"{TEMPLATE}\"\n[batch]\nformat = \"parquet\"\nschema_file = \"{}\"\nmax_payloads = 100\nmax_age_ms = 50\n",
        schema.path().display()
    );
    let args = ["--sink", "s3", "--spool-dir", &spool_arg];
    // A store nothing answers: every request taken stays in the spool.
    let (s, _c) = config_server(1, &conf, &args, &unreachable_store_env(g, &p));
    // Even payloads fit the first schema file; odd ones have a field only the second has.
    for r in 0..10u64 {
        let data: Vec<String> = (r * 10..r * 10 + 10)
            .map(|i| match i % 2 {
                0 => format!(r#"{{"i":{i},"event":"x","a":"s"}}"#),
                _ => format!(r#"{{"i":{i},"event":"x","b":true}}"#),
            })
            .collect();
        let body = format!(r#"{{"data":[{}]}}"#, data.join(","));
        assert_eq!(post(s.addr, body.as_bytes()).status, 200);
    }
    s.signal("KILL");
    drop(s);
    // The file changes before the restart: under it, the odd payloads fit and the even not.
    std::fs::write(
        schema.path(),
        r#"{"i": "int64", "event": "string", "b": "bool"}"#,
    )
    .unwrap();
    let (s, _c) = config_server(1, &conf, &args, &g.server_env(&p));
    wait_spool_empty(&s, 60);
    assert!(s.stop(30).success());

    // Encoded as the first run would have: even payloads in Parquet, odd ones in the error
    // output, each once.
    let dir = tempfile::tempdir().unwrap();
    let keys = download(g, &p, dir.path());
    let glob = format!("{}/{p}/type=*/*/*.parquet", dir.path().display());
    let rows = duckdb(&format!("SELECT i FROM read_parquet('{glob}') ORDER BY i"));
    let in_parquet: Vec<u64> = rows.iter().map(|r| r[0].as_u64().unwrap()).collect();
    assert_eq!(in_parquet, (0..100).step_by(2).collect::<Vec<u64>>());
    let mut in_errors = Vec::new();
    for k in keys
        .iter()
        .filter(|k| k.starts_with(&format!("{p}/errors/")))
    {
        for line in std::fs::read(dir.path().join(k))
            .unwrap()
            .split(|&b| b == b'\n')
        {
            if !line.is_empty() {
                let v: Value = serde_json::from_slice(line).unwrap();
                in_errors.push(v["i"].as_u64().unwrap());
            }
        }
    }
    in_errors.sort();
    assert_eq!(in_errors, (1..100).step_by(2).collect::<Vec<u64>>());
}

#[test]
fn payloads_that_do_not_fit_the_schema_file_go_to_the_error_output_and_are_counted() {
    let schema = text_file(
        r#"{"i": "int64", "event": "string", "os": {"name": "string"}, "metrics": ["float64"]}"#,
    );
    let conf = format!(
        "[keys]\nprefix = \"ev\"\ntemplate = \"{TEMPLATE}\"\n[batch]\nformat = \"parquet\"\nschema_file = \"{}\"\nmax_payloads = 50\nmax_age_ms = 50\n",
        schema.path().display()
    );
    let (s, files) = fs_server(2, None, &conf, &[], &[]);
    // Payload i: fits, or has a field the schema lacks, or a value of another type, or is
    // not an object; the ids of the unfit ones are kept.
    let (mut fit, mut unfit): (HashSet<u64>, HashSet<u64>) = Default::default();
    for r in 0..40u64 {
        let data: Vec<String> = (0..10)
            .map(|k| {
                let i = r * 10 + k;
                let e = ["a", "b", "c"][(i % 3) as usize];
                let (p, fits) = match i % 7 {
                    1 => (format!(r#"{{"i":{i},"event":"{e}","extra":true}}"#), false),
                    2 => (format!(r#"{{"i":{i},"event":"{e}","metrics":"x"}}"#), false),
                    3 => (
                        format!(r#"{{"i":{i},"event":"{e}","os":{{"name":7}}}}"#),
                        false,
                    ),
                    4 => (format!("[{i}]"), false),
                    _ => (
                        format!(
                            r#"{{"i":{i},"event":"{e}","os":{{"name":"n"}},"metrics":[1,2.5]}}"#
                        ),
                        true,
                    ),
                };
                if fits { &mut fit } else { &mut unfit }.insert(i);
                p
            })
            .collect();
        let body = format!(r#"{{"data":[{}]}}"#, data.join(","));
        assert_eq!(post(s.addr, body.as_bytes()).status, 200);
    }
    s.wait_drained(Duration::from_secs(30));
    let text = request(s.addr, "GET", "/metrics", &[], b"").body;
    assert!(s.stop(30).success());
    let counted =
        Metrics::parse(&String::from_utf8_lossy(&text)).sum("corepost_payloads_unfit_total");
    assert_eq!(counted, unfit.len() as u64, "corepost_payloads_unfit_total");
    // The metrics text, with the new counter, is valid exposition format.
    let (ok, said) = run_with_input("promtool", &["check", "metrics"], &text);
    assert!(ok, "promtool check metrics: {said}");

    // The error output: NDJSON under ev/errors/, the payloads as sent, in their partition.
    let mut in_errors = Vec::new();
    for f in files_under(&files.root.join("ev/errors")) {
        let rel = f
            .strip_prefix(&files.root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(rel.ends_with(".ndjson"), "{rel}");
        for line in std::fs::read(&f)
            .unwrap()
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let v: Value = serde_json::from_slice(line).unwrap();
            let i = v["i"].as_u64().or_else(|| v[0].as_u64()).unwrap();
            if let Some(e) = v["event"].as_str() {
                assert!(rel.contains(&format!("/type={e}/")), "{rel}: {v}");
            }
            in_errors.push(i);
        }
    }
    in_errors.sort();
    let mut want: Vec<u64> = unfit.into_iter().collect();
    want.sort();
    assert_eq!(
        in_errors, want,
        "every unfit payload in the error output, once"
    );

    // The Parquet objects: the payloads that fit, once each.
    let glob = format!("{}/ev/type=*/*/*.parquet", files.root.display());
    let rows = duckdb(&format!(
        "SELECT i, type, event, os.name, len(metrics) FROM read_parquet('{glob}', hive_partitioning = true) ORDER BY i"
    ));
    let ids: Vec<u64> = rows.iter().map(|r| r[0].as_u64().unwrap()).collect();
    let mut want: Vec<u64> = fit.into_iter().collect();
    want.sort();
    assert_eq!(ids, want, "every payload that fits, once");
    assert!(rows
        .iter()
        .all(|r| r[1] == r[2] && r[3] == "n" && r[4] == 2));
}

/// Runs `cmd args` with `input` on its standard input: whether it succeeded, and what it
/// printed.
fn run_with_input(cmd: &str, args: &[&str], input: &[u8]) -> (bool, String) {
    use std::process::Stdio;
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd} (scripts/test.sh installs it): {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}
