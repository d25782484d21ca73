//! Shared helpers for the integration tests: the real server binary on port 0, a minimal
//! HTTP/1.1 client (raw bytes, so tests control pipelining and `Expect`), and a real Garage.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const BODY10: &[u8] = include_bytes!("../../benches/workload/body10.json");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running `corepost serve`, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub ready_line: String,
    /// The spill directory (a temp dir unless the test passed `--spill-dir`).
    pub spill: PathBuf,
    _spill_tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts the binary with `--listen 127.0.0.1:0` (unless `args` has a `--listen` of its
    /// own) plus `args`, and waits for its ready line.
    pub fn start(args: &[&str], env: &[(String, String)]) -> Server {
        Server::start_in(None, args, env)
    }

    /// As [`Server::start`], run from working directory `cwd` when given (relative paths in
    /// the configuration resolve against it).
    pub fn start_in(cwd: Option<&Path>, args: &[&str], env: &[(String, String)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_corepost"));
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        Server::launch(cmd, args, env)
    }

    /// As [`Server::start`], run under `wrapper` (a command that execs the rest of its
    /// arguments, such as `prlimit --nofile=256:1024 --`).
    pub fn start_under(wrapper: &[&str], args: &[&str], env: &[(String, String)]) -> Server {
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..]).arg(env!("CARGO_BIN_EXE_corepost"));
        Server::launch(cmd, args, env)
    }

    fn launch(mut cmd: Command, args: &[&str], env: &[(String, String)]) -> Server {
        cmd.arg("serve");
        if !args.contains(&"--listen") {
            cmd.arg("--listen").arg("127.0.0.1:0");
        }
        cmd.args(args);
        let (spill, spill_tmp) = match args.iter().position(|a| *a == "--spill-dir") {
            Some(i) => (PathBuf::from(args[i + 1]), None),
            None => {
                let t = tempfile::tempdir().unwrap();
                cmd.arg("--spill-dir").arg(t.path());
                (t.path().to_path_buf(), Some(t))
            }
        };
        for k in [
            "MAX_WORKERS",
            "MAX_QUEUE",
            "S3_ENDPOINT",
            "S3_BUCKET",
            "S3_PREFIX",
            "S3_REGION",
            "COREPOST_MAX_CONNECTION_AGE_MS",
        ] {
            cmd.env_remove(k);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn corepost");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("corepost did not print its ready line within 30 s");
            }
        };
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in ready line {line:?}"));
        Server {
            child,
            addr,
            ready_line: line,
            spill,
            _spill_tmp: spill_tmp,
        }
    }

    /// Sends a signal by name (`TERM`, `KILL`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// SIGTERM, then waits for the exit status (at most `secs`).
    pub fn stop(mut self, secs: u64) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_exit(secs)
    }

    pub fn metrics(&self) -> Metrics {
        let r = request(self.addr, "GET", "/metrics", &[], b"");
        assert_eq!(r.status, 200);
        Metrics::parse(&String::from_utf8_lossy(&r.body))
    }

    /// Polls /metrics until `uploaded + spilled + failed` reaches `accepted` (queues drained).
    pub fn wait_drained(&self, timeout: Duration) -> Metrics {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.metrics();
            let accepted = m.sum("corepost_payloads_accepted_total");
            let done = m.sum("corepost_payloads_uploaded_total")
                + m.sum("corepost_payloads_spilled_total")
                + m.sum("corepost_payloads_failed_total");
            if done >= accepted {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "queues not drained: {done} of {accepted}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parsed Prometheus text: `name{labels}` → value.
pub struct Metrics(pub HashMap<String, f64>);

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut m = HashMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            if let Some((k, v)) = line.rsplit_once(' ') {
                m.insert(k.to_string(), v.parse().unwrap_or(f64::NAN));
            }
        }
        Metrics(m)
    }

    /// Sum over all label sets of a metric.
    pub fn sum(&self, name: &str) -> u64 {
        self.0
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name))
            .map(|(_, v)| *v as u64)
            .sum()
    }

    /// Sum over the label sets of a metric that contain `label` (e.g. `shard="1"`).
    pub fn sum_with(&self, name: &str, label: &str) -> u64 {
        self.0
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name) && k.contains(label))
            .map(|(_, v)| *v as u64)
            .sum()
    }
}

/// One HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Reads one response (Content-Length bodies only, which is all corepost sends).
pub fn read_response(r: &mut impl BufRead) -> Resp {
    try_read_response(r).expect("a complete HTTP response")
}

/// Reads one response; `None` when the connection fails or closes first.
pub fn try_read_response(r: &mut impl BufRead) -> Option<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    if status != 100 {
        r.read_exact(&mut body).ok()?;
    }
    Some(Resp {
        status,
        headers,
        body,
    })
}

pub fn connect(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

pub fn raw_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
    {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut out = req.into_bytes();
    out.extend_from_slice(body);
    out
}

/// One request on a fresh connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let (mut s, mut r) = connect(addr);
    s.write_all(&raw_request(method, path, headers, body))
        .unwrap();
    read_response(&mut r)
}

pub fn post(addr: SocketAddr, body: &[u8]) -> Resp {
    request(
        addr,
        "POST",
        "/v1/payloads",
        &[("Content-Type", "application/json")],
        body,
    )
}

/// The payloads of a collection, as JSON values.
pub fn payloads_of(body: &[u8]) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["data"].as_array().unwrap().clone()
}

/// All files under `dir`, recursively, except dot-files: the data directories' lock file
/// (`.corepost.lock`) and files still being written are not data.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if !p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

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

/// Runs `corepost serve args` expecting it to refuse to start: waits for it to exit (killed and
/// failing the test if it still runs after `secs`) and returns its exit status and stderr.
pub fn serve_refused(args: &[&str], secs: u64) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corepost"))
        .arg("serve")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn corepost");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("corepost serve {args:?} was still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, err)
}

/// Polls until `f` is true (panics after `secs`).
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
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

/// A collection whose payloads name their client and number: `{"c":c,"n":n,...}`.
pub fn numbered_body(c: usize, first: usize, count: usize) -> Vec<u8> {
    let data: Vec<String> = (first..first + count)
        .map(|n| {
            format!(r#"{{"c":{c},"n":{n},"msg":"payload {n} of client {c}","v":[1,2.5,"é"]}}"#)
        })
        .collect();
    format!(
        r#"{{"version":"1","token":"t","data":[{}]}}"#,
        data.join(",")
    )
    .into_bytes()
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

/// Polls `/metrics` until the durable spool and the queues are empty (every spooled request
/// stored and released).
pub fn wait_spool_empty(s: &Server, secs: u64) {
    wait_until(secs, "spool emptied into the store", || {
        let m = s.metrics();
        m.sum("corepost_spool_live_records") == 0 && m.sum("corepost_queue_payloads") == 0
    });
}

/// A small ext4 file system on a loop device, mounted in a temp dir (tests run as root);
/// unmounted and deleted on drop.
pub struct LoopFs {
    pub image: PathBuf,
    pub mount: PathBuf,
    _dir: tempfile::TempDir,
}

fn run_ok(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl LoopFs {
    /// A fresh file system of `mib` MiB, mounted with `opts` (`mount -o`).
    pub fn new(mib: u64, opts: &str) -> LoopFs {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let image = dir.path().join("fs.img");
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(mib << 20).unwrap();
        drop(f);
        run_ok("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        LoopFs::mount(dir, image, opts)
    }

    fn mount(dir: tempfile::TempDir, image: PathBuf, opts: &str) -> LoopFs {
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let o = format!("loop,{opts}");
        run_ok(
            "mount",
            &["-o", &o, image.to_str().unwrap(), mount.to_str().unwrap()],
        );
        LoopFs {
            image,
            mount,
            _dir: dir,
        }
    }

    /// What a power cut now would leave: a copy of the device's blocks as written so far
    /// (data only in the page cache is not there), mounted (its journal replayed).
    pub fn power_cut_copy(&self) -> LoopFs {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let image = dir.path().join("copy.img");
        std::fs::copy(&self.image, &image).unwrap();
        LoopFs::mount(dir, image, "rw")
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

impl Server {
    /// As [`Server::start`], listening on `addr` (a fixed port) instead of port 0.
    pub fn start_on(addr: SocketAddr, args: &[&str], env: &[(String, String)]) -> Server {
        let listen = addr.to_string();
        let mut all = vec!["--listen", listen.as_str()];
        all.extend_from_slice(args);
        Server::start(&all, env)
    }

    /// Waits for the process to exit (at most `secs`) without signalling it.
    pub fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "corepost did not exit within {secs} s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What an [`fs_server`] run keeps alive: its configuration file and, unless the test gave
/// one, its fs root.
pub struct FsFiles {
    pub root: PathBuf,
    _root: Option<tempfile::TempDir>,
    _conf: tempfile::NamedTempFile,
}

/// A temp file holding `text` (a configuration or tokens file; kept alive by the caller).
pub fn text_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

/// Starts `cores` shards with `config` (TOML text, may be empty) as the configuration file,
/// plus `args`; returns the file with the server.
pub fn config_server(
    cores: usize,
    config: &str,
    args: &[&str],
    env: &[(String, String)],
) -> (Server, tempfile::NamedTempFile) {
    let conf = text_file(config);
    let cores = cores.to_string();
    let mut all = vec![
        "--cores",
        cores.as_str(),
        "--config",
        conf.path().to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    (Server::start(&all, env), conf)
}

/// Starts `cores` shards with the fs sink under `root` (a temp dir when `None`), `config`
/// (TOML text, may be empty) as the configuration file, and `extra` flags.
pub fn fs_server(
    cores: usize,
    root: Option<&Path>,
    config: &str,
    extra: &[&str],
    env: &[(String, String)],
) -> (Server, FsFiles) {
    let tmp = root.is_none().then(|| tempfile::tempdir().unwrap());
    let root = root.map_or_else(
        || tmp.as_ref().unwrap().path().to_path_buf(),
        Path::to_path_buf,
    );
    let mut args = vec!["--sink", "fs", "--fs-root", root.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (s, conf) = config_server(cores, config, &args, env);
    let files = FsFiles {
        root,
        _root: tmp,
        _conf: conf,
    };
    (s, files)
}

/// A key prefix of its own for test `name` in this run (the pid tells runs apart).
pub fn prefix(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// A port that was free a moment ago (bound on 127.0.0.1 and released again).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Sockets in TIME_WAIT whose local port is `port` (from /proc/net/tcp and tcp6).
pub fn time_wait_on(port: u16) -> usize {
    let suffix = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| {
            t.lines()
                .skip(1)
                .filter(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() > 3 && f[1].ends_with(&suffix) && f[3] == "06"
                })
                .count()
        })
        .sum()
}

/// A payload of a numbered load: (client, number), as in `{"c":c,"n":n,...}`.
pub type Numbered = (u64, u64);

/// The payload `numbered_body(c, n, 1)` holds, as a JSON value.
pub fn numbered_payload(c: u64, n: u64) -> serde_json::Value {
    payloads_of(&numbered_body(c as usize, n as usize, 1)).remove(0)
}

/// What became of every payload a [`NumberedLoad`] sent, by payload.
#[derive(Debug, Default, Clone)]
pub struct NumberedCount {
    /// Payloads of requests answered 200.
    pub ok: std::collections::HashSet<Numbered>,
    /// Payloads of requests answered with another status, by payload.
    pub refused: HashMap<Numbered, u16>,
    /// Payloads of requests written (in full or in part) that got no answer.
    pub unanswered: std::collections::HashSet<Numbered>,
}

impl NumberedCount {
    /// Requests answered with `status` (other than 200); each request holds 10 payloads.
    pub fn requests_with(&self, status: u16) -> usize {
        self.refused.values().filter(|&&s| s == status).count() / 10
    }

    /// Sizes only, for assertion messages.
    pub fn summary(&self) -> String {
        let mut by_status: HashMap<u16, usize> = HashMap::new();
        for s in self.refused.values() {
            *by_status.entry(*s).or_default() += 1;
        }
        format!(
            "{} payloads answered 200, refused by status {by_status:?}, {} unanswered",
            self.ok.len(),
            self.unanswered.len()
        )
    }
}

/// A load thread's connection: kept, or opened again when there is none (`false`, after a
/// short pause, when the server refuses it).
fn reconnect(addr: SocketAddr, conn: &mut Option<(TcpStream, BufReader<TcpStream>)>) -> bool {
    if conn.is_some() {
        return true;
    }
    match TcpStream::connect(addr) {
        Ok(s) => {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let r = BufReader::new(s.try_clone().unwrap());
            *conn = Some((s, r));
            true
        }
        Err(_) => {
            std::thread::sleep(Duration::from_millis(20));
            false
        }
    }
}

/// Background load: `threads` clients POSTing over keep-alive connections (reconnecting after
/// errors) until stopped, where client `c` sends `numbered_body(c, n, 10)` with
/// `n` = 0, 10, 20, ... (never the same payload twice), so that each payload answered 200 can
/// be looked for by value in the store, and that it honours `Connection: close`.
pub struct NumberedLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<std::thread::JoinHandle<NumberedCount>>,
}

impl NumberedLoad {
    pub fn start(addr: SocketAddr, threads: usize) -> NumberedLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handles = (0..threads)
            .map(|c| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut out = NumberedCount::default();
                    let mut next = 0usize;
                    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if !reconnect(addr, &mut conn) {
                            continue;
                        }
                        let Some((w, r)) = conn.as_mut() else {
                            continue;
                        };
                        let first = next;
                        next += 10;
                        let ids = (first..first + 10).map(|n| (c as u64, n as u64));
                        let body = numbered_body(c, first, 10);
                        let req = raw_request("POST", "/v1/payloads", &[], &body);
                        let answer = if w.write_all(&req).is_ok() {
                            try_read_response(r)
                        } else {
                            None
                        };
                        // As HTTP clients do: after an answer saying `Connection: close`, the
                        // next request goes on a new connection.
                        if answer.as_ref().is_some_and(|a| {
                            a.header("connection")
                                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                        }) {
                            conn = None;
                        }
                        match answer {
                            Some(resp) if resp.status == 200 => out.ok.extend(ids),
                            Some(resp) => {
                                out.refused.extend(ids.map(|id| (id, resp.status)));
                                if resp.status == 503 {
                                    std::thread::sleep(Duration::from_millis(5));
                                }
                            }
                            None => {
                                out.unanswered.extend(ids);
                                conn = None;
                            }
                        }
                    }
                    out
                })
            })
            .collect();
        NumberedLoad { stop, handles }
    }

    pub fn stop(self) -> NumberedCount {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = NumberedCount::default();
        for h in self.handles {
            let c = h.join().unwrap();
            total.ok.extend(c.ok);
            total.refused.extend(c.refused);
            total.unanswered.extend(c.unanswered);
        }
        total
    }
}

/// Objects in the layout of the spill directory under `root` (the path below `root` is the
/// key), skipping in-progress dot-files.
pub fn spilled_objects(root: &Path) -> Vec<Object> {
    files_under(root)
        .into_iter()
        .filter(|f| !f.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|f| Object {
            // Spill files are named `{key}.spill`.
            key: f
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .trim_end_matches(".spill")
                .to_string(),
            content_type: None,
            content_encoding: None,
            data: std::fs::read(&f).unwrap(),
        })
        .collect()
}

/// How many copies of each numbered payload `objects` hold. Every payload stored must be one
/// that `numbered_body` makes, equal in value to it (so a payload cut short, mixed with
/// another or changed on the way fails here, naming its key).
pub fn numbered_copies<'a>(
    objects: impl IntoIterator<Item = &'a Object>,
) -> HashMap<Numbered, u32> {
    let mut copies: HashMap<Numbered, u32> = HashMap::new();
    for o in objects {
        for v in lines(o) {
            let (Some(c), Some(n)) = (v["c"].as_u64(), v["n"].as_u64()) else {
                panic!("{}: not a numbered payload: {v}", o.key);
            };
            assert_eq!(
                v,
                numbered_payload(c, n),
                "{}: payload {c}/{n} differs from the one sent",
                o.key
            );
            *copies.entry((c, n)).or_default() += 1;
        }
    }
    copies
}

/// Checks what the store holds against what a [`NumberedLoad`] was told: every payload
/// answered 200 is there (exactly once when `exactly_once`, else at least once); a payload
/// sent without an answer at most once (the server may have queued it before the connection
/// was cut); a payload answered with another status (refused before it was queued) not at all;
/// and nothing that was never sent.
pub fn check_numbered(copies: &HashMap<Numbered, u32>, count: &NumberedCount, exactly_once: bool) {
    let got = |id: &Numbered| copies.get(id).copied().unwrap_or(0);
    let mut lost: Vec<Numbered> = count.ok.iter().filter(|id| got(id) == 0).copied().collect();
    lost.sort();
    assert!(
        lost.is_empty(),
        "{} payloads answered 200 are not stored, e.g. {:?} ({})",
        lost.len(),
        &lost[..lost.len().min(10)],
        count.summary()
    );
    if exactly_once {
        let mut twice: Vec<(Numbered, u32)> = count
            .ok
            .iter()
            .filter(|id| got(id) > 1)
            .map(|id| (*id, got(id)))
            .collect();
        twice.sort();
        assert!(
            twice.is_empty(),
            "{} payloads answered 200 are stored more than once, e.g. {:?} ({})",
            twice.len(),
            &twice[..twice.len().min(10)],
            count.summary()
        );
    }
    let mut unanswered_twice: Vec<(Numbered, u32)> = count
        .unanswered
        .iter()
        .filter(|id| got(id) > 1)
        .map(|id| (*id, got(id)))
        .collect();
    unanswered_twice.sort();
    assert!(
        unanswered_twice.is_empty(),
        "payloads sent once without an answer are stored more than once: {:?}",
        &unanswered_twice[..unanswered_twice.len().min(10)]
    );
    let mut refused_stored: Vec<(Numbered, u16)> = count
        .refused
        .iter()
        .filter(|(id, _)| got(id) > 0)
        .map(|(id, s)| (*id, *s))
        .collect();
    refused_stored.sort();
    assert!(
        refused_stored.is_empty(),
        "payloads answered with an error (before being queued) are stored: {:?}",
        &refused_stored[..refused_stored.len().min(10)]
    );
    let mut unknown: Vec<Numbered> = copies
        .keys()
        .filter(|id| {
            !count.ok.contains(id)
                && !count.unanswered.contains(id)
                && !count.refused.contains_key(id)
        })
        .copied()
        .collect();
    unknown.sort();
    assert!(
        unknown.is_empty(),
        "stored payloads that were never sent: {:?}",
        &unknown[..unknown.len().min(10)]
    );
}

pub mod fault_proxy;

/// A request refused because the spool's disk failed (not full): `503` with `Retry-After`
/// and a "disk error" message, and `/readyz` `503` naming the I/O error.
pub fn assert_refused_for_a_disk_error(s: &Server, body: &[u8]) {
    let r = post(s.addr, body);
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(msg.contains("disk error"), "{msg}");
    let ready = request(s.addr, "GET", "/readyz", &[], b"");
    assert_eq!(ready.status, 503);
    let why = String::from_utf8_lossy(&ready.body).into_owned();
    assert!(
        why.contains("spool write failed") && why.contains("Input/output error"),
        "{why}"
    );
}

/// Clients posting until stopped or until the server goes away (killed), each on its own
/// keep-alive connection: client `c`'s request `n` is `make(c, n)`, the raw request and the
/// ids of its payloads. A `503` pauses 10 ms; any other status but `200` fails the test.
pub fn post_until_stopped<T: Clone + Send + 'static>(
    addr: SocketAddr,
    clients: u64,
    make: fn(u64, u64) -> (Vec<u8>, Vec<T>),
) -> Posting<T> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads = (0..clients)
        .map(|c| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut sent) = (Vec::new(), Vec::new());
                let (mut w, mut r) = connect(addr);
                for n in 0u64.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let (req, ids) = make(c, n);
                    sent.extend(ids.iter().cloned());
                    if w.write_all(&req).is_err() {
                        break;
                    }
                    match try_read_response(&mut r) {
                        Some(resp) if resp.status == 200 => ok.extend(ids),
                        Some(resp) if resp.status == 503 => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Some(resp) => panic!("status {}", resp.status),
                        None => break,
                    }
                }
                (ok, sent)
            })
        })
        .collect();
    Posting { stop, threads }
}

/// The clients of [`post_until_stopped`].
pub struct Posting<T> {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(Vec<T>, Vec<T>)>>,
}

impl<T> Posting<T> {
    /// Stops the clients; the ids of the payloads answered `200`, and of every payload
    /// written.
    pub fn stop(self) -> (Vec<T>, Vec<T>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut ok, mut sent) = (Vec::new(), Vec::new());
        for t in self.threads {
            let (o, s) = t.join().unwrap();
            ok.extend(o);
            sent.extend(s);
        }
        (ok, sent)
    }
}
