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
    assert!(s.stop(30).success());
}
