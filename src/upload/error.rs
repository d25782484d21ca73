//! Why an object was not stored: the sinks' one error type, which says whether the worker's
//! retry loop should try again, and how soon.

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
