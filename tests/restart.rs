//! Restarts and second instances: a restart on the same port right after traffic starts at
//! once; a second server on a live server's port, or on one of its data directories (spool,
//! spill directory, fs sink root), is refused until the first has gone, however it ended;
//! overlapping data directories are refused.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// `127.0.0.1:{free port}`.
fn fixed_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Opens `conns` keep-alive connections and sends `requests` POSTs on each, leaving them open.
fn keep_alive_traffic(addr: SocketAddr, conns: usize, requests: usize) -> Vec<std::net::TcpStream> {
    let mut open = Vec::new();
    for _ in 0..conns {
        let (mut s, mut r) = connect(addr);
        for _ in 0..requests {
            s.write_all(&raw_request("POST", "/v1/payloads", &[], BODY10))
                .unwrap();
            assert_eq!(read_response(&mut r).status, 200);
        }
        open.push(s);
    }
    open
}

#[test]
fn a_restart_on_the_same_port_right_after_traffic_starts_at_once() {
    let addr = fixed_addr();
    let args = ["--cores", "2", "--sink", "discard"];
    let mut s = Server::start_on(addr, &args, &[]);
    let clients = keep_alive_traffic(addr, 50, 4);
    // SIGTERM while the clients hold their keep-alive connections: the server closes them
    // first, so their TIME_WAIT is on the server's side of the port.
    s.signal("TERM");
    for mut c in clients {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
    }
    assert!(s.wait_exit(30).success());
    assert!(
        time_wait_on(addr.port()) > 0,
        "no TIME_WAIT socket on port {}: the test would prove nothing",
        addr.port()
    );
    // The TIME_WAIT sockets stay for a minute; the new server must not wait for them.
    let again = Server::start_on(addr, &args, &[]);
    assert_eq!(again.addr, addr);
    assert!(again.ready_line.contains("corepost ready"));
    assert_eq!(request(addr, "GET", "/readyz", &[], b"").status, 200);
    assert_eq!(post(addr, BODY10).status, 200);
    assert!(again.stop(30).success());
}

#[test]
fn a_second_server_on_a_live_servers_port_is_refused_even_after_traffic() {
    let addr = fixed_addr();
    let first = Server::start_on(addr, &["--cores", "1", "--sink", "discard"], &[]);
    // Connections the server closed (`Connection: close`) leave TIME_WAIT sockets on its
    // port; the start-up check must still see the live listener.
    for _ in 0..20 {
        let r = request(
            addr,
            "POST",
            "/v1/payloads",
            &[("Connection", "close")],
            BODY10,
        );
        assert_eq!(r.status, 200);
    }
    let spill = tempfile::tempdir().unwrap();
    let listen = addr.to_string();
    let (status, err) = serve_refused(
        &[
            "--cores",
            "1",
            "--sink",
            "discard",
            "--listen",
            &listen,
            "--spill-dir",
            spill.path().to_str().unwrap(),
        ],
        20,
    );
    assert!(!status.success(), "{status:?}");
    assert!(
        err.contains(&format!("cannot listen on {addr}")) && err.contains("in use"),
        "{err}"
    );
    // The first server still has the port and answers.
    assert_eq!(post(addr, BODY10).status, 200);
    assert!(first.stop(30).success());
}

/// A directory on the disk the build is on (the spool's direct I/O does not work on tmpfs).
fn disk_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// `ack = "durable"` with small spool segments (quick to create).
const DURABLE: &str = "[server]\nack = \"durable\"\nmax_body_bytes = 65536\n[spool]\nsegment_bytes = 131072\nmax_bytes = 262144\n";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The pid recorded in `dir`'s lock file.
fn lock_holder(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(".corepost.lock")).unwrap()
}

/// `serve --listen 127.0.0.1:0 args` must refuse to start because `holder` uses `dir` (`key`).
fn assert_locked_out(args: &[&str], key: &str, dir: &Path, holder: &Server) {
    let mut all = vec!["--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let (status, err) = serve_refused(&all, 15);
    assert!(!status.success(), "{status:?}");
    let want = format!(
        "{key} {} is in use by another corepost process (pid {})",
        dir.display(),
        holder.child.id()
    );
    assert!(err.contains(&want), "wanted {want:?} in:\n{err}");
}

#[test]
fn a_second_server_on_the_same_spool_dir_is_refused_until_the_first_is_killed() {
    let spool = disk_dir();
    let c = text_file(DURABLE);
    let (first_spill, second_spill) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = |spill: &Path| {
        vec![
            "--cores".to_string(),
            "1".into(),
            "--sink".into(),
            "discard".into(),
            "--config".into(),
            s(c.path()).into(),
            "--spool-dir".into(),
            s(spool.path()).into(),
            "--spill-dir".into(),
            s(spill).into(),
        ]
    };
    let first_args = args(first_spill.path());
    let first_args: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let mut first = Server::start(&first_args, &[]);
    assert_eq!(post(first.addr, BODY10).status, 200);

    // Different port, different spill directory, same spool: refused.
    let second_args = args(second_spill.path());
    let second_args: Vec<&str> = second_args.iter().map(String::as_str).collect();
    assert_locked_out(&second_args, "spool.dir", spool.path(), &first);
    assert_eq!(lock_holder(spool.path()), format!("{}\n", first.child.id()));

    // The kernel releases the lock of a process killed outright.
    first.signal("KILL");
    assert!(!first.wait_exit(30).success());
    let second = Server::start(&second_args, &[]);
    assert_eq!(
        lock_holder(spool.path()),
        format!("{}\n", second.child.id())
    );
    assert_eq!(post(second.addr, BODY10).status, 200);
    assert!(second.stop(30).success());
}

#[test]
fn a_second_server_on_the_same_spill_dir_is_refused_until_the_first_stops() {
    let spill = tempfile::tempdir().unwrap();
    let args = [
        "--cores",
        "1",
        "--sink",
        "discard",
        "--spill-dir",
        s(spill.path()),
    ];
    let first = Server::start(&args, &[]);
    assert_eq!(post(first.addr, BODY10).status, 200);
    assert_locked_out(&args, "upload.spill_dir", spill.path(), &first);
    assert!(first.stop(30).success());

    let second = Server::start(&args, &[]);
    assert_eq!(post(second.addr, BODY10).status, 200);
    second.wait_drained(Duration::from_secs(30));
    // The lock file is not a spilled payload: the spill replay left it alone.
    assert_eq!(
        lock_holder(spill.path()),
        format!("{}\n", second.child.id())
    );
    assert!(second.stop(30).success());
}

#[test]
fn a_second_server_on_the_same_fs_root_is_refused_until_the_first_is_killed() {
    let root = tempfile::tempdir().unwrap();
    let (first_spill, second_spill) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = |spill: &Path| {
        vec![
            "--cores".to_string(),
            "1".into(),
            "--sink".into(),
            "fs".into(),
            "--fs-root".into(),
            s(root.path()).into(),
            "--spill-dir".into(),
            s(spill).into(),
        ]
    };
    let first_args = args(first_spill.path());
    let first_args: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let mut first = Server::start(&first_args, &[]);
    assert_eq!(post(first.addr, BODY10).status, 200);
    first.wait_drained(Duration::from_secs(30));

    let second_args = args(second_spill.path());
    let second_args: Vec<&str> = second_args.iter().map(String::as_str).collect();
    assert_locked_out(&second_args, "sink.fs.root", root.path(), &first);

    first.signal("KILL");
    assert!(!first.wait_exit(30).success());
    let second = Server::start(&second_args, &[]);
    assert_eq!(request(second.addr, "GET", "/readyz", &[], b"").status, 200);
    assert_eq!(post(second.addr, BODY10).status, 200);
    second.wait_drained(Duration::from_secs(30));
    assert_eq!(files_under(&root.path().join("corepost")).len(), 20);
    assert_eq!(lock_holder(root.path()), format!("{}\n", second.child.id()));
    assert!(second.stop(30).success());
}

#[test]
fn overlapping_data_directories_are_refused_before_anything_starts() {
    let d = tempfile::tempdir().unwrap();
    let spill = d.path().join("spill");
    // The fs root inside the spill directory (spelled with `..`): the spill replay would
    // upload (and delete) every stored object. `check-config` reports it.
    let objects = d.path().join("other/../spill/objects");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corepost"))
        .args([
            "check-config",
            "--spill-dir",
            s(&spill),
            "--fs-root",
            s(&objects),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("sink.fs.root") && err.contains("upload.spill_dir"),
        "{err}"
    );
    // The spool and the spill directory in one directory: `serve` refuses too, with the
    // configuration's exit code.
    let c = text_file(DURABLE);
    let (status, err) = serve_refused(
        &[
            "--listen",
            "127.0.0.1:0",
            "--sink",
            "discard",
            "--config",
            s(c.path()),
            "--spool-dir",
            s(&spill),
            "--spill-dir",
            &format!("{}/", spill.display()),
        ],
        15,
    );
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("spool.dir") && err.contains("upload.spill_dir"),
        "{err}"
    );
    // Nothing was created: the configuration was refused before any directory was touched.
    assert!(!spill.exists());
}

/// `systemctl reload` sends SIGHUP: it re-reads what can be reloaded and never stops the
/// server (SIGHUP's default action would end it at once, without the drain).
#[test]
fn sighup_reloads_and_the_server_keeps_serving() {
    let dir = disk_dir();
    let root = dir.path().join("out");
    let server = Server::start(&["--sink", "fs", "--fs-root", s(&root)], &[]);
    assert_eq!(post(server.addr, br#"{"data":[1]}"#).status, 200);
    for _ in 0..3 {
        server.signal("HUP");
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(post(server.addr, br#"{"data":[2]}"#).status, 200);
    }
    assert!(server.stop(10).success());
}
