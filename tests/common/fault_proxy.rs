//! A fault-injecting HTTP/1.1 proxy to put between corepost and the real Garage: it relays
//! request by request (one upstream connection per client connection, keep-alive,
//! `Content-Length` request bodies as rust-s3 sends them) and, per [`Rule`], answers chosen
//! requests with a fault instead: an error status (`500`, `503 SlowDown`, `429`), a `200`
//! whose body is an S3 `<Error>` document, a connection reset in the middle of the request
//! body or of the store's answer, an answer held back longer than the client waits, or the
//! request relayed with one byte of its body changed (corruption on the wire).
//!
//! Std threads and blocking sockets only. Every request is logged ([`FaultProxy::log`]) with
//! the fault it got, so tests can check what the product did after a fault.
//!
//! This file holds the rules and the log; [`relay`] the relaying of one connection.

mod relay;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relay::serve;

/// What the proxy does to a request a rule picked.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Reads the whole request, forwards nothing, answers this status and XML body (the
    /// connection stays open for the next request).
    Status { status: u16, body: String },
    /// Reads part of the request body, forwards nothing, resets the connection (RST).
    ResetMidRequest,
    /// Forwards the request (the store applies it), then sends the client only the first half
    /// of the store's answer and resets the connection: the answer is lost.
    CutResponse,
    /// Forwards the request (the store applies it), then holds the answer this long before
    /// relaying it (longer than the client's request timeout: the client gives up).
    Delay(Duration),
    /// Forwards the request with one bit of its body's middle byte flipped, headers as
    /// sent (a bit flipped on the wire): a store that checks the body against its checksum
    /// headers refuses it.
    FlipBodyByte,
}

fn s3_error(code: &str, message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>fault-proxy</RequestId><HostId>fault-proxy</HostId></Error>"
    )
}

impl Fault {
    /// `500 InternalError`.
    pub fn internal_error() -> Fault {
        Fault::Status {
            status: 500,
            body: s3_error(
                "InternalError",
                "We encountered an internal error. Please try again.",
            ),
        }
    }

    /// `503 SlowDown`, S3's throttling answer.
    pub fn slow_down() -> Fault {
        Fault::Status {
            status: 503,
            body: s3_error("SlowDown", "Please reduce your request rate."),
        }
    }

    /// `429 Too Many Requests` (what some S3-compatible stores throttle with).
    pub fn too_many_requests() -> Fault {
        Fault::Status {
            status: 429,
            body: s3_error("TooManyRequests", "Please reduce your request rate."),
        }
    }

    /// `200 OK` carrying an `<Error>` document: how S3 reports a CompleteMultipartUpload that
    /// failed after the answer had started.
    pub fn ok_with_error_body() -> Fault {
        Fault::Status {
            status: 200,
            body: s3_error(
                "InternalError",
                "We encountered an internal error. Please try again.",
            ),
        }
    }

    /// A short name for logs and assertions.
    pub fn name(&self) -> String {
        match self {
            Fault::Status { status, .. } => format!("status {status}"),
            Fault::ResetMidRequest => "reset mid-request".into(),
            Fault::CutResponse => "cut response".into(),
            Fault::Delay(d) => format!("delay {d:?}"),
            Fault::FlipBodyByte => "flipped body byte".into(),
        }
    }
}

/// Which of the requests a rule matches it applies to, counting from 1.
#[derive(Debug, Clone, Copy)]
pub enum When {
    /// The first `k`.
    First(u64),
    /// The `n`th, `2n`th, ...
    EveryNth(u64),
    /// The first `k` of each path (object key), whatever the query: e.g. every part of a
    /// multipart upload, and its retries, share the object's path.
    FirstPerPath(u64),
}

/// One fault rule: which requests (method, path, query) and which of them get the fault.
#[derive(Debug, Clone)]
pub struct Rule {
    method: Option<String>,
    path_has: Option<String>,
    query_has: Vec<String>,
    query_lacks: Vec<String>,
    when: When,
    fault: Fault,
    matched: u64,
    fired: u64,
    per_path: std::collections::HashMap<String, u64>,
}

impl Rule {
    /// A rule giving `fault` to requests picked by `when`; by default it matches every request.
    pub fn new(fault: Fault, when: When) -> Rule {
        Rule {
            method: None,
            path_has: None,
            query_has: Vec::new(),
            query_lacks: Vec::new(),
            when,
            fault,
            matched: 0,
            fired: 0,
            per_path: std::collections::HashMap::new(),
        }
    }

    /// Only requests with this method.
    pub fn method(mut self, m: &str) -> Rule {
        self.method = Some(m.to_string());
        self
    }

    /// Only requests whose path contains `s`.
    pub fn path_has(mut self, s: &str) -> Rule {
        self.path_has = Some(s.to_string());
        self
    }

    /// Only requests whose query string contains `s` (e.g. `uploadId=`).
    pub fn query_has(mut self, s: &str) -> Rule {
        self.query_has.push(s.to_string());
        self
    }

    /// Only requests whose query string does not contain `s`.
    pub fn query_lacks(mut self, s: &str) -> Rule {
        self.query_lacks.push(s.to_string());
        self
    }

    /// Single-object PUTs (not multipart parts).
    pub fn object_puts(fault: Fault, when: When) -> Rule {
        Rule::new(fault, when).method("PUT").query_lacks("uploadId")
    }

    /// Multipart part uploads (`PUT ?partNumber=&uploadId=`).
    pub fn part_puts(fault: Fault, when: When) -> Rule {
        Rule::new(fault, when).method("PUT").query_has("uploadId=")
    }

    /// CompleteMultipartUpload (`POST ?uploadId=`).
    pub fn completes(fault: Fault, when: When) -> Rule {
        Rule::new(fault, when).method("POST").query_has("uploadId=")
    }

    fn matches(&self, method: &str, path: &str, query: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
            && self.path_has.as_deref().is_none_or(|p| path.contains(p))
            && self.query_has.iter().all(|q| query.contains(q.as_str()))
            && !self.query_lacks.iter().any(|q| query.contains(q.as_str()))
    }

    /// Counts a matching request; whether it gets the fault.
    fn hit(&mut self, path: &str) -> bool {
        self.matched += 1;
        let seen = self.per_path.entry(path.to_string()).or_default();
        *seen += 1;
        let fire = match self.when {
            When::First(k) => self.matched <= k,
            When::EveryNth(n) => n > 0 && self.matched.is_multiple_of(n),
            When::FirstPerPath(k) => *seen <= k,
        };
        if fire {
            self.fired += 1;
        }
        fire
    }
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When its head had been read.
    pub at: Instant,
    /// Method.
    pub method: String,
    /// Path (`/bucket/key`), without the query.
    pub path: String,
    /// Query string, without the `?`.
    pub query: String,
    /// The fault it got (`None`: relayed as is).
    pub fault: Option<String>,
    /// The status the store answered, if the request reached it and an answer came back.
    pub upstream_status: Option<u16>,
    /// The `<Code>` of the store's error answer, if it sent one.
    pub upstream_code: Option<String>,
    /// The multipart upload it concerns: the query's `uploadId`, or for
    /// CreateMultipartUpload (`POST ?uploads`) the id the store answered.
    pub upload_id: Option<String>,
}

impl Entry {
    fn answered(&self, ok: impl Fn(u16) -> bool) -> bool {
        self.upstream_status.is_some_and(ok)
    }
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    log: Vec<Entry>,
}

/// The proxy: listens on 127.0.0.1 (port 0), relays to `upstream`. Stops accepting and closes
/// its connections on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

/// How long a client connection may idle before the proxy checks whether it was dropped.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// How long the proxy waits for the store's answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

impl FaultProxy {
    /// Starts a proxy in front of `upstream`, an `http://host:port` URL (Garage's
    /// `S3_ENDPOINT`).
    pub fn start(upstream: &str) -> FaultProxy {
        let target = upstream
            .strip_prefix("http://")
            .unwrap_or(upstream)
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if sp.load(Relaxed) {
                        break;
                    }
                    let Ok(client) = conn else { continue };
                    let (st, sp, target) = (st.clone(), sp.clone(), target.clone());
                    std::thread::spawn(move || {
                        let _ = serve(client, &target, &st, &sp);
                    });
                }
            })
            .unwrap();
        FaultProxy { addr, state, stop }
    }

    /// The URL to give corepost as `S3_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a rule; returns its index (for [`FaultProxy::fired`]). Rules are tried in the
    /// order added; every rule a request matches counts it, the first that fires decides.
    pub fn add(&self, rule: Rule) -> usize {
        let mut s = self.state.lock().unwrap();
        s.rules.push(rule);
        s.rules.len() - 1
    }

    /// Requests rule `id` has given its fault so far.
    pub fn fired(&self, id: usize) -> u64 {
        self.state.lock().unwrap().rules[id].fired
    }

    /// Requests rule `id` has matched so far (faulted or not).
    pub fn matched(&self, id: usize) -> u64 {
        self.state.lock().unwrap().rules[id].matched
    }

    /// Ends every fault: from now on every request is relayed as is (counts are kept).
    pub fn heal(&self) {
        let mut s = self.state.lock().unwrap();
        for r in &mut s.rules {
            r.when = When::First(0);
        }
    }

    /// Every request seen so far, in arrival order.
    pub fn log(&self) -> Vec<Entry> {
        self.state.lock().unwrap().log.clone()
    }

    /// Multipart uploads the store started (as seen on the wire: `(path, uploadId)`) that no
    /// CompleteMultipartUpload the store answered `2xx` and no AbortMultipartUpload it answered
    /// `2xx` or `404` has closed. Independent of the store's own bookkeeping (Garage, unlike
    /// S3, drops an unfinished upload once a newer upload of the same key completes, so
    /// listing Garage's open uploads does not show every upload a client left open).
    pub fn unclosed_uploads(&self) -> Vec<(String, String)> {
        let log = self.log();
        log.iter()
            .filter(|e| e.method == "POST" && query_has_key(&e.query, "uploads"))
            .filter(|e| e.answered(|s| (200..300).contains(&s)))
            .filter_map(|e| e.upload_id.clone().map(|id| (e.path.clone(), id)))
            .filter(|(path, id)| {
                !log.iter().any(|c| {
                    c.path == *path
                        && query_value(&c.query, "uploadId").as_deref() == Some(id.as_str())
                        && ((c.method == "POST" && c.answered(|s| (200..300).contains(&s)))
                            || (c.method == "DELETE"
                                && c.answered(|s| (200..300).contains(&s) || s == 404)))
                })
            })
            .collect()
    }
}

/// Whether the query string has a parameter named `key` (with or without a value).
fn query_has_key(query: &str, key: &str) -> bool {
    query.split('&').any(|p| p.split('=').next() == Some(key))
}

/// The value of parameter `key` in a query string.
fn query_value(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
}

/// The text of the first `<tag>` element in an XML body.
fn xml_text(body: &[u8], tag: &str) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find('<')?;
    Some(text[start..start + len].to_string())
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
    }
}
