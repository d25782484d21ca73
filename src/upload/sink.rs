//! Sinks: where an object goes. `s3` (rust-s3, one `Bucket` per shard), `fs` (files under a
//! directory, written atomically by rename), `discard` (count and drop, for benchmarks).

use super::batch::ObjectFormat;
use super::error::Cause;
use super::{FsSink, UploadError};
use crate::config::{Config, SinkKind};
use crate::metrics::inc;
use http::{HeaderMap, HeaderValue};
use s3::command::{Command, Multipart};
use s3::creds::Credentials;
use s3::request::tokio_backend::ReqwestRequest;
use s3::request::Request as _;
use s3::serde_types::Part;
use s3::{Bucket, Region};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

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

/// Classifies an HTTP status from the store.
fn classify_status(status: u16, body: &[u8]) -> Result<(), UploadError> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    Err(classify_error(status, body))
}

/// Classifies an error answer: its status and (what rust-s3 kept of) its body.
///
/// Throttling is `429`, `503` or a `SlowDown` code; S3 uses `503` for `SlowDown` and for
/// `ServiceUnavailable`, both of which ask for a lower request rate. A body that did not
/// arrive intact (`BadDigest`, `XAmzContentSHA256Mismatch`, `RequestTimeout`, all `400`) is
/// transient: the next attempt sends it again. PUTs keep the store's answer for this (see
/// [`put_request`]). A `2xx` here is an answer
/// that carried an `<Error>` document (S3 does this for CompleteMultipartUpload): the
/// operation failed and is worth retrying.
fn classify_error(status: u16, body: &[u8]) -> UploadError {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    let msg = format!("store answered {status}: {text}");
    // The store received other bytes than were sent (`Content-MD5` or the signed SHA-256 do
    // not match the body), or the body too slowly: the next attempt sends them again.
    let in_transit = ["BadDigest", "XAmzContentSHA256Mismatch", "RequestTimeout"]
        .iter()
        .any(|code| text.contains(&format!("<Code>{code}</Code>")));
    if status == 429 || status == 503 || text.contains("SlowDown") {
        UploadError::Throttled(msg.into())
    } else if status >= 500 || status == 408 || in_transit || (200..300).contains(&status) {
        UploadError::Transient(msg.into())
    } else {
        UploadError::Permanent(msg.into())
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
                let bad = |e: String| UploadError::Permanent(e.into());
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
            Sink::Unavailable(e) => Err(UploadError::Permanent(e.as_str().into())),
            Sink::Fs(fs) => std::fs::create_dir_all(fs.root()).map_err(|e| {
                let msg = format!("cannot create {}: {e}", fs.root().display());
                UploadError::Permanent(Cause::of(msg, e))
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
            Sink::Unavailable(e) => Err(UploadError::Permanent(e.as_str().into())),
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
                let r = put_request(&s3.bucket, key, data, format.content_type, headers, None);
                answer(r.await.map(|(status, body, _)| (status, body)))
            }
        }
    }
}

/// One PUT, of an object or (with `part`: its number and the upload's id) of a part of a
/// multipart upload, through rust-s3's request layer, keeping the store's answer: rust-s3's
/// `put_object*` and `put_multipart_chunk` replace it with the `ETag` header, which loses an
/// error's code (`BadDigest`, `SlowDown`). rust-s3 sends `Content-MD5` and the signed
/// `x-amz-content-sha256` of the body with every PUT, so the store refuses a body changed on
/// the way (`400 BadDigest`), which [`classify_error`] retries. Returns the status, the
/// answer's body and its `ETag`.
async fn put_request(
    bucket: &Bucket,
    key: &str,
    content: &[u8],
    content_type: &str,
    headers: Option<HeaderMap>,
    part: Option<(u32, &str)>,
) -> Result<(u16, Vec<u8>, Option<String>), s3::error::S3Error> {
    let command = Command::PutObject {
        content,
        content_type,
        custom_headers: headers,
        multipart: part.map(|(n, id)| Multipart::new(n, id)),
    };
    let r = ReqwestRequest::new(bucket, key, command)
        .await?
        .response_data(false)
        .await?;
    let etag = r
        .headers()
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
        .map(|(_, v)| v);
    Ok((r.status_code(), r.to_vec(), etag))
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
        e => UploadError::Transient(Cause::of(e.to_string(), e)),
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
            Err(e) => return Err(UploadError::Transient(Cause::of(e.to_string(), e))),
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
                    UploadError::Permanent(w) => UploadError::Permanent(
                        format!(
                            "reading refused ({}) and writing refused too: {w}",
                            classify_error(403, &body)
                        )
                        .into(),
                    ),
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
            let n = i as u32 + 1;
            let r = put_request(
                &self.bucket,
                key,
                chunk,
                format.content_type,
                None,
                Some((n, &id)),
            );
            result = match r.await {
                Ok((status, body, etag)) => classify_status(status, &body).and_then(|()| {
                    let etag = etag.ok_or_else(|| {
                        UploadError::Transient(
                            format!("part {n}: the store's answer has no ETag").into(),
                        )
                    })?;
                    parts.push(Part {
                        etag,
                        part_number: n,
                    });
                    Ok(())
                }),
                Err(e) => Err(s3_error(e)),
            };
            if result.is_err() {
                break;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify_status(200, b""), Ok(()));
        for code in ["BadDigest", "XAmzContentSHA256Mismatch", "RequestTimeout"] {
            let body = format!("<Error><Code>{code}</Code><Message>x</Message></Error>");
            let e = classify_status(400, body.as_bytes()).unwrap_err();
            assert!(e.retryable() && !e.throttled(), "{code}: {e:?}");
        }
        assert!(
            !classify_status(400, b"<Error><Code>InvalidArgument</Code></Error>")
                .unwrap_err()
                .retryable()
        );
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
}
