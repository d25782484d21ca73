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

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// One parsed request or response head, with the raw bytes to relay.
struct Head {
    raw: Vec<u8>,
    first: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> Option<usize> {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }
}

/// A byte stream with its own read-ahead buffer (so a timed-out read loses nothing).
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

enum Got {
    Head(Head),
    Closed,
}

impl Conn {
    /// Reads more bytes into the buffer; `Ok(false)` at end of stream. With `stop`, a read
    /// timeout checks it and carries on (an idle keep-alive connection).
    fn fill(&mut self, stop: Option<&AtomicBool>) -> std::io::Result<bool> {
        let mut tmp = [0u8; 64 * 1024];
        loop {
            match self.s.read(&mut tmp) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(true);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    match stop {
                        Some(stop) if !stop.load(Relaxed) => continue,
                        _ => return Err(e),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn read_head(&mut self, stop: Option<&AtomicBool>) -> std::io::Result<Got> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 4).collect();
                let text = String::from_utf8_lossy(&raw).into_owned();
                let mut lines = text.split("\r\n");
                let first = lines.next().unwrap_or_default().to_string();
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect();
                return Ok(Got::Head(Head {
                    raw,
                    first,
                    headers,
                }));
            }
            if self.buf.len() > 1 << 20 {
                return Err(std::io::Error::other("head too large"));
            }
            if !self.fill(stop)? {
                return if self.buf.is_empty() {
                    Ok(Got::Closed)
                } else {
                    Err(std::io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// Takes exactly `n` bytes.
    fn take(&mut self, n: usize, stop: Option<&AtomicBool>) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill(stop)? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    fn take_line(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                return Ok(self.buf.drain(..i + 2).collect());
            }
            if !self.fill(None)? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// A response body as raw bytes (Content-Length, chunked, or up to the end of stream).
    fn take_body(&mut self, head: &Head, no_body: bool) -> std::io::Result<(Vec<u8>, bool)> {
        if no_body {
            return Ok((Vec::new(), true));
        }
        if head.chunked() {
            let mut out = Vec::new();
            loop {
                let line = self.take_line()?;
                let size_text = String::from_utf8_lossy(&line);
                let size = usize::from_str_radix(
                    size_text.trim().split(';').next().unwrap_or("").trim(),
                    16,
                )
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
                out.extend_from_slice(&line);
                if size == 0 {
                    // Trailers, up to the empty line.
                    loop {
                        let t = self.take_line()?;
                        out.extend_from_slice(&t);
                        if t == b"\r\n" {
                            return Ok((out, true));
                        }
                    }
                }
                out.extend(self.take(size + 2, None)?);
            }
        }
        match head.content_length() {
            Some(n) => Ok((self.take(n, None)?, true)),
            None => {
                while self.fill(None)? {}
                Ok((std::mem::take(&mut self.buf), false))
            }
        }
    }
}

/// Closes `s` with a reset (RST) instead of an orderly FIN.
fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Slow Down",
        _ => "Fault",
    }
}

/// Relays one client connection, request by request.
fn serve(
    client: TcpStream,
    target: &str,
    state: &Mutex<State>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(IDLE_POLL))?;
    let mut client = Conn {
        s: client,
        buf: Vec::new(),
    };
    let mut upstream: Option<Conn> = None;
    loop {
        let head = match client.read_head(Some(stop))? {
            Got::Head(h) => h,
            Got::Closed => return Ok(()),
        };
        let mut parts = head.first.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target_uri = parts.next().unwrap_or_default().to_string();
        let (path, query) = match target_uri.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (target_uri.clone(), String::new()),
        };
        if head.chunked() {
            // Not needed for rust-s3 (it sends Content-Length); refuse loudly.
            return Err(std::io::Error::other(
                "chunked request bodies are not relayed",
            ));
        }
        let body_len = head.content_length().unwrap_or(0);
        let (fault, idx) = {
            let mut s = state.lock().unwrap();
            let mut fault = None;
            for r in s.rules.iter_mut() {
                if r.matches(&method, &path, &query) && r.hit(&path) && fault.is_none() {
                    fault = Some(r.fault.clone());
                }
            }
            s.log.push(Entry {
                at: Instant::now(),
                method: method.clone(),
                path: path.clone(),
                query: query.clone(),
                fault: fault.as_ref().map(Fault::name),
                upstream_status: None,
                upstream_code: None,
                upload_id: query_value(&query, "uploadId"),
            });
            (fault, s.log.len() - 1)
        };
        match &fault {
            Some(Fault::ResetMidRequest) => {
                let _ = client.take(body_len / 2, Some(stop));
                reset(client.s);
                return Ok(());
            }
            Some(Fault::Status { status, body }) => {
                client.take(body_len, Some(stop))?;
                let answer = format!(
                    "HTTP/1.1 {status} {}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nx-amz-request-id: fault-proxy\r\n\r\n{body}",
                    reason(*status),
                    body.len()
                );
                client.s.write_all(answer.as_bytes())?;
                continue;
            }
            _ => {}
        }
        let mut body = client.take(body_len, Some(stop))?;
        if let (Some(Fault::FlipBodyByte), Some(mid)) = (&fault, body.len().checked_sub(1)) {
            body[mid / 2] ^= 0x01;
        }
        if upstream.is_none() {
            let s = TcpStream::connect(target)?;
            s.set_read_timeout(Some(UPSTREAM_TIMEOUT))?;
            upstream = Some(Conn { s, buf: Vec::new() });
        }
        let Some(up) = upstream.as_mut() else {
            return Ok(());
        };
        up.s.write_all(&head.raw)?;
        up.s.write_all(&body)?;
        let resp = match up.read_head(None)? {
            Got::Head(h) => h,
            Got::Closed => return Ok(()),
        };
        let status: u16 = resp
            .first
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let no_body = method == "HEAD" || status == 204 || status == 304 || status < 200;
        let (resp_body, reusable) = up.take_body(&resp, no_body)?;
        {
            let mut s = state.lock().unwrap();
            let e = &mut s.log[idx];
            e.upstream_status = Some(status);
            if status >= 300 {
                e.upstream_code = xml_text(&resp_body, "Code");
            }
            if e.upload_id.is_none() && method == "POST" && query_has_key(&query, "uploads") {
                e.upload_id = xml_text(&resp_body, "UploadId");
            }
        }
        let mut whole = resp.raw.clone();
        whole.extend_from_slice(&resp_body);
        match fault {
            Some(Fault::CutResponse) => {
                client.s.write_all(&whole[..whole.len() / 2])?;
                client.s.flush()?;
                reset(client.s);
                return Ok(());
            }
            Some(Fault::Delay(d)) => {
                std::thread::sleep(d);
                // The client has most likely given up; relay anyway (it may fail).
                client.s.write_all(&whole)?;
            }
            _ => client.s.write_all(&whole)?,
        }
        let closing = resp
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if !reusable || closing {
            return Ok(());
        }
    }
}
