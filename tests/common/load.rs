//! Numbered payloads (`{"c":c,"n":n,...}`: each one found by value in the store), the
//! background load that sends them, and the check of what the store holds against what the
//! clients were told.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use super::{connect, files_under, lines, raw_request, try_read_response, Object};

/// A collection whose payloads name their client and number: `{"c":c,"n":n,...}`.
pub fn numbered_body(c: usize, first: usize, count: usize) -> Vec<u8> {
    let data: Vec<String> = (first..first + count)
        .map(|n| {
            format!(r#"{{"c":{c},"n":{n},"msg":"payload {n} of client {c}","v":[1,2.5,"é"]}}"#)
        })
        .collect();
    format!(
        r#"{{"version":"1","token":"t","data":[{}]}}"#,
        data.join(",")
    )
    .into_bytes()
}

/// The payloads of a collection, as JSON values.
pub fn payloads_of(body: &[u8]) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["data"].as_array().unwrap().clone()
}

/// A payload of a numbered load: (client, number), as in `{"c":c,"n":n,...}`.
pub type Numbered = (u64, u64);

/// The payload `numbered_body(c, n, 1)` holds, as a JSON value.
pub fn numbered_payload(c: u64, n: u64) -> serde_json::Value {
    payloads_of(&numbered_body(c as usize, n as usize, 1)).remove(0)
}

/// What became of every payload a [`NumberedLoad`] sent, by payload.
#[derive(Debug, Default, Clone)]
pub struct NumberedCount {
    /// Payloads of requests answered 200.
    pub ok: std::collections::HashSet<Numbered>,
    /// Payloads of requests answered with another status, by payload.
    pub refused: HashMap<Numbered, u16>,
    /// Payloads of requests written (in full or in part) that got no answer.
    pub unanswered: std::collections::HashSet<Numbered>,
}

impl NumberedCount {
    /// Requests answered with `status` (other than 200); each request holds 10 payloads.
    pub fn requests_with(&self, status: u16) -> usize {
        self.refused.values().filter(|&&s| s == status).count() / 10
    }

    /// Sizes only, for assertion messages.
    pub fn summary(&self) -> String {
        let mut by_status: HashMap<u16, usize> = HashMap::new();
        for s in self.refused.values() {
            *by_status.entry(*s).or_default() += 1;
        }
        format!(
            "{} payloads answered 200, refused by status {by_status:?}, {} unanswered",
            self.ok.len(),
            self.unanswered.len()
        )
    }
}

/// A load thread's connection: kept, or opened again when there is none (`false`, after a
/// short pause, when the server refuses it).
fn reconnect(addr: SocketAddr, conn: &mut Option<(TcpStream, BufReader<TcpStream>)>) -> bool {
    if conn.is_some() {
        return true;
    }
    match TcpStream::connect(addr) {
        Ok(s) => {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let r = BufReader::new(s.try_clone().unwrap());
            *conn = Some((s, r));
            true
        }
        Err(_) => {
            std::thread::sleep(Duration::from_millis(20));
            false
        }
    }
}

/// Background load: `threads` clients POSTing over keep-alive connections (reconnecting after
/// errors) until stopped, where client `c` sends `numbered_body(c, n, 10)` with
/// `n` = 0, 10, 20, ... (never the same payload twice), so that each payload answered 200 can
/// be looked for by value in the store, and that it honours `Connection: close`.
/// [`NumberedLoad::paced`] clients wait between requests, for tests that expect every
/// request answered 200 and so need a load the servers can carry in a release build too.
pub struct NumberedLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<std::thread::JoinHandle<NumberedCount>>,
}

impl NumberedLoad {
    pub fn start(addr: SocketAddr, threads: usize) -> NumberedLoad {
        NumberedLoad::paced(addr, threads, Duration::ZERO)
    }

    /// As [`NumberedLoad::start`], each client starting a request at most once per `pace`.
    pub fn paced(addr: SocketAddr, threads: usize, pace: Duration) -> NumberedLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handles = (0..threads)
            .map(|c| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut out = NumberedCount::default();
                    let mut next = 0usize;
                    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if !reconnect(addr, &mut conn) {
                            continue;
                        }
                        let Some((w, r)) = conn.as_mut() else {
                            continue;
                        };
                        let started = std::time::Instant::now();
                        let first = next;
                        next += 10;
                        let ids = (first..first + 10).map(|n| (c as u64, n as u64));
                        let body = numbered_body(c, first, 10);
                        let req = raw_request("POST", "/v1/payloads", &[], &body);
                        let answer = if w.write_all(&req).is_ok() {
                            try_read_response(r)
                        } else {
                            None
                        };
                        // As HTTP clients do: after an answer saying `Connection: close`, the
                        // next request goes on a new connection.
                        if answer.as_ref().is_some_and(|a| {
                            a.header("connection")
                                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                        }) {
                            conn = None;
                        }
                        match answer {
                            Some(resp) if resp.status == 200 => out.ok.extend(ids),
                            Some(resp) => {
                                out.refused.extend(ids.map(|id| (id, resp.status)));
                                if resp.status == 503 {
                                    std::thread::sleep(Duration::from_millis(5));
                                }
                            }
                            None => {
                                out.unanswered.extend(ids);
                                conn = None;
                            }
                        }
                        std::thread::sleep(pace.saturating_sub(started.elapsed()));
                    }
                    out
                })
            })
            .collect();
        NumberedLoad { stop, handles }
    }

    pub fn stop(self) -> NumberedCount {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = NumberedCount::default();
        for h in self.handles {
            let c = h.join().unwrap();
            total.ok.extend(c.ok);
            total.refused.extend(c.refused);
            total.unanswered.extend(c.unanswered);
        }
        total
    }
}

/// Objects in the layout of the spill directory under `root` (the path below `root` is the
/// key), skipping in-progress dot-files.
pub fn spilled_objects(root: &Path) -> Vec<Object> {
    files_under(root)
        .into_iter()
        .filter(|f| !f.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|f| Object {
            // Spill files are named `{key}.spill`.
            key: f
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .trim_end_matches(".spill")
                .to_string(),
            content_type: None,
            content_encoding: None,
            data: std::fs::read(&f).unwrap(),
        })
        .collect()
}

/// How many copies of each numbered payload `objects` hold. Every payload stored must be one
/// that `numbered_body` makes, equal in value to it (so a payload cut short, mixed with
/// another or changed on the way fails here, naming its key).
pub fn numbered_copies<'a>(
    objects: impl IntoIterator<Item = &'a Object>,
) -> HashMap<Numbered, u32> {
    let mut copies: HashMap<Numbered, u32> = HashMap::new();
    for o in objects {
        for v in lines(o) {
            let (Some(c), Some(n)) = (v["c"].as_u64(), v["n"].as_u64()) else {
                panic!("{}: not a numbered payload: {v}", o.key);
            };
            assert_eq!(
                v,
                numbered_payload(c, n),
                "{}: payload {c}/{n} differs from the one sent",
                o.key
            );
            *copies.entry((c, n)).or_default() += 1;
        }
    }
    copies
}

/// Checks what the store holds against what a [`NumberedLoad`] was told: every payload
/// answered 200 is there (exactly once when `exactly_once`, else at least once); a payload
/// sent without an answer at most once (the server may have queued it before the connection
/// was cut); a payload answered with another status (refused before it was queued) not at all;
/// and nothing that was never sent.
pub fn check_numbered(copies: &HashMap<Numbered, u32>, count: &NumberedCount, exactly_once: bool) {
    let got = |id: &Numbered| copies.get(id).copied().unwrap_or(0);
    // The ids of `ids` stored more than once, with their copies, in order.
    let stored_twice = |ids: &HashSet<Numbered>| {
        let mut twice: Vec<(Numbered, u32)> = ids
            .iter()
            .filter(|id| got(id) > 1)
            .map(|id| (*id, got(id)))
            .collect();
        twice.sort();
        twice
    };
    let mut lost: Vec<Numbered> = count.ok.iter().filter(|id| got(id) == 0).copied().collect();
    lost.sort();
    assert!(
        lost.is_empty(),
        "{} payloads answered 200 are not stored, e.g. {:?} ({})",
        lost.len(),
        &lost[..lost.len().min(10)],
        count.summary()
    );
    if exactly_once {
        let twice = stored_twice(&count.ok);
        assert!(
            twice.is_empty(),
            "{} payloads answered 200 are stored more than once, e.g. {:?} ({})",
            twice.len(),
            &twice[..twice.len().min(10)],
            count.summary()
        );
    }
    let unanswered_twice = stored_twice(&count.unanswered);
    assert!(
        unanswered_twice.is_empty(),
        "payloads sent once without an answer are stored more than once: {:?}",
        &unanswered_twice[..unanswered_twice.len().min(10)]
    );
    let mut refused_stored: Vec<(Numbered, u16)> = count
        .refused
        .iter()
        .filter(|(id, _)| got(id) > 0)
        .map(|(id, s)| (*id, *s))
        .collect();
    refused_stored.sort();
    assert!(
        refused_stored.is_empty(),
        "payloads answered with an error (before being queued) are stored: {:?}",
        &refused_stored[..refused_stored.len().min(10)]
    );
    let mut unknown: Vec<Numbered> = copies
        .keys()
        .filter(|id| {
            !count.ok.contains(id)
                && !count.unanswered.contains(id)
                && !count.refused.contains_key(id)
        })
        .copied()
        .collect();
    unknown.sort();
    assert!(
        unknown.is_empty(),
        "stored payloads that were never sent: {:?}",
        &unknown[..unknown.len().min(10)]
    );
}

/// Clients posting until stopped or until the server goes away (killed), each on its own
/// keep-alive connection: client `c`'s request `n` is `make(c, n)`, the raw request and the
/// ids of its payloads. A `503` pauses 10 ms; any other status but `200` fails the test.
pub fn post_until_stopped<T: Clone + Send + 'static>(
    addr: SocketAddr,
    clients: u64,
    make: fn(u64, u64) -> (Vec<u8>, Vec<T>),
) -> Posting<T> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads = (0..clients)
        .map(|c| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut sent) = (Vec::new(), Vec::new());
                let (mut w, mut r) = connect(addr);
                for n in 0u64.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let (req, ids) = make(c, n);
                    sent.extend(ids.iter().cloned());
                    if w.write_all(&req).is_err() {
                        break;
                    }
                    match try_read_response(&mut r) {
                        Some(resp) if resp.status == 200 => ok.extend(ids),
                        Some(resp) if resp.status == 503 => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Some(resp) => panic!("status {}", resp.status),
                        None => break,
                    }
                }
                (ok, sent)
            })
        })
        .collect();
    Posting { stop, threads }
}

/// The clients of [`post_until_stopped`].
pub struct Posting<T> {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(Vec<T>, Vec<T>)>>,
}

impl<T> Posting<T> {
    /// Stops the clients; the ids of the payloads answered `200`, and of every payload
    /// written.
    pub fn stop(self) -> (Vec<T>, Vec<T>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut ok, mut sent) = (Vec::new(), Vec::new());
        for t in self.threads {
            let (o, s) = t.join().unwrap();
            ok.extend(o);
            sent.extend(s);
        }
        (ok, sent)
    }
}
