//! The relaying of one client connection, request by request, giving each request the fault
//! its rule picked.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{
    query_has_key, query_value, xml_text, Entry, Fault, State, IDLE_POLL, UPSTREAM_TIMEOUT,
};

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
pub(super) fn serve(
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
