//! Why an object was not stored: the sinks' one error type, which says whether the worker's
//! retry loop should try again, and how soon, and keeps the error it came from (an I/O or
//! S3 client error) as its source.

use std::error::Error;
use std::fmt;

/// Why an object was not stored, and whether trying again can help.
#[derive(Debug, PartialEq, Eq)]
pub enum UploadError {
    /// Connection errors, timeouts, 5xx other than 503, an `<Error>` document in a `200`
    /// answer: worth retrying.
    Transient(Cause),
    /// The store asked for fewer requests: `429`, `503` (S3's `SlowDown` status) or a
    /// `SlowDown` error code. Worth retrying, after a longer pause (see
    /// `upload::throttled_backoff`).
    Throttled(Cause),
    /// Bad credentials, missing bucket, bad request: retrying cannot help.
    Permanent(Cause),
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

impl fmt::Display for UploadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UploadError::Transient(c) => write!(f, "transient: {c}"),
            UploadError::Throttled(c) => write!(f, "throttled: {c}"),
            UploadError::Permanent(c) => write!(f, "permanent: {c}"),
        }
    }
}

impl Error for UploadError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        let (UploadError::Transient(c) | UploadError::Throttled(c) | UploadError::Permanent(c)) =
            self;
        c.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

/// What went wrong, in words (for logs and `/readyz`), and the error it came from, if any.
#[derive(Debug)]
pub struct Cause {
    /// Says where (the path, the operation) as well as what: the source's own text is in it.
    message: String,
    source: Option<Box<dyn Error + Send + Sync>>,
}

impl Cause {
    /// `message`, which already says what `source` says, with `source` kept behind it.
    pub fn of(message: String, source: impl Error + Send + Sync + 'static) -> Cause {
        Cause {
            message,
            source: Some(Box::new(source)),
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Two causes are equal when they say the same (the sources behind them are not compared).
impl PartialEq for Cause {
    fn eq(&self, other: &Cause) -> bool {
        self.message == other.message
    }
}

impl Eq for Cause {}

impl From<String> for Cause {
    fn from(message: String) -> Cause {
        Cause {
            message,
            source: None,
        }
    }
}

impl From<&str> for Cause {
    fn from(message: &str) -> Cause {
        message.to_string().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_kept_as_the_source_and_the_words_unchanged() {
        let io = std::io::Error::other("disk on fire");
        let e = UploadError::Transient(Cause::of(format!("write /x: {io}"), io));
        assert_eq!(e.to_string(), "transient: write /x: disk on fire");
        assert_eq!(
            e.source().map(|s| s.to_string()).as_deref(),
            Some("disk on fire")
        );
        let plain = UploadError::Permanent("no bucket".into());
        assert_eq!(plain.to_string(), "permanent: no bucket");
        assert!(plain.source().is_none());
    }
}
