//! The real `corepost serve` on port 0: started, signalled, stopped, killed on drop; its
//! configuration files; a start it refuses; its `/metrics`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{post, request, wait_until};

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

/// Polls `/metrics` until the durable spool and the queues are empty (every spooled request
/// stored and released).
pub fn wait_spool_empty(s: &Server, secs: u64) {
    wait_until(secs, "spool emptied into the store", || {
        let m = s.metrics();
        m.sum("corepost_spool_live_records") == 0 && m.sum("corepost_queue_payloads") == 0
    });
}

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
