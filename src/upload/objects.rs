//! Objects from jobs: the object being filled per tenant, closed when full or aged, and the
//! requests whose payloads each holds (a request is answered once all of its objects are done).
#![forbid(unsafe_code)]

use super::delivery::{Ctx, Outcome};
use super::{ObjectBuilder, Sink};
use crate::keys::KeySpace;
use crate::metrics::inc;
use crate::queue::{Delivery, Job, Spooled};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// One request's share of the worker's attention: its budget is released and its client told
/// once every object holding one of its payloads is stored or spilled.
pub(super) struct Request {
    pub(super) payloads: usize,
    pub(super) bytes: usize,
    /// Objects still holding some of its payloads, plus one while its payloads are being added.
    pub(super) pending: Cell<usize>,
    pub(super) outcome: Cell<Delivery>,
    pub(super) ack: RefCell<Option<tokio::sync::oneshot::Sender<Delivery>>>,
    /// Its record in the durable spool, released once everything is stored.
    pub(super) spooled: Option<Spooled>,
}

/// How an object's key is made.
#[derive(Debug, Clone)]
pub(super) enum Name {
    /// From the sequence number of its first payload (memory-queued requests).
    Seq(u64),
    /// From its request's spool record and the index of its first payload in the request, so
    /// a replay after a crash builds the same objects under the same keys.
    Spooled {
        segment: u64,
        offset: u64,
        index: usize,
        /// The key space of the run that wrote the record, if not this one's.
        keys: Option<Rc<KeySpace>>,
    },
}

/// The object being filled, and the requests whose payloads it holds.
pub(super) struct Open {
    pub(super) builder: ObjectBuilder,
    pub(super) name: Name,
    /// The tenant all its payloads belong to (an object never mixes tenants).
    pub(super) tenant: Option<crate::auth::Tenant>,
    pub(super) received_secs: u64,
    pub(super) opened: Instant,
    pub(super) members: Vec<Rc<Request>>,
}

/// When the oldest of the objects being filled was opened.
pub(super) fn oldest(opens: &[Open]) -> Option<Instant> {
    opens.iter().map(|o| o.opened).min()
}

/// Closes every object being filled that has been open for `max_age` or longer.
pub(super) async fn close_aged(
    ctx: &Rc<Ctx>,
    permits: &Arc<Semaphore>,
    opens: &mut Vec<Open>,
    max_age: Duration,
) {
    let mut i = 0;
    while i < opens.len() {
        if opens[i].opened.elapsed() >= max_age {
            let mut o = Some(opens.swap_remove(i));
            close(ctx, permits, &mut o).await;
        } else {
            i += 1;
        }
    }
}

/// Adds one request's payloads to the open object, closing objects as they fill.
pub(super) async fn add(
    ctx: &Rc<Ctx>,
    permits: &Arc<Semaphore>,
    open: &mut Option<Open>,
    job: Job,
) {
    // A replayed request is built into objects as the run that accepted it built them.
    let naming = job.spooled.as_ref().and_then(|s| s.naming.clone());
    let req = Request {
        payloads: job.spans.len(),
        bytes: job.body.len(),
        pending: Cell::new(1),
        outcome: Cell::new(Delivery::Stored),
        ack: RefCell::new(job.ack),
        spooled: job.spooled,
    };
    if let Sink::Discard = ctx.sink {
        // Front-end benchmarks: count and drop the whole request, with no object, key or
        // timer (nothing is stored, so there is nothing to name or time).
        inc(&ctx.stats.payloads_uploaded, req.payloads as u64);
        let bytes: u64 = job.spans.iter().map(|&(a, b)| u64::from(b - a)).sum();
        inc(&ctx.stats.bytes_out, bytes);
        ctx.finish(&req, None);
        return;
    }
    let req = Rc::new(req);
    let batch = naming.as_ref().map_or(&ctx.config.batch, |n| &n.batch);
    let keys = naming.as_ref().map(|n| {
        Rc::new(KeySpace::new(
            &n.prefix,
            &n.instance,
            n.shard.unwrap_or(ctx.shard),
            0,
        ))
    });
    for (i, &(start, end)) in job.spans.iter().enumerate() {
        let payload = &job.body[start as usize..end as usize];
        if let Some(o) = open.as_ref() {
            if o.builder.payloads() > 0
                && o.builder.raw_bytes() + o.builder.cost(payload) > batch.max_bytes
            {
                close(ctx, permits, open).await;
            }
        }
        if open.is_none() {
            match ObjectBuilder::new(batch) {
                Ok(builder) => {
                    let name = match &req.spooled {
                        Some(sp) => Name::Spooled {
                            segment: sp.id.segment,
                            offset: sp.id.offset,
                            index: i,
                            keys: keys.clone(),
                        },
                        None => Name::Seq(job.first_seq + i as u64),
                    };
                    *open = Some(Open {
                        builder,
                        name,
                        tenant: job.tenant.clone(),
                        received_secs: job.received_secs,
                        opened: Instant::now(),
                        members: Vec::new(),
                    })
                }
                Err(e) => {
                    // Only the compressor's set-up can fail here (memory); say so loudly.
                    tracing::error!(shard = ctx.shard, error = %e, "cannot start an object; payload LOST");
                    inc(&ctx.stats.payloads_failed, 1);
                    req.outcome.set(Delivery::Refused);
                    continue;
                }
            }
        }
        let Some(o) = open.as_mut() else { continue };
        if let Err(e) = o.builder.push(payload) {
            tracing::error!(shard = ctx.shard, error = %e, "cannot add to an object; payload LOST");
            inc(&ctx.stats.payloads_failed, 1);
            req.outcome.set(Delivery::Refused);
            continue;
        }
        if !o.members.last().is_some_and(|m| Rc::ptr_eq(m, &req)) {
            req.pending.set(req.pending.get() + 1);
            o.members.push(req.clone());
        }
        if o.builder.payloads() >= batch.max_payloads || o.builder.raw_bytes() >= batch.max_bytes {
            close(ctx, permits, open).await;
        }
    }
    ctx.finish(&req, None);
}

/// Closes the open object (if any) and starts its upload once an in-flight permit is free.
pub(super) async fn close(ctx: &Rc<Ctx>, permits: &Arc<Semaphore>, open: &mut Option<Open>) {
    let Some(o) = open.take() else { return };
    let payloads = o.builder.payloads();
    let (data, format) = match o.builder.finish() {
        Ok(done) => done,
        Err(e) => {
            tracing::error!(shard = ctx.shard, payloads, error = %e, "cannot finish an object; its payloads are LOST");
            inc(&ctx.stats.payloads_failed, payloads as u64);
            for m in &o.members {
                ctx.finish(m, Some(Outcome::NotStored { refused: true }));
            }
            return;
        }
    };
    let key = match &o.name {
        Name::Seq(seq) => ctx
            .keys
            .key(o.tenant.as_deref(), o.received_secs, *seq, format.ext),
        Name::Spooled {
            segment,
            offset,
            index,
            keys,
        } => keys.as_deref().unwrap_or(&ctx.keys).spooled_key(
            o.tenant.as_deref(),
            o.received_secs,
            *segment,
            *offset,
            *index,
            format.ext,
        ),
    };
    let spooled = matches!(o.name, Name::Spooled { .. });
    let Ok(permit) = permits.clone().acquire_owned().await else {
        return;
    };
    let ctx = ctx.clone();
    tokio::task::spawn_local(async move {
        let outcome = ctx.deliver(&key, &data, format, payloads, spooled).await;
        drop(permit);
        for m in &o.members {
            ctx.finish(m, Some(outcome));
        }
    });
}
