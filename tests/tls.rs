//! TLS on the public listener (`[tls]`), with real clients: curl posting over TLS into a real
//! Garage, client certificates (`tls.client_ca_file`), plain HTTP refused, SIGHUP swapping the
//! certificate without dropping open connections (and refusing a bad one), the handshake
//! timeout, and configuration errors that name the file. Certificates are made in each test
//! with the `openssl` command.

mod common;

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn prefix(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// A test CA and certificates it signed, as PEM files in a temp dir: `server-a` and
/// `server-b` (for 127.0.0.1 and localhost), `client` (client authentication).
struct Certs {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let ca = [
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ];
        openssl(
            d,
            &[
                &ca.concat()[..],
                &["-days", "2", "-subj", "/CN=corepost-test-ca"],
            ]
            .concat(),
        );
        for (name, ext) in [
            (
                "server-a",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            ),
            (
                "server-b",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            let (key, csr, pem, extf) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            std::fs::write(d.join(&extf), ext).unwrap();
            let subj = format!("/CN={name}");
            openssl(
                d,
                &[
                    &["req"][..],
                    &ec,
                    &["-keyout", &key, "-out", &csr, "-subj", &subj],
                ]
                .concat(),
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    "2",
                    "-extfile",
                    &extf,
                ],
            );
        }
        Certs { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn p(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }

    /// The DER of the (first) certificate in `file`.
    fn der(&self, file: &str) -> Vec<u8> {
        CertificateDer::from_pem_file(self.path(file))
            .unwrap()
            .to_vec()
    }

    /// A rustls client trusting the test CA, with the client certificate when asked.
    fn client(&self, with_client_cert: bool) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(self.path("ca.pem")).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut c = if with_client_cert {
            let chain = vec![CertificateDer::from_pem_file(self.path("client.pem")).unwrap()];
            let key = PrivateKeyDer::from_pem_file(self.path("client.key")).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        } else {
            b.with_no_client_auth()
        };
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    }
}

/// One TLS connection of the rustls test client, handshake done.
struct TlsConn(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

impl TlsConn {
    fn open(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> std::io::Result<TlsConn> {
        let sock = TcpStream::connect(addr)?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let name = ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(cfg, name).unwrap();
        let mut s = rustls::StreamOwned::new(conn, sock);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(TlsConn(s))
    }

    /// The server's certificate, as DER.
    fn peer_cert(&self) -> Vec<u8> {
        self.0.conn.peer_certificates().unwrap()[0].to_vec()
    }

    fn post(&mut self, body: &[u8]) -> Option<Resp> {
        let req = raw_request("POST", "/v1/payloads", &[], body);
        self.0.write_all(&req).ok()?;
        self.0.flush().ok()?;
        try_read_response(&mut BufReader::new(&mut self.0))
    }
}

/// `curl` over TLS trusting the test CA: (exit status, HTTP status or 0, body).
fn curl(certs: &Certs, addr: SocketAddr, path: &str, extra: &[&str]) -> (i32, u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", &certs.p("ca.pem")])
        .args(["-w", "\n%{http_code}"])
        .args(extra)
        .arg(format!("https://localhost:{}{path}", addr.port()))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        out.status.code().unwrap_or(-1),
        code.trim().parse().unwrap_or(0),
        body.to_string(),
    )
}

fn curl_post(certs: &Certs, addr: SocketAddr, extra: &[&str]) -> (i32, u16, String) {
    let body = repo().join("benches/workload/body10.json");
    let data = format!("@{}", body.display());
    let args = [
        &[
            "-XPOST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &data,
        ][..],
        extra,
    ]
    .concat();
    curl(certs, addr, "/v1/payloads", &args)
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

/// The payloads stored under `prefix`, as sorted JSON texts.
fn stored(prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = garage()
        .objects(prefix)
        .iter()
        .map(|o| {
            serde_json::from_slice::<serde_json::Value>(&o.data)
                .unwrap()
                .to_string()
        })
        .collect();
    out.sort();
    out
}

fn body10_payloads() -> Vec<String> {
    let mut v: Vec<String> = payloads_of(BODY10).iter().map(|p| p.to_string()).collect();
    v.sort();
    v
}

/// What a plain-HTTP client gets from the TLS port: the bytes before the connection closed.
fn plain_http_answer(addr: SocketAddr) -> Vec<u8> {
    let (mut s, _) = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(&raw_request("POST", "/v1/payloads", &[], BODY10));
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("plain HTTP on the TLS port: the connection was not closed: {e}"),
    }
    got
}

#[test]
fn curl_posts_over_tls_and_the_payloads_land_in_garage() {
    let certs = Certs::new();
    let p = prefix("tls-curl");
    let conf = config_file("[server]\nack = \"uploaded\"\n");
    let (cert, key) = (certs.p("server-a.pem"), certs.p("server-a.key"));
    let s = Server::start(
        &[
            "--cores",
            "2",
            "--sink",
            "s3",
            "--config",
            conf.path().to_str().unwrap(),
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        &garage().server_env(&p),
    );
    // ack = "uploaded": a 200 means stored.
    let (rc, code, body) = curl_post(&certs, s.addr, &[]);
    assert_eq!((rc, code), (0, 200), "curl over TLS: {body}");
    assert_eq!(body, r#"{"accepted":10}"#);
    assert_eq!(stored(&p), body10_payloads());
    // ALPN: HTTP/1.1 is offered and chosen.
    let conn = TlsConn::open(s.addr, certs.client(false)).unwrap();
    assert_eq!(conn.0.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(conn.peer_cert(), certs.der("server-a.pem"));
    // Without an admin listener, the operational routes are served over TLS too.
    let (rc, code, metrics) = curl(&certs, s.addr, "/metrics", &[]);
    assert_eq!((rc, code), (0, 200));
    assert!(metrics.contains("corepost_payloads_accepted_total"));
    // Plain HTTP to the TLS port: the connection is closed without a byte, nothing stored.
    assert_eq!(plain_http_answer(s.addr), b"", "plain HTTP got an answer");
    let (_, _, metrics) = curl(&certs, s.addr, "/metrics", &[]);
    let m = Metrics::parse(&metrics);
    assert_eq!(m.sum("corepost_payloads_accepted_total"), 10);
    assert_eq!(m.sum("corepost_tls_handshake_failures_total"), 1);
    // curl without the CA does not trust the server.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "/dev/null"])
        .arg(format!("https://localhost:{}/healthz", s.addr.port()))
        .output()
        .unwrap();
    assert!(!out.status.success(), "curl trusted an unknown CA");
    assert_eq!(stored(&p).len(), 10);
    assert!(s.stop(20).success());
}

#[test]
fn with_client_ca_file_a_client_certificate_is_required() {
    let certs = Certs::new();
    let p = prefix("tls-mtls");
    let conf = config_file(&format!(
        "[server]\nack = \"uploaded\"\n[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n",
        certs.p("server-a.pem"),
        certs.p("server-a.key"),
        certs.p("ca.pem")
    ));
    let s = Server::start(
        &["--sink", "s3", "--config", conf.path().to_str().unwrap()],
        &garage().server_env(&p),
    );
    // No client certificate: the handshake fails, no HTTP status, nothing stored.
    let (rc, code, body) = curl_post(&certs, s.addr, &[]);
    assert!(
        rc != 0 && code == 0,
        "without a client certificate: curl {rc}, HTTP {code} {body}"
    );
    // The server's own certificate is no client certificate either.
    let (rc, code, _) = curl_post(
        &certs,
        s.addr,
        &[
            "--cert",
            &certs.p("server-a.pem"),
            "--key",
            &certs.p("server-a.key"),
        ],
    );
    assert!(
        rc != 0 && code == 0,
        "a server certificate was accepted as a client's"
    );
    assert_eq!(stored(&p), Vec::<String>::new());
    // With one: served and stored.
    let (rc, code, body) = curl_post(
        &certs,
        s.addr,
        &[
            "--cert",
            &certs.p("client.pem"),
            "--key",
            &certs.p("client.key"),
        ],
    );
    assert_eq!((rc, code), (0, 200), "with a client certificate: {body}");
    assert_eq!(stored(&p), body10_payloads());
    // The rustls client: refused without, served with.
    let refused = TlsConn::open(s.addr, certs.client(false)).and_then(|mut c| {
        c.post(BODY10)
            .ok_or_else(|| std::io::Error::other("no answer"))
    });
    assert!(refused.is_err(), "served without a client certificate");
    let mut c = TlsConn::open(s.addr, certs.client(true)).unwrap();
    assert_eq!(c.post(BODY10).unwrap().status, 200);
    assert!(s.stop(20).success());
}

/// Replaces `to` with `from` by rename, as a deploy tool would.
fn install(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[test]
fn sighup_swaps_the_certificate_keeps_open_connections_and_refuses_a_bad_one() {
    let certs = Certs::new();
    let live = tempfile::tempdir().unwrap();
    let (cert, key) = (live.path().join("cert.pem"), live.path().join("key.pem"));
    install(&certs.path("server-a.pem"), &cert);
    install(&certs.path("server-a.key"), &key);
    let log = live.path().join("stderr.log");
    let out = tempfile::tempdir().unwrap();
    let wrapper = format!("exec \"$@\" 2>>'{}'", log.display());
    let s = Server::start_under(
        &["sh", "-c", &wrapper, "sh"],
        &[
            "--sink",
            "fs",
            "--fs-root",
            out.path().to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let client = certs.client(false);
    let mut old = TlsConn::open(s.addr, client.clone()).unwrap();
    assert_eq!(old.peer_cert(), certs.der("server-a.pem"));
    assert_eq!(old.post(BODY10).unwrap().status, 200);

    // A new certificate and key, then SIGHUP: new connections get it.
    install(&certs.path("server-b.pem"), &cert);
    install(&certs.path("server-b.key"), &key);
    s.signal("HUP");
    wait_until(10, "new connections see the new certificate", || {
        TlsConn::open(s.addr, client.clone()).unwrap().peer_cert() == certs.der("server-b.pem")
    });
    // The keep-alive connection opened before the reload still works.
    assert_eq!(
        old.post(BODY10)
            .expect("the open connection survives")
            .status,
        200
    );
    assert_eq!(old.peer_cert(), certs.der("server-a.pem"));

    // A bad one: a certificate whose key is not the key file's. Refused, logged, old kept.
    install(&certs.path("server-a.pem"), &cert);
    s.signal("HUP");
    wait_until(10, "the refusal in the log", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("reload refused")
    });
    let mut c = TlsConn::open(s.addr, client.clone()).unwrap();
    assert_eq!(
        c.peer_cert(),
        certs.der("server-b.pem"),
        "the bad certificate was taken"
    );
    assert_eq!(c.post(BODY10).unwrap().status, 200);
    // And a key file that is not PEM at all.
    install(&certs.path("server-b.pem"), &cert);
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nnot base64 !!\n").unwrap();
    s.signal("HUP");
    wait_until(10, "the second refusal in the log", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("reload refused")
            .count()
            == 2
    });
    let c = TlsConn::open(s.addr, client.clone()).unwrap();
    assert_eq!(c.peer_cert(), certs.der("server-b.pem"));
    assert_eq!(old.post(BODY10).unwrap().status, 200);

    // The log names the files, never a key's contents.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&key.display().to_string()), "{text}");
    for k in ["server-a.key", "server-b.key"] {
        let pem = std::fs::read_to_string(certs.path(k)).unwrap();
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!text.contains(line), "key material in the log");
        }
    }
    assert!(!text.contains("not base64"), "key file contents in the log");
    assert!(s.stop(20).success());
}

#[test]
fn a_stalled_handshake_is_closed_after_the_timeout_and_admin_stays_plain() {
    let certs = Certs::new();
    let out = tempfile::tempdir().unwrap();
    let conf = config_file(&format!(
        "[server]\nadmin_listen = \"127.0.0.1:0\"\n[tls]\ncert_file = {:?}\nkey_file = {:?}\nhandshake_timeout_ms = 300\n",
        certs.p("server-a.pem"),
        certs.p("server-a.key"),
    ));
    let s = Server::start(
        &[
            "--sink",
            "fs",
            "--fs-root",
            out.path().to_str().unwrap(),
            "--config",
            conf.path().to_str().unwrap(),
        ],
        &[],
    );
    let admin: SocketAddr = s
        .ready_line
        .split(", admin on ")
        .nth(1)
        .and_then(|a| a.trim().parse().ok())
        .unwrap();
    // One client says nothing; another sends the start of a TLS record and stalls.
    let (mut silent, _) = connect(s.addr);
    let (mut partial, _) = connect(s.addr);
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    // Meanwhile other clients are served.
    let mut c = TlsConn::open(s.addr, certs.client(false)).unwrap();
    assert_eq!(c.post(BODY10).unwrap().status, 200);
    for (what, sock) in [("silent", &mut silent), ("partial hello", &mut partial)] {
        // Far longer than the timeout: a server without one leaves the read blocked.
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        match sock.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("{what}: got {n} bytes instead of a close"),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{what}: the stalled handshake was not closed: {e}"),
        }
    }
    // The admin listener speaks plain HTTP and counts the closed handshakes.
    let m = request(admin, "GET", "/metrics", &[], b"");
    assert_eq!(m.status, 200);
    let m = Metrics::parse(&String::from_utf8_lossy(&m.body));
    assert_eq!(m.sum("corepost_tls_handshake_failures_total"), 2);
    assert_eq!(m.sum("corepost_payloads_accepted_total"), 10);
    assert!(s.stop(20).success());
}

#[test]
fn tls_configuration_errors_name_the_file_and_never_print_the_key() {
    let certs = Certs::new();
    let (cert, key) = (certs.p("server-a.pem"), certs.p("server-a.key"));
    let missing = certs.p("nope.pem");
    let garbage = certs.path("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let garbage = garbage.display().to_string();
    let other_key = certs.p("server-b.key");
    for (args, want) in [
        (
            vec!["--tls-cert", &missing, "--tls-key", &key],
            format!("tls.cert_file: {missing}: cannot read"),
        ),
        (
            vec!["--tls-cert", &garbage, "--tls-key", &key],
            format!("tls.cert_file: {garbage}: not valid PEM"),
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &cert],
            format!("tls.key_file: {cert}: no private key"),
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &other_key],
            format!(
                "tls.key_file: {other_key} does not match the certificate in tls.cert_file {cert}"
            ),
        ),
        (
            vec!["--tls-cert", &cert],
            "tls.key_file: required with [tls]".to_string(),
        ),
    ] {
        let (st, err) = serve_refused(&[&["--listen", "127.0.0.1:0"][..], &args].concat(), 10);
        assert_eq!(st.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(&want), "{args:?}: wanted {want:?} in {err:?}");
    }
    // check-config reports the same, and prints only file names for a good configuration.
    let out = Command::new(env!("CARGO_BIN_EXE_corepost"))
        .args(["check-config", "--tls-cert", &cert, "--tls-key", &other_key])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match"));
    let out = Command::new(env!("CARGO_BIN_EXE_corepost"))
        .args(["check-config", "--tls-cert", &cert, "--tls-key", &key])
        .env("COREPOST_TLS_CLIENT_CA_FILE", certs.p("ca.pem"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("key_file = {key:?}")), "{text}");
    assert!(
        text.contains(&format!("client_ca_file = {:?}", certs.p("ca.pem"))),
        "{text}"
    );
    let pem = std::fs::read_to_string(&key).unwrap();
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!text.contains(line), "key material in check-config");
    }
}
