//! The per-shard queue between a shard (glommio) and its upload worker (tokio), with
//! backpressure: bounded by payload count and by bytes, a request is queued whole or not at all.

// The job types were defined here; the upload worker still names them by these paths.
pub use crate::job::{Delivery, HeaderValues, Job, Naming, Spooled};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Why a request found no room in its shard's queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRoom {
    /// No room now: the queue is full (`503`, a retry later can succeed).
    #[error("overloaded")]
    Overloaded,
    /// More payloads than the shard's whole queue holds (`queue.max_payloads`): it could
    /// never be accepted, so a retry cannot help.
    #[error("{n} payloads in one request; at most {max} per request (queue.max_payloads)")]
    TooManyPayloads {
        /// Payloads in the request.
        n: usize,
        /// The limit.
        max: usize,
    },
    /// A body larger than the shard's whole queue (`queue.max_bytes`).
    #[error("body of {len} bytes; at most {max} per request (queue.max_bytes)")]
    OverQueue {
        /// The body's length (declared or read).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The queue is closed: the shard is shutting down.
    #[error("shutting down")]
    Closed,
    /// No room now in the share of the queue that requests without an `Authorization`
    /// header may hold (`auth.unverified_queue_percent`): `503`, while clients that send
    /// their token in the header are still served.
    #[error("overloaded: requests without an Authorization header hold all the room they may (auth.unverified_queue_percent); send `Authorization: Bearer TOKEN`")]
    UnverifiedFull,
    /// A body larger than the whole share of requests without an `Authorization` header.
    #[error("body of {len} bytes without an Authorization header; at most {max} (auth.unverified_queue_percent of queue.max_bytes); send `Authorization: Bearer TOKEN`")]
    OverUnverified {
        /// The body's length (declared or read).
        len: usize,
        /// The share's size.
        max: usize,
    },
}

/// The part of a shard's byte budget that requests whose token is not known yet (no
/// `Authorization` header under `[auth]`: the body's `token` decides once it is parsed) may
/// hold together, so that clients who can be checked from the head keep finding room while
/// such bodies stall. A request leaves it once its token is verified
/// ([`Reservation::verified`]).
#[derive(Debug)]
pub struct Share {
    held: AtomicUsize,
    max: usize,
}

impl Share {
    /// A share of `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            held: AtomicUsize::new(0),
            max,
        }
    }

    /// Bytes held in the share now.
    pub fn held(&self) -> usize {
        self.held.load(Relaxed)
    }

    fn fits_at_all(&self, bytes: usize) -> Result<(), NoRoom> {
        if bytes > self.max {
            return Err(NoRoom::OverUnverified {
                len: bytes,
                max: self.max,
            });
        }
        Ok(())
    }

    fn try_take(&self, bytes: usize) -> bool {
        bytes == 0
            || self
                .held
                .fetch_update(Relaxed, Relaxed, |cur| {
                    (cur + bytes <= self.max).then_some(cur + bytes)
                })
                .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Relaxed);
    }
}

/// The shard's memory budget for payload data: what is queued or uploading. The shard
/// reserves, the worker releases when a request's last payload is stored (or given up).
#[derive(Debug)]
pub struct Budget {
    payloads: AtomicUsize,
    bytes: AtomicUsize,
    max_payloads: usize,
    max_bytes: usize,
    /// Notified whenever room is returned, for those waiting for it ([`Budget::reserve_waiting`]).
    freed: event_listener::Event,
}

impl Budget {
    /// A budget of `max_payloads` payloads and `max_bytes` body bytes.
    pub fn new(max_payloads: usize, max_bytes: usize) -> Self {
        Self {
            payloads: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_payloads,
            max_bytes,
            freed: event_listener::Event::new(),
        }
    }

    /// Reserves room for `payloads` and `bytes`, waiting for it as long as it takes (replays
    /// of spooled and spilled requests, which must not be refused). The caller makes sure the
    /// request fits at all ([`Budget::fits_at_all`]), else this never returns.
    pub async fn reserve_waiting(&self, payloads: usize, bytes: usize) {
        loop {
            if self.try_reserve(payloads, bytes) {
                return;
            }
            let freed = self.freed.listen();
            if self.try_reserve(payloads, bytes) {
                return;
            }
            freed.await;
        }
    }

    /// Reserves room for a whole request, or nothing. The shard reserves for its requests and
    /// the worker for spill files it replays, so the check and the add are one atomic step
    /// per counter (a payload reservation that then finds no byte room is given back).
    pub fn try_reserve(&self, payloads: usize, bytes: usize) -> bool {
        if self
            .payloads
            .fetch_update(Relaxed, Relaxed, |cur| {
                (cur + payloads <= self.max_payloads).then_some(cur + payloads)
            })
            .is_err()
        {
            return false;
        }
        if self
            .bytes
            .fetch_update(Relaxed, Relaxed, |cur| {
                (cur + bytes <= self.max_bytes).then_some(cur + bytes)
            })
            .is_err()
        {
            self.payloads.fetch_sub(payloads, Relaxed);
            return false;
        }
        true
    }

    /// Refuses, for good, a request larger than the whole budget: no amount of waiting would
    /// make room for it.
    pub fn fits_at_all(&self, payloads: usize, bytes: usize) -> Result<(), NoRoom> {
        if payloads > self.max_payloads {
            return Err(NoRoom::TooManyPayloads {
                n: payloads,
                max: self.max_payloads,
            });
        }
        if bytes > self.max_bytes {
            return Err(NoRoom::OverQueue {
                len: bytes,
                max: self.max_bytes,
            });
        }
        Ok(())
    }

    /// Reserves room for a request body of `bytes` before it is read (its payloads are added
    /// once it is parsed, with [`Reservation::add_payloads`]): `413` if the body could never
    /// fit, `503` if there is no room now.
    pub fn reserve_bytes(self: &Arc<Self>, bytes: usize) -> Result<Reservation, NoRoom> {
        self.fits_at_all(0, bytes)?;
        if !self.try_reserve(0, bytes) {
            return Err(NoRoom::Overloaded);
        }
        Ok(Reservation {
            budget: self.clone(),
            payloads: 0,
            bytes,
            share: None,
        })
    }

    /// As [`Budget::reserve_bytes`], for a request whose token is not known yet: the bytes
    /// must also fit in `share` (`413` if they never could, `503` if not now), and are held
    /// there until [`Reservation::verified`].
    pub fn reserve_unverified_bytes(
        self: &Arc<Self>,
        bytes: usize,
        share: &Arc<Share>,
    ) -> Result<Reservation, NoRoom> {
        share.fits_at_all(bytes)?;
        self.fits_at_all(0, bytes)?;
        if !share.try_take(bytes) {
            return Err(NoRoom::UnverifiedFull);
        }
        if !self.try_reserve(0, bytes) {
            share.give_back(bytes);
            return Err(NoRoom::Overloaded);
        }
        Ok(Reservation {
            budget: self.clone(),
            payloads: 0,
            bytes,
            share: Some(share.clone()),
        })
    }

    /// Returns the room a finished request held.
    pub fn release(&self, payloads: usize, bytes: usize) {
        self.payloads.fetch_sub(payloads, Relaxed);
        self.bytes.fetch_sub(bytes, Relaxed);
        self.freed.notify(usize::MAX);
    }

    /// Payloads and bytes held now.
    pub fn depth(&self) -> (usize, usize) {
        (self.payloads.load(Relaxed), self.bytes.load(Relaxed))
    }
}

/// Room held in a shard's budget for one request; returned on drop unless the request was
/// queued with it.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    payloads: usize,
    bytes: usize,
    /// The share of requests whose token is not known yet, while this one is such a request:
    /// its bytes are held there too.
    share: Option<Arc<Share>>,
}

impl Reservation {
    /// Body bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Grows the body room to `bytes` (a chunked body that outgrew it), or says there is none.
    pub fn grow_to(&mut self, bytes: usize) -> Result<(), NoRoom> {
        let more = bytes.saturating_sub(self.bytes);
        if let Some(share) = &self.share {
            share.fits_at_all(bytes)?;
        }
        self.budget.fits_at_all(0, bytes)?;
        if let Some(share) = &self.share {
            if !share.try_take(more) {
                return Err(NoRoom::UnverifiedFull);
            }
        }
        if more > 0 && !self.budget.try_reserve(0, more) {
            if let Some(share) = &self.share {
                share.give_back(more);
            }
            return Err(NoRoom::Overloaded);
        }
        self.bytes += more;
        Ok(())
    }

    /// Returns the body room beyond `bytes` (the body's real length).
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.release(0, self.bytes - bytes);
            if let Some(share) = &self.share {
                share.give_back(self.bytes - bytes);
            }
            self.bytes = bytes;
        }
    }

    /// The request's token is verified: its bytes leave the share of unverified requests
    /// (they stay in the budget).
    pub fn verified(&mut self) {
        if let Some(share) = self.share.take() {
            share.give_back(self.bytes);
        }
    }

    /// Adds room for `n` payloads (the parsed body's): `413` if the request could never fit,
    /// `503` if there is no room now.
    pub fn add_payloads(&mut self, n: usize) -> Result<(), NoRoom> {
        self.budget.fits_at_all(self.payloads + n, self.bytes)?;
        if !self.budget.try_reserve(n, 0) {
            return Err(NoRoom::Overloaded);
        }
        self.payloads += n;
        Ok(())
    }
}

impl Reservation {
    /// Room for a body of `bytes` that must not be refused (a replayed spool record), waiting
    /// for it; the caller checked that it fits at all.
    pub async fn wait_for_bytes(budget: &Arc<Budget>, bytes: usize) -> Reservation {
        budget.reserve_waiting(0, bytes).await;
        Reservation {
            budget: budget.clone(),
            payloads: 0,
            bytes,
            share: None,
        }
    }

    /// Adds room for `n` payloads, waiting for it; the caller checked that they fit at all.
    pub async fn wait_for_payloads(&mut self, n: usize) {
        self.budget.reserve_waiting(n, 0).await;
        self.payloads += n;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.verified();
        self.budget.release(self.payloads, self.bytes);
    }
}

/// The shard's end of its queue.
#[derive(Debug)]
pub struct JobSender {
    tx: flume::Sender<Job>,
    budget: Arc<Budget>,
}

/// Creates a shard's queue; the receiver goes to its upload worker.
pub fn channel(budget: Arc<Budget>) -> (JobSender, flume::Receiver<Job>) {
    // Every job holds at least one payload, so the count bound of the budget is the binding
    // one; the channel bound only keeps flume's own buffer finite.
    let (tx, rx) = flume::bounded(budget.max_payloads.max(1));
    (JobSender { tx, budget }, rx)
}

impl JobSender {
    /// The budget this queue is bounded by.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// Reserves room for a request of `payloads` payloads and `bytes` bytes (for requests
    /// written to the durable spool before they are queued); the room is returned if the
    /// reservation is dropped unused.
    pub fn reserve(&self, payloads: usize, bytes: usize) -> Result<Reservation, NoRoom> {
        self.budget.fits_at_all(payloads, bytes)?;
        if self.budget.try_reserve(payloads, bytes) {
            Ok(Reservation {
                budget: self.budget.clone(),
                payloads,
                bytes,
                share: None,
            })
        } else {
            Err(NoRoom::Overloaded)
        }
    }

    /// Queues a request whose room was reserved. Only fails if the worker is gone (shutdown).
    pub fn send_reserved(&self, job: Job, r: Reservation) -> Result<(), NoRoom> {
        debug_assert_eq!((job.spans.len(), job.body.len()), (r.payloads, r.bytes));
        // The reservation's room now belongs to the job: the worker releases it. (A queued
        // request's token was verified: it holds nothing in the unverified share.)
        let mut r = r;
        r.verified();
        let r = std::mem::ManuallyDrop::new(r);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(_) => {
                // Full cannot happen (the channel holds max_payloads jobs of at least one
                // payload each, and the room was reserved); Disconnected means shutdown.
                r.budget.release(r.payloads, r.bytes);
                Err(NoRoom::Closed)
            }
        }
    }

    /// Queues a whole request or refuses it; never waits.
    pub fn send(&self, job: Job) -> Result<(), NoRoom> {
        let (n, bytes) = (job.spans.len(), job.body.len());
        self.budget.fits_at_all(n, bytes)?;
        if !self.budget.try_reserve(n, bytes) {
            return Err(NoRoom::Overloaded);
        }
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.budget.release(n, bytes);
                Err(match e {
                    flume::TrySendError::Full(_) => NoRoom::Overloaded,
                    flume::TrySendError::Disconnected(_) => NoRoom::Closed,
                })
            }
        }
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
