//! One shard's readiness (`/readyz`, `corepost_shard_ready`): whether its upload worker runs,
//! its sink has been checked and is not failing or refusing, and its spool is writing.
//!
//! The state is private: the upload worker and the shard's intake say what happened
//! (`worker_started`, `sink_passed`, `sink_failed`, `refused`, `stored`, `spool_write`), and
//! `/readyz` and `/metrics` ask (`not_ready`, `sink_failing`, `refusing`). Each writer is one
//! thread (the shard's executor or its worker); readers only load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

/// How long a failed spool write keeps a shard unready (unless a write succeeds since): long
/// enough for a load balancer to see it, short enough that the shard is tried again.
const SPOOL_FAILURE_HOLD_MS: u64 = 5_000;

/// One shard's readiness; see the module doc.
#[derive(Debug, Default)]
pub struct Readiness {
    /// The shard's upload worker thread is running.
    worker_alive: AtomicBool,
    /// The sink's check has passed once: until then the shard is not ready.
    sink_checked: AtomicBool,
    /// True while the sink's last attempt (upload or check) failed.
    sink_failing: AtomicBool,
    /// Objects stored by any shard (one store behind all of them): a refusal lasts until
    /// this moves, whichever shard stores next.
    stored_anywhere: Arc<AtomicU64>,
    /// 1 + `stored_anywhere` when this shard's store last refused for good; 0 when it has
    /// not since its last success. See [`Readiness::refusing`].
    refused_at: AtomicU64,
    /// Why the sink last failed.
    sink_error: Mutex<String>,
    /// Whether the shard's last spool write failed, and when a write last failed (Unix ms,
    /// coarse): an order, not two times to compare, so a failure and a success in the same
    /// clock tick are told apart, and a good write (one per durable request) reads no clock.
    spool_last_failed: AtomicBool,
    /// See `spool_last_failed`.
    spool_failed_ms: AtomicU64,
    /// Why the last spool write failed.
    spool_error: Mutex<String>,
}

impl Readiness {
    /// The readiness of one shard of a server whose shards share `stored_anywhere` (a
    /// refusal ends when any of them stores an object).
    pub fn sharing(stored_anywhere: Arc<AtomicU64>) -> Readiness {
        Readiness {
            stored_anywhere,
            ..Readiness::default()
        }
    }

    /// The upload worker's thread has started.
    pub fn worker_started(&self) {
        self.worker_alive.store(true, Relaxed);
    }

    /// The upload worker's thread has ended (or panicked).
    pub fn worker_ended(&self) {
        self.worker_alive.store(false, Relaxed);
    }

    /// Whether the sink's check has passed and nothing has failed since (no check needed).
    pub fn sink_ok(&self) -> bool {
        self.sink_checked.load(Relaxed) && !self.sink_failing.load(Relaxed)
    }

    /// True while the sink's last attempt (upload or check) failed.
    pub fn sink_failing(&self) -> bool {
        self.sink_failing.load(Relaxed)
    }

    /// Notes a passed sink check; true if the sink was failing or never checked until now.
    pub fn sink_passed(&self) -> bool {
        let was_failing = self.sink_failing.swap(false, Relaxed);
        let was_checked = self.sink_checked.swap(true, Relaxed);
        was_failing || !was_checked
    }

    /// Notes a failed sink check or upload attempt and why; true if the sink was not
    /// failing until now.
    pub fn sink_failed(&self, why: &str) -> bool {
        set_text(&self.sink_error, why);
        !self.sink_failing.swap(true, Relaxed)
    }

    /// True while the store refuses for good (403, 404 NoSuchBucket, bad credentials, fs sink
    /// permissions): from this shard's last refusal until any shard stores an object. What
    /// was refused waits in the spool or spill directory meanwhile.
    pub fn refusing(&self) -> bool {
        self.refused_at.load(Relaxed) == self.stored_anywhere.load(Relaxed) + 1
    }

    /// Notes a refusal; true if the shard was not refusing already.
    pub fn refused(&self) -> bool {
        let was = self.refusing();
        self.refused_at
            .store(self.stored_anywhere.load(Relaxed) + 1, Relaxed);
        !was
    }

    /// Notes a stored object; true if the sink was failing or refusing until now.
    pub fn stored(&self) -> bool {
        let was_refusing = self.refusing();
        self.stored_anywhere.fetch_add(1, Relaxed);
        self.refused_at.store(0, Relaxed);
        self.sink_failing.swap(false, Relaxed) || was_refusing
    }

    /// Notes the outcome of a spool write.
    pub fn spool_write(&self, result: Result<(), &str>) {
        match result {
            Ok(()) => {
                // Read first: the flag's cache line stays shared with the shards that
                // answer `/readyz` unless it changes.
                if self.spool_last_failed.load(Relaxed) {
                    self.spool_last_failed.store(false, Relaxed);
                }
            }
            Err(why) => {
                set_text(&self.spool_error, why);
                self.spool_failed_ms
                    .store(crate::clock::coarse_unix_ms(), Relaxed);
                self.spool_last_failed.store(true, Relaxed);
            }
        }
    }

    /// Why this shard is not ready, if it is not.
    pub fn not_ready(&self) -> Option<String> {
        if !self.worker_alive.load(Relaxed) {
            return Some("upload worker not running".into());
        }
        if !self.sink_checked.load(Relaxed) {
            return Some(if self.sink_failing.load(Relaxed) {
                format!("sink check failed: {}", get_text(&self.sink_error))
            } else {
                "sink not checked yet".into()
            });
        }
        if self.refusing() {
            return Some(format!(
                "sink refusing (what it refused is kept and tried again): {}",
                get_text(&self.sink_error)
            ));
        }
        if self.sink_failing.load(Relaxed) {
            return Some(format!("sink failing: {}", get_text(&self.sink_error)));
        }
        if self.spool_last_failed.load(Relaxed)
            && crate::clock::coarse_unix_ms().saturating_sub(self.spool_failed_ms.load(Relaxed))
                < SPOOL_FAILURE_HOLD_MS
        {
            return Some(format!(
                "spool write failed: {}",
                get_text(&self.spool_error)
            ));
        }
        None
    }
}

fn set_text(m: &Mutex<String>, text: &str) {
    let mut t = m.lock().unwrap_or_else(PoisonError::into_inner);
    t.clear();
    t.push_str(text);
}

fn get_text(m: &Mutex<String>) -> String {
    m.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_why_until_the_worker_runs_and_the_sink_stores() {
        let stored_anywhere = Arc::new(AtomicU64::new(0));
        let (r, other) = (
            Readiness::sharing(stored_anywhere.clone()),
            Readiness::sharing(stored_anywhere),
        );
        assert_eq!(r.not_ready().as_deref(), Some("upload worker not running"));
        r.worker_started();
        assert_eq!(r.not_ready().as_deref(), Some("sink not checked yet"));
        assert!(r.sink_failed("no bucket"));
        assert!(!r.sink_failed("no bucket"), "failing already");
        assert_eq!(
            r.not_ready().as_deref(),
            Some("sink check failed: no bucket")
        );
        assert!(r.sink_passed());
        assert!(r.sink_ok() && r.not_ready().is_none());
        assert!(!r.sink_passed(), "passed already");
        assert!(r.refused() && !r.refused());
        r.sink_failed("403");
        assert!(r
            .not_ready()
            .is_some_and(|w| w.starts_with("sink refusing")));
        // Any shard storing an object ends the refusal.
        assert!(!other.stored());
        assert!(!r.refusing());
        assert_eq!(r.not_ready().as_deref(), Some("sink failing: 403"));
        assert!(r.stored() && r.not_ready().is_none());
        r.spool_write(Err("EIO"));
        assert_eq!(r.not_ready().as_deref(), Some("spool write failed: EIO"));
        // A good write ends it at once, and a failure right after (within one clock tick)
        // starts it again.
        r.spool_write(Ok(()));
        assert!(r.not_ready().is_none());
        r.spool_write(Err("EIO again"));
        assert_eq!(
            r.not_ready().as_deref(),
            Some("spool write failed: EIO again")
        );
        r.worker_ended();
        assert_eq!(r.not_ready().as_deref(), Some("upload worker not running"));
    }
}
