//! The per-shard queue between a shard (glommio) and its upload worker (tokio), with
//! backpressure: bounded by payload count and by bytes, a request is queued whole or not at all.
#![forbid(unsafe_code)]

use crate::ingest::Span;
use crate::spool::{RecordId, Releaser};
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// One accepted request: its body and where each payload lies in it.
#[derive(Debug)]
pub struct Job {
    /// The request body, exactly as received (owned, exact size).
    pub body: Bytes,
    /// Byte range of each payload in `body`.
    pub spans: Vec<Span>,
    /// Sequence number of the first payload; payload `i` has `first_seq + i`.
    pub first_seq: u64,
    /// When the request was accepted (Unix seconds), for the key's date path.
    pub received_secs: u64,
    /// The tenant of the token it was accepted with: its objects' keys start
    /// `{prefix}/{tenant}/`, and an object holds one tenant's payloads only.
    pub tenant: Option<crate::auth::Tenant>,
    /// The request headers the key template names, for its objects' keys.
    pub headers: HeaderValues,
    /// With `ack = "uploaded"`: told what became of the request's payloads once all of them
    /// are stored (or could not be).
    pub ack: Option<tokio::sync::oneshot::Sender<Delivery>>,
    /// With `ack = "durable"`: the request's record in the shard's spool, released once all
    /// its payloads are stored (its objects' keys derive from it).
    pub spooled: Option<Spooled>,
}

impl Job {
    /// A request from the shard's durable spool (`ack = "durable"`, or replayed at start):
    /// its objects are named by its record, so it needs no sequence numbers.
    pub fn spooled(
        body: Bytes,
        spans: Vec<Span>,
        received_secs: u64,
        tenant: Option<crate::auth::Tenant>,
        headers: HeaderValues,
        spooled: Spooled,
    ) -> Job {
        Job {
            body,
            spans,
            first_seq: 0,
            received_secs,
            tenant,
            headers,
            ack: None,
            spooled: Some(spooled),
        }
    }
}

/// A request kept in the shard's durable spool.
#[derive(Debug, Clone)]
pub struct Spooled {
    /// The record's place in the spool.
    pub id: RecordId,
    /// Tells the spool the record is stored.
    pub releaser: Releaser,
    /// How the run that wrote the record builds and names its objects, when that was another
    /// run (a replay); `None`: as this run's configuration says.
    pub naming: Option<Arc<Naming>>,
}

/// What decides the objects and keys of a spooled request. Recorded (as JSON) in each spool
/// segment, so a replay after a configuration change builds the same objects under the same
/// keys as the run that accepted the request: a payload already stored is overwritten in
/// place, never stored a second time under another key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Naming {
    /// `keys.prefix`.
    pub prefix: String,
    /// The instance name in the keys.
    pub instance: String,
    /// How payloads are grouped and encoded into objects.
    pub batch: crate::config::BatchConfig,
    /// The shard whose spool holds the record: its index is in the keys, so a record keeps
    /// its keys when a shard of another index replays it (fewer cores than the run that
    /// wrote it). Absent in segments written before it was recorded: the spool directory's
    /// index is used then.
    #[serde(default)]
    pub shard: Option<usize>,
    /// `keys.template`. Absent in segments written before templates existed: their keys
    /// followed the default template.
    #[serde(default = "default_template")]
    pub template: String,
}

fn default_template() -> String {
    crate::keys::DEFAULT_TEMPLATE.into()
}

/// The values of the request headers the key template names (`{header.NAME}`), in the
/// template's order; `None` for a header the request did not have. Empty (no allocation)
/// when the template names none.
pub type HeaderValues = Vec<Option<Box<[u8]>>>;

/// What became of a request's payloads, reported back to the shard that accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Every payload is in the store.
    Stored,
    /// Some payload could not be stored for now (store unreachable, drain deadline); it was
    /// kept in the spill directory and is uploaded at the next start.
    Deferred,
    /// The store refused some payload for good (credentials, missing bucket); it was kept in
    /// the spill directory.
    Refused,
}

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
}

impl Reservation {
    /// Body bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Grows the body room to `bytes` (a chunked body that outgrew it), or says there is none.
    pub fn grow_to(&mut self, bytes: usize) -> Result<(), NoRoom> {
        let more = bytes.saturating_sub(self.bytes);
        self.budget.fits_at_all(0, bytes)?;
        if more > 0 && !self.budget.try_reserve(0, more) {
            return Err(NoRoom::Overloaded);
        }
        self.bytes += more;
        Ok(())
    }

    /// Returns the body room beyond `bytes` (the body's real length).
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.release(0, self.bytes - bytes);
            self.bytes = bytes;
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
            })
        } else {
            Err(NoRoom::Overloaded)
        }
    }

    /// Queues a request whose room was reserved. Only fails if the worker is gone (shutdown).
    pub fn send_reserved(&self, job: Job, r: Reservation) -> Result<(), NoRoom> {
        debug_assert_eq!((job.spans.len(), job.body.len()), (r.payloads, r.bytes));
        // The reservation's room now belongs to the job: the worker releases it.
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
mod tests {
    use super::*;

    fn job(n: usize, bytes: usize) -> Job {
        Job {
            body: Bytes::from(vec![b' '; bytes]),
            spans: vec![(0, 1); n],
            first_seq: 0,
            received_secs: 0,
            tenant: None,
            headers: Vec::new(),
            ack: None,
            spooled: None,
        }
    }

    #[test]
    fn requests_are_queued_whole_or_not_at_all() {
        let budget = Arc::new(Budget::new(10, 1000));
        let (tx, rx) = channel(budget.clone());
        tx.send(job(6, 100)).unwrap();
        assert_eq!(tx.send(job(5, 100)), Err(NoRoom::Overloaded));
        assert_eq!(budget.depth(), (6, 100));
        tx.send(job(4, 100)).unwrap();
        assert_eq!(tx.send(job(1, 1)), Err(NoRoom::Overloaded));
        let first = rx.recv().unwrap();
        budget.release(first.spans.len(), first.body.len());
        tx.send(job(1, 1)).unwrap();
        assert_eq!(budget.depth(), (5, 101));
    }

    #[test]
    fn byte_bound_holds() {
        let budget = Arc::new(Budget::new(100, 250));
        let (tx, _rx) = channel(budget.clone());
        tx.send(job(1, 200)).unwrap();
        assert_eq!(tx.send(job(1, 51)), Err(NoRoom::Overloaded));
        assert_eq!(budget.reserve_bytes(51).unwrap_err(), NoRoom::Overloaded);
        assert_eq!(budget.reserve_bytes(50).unwrap().bytes(), 50);
    }

    #[test]
    fn a_body_reservation_grows_shrinks_and_takes_its_payloads() {
        let budget = Arc::new(Budget::new(10, 1000));
        let mut r = budget.reserve_bytes(100).unwrap();
        r.grow_to(600).unwrap();
        assert_eq!(budget.depth(), (0, 600));
        assert_eq!(
            r.grow_to(1001).unwrap_err(),
            NoRoom::OverQueue {
                len: 1001,
                max: 1000
            }
        );
        let other = budget.reserve_bytes(400).unwrap();
        assert_eq!(r.grow_to(700).unwrap_err(), NoRoom::Overloaded);
        drop(other);
        r.shrink_to(250);
        assert_eq!(budget.depth(), (0, 250));
        assert_eq!(
            r.add_payloads(11).unwrap_err(),
            NoRoom::TooManyPayloads { n: 11, max: 10 }
        );
        r.add_payloads(3).unwrap();
        assert_eq!(budget.depth(), (3, 250));
        drop(r);
        assert_eq!(budget.depth(), (0, 0), "everything returned on drop");
    }

    #[test]
    fn reservations_hold_room_until_queued_or_dropped() {
        let budget = Arc::new(Budget::new(10, 1000));
        let (tx, rx) = channel(budget.clone());
        let r = tx.reserve(6, 100).unwrap();
        assert_eq!(tx.reserve(5, 1).unwrap_err(), NoRoom::Overloaded);
        drop(r);
        assert_eq!(budget.depth(), (0, 0));
        let r = tx.reserve(2, 2).unwrap();
        tx.send_reserved(job(2, 2), r).unwrap();
        assert_eq!(budget.depth(), (2, 2), "the queued job holds the room");
        drop(rx);
        let r = tx.reserve(1, 1).unwrap();
        assert_eq!(tx.send_reserved(job(1, 1), r), Err(NoRoom::Closed));
        assert_eq!(budget.depth(), (2, 2));
    }

    #[test]
    fn closed_queue_means_shutting_down() {
        let budget = Arc::new(Budget::new(10, 1000));
        let (tx, rx) = channel(budget.clone());
        drop(rx);
        assert_eq!(tx.send(job(1, 1)), Err(NoRoom::Closed));
        assert_eq!(budget.depth(), (0, 0));
    }
}
