//! Sinks: where an object goes. `s3` (rust-s3, one `Bucket` per shard), `fs` (files under a
//! directory, written atomically by rename), `discard` (count and drop, for benchmarks).
#![forbid(unsafe_code)]

use crate::config::{SinkConfig, SinkKind, UploadConfig};
use s3::creds::Credentials;
use s3::{Bucket, Region};
use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why an object was not stored, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    /// Connection errors, timeouts, 5xx, SlowDown, 429: worth retrying.
    #[error("transient: {0}")]
    Transient(String),
    /// Bad credentials, missing bucket, bad request: retrying cannot help.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl UploadError {
    /// Whether another attempt can succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, UploadError::Transient(_))
    }
}

/// Where objects are stored; one per upload worker.
#[derive(Debug)]
pub enum Sink {
    /// An S3 bucket.
    S3(Box<Bucket>),
    /// A local directory.
    Fs(FsSink),
    /// Nowhere (benchmarks of the front end).
    Discard,
    /// The configured sink could not be built: every put fails permanently, so payloads go
    /// to the spill directory instead of being counted as stored.
    Unavailable(String),
}

/// The local-directory sink; also the spill directory's writer.
#[derive(Debug)]
pub struct FsSink {
    root: PathBuf,
    /// Directories already created, so a steady stream of objects costs no `mkdir` calls.
    made: RefCell<HashSet<PathBuf>>,
    /// fsync each file before renaming it into place (the spill directory needs this; the fs
    /// sink with `ack = "queued"` does not).
    durable: bool,
}

/// Classifies an HTTP status from the store.
fn classify_status(status: u16, body: &[u8]) -> Result<(), UploadError> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    let msg = format!("store answered {status}: {text}");
    if status >= 500 || status == 429 || status == 408 || text.contains("SlowDown") {
        Err(UploadError::Transient(msg))
    } else {
        Err(UploadError::Permanent(msg))
    }
}

impl Sink {
    /// Builds the sink described by the configuration (no I/O yet).
    pub fn new(cfg: &SinkConfig, upload: &UploadConfig) -> Result<Sink, UploadError> {
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
                Ok(Sink::S3(bucket))
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
            Sink::S3(bucket) => {
                // A GET of a key that does not exist: `NoSuchKey` proves the bucket exists and
                // the credentials work, without writing anything.
                match bucket
                    .get_object("corepost-readiness-probe-no-such-key")
                    .await
                {
                    Ok(resp) => {
                        let body = resp.as_slice();
                        let text = String::from_utf8_lossy(body);
                        if resp.status_code() == 200
                            || (resp.status_code() == 404 && text.contains("NoSuchKey"))
                        {
                            Ok(())
                        } else {
                            classify_status(resp.status_code(), body)
                        }
                    }
                    Err(s3::error::S3Error::HttpFailWithBody(status, body)) => {
                        classify_status(status, body.as_bytes())
                    }
                    Err(e) => Err(UploadError::Transient(e.to_string())),
                }
            }
        }
    }

    /// Stores one object.
    pub async fn put(&self, key: &str, data: &[u8], content_type: &str) -> Result<(), UploadError> {
        match self {
            Sink::Discard => Ok(()),
            Sink::Unavailable(e) => Err(UploadError::Permanent(e.clone())),
            Sink::Fs(fs) => fs.put(key, data),
            Sink::S3(bucket) => match bucket
                .put_object_with_content_type(key, data, content_type)
                .await
            {
                Ok(resp) => classify_status(resp.status_code(), resp.as_slice()),
                Err(s3::error::S3Error::HttpFailWithBody(status, body)) => {
                    classify_status(status, body.as_bytes())
                }
                Err(e) => Err(UploadError::Transient(e.to_string())),
            },
        }
    }
}

impl FsSink {
    /// Files under `root`; `durable` fsyncs each file before it is renamed into place.
    pub fn new(root: impl Into<PathBuf>, durable: bool) -> Self {
        Self {
            root: root.into(),
            made: RefCell::new(HashSet::new()),
            durable,
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes one file atomically (temporary dot-file, then rename).
    pub fn put(&self, key: &str, data: &[u8]) -> Result<(), UploadError> {
        let path = self.root.join(key);
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
            self.made.borrow_mut().insert(dir.to_path_buf());
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
    fn unavailable_sink_never_reports_stored() {
        let sink = Sink::Unavailable("bad config".into());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let r = rt.block_on(sink.put("k", b"{}", "application/json"));
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
}
