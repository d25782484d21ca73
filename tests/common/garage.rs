//! A real Garage (S3-compatible store) per test binary, key prefixes that keep tests apart,
//! and the objects read back from it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::repo;

/// A real Garage started by `scripts/garage.sh`, once per test binary, stopped by a watchdog
/// when the test process exits. Tests keep apart by using their own key prefix.
pub struct Garage {
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
}

static GARAGE: OnceLock<Garage> = OnceLock::new();

pub fn garage() -> &'static Garage {
    GARAGE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("corepost-test-garage-{}", std::process::id()));
        let script = repo().join("scripts/garage.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(&dir)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/garage.sh");
        assert!(out.status.success(), "scripts/garage.sh start failed");
        // Stop (and delete) this Garage when the test process ends, however it ends: a
        // detached watchdog (the outer shell exits at once and is reaped here).
        let watchdog = format!(
            "(while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; bash '{s}' wipe '{d}') >/dev/null 2>&1 </dev/null &",
            pid = std::process::id(),
            s = script.display(),
            d = dir.display()
        );
        let st = Command::new("bash").arg("-c").arg(watchdog).status().expect("spawn watchdog");
        assert!(st.success());
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches(|c| c == '"' || c == '\'').to_string()))
            .collect();
        Garage { dir, env }
    })
}

impl Garage {
    pub fn var(&self, k: &str) -> String {
        self.env
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("garage env lacks {k}"))
    }

    /// Environment for a corepost using this Garage with key prefix `prefix`.
    pub fn server_env(&self, prefix: &str) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        env.push(("S3_PREFIX".into(), prefix.into()));
        env
    }

    pub fn bucket(&self) -> Box<s3::Bucket> {
        let region = s3::Region::Custom {
            region: self.var("S3_REGION"),
            endpoint: self.var("S3_ENDPOINT"),
        };
        let creds = s3::creds::Credentials::new(
            Some(&self.var("AWS_ACCESS_KEY_ID")),
            Some(&self.var("AWS_SECRET_ACCESS_KEY")),
            None,
            None,
            None,
        )
        .unwrap();
        s3::Bucket::new(&self.var("S3_BUCKET"), region, creds)
            .unwrap()
            .with_path_style()
    }

    pub fn run<F: std::future::Future>(&self, f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Every key under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let bucket = self.bucket();
        self.run(async {
            let pages = bucket.list(format!("{prefix}/"), None).await.expect("list");
            pages
                .into_iter()
                .flat_map(|p| p.contents.into_iter().map(|o| o.key))
                .collect()
        })
    }

    /// Every object under `prefix`, sorted by key (fetched 32 at a time).
    pub fn objects(&self, prefix: &str) -> Vec<Object> {
        let keys = self.keys(prefix);
        let bucket = self.bucket();
        self.run(async move {
            let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
            let mut set = tokio::task::JoinSet::new();
            for key in keys {
                let (b, sem) = (bucket.clone(), sem.clone());
                set.spawn(async move {
                    let _p = sem.acquire().await.unwrap();
                    let r = b.get_object(&key).await.expect("get");
                    assert_eq!(r.status_code(), 200, "GET {key}");
                    let h = r.headers();
                    Object {
                        content_type: h.get("content-type").cloned(),
                        content_encoding: h.get("content-encoding").cloned(),
                        data: r.bytes().to_vec(),
                        key,
                    }
                });
            }
            let mut out = Vec::new();
            while let Some(r) = set.join_next().await {
                out.push(r.unwrap());
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            out
        })
    }
}

/// Runs `scripts/garage.sh <cmd> <dir>`.
pub fn garage_cmd(cmd: &str, dir: &Path) {
    let st = Command::new("bash")
        .arg(repo().join("scripts/garage.sh"))
        .arg(cmd)
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "garage.sh {cmd} failed");
}

/// A key prefix of its own for test `name` in this run (the pid tells runs apart).
pub fn prefix(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// An object read back ([`Garage::objects`]): key, headers of interest, bytes as stored.
pub struct Object {
    pub key: String,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub data: Vec<u8>,
}

/// The object's NDJSON text, decompressed according to its key.
pub fn ndjson(o: &Object) -> Vec<u8> {
    if o.key.ends_with(".ndjson.gz") {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&o.data[..]), &mut out)
            .expect("gunzip");
        out
    } else if o.key.ends_with(".ndjson.zst") {
        zstd::decode_all(&o.data[..]).expect("unzstd")
    } else {
        assert!(o.key.ends_with(".ndjson"), "not an NDJSON key: {}", o.key);
        o.data.clone()
    }
}

pub fn lines(o: &Object) -> Vec<serde_json::Value> {
    if o.key.ends_with(".json") {
        return vec![serde_json::from_slice(&o.data).expect("a .json object is one payload")];
    }
    let text = ndjson(o);
    assert!(
        text.ends_with(b"\n"),
        "{}: NDJSON ends with a newline",
        o.key
    );
    text.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("each line is one JSON payload"))
        .collect()
}

/// Copies of each numbered payload `(c, n)` (see [`numbered_body`]) across every object under
/// `prefix`, read back by value.
pub fn copies(g: &Garage, prefix: &str) -> HashMap<(u64, u64), u32> {
    copies_where(g, prefix, |_| true)
}

/// As [`copies`], counting only the payloads of clients `c` for which `keep(c)` holds.
pub fn copies_where(
    g: &Garage,
    prefix: &str,
    keep: impl Fn(u64) -> bool,
) -> HashMap<(u64, u64), u32> {
    let mut out = HashMap::new();
    for o in g.objects(prefix) {
        for v in lines(&o) {
            let (Some(c), Some(n)) = (v["c"].as_u64(), v["n"].as_u64()) else {
                panic!("{}: not a numbered payload: {v}", o.key);
            };
            if keep(c) {
                *out.entry((c, n)).or_default() += 1;
            }
        }
    }
    out
}

/// `g.server_env(prefix)` with the store's endpoint replaced by a port nothing listens on:
/// every upload fails (and is retried), so what is accepted stays queued or spooled.
pub fn unreachable_store_env(g: &Garage, prefix: &str) -> Vec<(String, String)> {
    let mut env = g.server_env(prefix);
    env.retain(|(k, _)| k != "S3_ENDPOINT");
    env.push(("S3_ENDPOINT".into(), "http://127.0.0.1:9".into()));
    env
}
