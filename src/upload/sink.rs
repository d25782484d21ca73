//! Sinks: where an object goes. `s3` (rust-s3, one `Bucket` per shard), `fs` (files under a
//! directory, written atomically by rename), `discard` (count and drop, for benchmarks).

use super::batch::ObjectFormat;
use crate::config::{Config, SinkKind};
use crate::metrics::inc;
use http::{HeaderMap, HeaderValue};
use s3::creds::Credentials;
use s3::{Bucket, Region};
use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Why an object was not stored, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    /// Connection errors, timeouts, 5xx other than 503, an `<Error>` document in a `200`
    /// answer: worth retrying.
    #[error("transient: {0}")]
    Transient(String),
    /// The store asked for fewer requests: `429`, `503` (S3's `SlowDown` status) or a
    /// `SlowDown` error code. Worth retrying, after a longer pause (see
    /// `upload::throttled_backoff`).
    #[error("throttled: {0}")]
    Throttled(String),
    /// Bad credentials, missing bucket, bad request: retrying cannot help.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl UploadError {
    /// Whether another attempt can succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, UploadError::Transient(_) | UploadError::Throttled(_))
    }

    /// Whether the store asked us to slow down.
    pub fn throttled(&self) -> bool {
        matches!(self, UploadError::Throttled(_))
    }
}

/// Where objects are stored; one per upload worker.
#[derive(Debug)]
pub enum Sink {
    /// An S3 bucket.
    S3(Box<S3Sink>),
    /// A local directory.
    Fs(FsSink),
    /// Nowhere (benchmarks of the front end).
    Discard,
    /// The configured sink could not be built: every put fails permanently, so payloads go
    /// to the spill directory instead of being counted as stored.
    Unavailable(String),
}

/// An S3 bucket, and when to switch to multipart upload.
#[derive(Debug)]
pub struct S3Sink {
    bucket: Box<Bucket>,
    /// The same bucket with `Content-Encoding` among its extra headers, for starting
    /// multipart uploads of compressed objects (rust-s3 takes no headers there).
    encoded: Option<Box<Bucket>>,
    multipart_threshold: usize,
    part_bytes: usize,
    /// Pauses between attempts at aborting a failed multipart upload (`upload.backoff_*`).
    backoff_base_ms: u64,
    backoff_max_ms: u64,
    /// The key the readiness check reads (expecting `NoSuchKey`) or, when reading is not
    /// allowed, starts and aborts a multipart upload at: under `keys.prefix`, where a policy
    /// scoped to the prefix allows it.
    probe_key: String,
}

/// Attempts at aborting a failed multipart upload.
const ABORT_ATTEMPTS: u32 = 3;

/// The local-directory sink; also the spill directory's writer.
#[derive(Debug)]
pub struct FsSink {
    root: PathBuf,
    /// Directories already created, so a steady stream of objects costs no `mkdir` calls.
    made: RefCell<HashSet<PathBuf>>,
    /// fsync each file before renaming it into place (the spill directory needs this; the fs
    /// sink with `ack = "queued"` does not).
    durable: bool,
    /// Appended to every file name: the spill directory's files end in [`SPILL_SUFFIX`], so
    /// its replay takes only what corepost wrote there.
    suffix: &'static str,
}

/// Ending of every file corepost writes to the spill directory (`{key}.spill`).
pub const SPILL_SUFFIX: &str = ".spill";

/// Classifies an HTTP status from the store.
fn classify_status(status: u16, body: &[u8]) -> Result<(), UploadError> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    Err(classify_error(status, body))
}

/// Classifies an error answer: its status and (what rust-s3 kept of) its body.
///
/// Throttling is `429`, `503` or a `SlowDown` code. The status is what counts: rust-s3 replaces
/// the body of every PUT answer (object or part) with its `ETag` header, so the `SlowDown`
/// document of a `503` to a PUT never reaches us; S3 uses `503` for `SlowDown` and for
/// `ServiceUnavailable`, both of which ask for a lower request rate. A `2xx` here is an answer
/// that carried an `<Error>` document (S3 does this for CompleteMultipartUpload): the
/// operation failed and is worth retrying.
fn classify_error(status: u16, body: &[u8]) -> UploadError {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    let msg = format!("store answered {status}: {text}");
    if status == 429 || status == 503 || text.contains("SlowDown") {
        UploadError::Throttled(msg)
    } else if status >= 500 || status == 408 || (200..300).contains(&status) {
        UploadError::Transient(msg)
    } else {
        UploadError::Permanent(msg)
    }
}

impl Sink {
    /// Builds the sink described by the configuration (no I/O yet).
    pub fn new(config: &Config) -> Result<Sink, UploadError> {
        let (cfg, upload, batch) = (&config.sink, &config.upload, &config.batch);
        match cfg.kind {
            SinkKind::Discard => Ok(Sink::Discard),
            SinkKind::Fs => Ok(Sink::Fs(FsSink::new(&cfg.fs.root, false))),
            SinkKind::S3 => {
                let s3 = &cfg.s3;
                let bad = |e: String| UploadError::Permanent(e);
                let region = match &s3.endpoint {
                    Some(endpoint) => Region::Custom {
                        region: s3.region.clone(),
                        endpoint: endpoint.clone(),
                    },
                    None => s3
                        .region
                        .parse()
                        .map_err(|e| bad(format!("sink.s3.region: {e}")))?,
                };
                let creds = Credentials::new(
                    s3.access_key_id.as_deref(),
                    s3.secret_access_key.as_deref(),
                    None,
                    None,
                    None,
                )
                .map_err(|e| bad(format!("sink.s3 credentials: {e}")))?;
                let name = s3.bucket.as_deref().unwrap_or_default();
                let mut bucket =
                    Bucket::new(name, region, creds).map_err(|e| bad(format!("sink.s3: {e}")))?;
                if s3.path_style {
                    bucket = bucket.with_path_style();
                }
                let bucket = bucket
                    .with_request_timeout(Duration::from_millis(upload.request_timeout_ms))
                    .map_err(|e| bad(format!("sink.s3: {e}")))?;
                let encoded = match ObjectFormat::of(batch).content_encoding {
                    Some(enc) => {
                        let mut h = HeaderMap::new();
                        h.insert(
                            http::header::CONTENT_ENCODING,
                            HeaderValue::from_static(enc),
                        );
                        Some(Box::new(
                            bucket
                                .with_extra_headers(h)
                                .map_err(|e| bad(format!("sink.s3: {e}")))?,
                        ))
                    }
                    None => None,
                };
                Ok(Sink::S3(Box::new(S3Sink {
                    bucket,
                    encoded,
                    multipart_threshold: batch.multipart_threshold_bytes,
                    part_bytes: batch.part_bytes,
                    backoff_base_ms: upload.backoff_base_ms,
                    backoff_max_ms: upload.backoff_max_ms,
                    probe_key: match config.keys.prefix.trim_matches('/') {
                        "" => ".corepost-readiness-probe".into(),
                        p => format!("{p}/.corepost-readiness-probe"),
                    },
                })))
            }
        }
    }

    /// Checks at start-up that objects can be written (bucket exists, credentials work,
    /// directory writable).
    pub async fn check(&self) -> Result<(), UploadError> {
        match self {
            Sink::Discard => Ok(()),
            Sink::Unavailable(e) => Err(UploadError::Permanent(e.clone())),
            Sink::Fs(fs) => std::fs::create_dir_all(&fs.root).map_err(|e| {
                UploadError::Permanent(format!("cannot create {}: {e}", fs.root.display()))
            }),
            Sink::S3(s3) => s3.check().await,
        }
    }

    /// Stores one object, counting every write request sent to the store in `requests`.
    pub async fn put(
        &self,
        key: &str,
        data: &[u8],
        format: ObjectFormat,
        requests: &AtomicU64,
    ) -> Result<(), UploadError> {
        match self {
            Sink::Discard => Ok(()),
            Sink::Unavailable(e) => Err(UploadError::Permanent(e.clone())),
            Sink::Fs(fs) => fs.put(key, data),
            Sink::S3(s3) if data.len() >= s3.multipart_threshold => {
                s3.put_multipart(key, data, format, requests).await
            }
            Sink::S3(s3) => {
                let headers = format.content_encoding.map(|enc| {
                    let mut h = HeaderMap::new();
                    h.insert(
                        http::header::CONTENT_ENCODING,
                        HeaderValue::from_static(enc),
                    );
                    h
                });
                inc(requests, 1);
                let r = s3
                    .bucket
                    .put_object_with_content_type_and_headers(
                        key,
                        data,
                        format.content_type,
                        headers,
                    )
                    .await;
                answer(r.map(|resp| (resp.status_code(), resp.to_vec())))
            }
        }
    }
}

/// Classifies what rust-s3 returned for a request.
fn answer(r: Result<(u16, Vec<u8>), s3::error::S3Error>) -> Result<(), UploadError> {
    match r {
        Ok((status, body)) => classify_status(status, &body),
        Err(e) => Err(s3_error(e)),
    }
}

/// Classifies an error rust-s3 raised (a non-2xx answer it turned into an error, or no answer).
fn s3_error(e: s3::error::S3Error) -> UploadError {
    match e {
        s3::error::S3Error::HttpFailWithBody(status, body) => {
            classify_error(status, body.as_bytes())
        }
        e => UploadError::Transient(e.to_string()),
    }
}

/// Classifies the answer to CompleteMultipartUpload. S3 may answer `200` and report a failure
/// in the body, an `<Error>` document instead of `<CompleteMultipartUploadResult>`: the object
/// is then not stored, and the upload is still open (the caller aborts it and retries). rust-s3
/// 0.38 already turns such an answer into an error; this keeps the guarantee if it stops.
fn complete_answer(status: u16, body: &[u8]) -> Result<(), UploadError> {
    classify_status(status, body)?;
    if is_error_document(body) {
        Err(classify_error(status, body))
    } else {
        Ok(())
    }
}

/// Whether `body` is an XML document whose root element is `<Error>`.
fn is_error_document(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    let mut rest = text.trim_start();
    if rest.starts_with("<?xml") {
        rest = rest.split_once("?>").map_or("", |(_, r)| r).trim_start();
    }
    rest.starts_with("<Error>") || rest.starts_with("<Error ")
}

impl S3Sink {
    /// The readiness check. First a GET of a key that does not exist: `NoSuchKey` proves the
    /// bucket exists and the credentials work, without writing anything. corepost only
    /// writes, so a key may have no read access (a PutObject-only policy): a `403` to the GET
    /// is followed by a multipart upload started and aborted at the same key, which proves
    /// write access and leaves no object (an abort that fails leaves an incomplete upload,
    /// logged, for a lifecycle rule). Wrong credentials and a missing bucket fail both.
    async fn check(&self) -> Result<(), UploadError> {
        let got = match self.bucket.get_object(&self.probe_key).await {
            Ok(resp) => (resp.status_code(), resp.to_vec()),
            Err(s3::error::S3Error::HttpFailWithBody(status, body)) => (status, body.into_bytes()),
            Err(e) => return Err(UploadError::Transient(e.to_string())),
        };
        match got {
            (200, _) => Ok(()),
            (404, body) if String::from_utf8_lossy(&body).contains("NoSuchKey") => Ok(()),
            (403, body) => {
                let started = self
                    .bucket
                    .initiate_multipart_upload(&self.probe_key, "application/octet-stream")
                    .await;
                let upload = started.map_err(|e| match s3_error(e) {
                    UploadError::Permanent(w) => UploadError::Permanent(format!(
                        "reading refused ({}) and writing refused too: {w}",
                        classify_error(403, &body)
                    )),
                    other => other,
                })?;
                if let Err(e) = self
                    .bucket
                    .abort_upload(&self.probe_key, &upload.upload_id)
                    .await
                {
                    tracing::warn!(key = %self.probe_key, upload_id = %upload.upload_id, error = %s3_error(e), "cannot abort the readiness check's multipart upload; it stays in the store until a lifecycle rule or an operator removes it");
                }
                Ok(())
            }
            (status, body) => classify_status(status, &body),
        }
    }

    /// Multipart upload: start, one request per `part_bytes`, complete; on failure the upload
    /// is aborted (so the store keeps no parts; see [`S3Sink::abort`]) and the caller retries
    /// the whole object, as a new upload under the same key.
    async fn put_multipart(
        &self,
        key: &str,
        data: &[u8],
        format: ObjectFormat,
        requests: &AtomicU64,
    ) -> Result<(), UploadError> {
        let starter = self.encoded.as_deref().unwrap_or(&self.bucket);
        inc(requests, 1);
        let upload = starter
            .initiate_multipart_upload(key, format.content_type)
            .await
            .map_err(s3_error)?;
        let id = upload.upload_id;
        let mut parts = Vec::with_capacity(data.len() / self.part_bytes + 1);
        let mut result = Ok(());
        for (i, chunk) in data.chunks(self.part_bytes).enumerate() {
            inc(requests, 1);
            match self
                .bucket
                .put_multipart_chunk(chunk.to_vec(), key, i as u32 + 1, &id, format.content_type)
                .await
            {
                Ok(part) => parts.push(part),
                Err(e) => {
                    result = answer(Err(e));
                    break;
                }
            }
        }
        if result.is_ok() {
            inc(requests, 1);
            result = match self.bucket.complete_multipart_upload(key, &id, parts).await {
                Ok(resp) => complete_answer(resp.status_code(), resp.as_slice()),
                Err(e) => Err(s3_error(e)),
            };
        }
        if result.is_err() {
            self.abort(key, &id).await;
        }
        result
    }

    /// Aborts a failed multipart upload so the store keeps none of its parts: up to
    /// [`ABORT_ATTEMPTS`] tries while the store's answers are transient, pausing as between
    /// upload attempts. A `404` means the upload is gone already (rust-s3 aborts it itself when
    /// the store refuses a part). If every try fails the upload stays open: logged with its
    /// id, for a lifecycle rule (abort incomplete multipart uploads) or an operator.
    async fn abort(&self, key: &str, id: &str) {
        for attempt in 1..=ABORT_ATTEMPTS {
            let e = match self.bucket.abort_upload(key, id).await {
                Ok(()) => return,
                Err(s3::error::S3Error::HttpFailWithBody(404, _)) => return,
                Err(e) => s3_error(e),
            };
            if !e.retryable() || attempt == ABORT_ATTEMPTS {
                tracing::warn!(key, upload_id = id, attempts = attempt, error = %e, "cannot abort a failed multipart upload; its parts stay in the store until a lifecycle rule or an operator removes them");
                return;
            }
            let (base, max) = (self.backoff_base_ms, self.backoff_max_ms);
            let pause = if e.throttled() {
                super::throttled_backoff(attempt, base, max)
            } else {
                super::backoff(attempt, base, max)
            };
            tokio::time::sleep(pause).await;
        }
    }
}

/// Directories an [`FsSink`] remembers having made, at most.
const MADE_DIRS: usize = 4096;

impl FsSink {
    /// Files under `root`; `durable` fsyncs each file before it is renamed into place.
    pub fn new(root: impl Into<PathBuf>, durable: bool) -> Self {
        Self {
            root: root.into(),
            made: RefCell::new(HashSet::new()),
            durable,
            suffix: "",
        }
    }

    /// The spill directory's writer: files named `{key}.spill`, synced together at the end
    /// of a drain (see the worker).
    pub fn spill(root: impl Into<PathBuf>) -> Self {
        Self {
            suffix: SPILL_SUFFIX,
            ..Self::new(root, false)
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes one file atomically (temporary dot-file, then rename).
    pub fn put(&self, key: &str, data: &[u8]) -> Result<(), UploadError> {
        let path = if self.suffix.is_empty() {
            self.root.join(key)
        } else {
            self.root.join(format!("{key}{}", self.suffix))
        };
        let io = |what: &str, p: &Path, e: std::io::Error| {
            let msg = format!("{what} {}: {e}", p.display());
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                UploadError::Permanent(msg)
            } else {
                UploadError::Transient(msg)
            }
        };
        let dir = path.parent().unwrap_or(&self.root);
        if !self.made.borrow().contains(dir) {
            std::fs::create_dir_all(dir).map_err(|e| io("mkdir", dir, e))?;
            let mut made = self.made.borrow_mut();
            // Partitioned keys (`keys.template`) make new directories for as long as the
            // process runs: remembering them all would grow without bound. Forgetting costs
            // one `mkdir` that finds the directory there.
            if made.len() >= MADE_DIRS {
                made.clear();
            }
            made.insert(dir.to_path_buf());
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A dot-file in the same directory: the rename is atomic, and listings that skip dot
        // files never see a partial object.
        let tmp = dir.join(format!(".{name}.tmp"));
        if self.durable {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
            f.write_all(data).map_err(|e| io("write", &tmp, e))?;
            f.sync_all().map_err(|e| io("fsync", &tmp, e))?;
        } else {
            std::fs::write(&tmp, data).map_err(|e| io("write", &tmp, e))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| io("rename", &path, e))?;
        if self.durable {
            if let Ok(d) = std::fs::File::open(dir) {
                d.sync_all().map_err(|e| io("fsync", dir, e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify_status(200, b""), Ok(()));
        assert!(classify_status(503, b"").unwrap_err().retryable());
        assert!(classify_status(500, b"").unwrap_err().retryable());
        assert!(classify_status(429, b"").unwrap_err().retryable());
        assert!(classify_status(400, b"<Code>SlowDown</Code>")
            .unwrap_err()
            .retryable());
        assert!(!classify_status(403, b"AccessDenied")
            .unwrap_err()
            .retryable());
        assert!(!classify_status(404, b"NoSuchBucket")
            .unwrap_err()
            .retryable());
    }

    #[test]
    fn throttling_is_retryable_and_told_apart() {
        for (status, body) in [
            (429, &b""[..]),
            (503, b""),
            (503, b"<Error><Code>SlowDown</Code></Error>"),
            (400, b"<Code>SlowDown</Code>"),
        ] {
            let e = classify_status(status, body).unwrap_err();
            assert!(e.throttled() && e.retryable(), "{status}: {e:?}");
        }
        for status in [500, 502, 504, 408] {
            let e = classify_status(status, b"").unwrap_err();
            assert!(!e.throttled() && e.retryable(), "{status}: {e:?}");
        }
    }

    #[test]
    fn error_document_in_a_200_complete_is_a_transient_failure() {
        let err = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError</Code><Message>x</Message></Error>";
        let e = complete_answer(200, err).unwrap_err();
        assert!(e.retryable() && !e.throttled(), "{e:?}");
        let slow = b"\n  <Error><Code>SlowDown</Code></Error>";
        assert!(complete_answer(200, slow).unwrap_err().throttled());
        let ok = b"<?xml version=\"1.0\"?><CompleteMultipartUploadResult><Key>a</Key></CompleteMultipartUploadResult>";
        assert_eq!(complete_answer(200, ok), Ok(()));
        assert_eq!(complete_answer(200, b""), Ok(()));
        // rust-s3 reports such an answer as an error with status 200.
        let e = s3_error(s3::error::S3Error::HttpFailWithBody(
            200,
            String::from_utf8_lossy(err).into_owned(),
        ));
        assert!(e.retryable(), "{e:?}");
    }

    #[test]
    fn unavailable_sink_never_reports_stored() {
        let sink = Sink::Unavailable("bad config".into());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let fmt = ObjectFormat::of(&crate::config::BatchConfig::default());
        let r = rt.block_on(sink.put("k", b"{}", fmt, &AtomicU64::new(0)));
        assert!(matches!(r, Err(UploadError::Permanent(_))), "{r:?}");
        assert!(rt.block_on(sink.check()).is_err());
    }

    #[test]
    fn fs_sink_writes_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FsSink::new(dir.path(), true);
        sink.put("p/2026/01/02/03/a-0-1-2.json", b"{\"a\":1}")
            .unwrap();
        let got = std::fs::read(dir.path().join("p/2026/01/02/03/a-0-1-2.json")).unwrap();
        assert_eq!(got, b"{\"a\":1}");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("p/2026/01/02/03"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left behind: {names:?}");
    }

    #[test]
    fn the_fs_sinks_memory_of_directories_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FsSink::new(dir.path(), false);
        let n = MADE_DIRS + 10;
        for i in 0..n {
            sink.put(&format!("p/e={i}/a-0-1-{i}.ndjson"), b"{}\n")
                .unwrap();
            assert!(sink.made.borrow().len() <= MADE_DIRS);
        }
        // After forgetting, a directory made before is written into again.
        sink.put("p/e=0/a-0-1-again.ndjson", b"{}\n").unwrap();
        let files = std::fs::read_dir(dir.path().join("p")).unwrap().count();
        assert_eq!(files, n);
        assert!(dir.path().join("p/e=0/a-0-1-again.ndjson").exists());
    }
}
