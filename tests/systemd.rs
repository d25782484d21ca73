//! The packaged unit is `Type=notify`: the real binary, started with `NOTIFY_SOCKET` as systemd
//! starts it, must send `READY=1` once it listens (after its ready line) and `STOPPING=1` when
//! a SIGTERM starts the drain.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

#[test]
fn serve_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let rx = UnixDatagram::bind(&path).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let s = Server::start(
        &["--sink", "discard"],
        &[("NOTIFY_SOCKET".into(), path.display().to_string())],
    );
    let mut buf = [0u8; 256];
    let n = rx.recv(&mut buf).expect("READY=1 within 30 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means serving: the listeners were bound before the notification.
    assert_eq!(post(s.addr, BODY10).status, 200);
    s.signal("TERM");
    let n = rx.recv(&mut buf).expect("STOPPING=1 within 30 s");
    assert_eq!(&buf[..n], b"STOPPING=1");
    // The drain ends by itself (no second signal) and the process exits 0.
    let mut s = s;
    wait_until(30, "exit after the drain", || {
        s.child.try_wait().unwrap().is_some()
    });
    assert!(s.child.wait().unwrap().success());
}

/// The unit's `ExecStart=` with its `${VAR}`s set from its `Environment=` lines, and the
/// packaged paths mapped to their files in this repository.
fn unit_exec_start() -> Vec<String> {
    let unit = std::fs::read_to_string(repo().join("packaging/systemd/corepost.service")).unwrap();
    let mut env = std::collections::HashMap::new();
    for line in unit.lines() {
        if let Some(kv) = line.strip_prefix("Environment=") {
            let (k, v) = kv.split_once('=').unwrap();
            env.insert(k.to_string(), v.to_string());
        }
    }
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart= line");
    let repo = repo();
    let map = |p: &str| -> String {
        for (installed, source) in [
            (
                "/etc/corepost/corepost.toml",
                "packaging/corepost.toml".to_string(),
            ),
            ("/usr/share/corepost/tuning", "tuning".to_string()),
        ] {
            if let Some(rest) = p.strip_prefix(installed) {
                return format!("{}{rest}", repo.join(source).display());
            }
        }
        p.to_string()
    };
    exec.split_whitespace()
        .map(
            |w| match w.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
                Some(var) => map(&env[var]),
                None => map(w),
            },
        )
        .collect()
}

#[test]
fn the_units_command_line_and_the_packaged_configuration_are_accepted() {
    let args = unit_exec_start();
    assert_eq!(args[0], "/usr/bin/corepost");
    assert_eq!(args[1], "serve");
    // The same flags through check-config, with the store's settings from the environment
    // as /etc/corepost/env gives them; the data directories are the packaged ones.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corepost"))
        .arg("check-config")
        .args(&args[2..])
        .env("S3_BUCKET", "corepost")
        .env("AWS_ACCESS_KEY_ID", "id")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg: corepost::config::Config = toml::from_str(&stdout).unwrap();
    assert_eq!(cfg.server.ack, corepost::config::Ack::Durable);
    assert_eq!(cfg.sink.kind, corepost::config::SinkKind::S3);
    assert_eq!(cfg.batch.compression, corepost::config::Compression::Zstd);
    for (key, dir) in cfg.data_dirs() {
        assert!(
            dir.starts_with("/var/lib/corepost/"),
            "{key} = {dir}: outside the unit's ReadWritePaths"
        );
    }
    assert!(!stdout.contains("\"secret\""), "the secret is redacted");
}
