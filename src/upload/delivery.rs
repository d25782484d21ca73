//! Delivery: one object into the store, retried with backoff; spilled (or left in the durable
//! spool) when it cannot be stored; each request answered once all its objects are done.

use super::backoff::{backoff, refused_backoff, throttled_backoff};
use super::error::Cause;
use super::{group_sync, FsSink, ObjectFormat, Sink, UploadError};
use crate::config::Config;
use crate::job::{Delivery, Spooled};
use crate::keys::KeySpace;
use crate::metrics::{dec, inc, ShardStats};
use crate::queue::Budget;
use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Notify;

/// What became of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// In the store.
    Stored,
    /// Not stored: kept for a later attempt, in the spill directory or (a spooled request's
    /// object) in the durable spool, or lost when neither was possible (counted in
    /// `payloads_failed`). `refused`: the store refused it for good, a retry cannot help.
    NotStored { refused: bool },
}

impl Outcome {
    /// The outcome of two objects of the same requests: stored if both are, refused if
    /// either is.
    pub(super) fn and(self, other: Outcome) -> Outcome {
        match (self, other) {
            (Outcome::Stored, o) | (o, Outcome::Stored) => o,
            (Outcome::NotStored { refused: a }, Outcome::NotStored { refused: b }) => {
                Outcome::NotStored { refused: a || b }
            }
        }
    }
}

/// One job being uploaded (an accepted request's payloads): its budget is released and its
/// client told once every object holding one of its payloads is stored or spilled.
pub(super) struct Upload {
    /// Its payloads and body bytes, released from the shard's budget at the end.
    pub(super) payloads: usize,
    pub(super) bytes: usize,
    /// Objects still holding some of its payloads, plus one while its payloads are being added.
    pub(super) pending: Cell<usize>,
    /// The worst of its objects' outcomes so far.
    pub(super) outcome: Cell<Delivery>,
    /// The handler waiting for the outcome (`ack = "uploaded"`), taken when it is told.
    pub(super) waiter: RefCell<Option<crate::job::Waiter>>,
    /// Its record in the durable spool, released once everything is stored.
    pub(super) spooled: Option<Spooled>,
}

/// What the worker's tasks share.
pub(super) struct Ctx {
    pub(super) sink: Sink,
    /// The fs sink under `ack = "durable"`: objects are synced (grouped) before they count as
    /// stored, since storing one releases its spool record.
    pub(super) fs_sync: Option<group_sync::GroupSync>,
    pub(super) spill: FsSink,
    /// `batch.schema_file`'s columns, read at start.
    pub(super) schema: Option<arrow_schema::SchemaRef>,
    /// Schema files replayed records were taken with, by digest (see `objects::schema_for`).
    pub(super) kept_schemas:
        std::cell::RefCell<std::collections::HashMap<String, Option<arrow_schema::SchemaRef>>>,
    pub(super) stats: Arc<ShardStats>,
    pub(super) budget: Arc<Budget>,
    pub(super) keys: KeySpace,
    pub(super) config: Arc<Config>,
    pub(super) shard: usize,
    /// Set at the drain deadline: stop trying the store, spill instead.
    pub(super) spilling: Cell<bool>,
    pub(super) deadline: Notify,
    /// Wakes the spill directory's redelivery (shard 0) when this worker spilled an object.
    pub(super) spilled: Notify,
}

impl Ctx {
    /// Notes that one object holding some of `up`'s payloads is done (`None`: all its
    /// payloads have been added); the last one releases the job's budget and answers it.
    pub(super) fn finish(&self, up: &Upload, outcome: Option<Outcome>) {
        match outcome {
            Some(Outcome::NotStored { refused: true }) => up.outcome.set(Delivery::Refused),
            Some(Outcome::NotStored { refused: false }) if up.outcome.get() == Delivery::Stored => {
                up.outcome.set(Delivery::Deferred)
            }
            _ => {}
        }
        up.pending.set(up.pending.get() - 1);
        if up.pending.get() == 0 {
            self.budget.release(up.payloads, up.bytes);
            if let Some(sp) = &up.spooled {
                if up.outcome.get() == Delivery::Stored {
                    crate::crash_point!("upload::stored::before_release");
                    sp.releaser.release(sp.id);
                }
            }
            if let Some(waiter) = up.waiter.borrow_mut().take() {
                waiter.tell(up.outcome.get());
            }
        }
    }

    /// Stores one object of `payloads` payloads, retrying as configured; what cannot be
    /// stored is spilled, unless it comes from the durable spool (`spooled`), which keeps it
    /// for the next start. Counts and logs the outcome.
    pub(super) async fn deliver(
        &self,
        key: &str,
        data: &[u8],
        format: ObjectFormat,
        payloads: usize,
        spooled: bool,
    ) -> Outcome {
        let n = payloads as u64;
        inc(&self.stats.uploads_in_flight, 1);
        let outcome = match self.store(key, data, format, spooled).await {
            Ok(()) => {
                inc(&self.stats.payloads_uploaded, n);
                Outcome::Stored
            }
            // Only at the drain deadline: until then a spooled request is tried again.
            Err(e) if spooled => {
                inc(&self.stats.payloads_deferred, n);
                tracing::debug!(shard = self.shard, key, payloads, error = %e, "object not stored; its request stays in the durable spool for the next start");
                Outcome::NotStored {
                    refused: !e.retryable(),
                }
            }
            Err(e) => {
                let permanent = !e.retryable();
                if let Err(spill_err) = self.spill.put(key, data) {
                    inc(&self.stats.payloads_failed, n);
                    tracing::error!(shard = self.shard, key, payloads, error = %e, spill_error = %spill_err, "payloads LOST: not stored and not spilled");
                } else {
                    inc(&self.stats.payloads_spilled, n);
                    // The sink's change of state was logged once by `store`; not per object.
                    tracing::debug!(shard = self.shard, key, payloads, error = %e, "object not stored; kept in the spill directory");
                    self.spilled.notify_one();
                }
                Outcome::NotStored { refused: permanent }
            }
        };
        dec(&self.stats.uploads_in_flight, 1);
        outcome
    }

    /// Stores one object; with the fs sink under `ack = "durable"`, also waits for the group
    /// sync that makes it survive a power cut.
    pub(super) async fn put_synced(
        &self,
        key: &str,
        data: &[u8],
        format: ObjectFormat,
    ) -> Result<(), UploadError> {
        self.sink
            .put(key, data, format, &self.stats.put_requests)
            .await?;
        if let Some(g) = &self.fs_sync {
            g.sync()
                .await
                .map_err(|e| UploadError::Transient(Cause::of(e.to_string(), e)))?;
            self.stats.sink_syncs.store(g.syncs.get(), Relaxed);
        }
        Ok(())
    }

    /// Tries the store until it succeeds or the drain deadline; an object that is not
    /// `persistent` also gives up at a refusal (a permanent error, or `max_attempts` used
    /// up), for the caller to keep it in the spill directory. Retries wait [`backoff`], or the
    /// longer [`throttled_backoff`] when the store throttled the attempt (counted in
    /// `corepost_upload_throttled_total`); after a refusal, [`refused_backoff`]. The sink's
    /// changes of state (failing, refusing, accepting again) are logged once each.
    pub(super) async fn store(
        &self,
        key: &str,
        data: &[u8],
        format: ObjectFormat,
        persistent: bool,
    ) -> Result<(), UploadError> {
        let up = &self.config.upload;
        let (mut attempt, mut refusals) = (0u32, 0u32);
        loop {
            if self.spilling.get() {
                return Err(UploadError::Transient("drain deadline reached".into()));
            }
            attempt += 1;
            let t0 = Instant::now();
            let result = tokio::select! {
                r = self.put_synced(key, data, format) => r,
                _ = self.deadline.notified() => Err(UploadError::Transient("drain deadline reached".into())),
            };
            if result.as_ref().is_err_and(UploadError::throttled) {
                inc(&self.stats.upload_throttled, 1);
            }
            match result {
                Ok(()) => {
                    self.stats.observe_upload(t0.elapsed().as_secs_f64());
                    inc(&self.stats.objects_uploaded, 1);
                    inc(&self.stats.bytes_out, data.len() as u64);
                    if self.stats.readiness.stored() {
                        tracing::info!(
                            shard = self.shard,
                            "sink recovered: the store accepts again"
                        );
                    }
                    return Ok(());
                }
                Err(e) if e.retryable() && (up.max_attempts == 0 || attempt < up.max_attempts) => {
                    if self.spilling.get() {
                        return Err(e);
                    }
                    inc(&self.stats.upload_retries, 1);
                    if self.stats.readiness.sink_failed(&e.to_string()) {
                        tracing::warn!(shard = self.shard, error = %e, "sink failing; retrying with backoff");
                    }
                    let pause = if e.throttled() {
                        throttled_backoff(attempt, up.backoff_base_ms, up.backoff_max_ms)
                    } else {
                        backoff(attempt, up.backoff_base_ms, up.backoff_max_ms)
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.deadline.notified() => {}
                    }
                }
                Err(e) => {
                    self.stats.readiness.sink_failed(&e.to_string());
                    if !e.retryable() && self.stats.readiness.refused() {
                        tracing::error!(shard = self.shard, error = %e, retry_max_ms = up.refused_backoff_max_ms,
                            "the store refuses objects; they are kept (durable spool, spill directory) and tried again until it accepts");
                    }
                    if !persistent || self.spilling.get() {
                        return Err(e);
                    }
                    refusals += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(refused_backoff(refusals, up.refused_backoff_max_ms)) => {}
                        _ = self.deadline.notified() => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_objects_are_stored_only_if_both_are() {
        let (stored, later, refused) = (
            Outcome::Stored,
            Outcome::NotStored { refused: false },
            Outcome::NotStored { refused: true },
        );
        assert_eq!(stored.and(stored), stored);
        for o in [later, refused] {
            assert_eq!(stored.and(o), o);
            assert_eq!(o.and(stored), o);
        }
        assert_eq!(later.and(refused), refused);
        assert_eq!(refused.and(later), refused);
        assert_eq!(later.and(later), later);
    }
}
