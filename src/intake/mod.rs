//! Intake: what a shard does with a request once HTTP has its head and body. It owns the
//! shard's queue budget, payload sequence, queue sender, body parser, token set and (with
//! `ack = "durable"`) spool, and takes a request in three steps:
//!
//! 1. [`Intake::authorize`], from the head: the `Authorization` header's token decides when
//!    present, before anything else;
//! 2. [`Intake::admit`], before any of the body is read: its declared length, shutdown, and
//!    room in the queue budget for the body, which the body is then read into;
//! 3. [`Intake::accept`], with the body: parse, the body's `token` (when there was no
//!    header), room for its payloads, then the ack mode's strategy: [`Mode::Queued`] answers
//!    once queued, [`Mode::Uploaded`] once stored, [`Mode::Durable`] once in the spool.
//!
//! Every refusal is a [`Refusal`]; `http` maps it to a status.

mod record;
mod replay;

use crate::auth::{Denied, ShardTokens, Tenant};
use crate::config::{Ack, Config};
use crate::job::{Delivery, HeaderValues, Job, Spooled, Waiter};
use crate::metrics::{inc, ShardStats};
use crate::parse::{BodyParser, BodyTooLarge, ParseError, Span};
use crate::queue::{Budget, JobSender, NoRoom, Reservation, Share};
use crate::shutdown::Local;
use crate::spool::{Releaser, Spool, SpoolError};
use bytes::Bytes;
use futures_lite::future;
use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

pub use replay::replay;

/// Why a request was not taken, once HTTP had it.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// `[auth]` is set and the request has no listed token: `401` with `WWW-Authenticate`.
    /// The message never contains the token.
    #[error("{}", .0.words())]
    Unauthorized(Denied),
    /// The body is not a collection of payloads.
    #[error(transparent)]
    Invalid(#[from] ParseError),
    /// The shard's queue has no room for it (now, or ever), or is closed.
    #[error(transparent)]
    NoRoom(#[from] NoRoom),
    /// The server is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// A declared length over `server.max_body_bytes`, or (`ack = "durable"`) a body larger
    /// than a spool record may be.
    #[error(transparent)]
    TooLarge(#[from] BodyTooLarge),
    /// `ack = "durable"`: the shard's spool has reached its disk budget.
    #[error("overloaded: the durable spool is full")]
    SpoolFull,
    /// `ack = "durable"`: the spool's disk is full (the disk, not the spool's own budget).
    #[error("overloaded: the durable spool's disk is full")]
    SpoolDiskFull(#[source] Arc<SpoolError>),
    /// `ack = "durable"`: the spool could not write the request (a disk error other than a
    /// full disk; logged): `503`, and the shard is unready for a while.
    #[error("overloaded: the durable spool cannot write (disk error); retry later")]
    SpoolFailed(#[source] Option<Arc<SpoolError>>),
    /// `ack = "uploaded"`: the payloads were not all stored within `server.ack_timeout_ms`.
    #[error("not stored within {0} ms; the payloads stay queued and may still be stored, so a retry can store them twice")]
    AckTimeout(u64),
    /// `ack = "uploaded"`: the store could not take the payloads now; they were kept for a
    /// later upload.
    #[error("the store is unavailable; the payloads were kept for a later upload, so a retry can store them twice")]
    NotStored,
    /// `ack = "uploaded"`: the store refused the payloads for good (credentials, bucket).
    #[error("the store refused the payloads; they were kept in the spill directory")]
    StoreRefused,
}

/// How a shard answers for its requests: the configured `server.ack`.
#[derive(Debug)]
pub enum Mode {
    /// `200` once queued in memory.
    Queued,
    /// `200` once every payload is stored, within `server.ack_timeout_ms`.
    Uploaded {
        /// `server.ack_timeout_ms`.
        timeout_ms: u64,
    },
    /// `200` once the request's record is on disk in the shard's spool.
    Durable {
        /// The shard's spool.
        spool: Rc<Spool>,
        /// What the worker releases stored records with.
        releaser: Releaser,
    },
}

/// What a request's head said of its token.
#[derive(Debug, Default)]
pub struct Pass {
    /// The tenant of the header's token (`None`: no tenant, or not yet known).
    tenant: Option<Tenant>,
    /// No `Authorization` header under `[auth]`: the body's `token` decides.
    body_token_due: bool,
}

/// A request admitted before its body: its room in the queue budget (read the body into it)
/// and what its token said.
#[derive(Debug)]
pub struct Admitted {
    /// Room for the body; grows as a body without `Content-Length` arrives.
    pub room: Reservation,
    pass: Pass,
}

/// A request taken: how many payloads it held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Payloads accepted.
    pub payloads: usize,
}

/// One shard's intake (see the module doc).
#[derive(Debug)]
pub struct Intake {
    shard: usize,
    config: Arc<Config>,
    parser: RefCell<BodyParser>,
    /// The parser's list of payload spans, kept from one body to the next: each job gets an
    /// exact-size copy (one allocation, not one per doubling).
    spans: RefCell<Vec<Span>>,
    budget: Arc<Budget>,
    /// The shard's end of its queue; taken (closing the queue) by [`Intake::close`].
    sender: RefCell<Option<JobSender>>,
    /// Next payload sequence number (part of every key).
    seq: Cell<u64>,
    stats: Arc<ShardStats>,
    tokens: Option<ShardTokens>,
    /// With `[auth]`: the part of the budget that requests whose token is in their body
    /// (not yet known while the body is read) may hold together
    /// (`auth.unverified_queue_percent`).
    unverified: Option<Arc<Share>>,
    shutdown: Rc<Local>,
    mode: Mode,
    /// The request headers the key template names (`{header.NAME}`, lower-cased): only
    /// their values travel with a request, not its whole head.
    header_names: Vec<String>,
}

/// What a shard's intake is built from.
#[derive(Debug)]
pub struct Parts {
    /// Shard index.
    pub shard: usize,
    /// The configuration.
    pub config: Arc<Config>,
    /// The shard's end of its queue.
    pub sender: JobSender,
    /// The shard's counters.
    pub stats: Arc<ShardStats>,
    /// The token set in force (`[auth]`).
    pub tokens: Option<ShardTokens>,
    /// The shard's copy of the shutdown signal.
    pub shutdown: Rc<Local>,
    /// The shard's spool with its releaser (`ack = "durable"`).
    pub spool: Option<(Rc<Spool>, Releaser)>,
}

impl Intake {
    /// The intake of one shard.
    pub fn new(p: Parts) -> Self {
        let mode = match (p.config.server.ack, p.spool) {
            (Ack::Durable, Some((spool, releaser))) => Mode::Durable { spool, releaser },
            (Ack::Uploaded, _) => Mode::Uploaded {
                timeout_ms: p.config.server.ack_timeout_ms,
            },
            _ => Mode::Queued,
        };
        let unverified = p.tokens.as_ref().map(|_| {
            let pct = u128::from(p.config.auth.unverified_queue_percent.clamp(1, 100));
            let max = p.config.queue.max_bytes as u128 * pct / 100;
            let max = usize::try_from(max).unwrap_or(usize::MAX);
            // Never less than one whole body: a client of the body token can always be
            // served, one at a time.
            let floor = p.config.server.max_body_bytes.min(p.config.queue.max_bytes);
            Arc::new(Share::new(max.max(floor)))
        });
        // Validation refused a template that does not parse.
        let header_names = crate::keys::Template::parse(&p.config.keys.template)
            .map(|t| t.headers().to_vec())
            .unwrap_or_default();
        Self {
            header_names,
            shard: p.shard,
            unverified,
            parser: RefCell::new(BodyParser::new(p.config.server.parser)),
            spans: RefCell::default(),
            budget: p.sender.budget().clone(),
            sender: RefCell::new(Some(p.sender)),
            seq: Cell::new(0),
            stats: p.stats,
            tokens: p.tokens,
            shutdown: p.shutdown,
            config: p.config,
            mode,
        }
    }

    /// Step 1, from the request's head: with `[auth]`, an `Authorization` header decides
    /// here, before any of the body is read or any room reserved (a body `token` is then not
    /// looked at); without one, the body's `token` is checked in [`accept`](Self::accept).
    pub fn authorize(&self, authorization: Option<&[u8]>) -> Result<Pass, Refusal> {
        let Some(tokens) = &self.tokens else {
            return Ok(Pass::default());
        };
        match authorization {
            Some(v) => {
                let checked = crate::auth::bearer(v)
                    .ok_or(Denied::Invalid)
                    .and_then(|t| tokens.check(t));
                Ok(Pass {
                    tenant: self.authorized(checked)?,
                    body_token_due: false,
                })
            }
            None => Ok(Pass {
                tenant: None,
                body_token_due: true,
            }),
        }
    }

    /// Step 2, before any of the body is read: `413` for a declared length over
    /// `server.max_body_bytes`, `503` once shutting down, then room in the queue budget for
    /// the `declared` body (`0` for a chunked body, whose room grows as it arrives): bodies
    /// being read count against the queue budget like queued ones, so memory stays bounded
    /// however many clients send at once.
    pub fn admit(&self, pass: Pass, declared: Option<usize>) -> Result<Admitted, Refusal> {
        let limit = self.config.server.max_body_bytes;
        if declared.is_some_and(|n| n > limit) {
            return Err(BodyTooLarge(limit).into());
        }
        if self.shutdown.is_stopping() {
            return Err(Refusal::ShuttingDown);
        }
        let bytes = declared.unwrap_or(0);
        let room = match &self.unverified {
            // The token is in the body: until it is checked, the request holds room only
            // within the share of such requests, so they cannot take the whole queue from
            // clients whose header was checked already.
            Some(share) if pass.body_token_due => {
                self.budget.reserve_unverified_bytes(bytes, share)?
            }
            _ => self.budget.reserve_bytes(bytes)?,
        };
        Ok(Admitted { room, pass })
    }

    /// The request headers whose values [`accept`](Self::accept) wants, in its order: those
    /// the key template names, lower-cased (usually none).
    pub fn header_names(&self) -> &[String] {
        &self.header_names
    }

    /// Step 3, with the whole body (read into `admitted.room`) and the values of
    /// [`header_names`](Self::header_names): validates it, then takes it as the ack mode says.
    pub async fn accept(
        self: &Rc<Self>,
        admitted: Admitted,
        body: Bytes,
        headers: HeaderValues,
    ) -> Result<Accepted, Refusal> {
        let Admitted {
            mut room,
            pass: Pass {
                mut tenant,
                body_token_due,
            },
        } = admitted;
        room.shrink_to(body.len());
        let (spans, token_at) = {
            let mut spans = self.spans.borrow_mut();
            let token = self.parser.borrow_mut().parse(&body, &mut spans)?;
            // Where the token lies, for the copy kept at rest (durable), which blanks it.
            let token_at = match (&self.mode, &token) {
                (Mode::Durable { .. }, Some(t)) => token_place(&body, t),
                _ => None,
            };
            if body_token_due {
                let checked = match (&self.tokens, token) {
                    (Some(tokens), Some(t)) => tokens.check(&t),
                    _ => Err(Denied::Missing),
                };
                tenant = self.authorized(checked)?;
                room.verified();
            }
            (spans.to_vec(), token_at)
        };
        let n = spans.len();
        if n == 0 {
            return Ok(Accepted { payloads: 0 });
        }
        room.add_payloads(n)?;
        let len = body.len();
        let req = Taken {
            body,
            spans,
            tenant,
            headers,
            room,
            token_at,
        };
        match &self.mode {
            Mode::Queued => self.queue(req, None)?,
            Mode::Uploaded { timeout_ms } => self.upload(req, *timeout_ms).await?,
            Mode::Durable { .. } => {
                // The append and the hand-off to the worker run in a task of their own, not
                // in this request's future: hyper drops that future when the client goes
                // away, and a record the committer writes must then still be queued (else it
                // sits live in the spool, undelivered, until a restart). The request only
                // waits for the task's outcome; the task counts what it accepted.
                let task = glommio::spawn_local(self.clone().spool(req)).detach();
                task.await.unwrap_or(Err(Refusal::SpoolFailed(None)))?;
                return Ok(Accepted { payloads: n });
            }
        }
        self.count(n, len);
        Ok(Accepted { payloads: n })
    }

    /// Counts an accepted request.
    fn count(&self, payloads: usize, bytes: usize) {
        inc(&self.stats.payloads_accepted, payloads as u64);
        inc(&self.stats.bytes_in, bytes as u64);
    }

    /// Closes the shard's queue: its upload worker ends once it has drained it.
    pub fn close(&self) {
        self.sender.borrow_mut().take();
    }

    /// The outcome of a token check, with a refusal counted (by reason; never the token).
    fn authorized(
        &self,
        checked: Result<Option<Tenant>, Denied>,
    ) -> Result<Option<Tenant>, Refusal> {
        checked.map_err(|why| {
            self.stats.auth_refused(why);
            Refusal::Unauthorized(why)
        })
    }

    /// Queues a job whose room was reserved.
    fn send(&self, job: Job, room: Reservation) -> Result<(), NoRoom> {
        match self.sender.borrow().as_ref() {
            Some(tx) => tx.send_reserved(job, room),
            None => Err(NoRoom::Closed),
        }
    }

    /// `ack = "queued"` (and the queueing half of `uploaded`): the request becomes one job,
    /// its payloads numbered from the shard's sequence.
    fn queue(&self, req: Taken, waiter: Option<Waiter>) -> Result<(), NoRoom> {
        let first_seq = self.seq.get();
        self.seq.set(first_seq + req.spans.len() as u64);
        let job = Job {
            body: req.body,
            spans: req.spans,
            first_seq,
            received_secs: crate::keys::unix_secs(),
            tenant: req.tenant,
            headers: req.headers,
            waiter,
            spooled: None,
        };
        self.send(job, req.room)
    }

    /// `ack = "uploaded"`: queued, then waits (without blocking the shard) for the worker to
    /// say every payload is stored, at most `timeout_ms`.
    async fn upload(&self, req: Taken, timeout_ms: u64) -> Result<(), Refusal> {
        let (waiter, stored) = Waiter::new();
        self.queue(req, Some(waiter))?;
        let delivery = future::or(async { Some(stored.await) }, async {
            glommio::timer::sleep(Duration::from_millis(timeout_ms)).await;
            None
        })
        .await;
        match delivery {
            Some(Ok(Delivery::Stored)) => Ok(()),
            Some(Ok(Delivery::Refused)) => Err(Refusal::StoreRefused),
            Some(Ok(Delivery::Deferred)) | Some(Err(_)) => Err(Refusal::NotStored),
            None => Err(Refusal::AckTimeout(timeout_ms)),
        }
    }

    /// `ack = "durable"`: appends the request to the shard's spool and, once its commit is
    /// on disk, queues it for upload. Its room in the queue was reserved first, so a spooled
    /// request is never refused after it was written. Runs detached from the connection
    /// (see [`accept`](Self::accept)): once the record is in the spool, its delivery does
    /// not depend on the client.
    async fn spool(self: Rc<Self>, req: Taken) -> Result<(), Refusal> {
        let Mode::Durable { spool, releaser } = &self.mode else {
            return Err(Refusal::SpoolFailed(None));
        };
        let (n, len) = (req.spans.len(), req.body.len());
        let received_secs = crate::keys::unix_secs();
        // One buffer for both: the spool writes the record, the worker reads the body part of
        // it (the spans are relative to the body). The tenant is recorded, so a replay stores
        // the payloads under it whatever the tokens file says by then.
        let mut record = record::request_record_with(
            received_secs,
            req.tenant.as_deref(),
            &req.headers,
            &req.body,
        );
        let header = record.len() - req.body.len();
        // A bearer token is not kept at rest: the spooled copy (and a dead letter written
        // from it) has `*` in its place, the same length, so the spans stay valid.
        if let Some(at) = req.token_at {
            crate::parse::token::blank(&mut record, header + at.start..header + at.end);
        }
        let record = Bytes::from(record);
        let body = record.slice(header..);
        // `failpoints` builds only: `FAILPOINTS="intake::spool_append=return"` makes the
        // append fail as a failing disk does (EIO), for the tests of what clients and
        // readiness then see.
        #[cfg(feature = "failpoints")]
        let appended = match fail::eval("intake::spool_append", |_| ()) {
            Some(()) => Err(SpoolError::Io(std::io::Error::from_raw_os_error(5))),
            None => spool.append(record).await,
        };
        #[cfg(not(feature = "failpoints"))]
        let appended = spool.append(record).await;
        let id = appended.map_err(|e| self.spool_refusal(e))?;
        self.stats.readiness.spool_write(Ok(()));
        let spooled = Spooled {
            id,
            releaser: releaser.clone(),
            naming: None,
        };
        let job = Job::spooled(
            body,
            req.spans,
            received_secs,
            req.tenant,
            req.headers,
            spooled,
        );
        // If the worker is gone (shutdown) the request stays in the spool for the next start:
        // it is durable, so the answer is still 200.
        let _ = self.send(job, req.room);
        self.count(n, len);
        Ok(())
    }

    /// A failed append in words for the client, counted and logged.
    fn spool_refusal(&self, e: SpoolError) -> Refusal {
        match e {
            SpoolError::Full => Refusal::SpoolFull,
            SpoolError::TooLarge { max, .. } => {
                BodyTooLarge(max.saturating_sub(record::RECORD_HEADER)).into()
            }
            SpoolError::Io(io) => {
                self.stats.readiness.spool_write(Err(&io.to_string()));
                let disk_full = io.kind() == std::io::ErrorKind::StorageFull;
                let e = Arc::new(SpoolError::Io(io));
                if disk_full {
                    tracing::warn!(shard = self.shard, error = %e, "spool write failed: disk full");
                    Refusal::SpoolDiskFull(e)
                } else {
                    tracing::error!(shard = self.shard, error = %e, "spool write failed");
                    Refusal::SpoolFailed(Some(e))
                }
            }
            e => {
                // Whatever else failed, the shard is unready for a while, as for a disk error.
                self.stats.readiness.spool_write(Err(&e.to_string()));
                tracing::error!(shard = self.shard, error = %e, "spool write failed");
                Refusal::SpoolFailed(Some(Arc::new(e)))
            }
        }
    }
}

/// A validated request with its room: what a strategy takes.
struct Taken {
    body: Bytes,
    spans: Vec<Span>,
    tenant: Option<Tenant>,
    headers: HeaderValues,
    room: Reservation,
    /// Where the body's `token` string lies (between its quotes), when it is to be blanked.
    token_at: Option<Range<usize>>,
}

/// The byte range of the body's `token` value. The parsers lend `token` from `body` when it
/// has no escapes: its place is then plain address arithmetic; a token decoded from escapes
/// lies elsewhere, and the body is scanned for it.
fn token_place(body: &[u8], token: &[u8]) -> Option<Range<usize>> {
    let start = (token.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    if start <= body.len() && token.len() <= body.len() - start {
        return Some(start..start + token.len());
    }
    crate::parse::token::token_range(body)
}
