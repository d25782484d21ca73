//! Store failures other than "down": corepost talks to the real Garage through a
//! fault-injecting proxy (`common::fault_proxy`) that answers chosen requests with `500`,
//! `503 SlowDown`, `429`, a reset in the middle of the request body, a lost answer (the store
//! did the work, the answer is cut), an answer later than `upload.request_timeout_ms`, a
//! `200` CompleteMultipartUpload whose body is an S3 `<Error>`, or a PUT (object or part)
//! relayed with a bit of its body flipped, which the store must refuse by its checksum.
//!
//! Every scenario runs with `ack = "queued"` and with `ack = "durable"` (spool on the build's
//! disk) and checks, once the proxy has given the faults and the queues have drained: every
//! payload answered `200` is in the bucket, by value, exactly once (a retried object keeps its
//! key, so a retry after a lost answer overwrites; no payload under two keys), nothing spilled
//! or lost, no multipart upload left open, the retries and throttling counted, and `/readyz`
//! back at `200` once the faults stop (it may flap while they last).

mod common;

use common::fault_proxy::{Fault, FaultProxy, Rule, When};
use common::*;
use std::time::Duration;

/// What a `200` promises in a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Queued,
    Durable,
}

/// Retry pacing of every scenario: short, so the file runs quickly.
const BACKOFF_BASE_MS: u64 = 20;
const BACKOFF_MAX_MS: u64 = 200;

/// The size of the objects a scenario makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Objects {
    /// One `.json` object per payload (the default layout): 10 requests of 5 payloads.
    Single,
    /// NDJSON objects of 350 payloads of 16 KiB (5.6 MB: two parts of a 5 MiB multipart
    /// upload), one per request: [`MULTIPART_REQUESTS`] requests.
    Multipart,
}

const MULTIPART_REQUESTS: usize = 2;
const MULTIPART_PAYLOADS: usize = 350;
const PAD: usize = 16 * 1024;

/// corepost behind a fault proxy in front of the shared Garage.
struct Run {
    g: &'static Garage,
    proxy: FaultProxy,
    server: Server,
    prefix: String,
    mode: Mode,
    objects: Objects,
    _conf: tempfile::NamedTempFile,
    _spool: Option<tempfile::TempDir>,
}

fn config(mode: Mode, objects: Objects, request_timeout_ms: u64) -> String {
    let mut server = String::new();
    let mut rest = format!(
        "[upload]\nbackoff_base_ms = {BACKOFF_BASE_MS}\nbackoff_max_ms = {BACKOFF_MAX_MS}\nrequest_timeout_ms = {request_timeout_ms}\n"
    );
    if mode == Mode::Durable {
        server.push_str("ack = \"durable\"\n");
    }
    if objects == Objects::Multipart {
        server.push_str("max_body_bytes = 8388608\n");
        rest.push_str(&format!(
            "[batch]\nmax_payloads = {MULTIPART_PAYLOADS}\nmax_bytes = 8388608\nmax_age_ms = 5000\nmultipart_threshold_bytes = 5242880\npart_bytes = 5242880\n"
        ));
        if mode == Mode::Durable {
            rest.push_str("[spool]\nsegment_bytes = 16777216\nmax_bytes = 67108864\n");
        }
    }
    format!("[server]\n{server}{rest}")
}

impl Run {
    /// Starts a proxy with `rules` and corepost (2 shards, sink s3) behind it.
    fn start(
        name: &str,
        mode: Mode,
        objects: Objects,
        request_timeout_ms: u64,
        rules: Vec<Rule>,
    ) -> Run {
        let g = garage();
        let prefix = format!(
            "faults-{name}-{}-{}",
            match mode {
                Mode::Queued => "queued",
                Mode::Durable => "durable",
            },
            std::process::id()
        );
        let proxy = FaultProxy::start(&g.var("S3_ENDPOINT"));
        for r in rules {
            proxy.add(r);
        }
        let conf = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(conf.path(), config(mode, objects, request_timeout_ms)).unwrap();
        let conf_path = conf.path().to_str().unwrap().to_string();
        let mut env = g.server_env(&prefix);
        env.push(("S3_ENDPOINT".into(), proxy.endpoint()));
        let mut args = vec!["--cores", "2", "--sink", "s3", "--config", &conf_path];
        let spool = (mode == Mode::Durable)
            .then(|| tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap());
        let spool_path = spool
            .as_ref()
            .map(|d| d.path().to_str().unwrap().to_string());
        if let Some(p) = &spool_path {
            args.extend(["--spool-dir", p.as_str()]);
        }
        let server = Server::start(&args, &env);
        Run {
            g,
            proxy,
            server,
            prefix,
            mode,
            objects,
            _conf: conf,
            _spool: spool,
        }
    }

    /// Posts the scenario's payloads (client 1, numbered from 0); each must be answered 200.
    /// Returns how many were sent.
    fn post_all(&self) -> usize {
        let (requests, per) = match self.objects {
            Objects::Single => (10, 5),
            Objects::Multipart => (MULTIPART_REQUESTS, MULTIPART_PAYLOADS),
        };
        for i in 0..requests {
            let body = match self.objects {
                Objects::Single => numbered_body(1, i * per, per),
                Objects::Multipart => padded_body(1, i * per, per),
            };
            let r = post(self.server.addr, &body);
            assert_eq!(
                r.status,
                200,
                "request {i}: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
        requests * per
    }

    /// Waits until everything accepted is stored (and, in durable mode, released from the
    /// spool), then ends the faults and waits for `/readyz` to say 200. Returns the metrics.
    fn drain_and_heal(&self) -> Metrics {
        if self.mode == Mode::Durable {
            wait_spool_empty(&self.server, 90);
        }
        let m = self.server.wait_drained(Duration::from_secs(90));
        self.proxy.heal();
        wait_until(30, "/readyz back at 200 after the faults stop", || {
            request(self.server.addr, "GET", "/readyz", &[], b"").status == 200
        });
        m
    }

    /// The common end of every scenario: all `sent` payloads stored exactly once, nothing
    /// spilled or lost, no multipart upload open, and a clean stop.
    fn check_stored_once(self, sent: usize, m: &Metrics) {
        assert_eq!(m.sum("corepost_payloads_accepted_total"), sent as u64);
        assert_eq!(m.sum("corepost_payloads_uploaded_total"), sent as u64);
        assert_eq!(
            m.sum("corepost_payloads_spilled_total") + m.sum("corepost_payloads_failed_total"),
            0,
            "nothing spilled or lost"
        );
        let copies = copies(self.g, &self.prefix);
        let mut wrong: Vec<_> = (0..sent as u64)
            .filter_map(|n| {
                let c = copies.get(&(1, n)).copied().unwrap_or(0);
                (c != 1).then_some((n, c))
            })
            .collect();
        wrong.sort();
        assert!(
            wrong.is_empty(),
            "payloads not stored exactly once (payload, copies): {wrong:?}"
        );
        assert_eq!(copies.len(), sent, "no payload that was never sent");
        let open = open_uploads(self.g, &self.prefix);
        assert!(
            open.is_empty(),
            "multipart uploads open in the store: {open:?}"
        );
        if self.objects == Objects::Multipart {
            let started = self
                .proxy
                .log()
                .iter()
                .filter(|e| {
                    e.method == "POST" && e.upload_id.is_some() && e.query.contains("uploads")
                })
                .count();
            assert!(
                started >= MULTIPART_REQUESTS,
                "every object went up as a multipart upload: {started} started"
            );
        }
        let unclosed = self.proxy.unclosed_uploads();
        assert!(
            unclosed.is_empty(),
            "multipart uploads neither completed nor aborted: {unclosed:?}"
        );
        assert!(self.server.stop(30).success());
    }
}

/// Like [`numbered_body`], each payload padded to about [`PAD`] bytes.
fn padded_body(c: usize, first: usize, count: usize) -> Vec<u8> {
    let pad = "x".repeat(PAD);
    let data: Vec<String> = (first..first + count)
        .map(|n| format!(r#"{{"c":{c},"n":{n},"pad":"{pad}"}}"#))
        .collect();
    format!(r#"{{"version":"1","data":[{}]}}"#, data.join(",")).into_bytes()
}

/// Multipart uploads started under `prefix` and neither completed nor aborted.
fn open_uploads(g: &Garage, prefix: &str) -> Vec<(String, String)> {
    let bucket = g.bucket();
    let p = format!("{prefix}/");
    g.run(async move {
        bucket
            .list_multiparts_uploads(Some(&p), None)
            .await
            .expect("ListMultipartUploads")
            .into_iter()
            .flat_map(|page| page.uploads.into_iter().map(|u| (u.key, u.id)))
            .collect()
    })
}

/// Waits until rule `id` has given at least `n` faults.
fn wait_fired(run: &Run, id: usize, n: u64) {
    wait_until(60, &format!("{n} faults given by rule {id}"), || {
        run.proxy.fired(id) >= n
    });
}

/// Runs a scenario body once per ack mode.
macro_rules! both_modes {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn queued() {
                ($body)(Mode::Queued)
            }

            #[test]
            fn durable() {
                ($body)(Mode::Durable)
            }
        }
    };
}

// A 500 on every third single-object PUT: each is retried (same key) until stored.
both_modes!(internal_error_every_third_put, |mode| {
    let run = Run::start(
        "500",
        mode,
        Objects::Single,
        10_000,
        vec![Rule::object_puts(
            Fault::internal_error(),
            When::EveryNth(3),
        )],
    );
    let sent = run.post_all();
    wait_fired(&run, 0, 5);
    let m = run.drain_and_heal();
    let fired = run.proxy.fired(0);
    assert!(
        m.sum("corepost_upload_retries_total") >= fired,
        "every 500 retried: {} retries for {fired} faults",
        m.sum("corepost_upload_retries_total")
    );
    assert_eq!(
        m.sum("corepost_upload_throttled_total"),
        0,
        "a 500 is not throttling"
    );
    run.check_stored_once(sent, &m);
});

/// Throttling: every throttled answer is counted, and the next attempt at the same key comes
/// no sooner than the throttled backoff's floor (twice `backoff_base_ms`; an ordinary retry's
/// first pause is at most `backoff_base_ms`).
fn throttled(mode: Mode, name: &str, fault: Fault) {
    let run = Run::start(
        name,
        mode,
        Objects::Single,
        10_000,
        vec![Rule::object_puts(fault, When::First(6))],
    );
    let sent = run.post_all();
    wait_fired(&run, 0, 6);
    let m = run.drain_and_heal();
    assert_eq!(
        m.sum("corepost_upload_throttled_total"),
        6,
        "each throttled answer counted once"
    );
    assert!(m.sum("corepost_upload_retries_total") >= 6);
    let log = run.proxy.log();
    let mut gaps = Vec::new();
    for (i, e) in log.iter().enumerate() {
        if e.fault.is_none() {
            continue;
        }
        let next = log[i + 1..]
            .iter()
            .find(|n| n.method == e.method && n.path == e.path)
            .unwrap_or_else(|| panic!("{} {} was never retried", e.method, e.path));
        gaps.push(next.at.duration_since(e.at));
    }
    let floor = Duration::from_millis(2 * BACKOFF_BASE_MS);
    assert!(
        gaps.iter().all(|g| *g >= floor),
        "a throttled PUT is retried no sooner than {floor:?}: gaps {gaps:?}"
    );
    run.check_stored_once(sent, &m);
}

// `503 SlowDown` on the first six PUTs.
both_modes!(slow_down_backs_off_and_is_counted, |mode| throttled(
    mode,
    "503",
    Fault::slow_down()
));

// `429 Too Many Requests` on the first six PUTs.
both_modes!(too_many_requests_backs_off_and_is_counted, |mode| {
    throttled(mode, "429", Fault::too_many_requests())
});

// A connection reset halfway through the request body of every fourth PUT.
both_modes!(reset_mid_request_body, |mode| {
    let run = Run::start(
        "reset",
        mode,
        Objects::Single,
        10_000,
        vec![Rule::object_puts(Fault::ResetMidRequest, When::EveryNth(4))],
    );
    let sent = run.post_all();
    wait_fired(&run, 0, 5);
    let m = run.drain_and_heal();
    assert!(m.sum("corepost_upload_retries_total") >= run.proxy.fired(0));
    run.check_stored_once(sent, &m);
});

// Every fourth PUT reaches the store but its answer is cut halfway and the connection reset:
// the retry must overwrite the stored object (same key), not store the payload again.
both_modes!(lost_answer_retry_overwrites, |mode| {
    let run = Run::start(
        "cut",
        mode,
        Objects::Single,
        10_000,
        vec![Rule::object_puts(Fault::CutResponse, When::EveryNth(4))],
    );
    let sent = run.post_all();
    wait_fired(&run, 0, 5);
    let m = run.drain_and_heal();
    assert!(m.sum("corepost_upload_retries_total") >= run.proxy.fired(0));
    assert_eq!(
        run.g.keys(&run.prefix).len(),
        sent,
        "one object per payload"
    );
    run.check_stored_once(sent, &m);
});

// The first three PUTs are answered 3 s late, past `request_timeout_ms = 1000`: corepost
// gives up on them and retries (the store has stored them meanwhile: the retry overwrites).
both_modes!(answer_after_request_timeout, |mode| {
    let run = Run::start(
        "slow",
        mode,
        Objects::Single,
        1_000,
        vec![Rule::object_puts(
            Fault::Delay(Duration::from_secs(3)),
            When::First(3),
        )],
    );
    let sent = run.post_all();
    wait_fired(&run, 0, 3);
    let m = run.drain_and_heal();
    assert!(
        m.sum("corepost_upload_retries_total") >= 3,
        "each late answer timed out and was retried: {} retries",
        m.sum("corepost_upload_retries_total")
    );
    run.check_stored_once(sent, &m);
});

/// A bit of the request body flipped on the wire (the headers as corepost sent them): the
/// store must refuse the request (it checks the body against `Content-MD5` and the signed
/// `x-amz-content-sha256`, both of which rust-s3 sends on every PUT and part), corepost must
/// retry it at once as a transient failure (not spill it as refused), and the objects must
/// hold exactly what was sent.
fn corrupted_on_the_wire(mode: Mode, name: &str, objects: Objects, rule: Rule, faults: u64) {
    let run = Run::start(name, mode, objects, 10_000, vec![rule]);
    let sent = run.post_all();
    wait_fired(&run, 0, faults);
    let m = run.drain_and_heal();
    let log = run.proxy.log();
    for (i, e) in log.iter().enumerate().filter(|(_, e)| e.fault.is_some()) {
        assert_eq!(
            (e.upstream_status, e.upstream_code.as_deref()),
            (Some(400), Some("BadDigest")),
            "{} {}?{}: the store refuses a corrupted body",
            e.method,
            e.path,
            e.query
        );
        let part = |q: &str| {
            q.split('&')
                .find(|p| p.starts_with("partNumber="))
                .map(str::to_string)
        };
        let retried = log[i + 1..].iter().any(|n| {
            n.method == e.method
                && n.path == e.path
                && part(&n.query) == part(&e.query)
                && n.upstream_status == Some(200)
        });
        assert!(retried, "{} {} was retried and stored", e.method, e.path);
    }
    assert!(
        m.sum("corepost_upload_retries_total") >= faults,
        "each refusal retried: {} retries",
        m.sum("corepost_upload_retries_total")
    );
    run.check_stored_once(sent, &m);
}

// A bit flipped in the body of the first three single-object PUTs.
both_modes!(
    corrupted_put_body_is_refused_by_the_store_and_retried,
    |mode| {
        corrupted_on_the_wire(
            mode,
            "flip",
            Objects::Single,
            Rule::object_puts(Fault::FlipBodyByte, When::First(3)),
            3,
        )
    }
);

// A bit flipped in the body of the first two multipart parts.
both_modes!(
    corrupted_part_body_is_refused_by_the_store_and_retried,
    |mode| {
        corrupted_on_the_wire(
            mode,
            "flip-part",
            Objects::Multipart,
            Rule::part_puts(Fault::FlipBodyByte, When::First(2)),
            2,
        )
    }
);

// The first two CompleteMultipartUpload requests are answered `200` with an `<Error>` body
// and not forwarded: the upload is not complete, so corepost must not count the object as
// stored; it aborts the upload (nothing left open) and sends the object again.
both_modes!(multipart_complete_200_with_error, |mode| {
    let run = Run::start(
        "complete-error",
        mode,
        Objects::Multipart,
        10_000,
        vec![Rule::completes(Fault::ok_with_error_body(), When::First(2))],
    );
    let sent = run.post_all();
    wait_fired(&run, 0, 2);
    let m = run.drain_and_heal();
    assert_eq!(
        run.g.keys(&run.prefix).len(),
        MULTIPART_REQUESTS,
        "every object stored although its first completion failed"
    );
    assert!(m.sum("corepost_upload_retries_total") >= 2);
    run.check_stored_once(sent, &m);
});

// The first two part uploads of each object are reset halfway. rust-s3 retries a part once by
// itself (after 1 s), so each object's first upload fails: corepost aborts it and sends the
// object again as a new upload, whose parts go through.
both_modes!(multipart_part_reset, |mode| {
    let run = Run::start(
        "part-reset",
        mode,
        Objects::Multipart,
        10_000,
        vec![Rule::part_puts(
            Fault::ResetMidRequest,
            When::FirstPerPath(2),
        )],
    );
    let sent = run.post_all();
    wait_fired(&run, 0, 2 * MULTIPART_REQUESTS as u64);
    let m = run.drain_and_heal();
    assert!(
        m.sum("corepost_upload_retries_total") >= MULTIPART_REQUESTS as u64,
        "each object's first upload failed and was retried: {} retries",
        m.sum("corepost_upload_retries_total")
    );
    run.check_stored_once(sent, &m);
});

// A part upload answered `503 SlowDown`: throttled (counted), the upload aborted, the object
// sent again.
both_modes!(multipart_part_slow_down, |mode| {
    let run = Run::start(
        "part-503",
        mode,
        Objects::Multipart,
        10_000,
        vec![Rule::part_puts(Fault::slow_down(), When::First(1))],
    );
    let sent = run.post_all();
    wait_fired(&run, 0, 1);
    let m = run.drain_and_heal();
    assert_eq!(m.sum("corepost_upload_throttled_total"), 1);
    assert!(m.sum("corepost_upload_retries_total") >= 1);
    run.check_stored_once(sent, &m);
});

// The first CompleteMultipartUpload is answered `200` with an `<Error>` body, and the abort
// that follows is answered `500`: one failed abort must not leave the upload open.
both_modes!(multipart_abort_fails_once, |mode| {
    let run = Run::start(
        "abort-500",
        mode,
        Objects::Multipart,
        10_000,
        vec![
            Rule::completes(Fault::ok_with_error_body(), When::First(1)),
            Rule::new(Fault::internal_error(), When::First(1))
                .method("DELETE")
                .query_has("uploadId="),
        ],
    );
    let sent = run.post_all();
    wait_fired(&run, 0, 1);
    wait_fired(&run, 1, 1);
    let m = run.drain_and_heal();
    assert!(m.sum("corepost_upload_retries_total") >= 1);
    run.check_stored_once(sent, &m);
});

// The first CompleteMultipartUpload reaches the store but its answer is lost: the retried
// upload overwrites the completed object (same key).
both_modes!(multipart_complete_answer_lost, |mode| {
    let run = Run::start(
        "complete-cut",
        mode,
        Objects::Multipart,
        10_000,
        vec![Rule::completes(Fault::CutResponse, When::First(1))],
    );
    let sent = run.post_all();
    wait_fired(&run, 0, 1);
    let m = run.drain_and_heal();
    assert!(m.sum("corepost_upload_retries_total") >= 1);
    assert_eq!(run.g.keys(&run.prefix).len(), MULTIPART_REQUESTS);
    run.check_stored_once(sent, &m);
});

#[test]
fn open_upload_listing_sees_an_open_upload() {
    // Sanity of the store-side check: an upload left open is listed until aborted.
    let g = garage();
    let prefix = format!("faults-listing-{}", std::process::id());
    let key = format!("{prefix}/open.ndjson");
    let bucket = g.bucket();
    let id = g.run(async {
        bucket
            .initiate_multipart_upload(&key, "application/x-ndjson")
            .await
            .expect("initiate")
            .upload_id
    });
    assert_eq!(open_uploads(g, &prefix), vec![(key.clone(), id.clone())]);
    g.run(async { bucket.abort_upload(&key, &id).await.expect("abort") });
    assert!(open_uploads(g, &prefix).is_empty());
}

#[test]
fn proxy_relays_unfaulted_traffic() {
    // Sanity of the harness itself: with no rule, everything goes through unchanged.
    let run = Run::start("clean", Mode::Queued, Objects::Single, 10_000, vec![]);
    let sent = run.post_all();
    let m = run.drain_and_heal();
    assert_eq!(m.sum("corepost_upload_retries_total"), 0);
    let puts = run.proxy.log().iter().filter(|e| e.method == "PUT").count();
    assert_eq!(puts, sent, "one PUT per payload, all through the proxy");
    run.check_stored_once(sent, &m);
}
