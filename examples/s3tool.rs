//! The benchmark harness's S3 client (rust-s3, as `tests/common`), for the store that
//! `scripts/garage.sh start DIR` describes in `DIR/env` (`S3_ENDPOINT`, `S3_BUCKET`,
//! `S3_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
//!
//! ```text
//! s3tool count PREFIX                      number of objects under PREFIX
//! s3tool inventory PREFIX [--verify] [--threads N]
//!     JSON: objects and bytes under PREFIX by key suffix; with --verify every .ndjson,
//!     .ndjson.gz and .ndjson.zst object is downloaded, decompressed and its lines counted and
//!     parsed as JSON (a .json object, or one without a known suffix, is one payload; up to 20
//!     .json objects are sampled and parsed)
//! s3tool selftest PREFIX                   writes one object of each kind with known payload
//!     counts under PREFIX and checks that inventory --verify counts them back (exit 1 if not)
//! ```
//!
//! Built by `cargo build --release --example s3tool` (benches/e2e/run.sh does it).
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use s3::{creds::Credentials, Bucket, Region};
use serde_json::{json, Value};

const KINDS: [&str; 4] = [".ndjson.zst", ".ndjson.gz", ".ndjson", ".json"];

fn kind(key: &str) -> &'static str {
    KINDS
        .into_iter()
        .find(|k| key.ends_with(k))
        .unwrap_or("other")
}

fn bucket() -> Result<Box<Bucket>> {
    let var = |k: &str| {
        std::env::var(k)
            .with_context(|| format!("{k} is not set (source DIR/env of scripts/garage.sh start)"))
    };
    let region = Region::Custom {
        region: var("S3_REGION")?,
        endpoint: var("S3_ENDPOINT")?,
    };
    let creds = Credentials::new(
        Some(&var("AWS_ACCESS_KEY_ID")?),
        Some(&var("AWS_SECRET_ACCESS_KEY")?),
        None,
        None,
        None,
    )?;
    Ok(Bucket::new(&var("S3_BUCKET")?, region, creds)?.with_path_style())
}

async fn list(b: &Bucket, prefix: &str) -> Result<Vec<(String, u64)>> {
    let pages = b
        .list(prefix.to_string(), None)
        .await
        .context("ListObjectsV2")?;
    Ok(pages
        .into_iter()
        .flat_map(|p| p.contents)
        .map(|o| (o.key, o.size))
        .collect())
}

async fn get(b: &Bucket, key: &str) -> Result<Vec<u8>> {
    let r = b
        .get_object(key)
        .await
        .with_context(|| format!("GET {key}"))?;
    if r.status_code() != 200 {
        bail!("GET {key}: HTTP {}", r.status_code());
    }
    Ok(r.to_vec())
}

/// Payloads, invalid lines and problems of one NDJSON object (decompressed per its suffix).
fn count_ndjson(key: &str, raw: &[u8]) -> (u64, u64, Vec<String>) {
    let (gz, zst) = (
        raw.starts_with(&[0x1f, 0x8b]),
        raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
    );
    let mut problems = Vec::new();
    let mut data = Vec::new();
    let decoded = match kind(key) {
        ".ndjson.gz" if gz => flate2::read::MultiGzDecoder::new(raw)
            .read_to_end(&mut data)
            .map(|_| ()),
        ".ndjson.zst" if zst => zstd::stream::copy_decode(raw, &mut data),
        ".ndjson" if !gz && !zst => {
            data = raw.to_vec();
            Ok(())
        }
        k => {
            problems.push(format!("{key}: the bytes do not match the suffix {k}"));
            return (0, 0, problems);
        }
    };
    if let Err(e) = decoded {
        problems.push(format!("{key}: cannot decompress: {e}"));
    }
    if !data.is_empty() && !data.ends_with(b"\n") {
        problems.push(format!("{key}: last line has no newline"));
    }
    let lines = data
        .split(|&c| c == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace));
    let (mut n, mut bad) = (0, 0);
    for line in lines {
        n += 1;
        bad += u64::from(serde_json::from_slice::<serde::de::IgnoredAny>(line).is_err());
    }
    (n, bad, problems)
}

async fn inventory(b: Box<Bucket>, prefix: &str, verify: bool, threads: usize) -> Result<Value> {
    let objs = list(&b, prefix).await?;
    let mut by_kind: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (key, size) in &objs {
        let e = by_kind.entry(kind(key)).or_default();
        e.0 += 1;
        e.1 += size;
    }
    let by_kind: BTreeMap<_, _> = by_kind
        .iter()
        .map(|(k, (o, by))| (*k, json!({"objects": o, "bytes": by})))
        .collect();
    let mut inv = json!({"prefix": prefix, "objects": objs.len(), "bytes": objs.iter().map(|o| o.1).sum::<u64>(), "by_kind": by_kind});
    if !verify {
        return Ok(inv);
    }
    let nd: Vec<String> = objs
        .iter()
        .filter(|o| kind(&o.0).starts_with(".ndjson"))
        .map(|o| o.0.clone())
        .collect();
    let js: Vec<&String> = objs
        .iter()
        .filter(|o| kind(&o.0) == ".json")
        .map(|o| &o.0)
        .collect();
    let sample: Vec<String> = js
        .iter()
        .step_by((js.len() / 20).max(1))
        .take(20)
        .map(|k| k.to_string())
        .collect();
    let (mut payloads, mut invalid, mut problems) = ((objs.len() - nd.len()) as u64, 0, Vec::new());
    let sem = Arc::new(tokio::sync::Semaphore::new(threads.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (key, is_nd) in nd
        .iter()
        .map(|k| (k.clone(), true))
        .chain(sample.iter().map(|k| (k.clone(), false)))
    {
        let (b, sem) = (b.clone(), sem.clone());
        set.spawn(async move {
            let _permit = sem.acquire().await?;
            let raw = get(&b, &key).await?;
            Ok::<_, anyhow::Error>(if is_nd {
                count_ndjson(&key, &raw)
            } else if serde_json::from_slice::<serde::de::IgnoredAny>(&raw).is_ok() {
                (0, 0, vec![])
            } else {
                (0, 1, vec![format!("{key}: not one JSON value")])
            })
        });
    }
    while let Some(r) = set.join_next().await {
        let (n, bad, p) = r??;
        payloads += n;
        invalid += bad;
        problems.extend(p);
    }
    inv["payloads"] = json!(payloads);
    inv["ndjson_objects"] = json!(nd.len());
    inv["json_objects_sampled"] = json!(sample.len());
    inv["invalid_payloads"] = json!(invalid);
    inv["problem_count"] = json!(problems.len());
    problems.truncate(20);
    inv["problems"] = json!(problems);
    Ok(inv)
}

async fn selftest(b: Box<Bucket>, prefix: &str) -> Result<Value> {
    let lines = |r: std::ops::Range<u32>| -> Vec<u8> {
        r.flat_map(|i| {
            format!("{{\"i\":{i},\"s\":\"{}\"}}\n", "x".repeat(i as usize % 7)).into_bytes()
        })
        .collect()
    };
    let gz = |d: Vec<u8>| -> Result<Vec<u8>> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&d)?;
        Ok(e.finish()?)
    };
    let prefix = format!("{}/", prefix.trim_end_matches('/'));
    // Two gzip members, as a streaming writer may produce; the Go baseline's keys have no suffix.
    let objs: Vec<(&str, Vec<u8>, u64)> = vec![
        ("a.ndjson", lines(0..3), 3),
        (
            "b.ndjson.gz",
            [gz(lines(0..2))?, gz(lines(2..4))?].concat(),
            4,
        ),
        ("c.ndjson.zst", zstd::encode_all(&lines(0..5)[..], 3)?, 5),
        ("d.json", br#"{"one":1}"#.to_vec(), 1),
        ("e", b"{\"go\":1}\n".to_vec(), 1),
    ];
    for (name, body, _) in &objs {
        let r = b.put_object(format!("{prefix}{name}"), body).await?;
        if r.status_code() != 200 {
            bail!("PUT {prefix}{name}: HTTP {}", r.status_code());
        }
    }
    let mut inv = inventory(b, &prefix, true, 4).await?;
    let want = |f: &str, v: u64, errs: &mut Vec<String>| {
        if inv[f] != json!(v) {
            errs.push(format!("{f} {} != {v}", inv[f]));
        }
    };
    let mut errs = Vec::new();
    want("objects", objs.len() as u64, &mut errs);
    want("payloads", objs.iter().map(|o| o.2).sum(), &mut errs);
    want(
        "bytes",
        objs.iter().map(|o| o.1.len() as u64).sum(),
        &mut errs,
    );
    want("invalid_payloads", 0, &mut errs);
    want("problem_count", 0, &mut errs);
    inv["ok"] = json!(errs.is_empty());
    inv["errors"] = json!(errs);
    Ok(inv)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(cmd), Some(prefix)) = (args.first(), args.get(1)) else {
        bail!("usage: s3tool count|inventory|selftest PREFIX [--verify] [--threads N] (see the source)");
    };
    let verify = args.iter().any(|a| a == "--verify");
    let threads = match args.iter().position(|a| a == "--threads") {
        Some(i) => args
            .get(i + 1)
            .context("--threads needs a number")?
            .parse()
            .context("--threads")?,
        None => 8,
    };
    let b = bucket()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(async {
        match cmd.as_str() {
            "count" => Ok(json!(list(&b, prefix).await?.len())),
            "inventory" => inventory(b, prefix, verify, threads).await,
            "selftest" => selftest(b, prefix).await,
            _ => bail!("unknown command {cmd}"),
        }
    })?;
    println!("{out}");
    if out.get("ok") == Some(&json!(false)) {
        std::process::exit(1);
    }
    Ok(())
}
