//! The admin listener: with `server.admin_listen` set, `/metrics`, `/healthz` and `/readyz`
//! are served there and not on the public listener, which takes payloads only.

mod common;

use common::*;

#[test]
fn operational_routes_move_to_the_admin_listener() {
    let (s, _files) = fs_server(
        2,
        None,
        "[server]\nadmin_listen = \"127.0.0.1:0\"\n",
        &[],
        &[],
    );
    let admin: std::net::SocketAddr = s
        .ready_line
        .split(", admin on ")
        .nth(1)
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("no admin address in {:?}", s.ready_line));
    // Public: payloads yes, operational routes no.
    assert_eq!(post(s.addr, BODY10).status, 200);
    for path in ["/metrics", "/healthz", "/readyz"] {
        let r = request(s.addr, "GET", path, &[], b"");
        assert_eq!(r.status, 404, "{path} on the public listener");
    }
    // Admin: operational routes yes (metrics of every shard), payloads no.
    wait_until(30, "ready on the admin listener", || {
        request(admin, "GET", "/readyz", &[], b"").status == 200
    });
    assert_eq!(request(admin, "GET", "/healthz", &[], b"").status, 200);
    let m = request(admin, "GET", "/metrics", &[], b"");
    assert_eq!(m.status, 200);
    let m = Metrics::parse(&String::from_utf8_lossy(&m.body));
    assert_eq!(m.sum("corepost_payloads_accepted_total"), 10);
    assert_eq!(
        request(admin, "POST", "/v1/payloads", &[], BODY10).status,
        404,
        "no payloads on the admin listener"
    );
    // Without the setting, the public listener serves them as before.
    let (plain, _files) = fs_server(1, None, "", &[], &[]);
    assert_eq!(request(plain.addr, "GET", "/metrics", &[], b"").status, 200);
}
