//! Restarts and second instances: a restart on the same port right after traffic starts at
//! once, a second server on a live server's port is refused.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
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
