//! Objects from jobs: the [`Batcher`] fills one object per tenant and partition
//! (`keys.template`), closes it when full or aged or to keep `batch.max_open_partitions`,
//! and starts its upload once an in-flight slot is free; each object knows the jobs whose
//! payloads it holds (a job is answered once all of its objects are done).

use super::delivery::{Ctx, Outcome, Upload};
use super::{ObjectBuilder, Sink, UNFIT};
use crate::config::{BatchConfig, BatchFormat};
use crate::job::{Delivery, Job, Naming};
use crate::keys::{KeySpace, ObjectName, Template};
use crate::metrics::inc;
use arrow_schema::SchemaRef;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Which object a payload goes into: one per tenant and partition (an object never mixes
/// tenants, nor partitions of `keys.template`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Slot {
    tenant: Option<crate::auth::Tenant>,
    partition: String,
}

/// An object being filled, and the jobs whose payloads it holds.
pub(super) struct Open {
    pub(super) builder: ObjectBuilder,
    /// What its key's last segment is made from.
    pub(super) name: ObjectName,
    /// The key space of the run that wrote its spool record, if not this one's (a replay).
    pub(super) keys: Option<Rc<KeySpace>>,
    /// Its partition: its key up to its name.
    pub(super) partition: String,
    pub(super) opened: Instant,
    /// Its place in the order objects were opened in (for the bound on open objects: unlike
    /// `opened`, it orders the objects of one request the same at every replay).
    pub(super) order: u64,
    /// The jobs whose payloads it holds, each answered once its last object is done.
    pub(super) members: Vec<Rc<Upload>>,
}

/// The objects being filled, at most `batch.max_open_partitions` of them.
#[derive(Default)]
struct Opens {
    map: HashMap<Slot, Open>,
    /// The same objects by `order`: the first was opened longest ago (orders and `opened`
    /// instants grow together), so the oldest and the aged ones are found without a scan.
    by_age: BTreeMap<u64, Slot>,
    opened: u64,
}

impl Opens {
    /// When the oldest of the objects being filled was opened.
    fn oldest(&self) -> Option<Instant> {
        let (_, slot) = self.by_age.first_key_value()?;
        self.map.get(slot).map(|o| o.opened)
    }

    /// Takes a partition's object out of the set.
    fn remove(&mut self, slot: &Slot) -> Option<Open> {
        let o = self.map.remove(slot)?;
        self.by_age.remove(&o.order);
        Some(o)
    }

    /// Puts an object in the set.
    fn put(&mut self, slot: &Slot, o: Open) {
        self.by_age.insert(o.order, slot.clone());
        self.map.insert(slot.clone(), o);
    }
}

/// Builds a worker's jobs into objects and starts their uploads: it owns the objects being
/// filled and the in-flight slots (`upload.max_in_flight`) a closed object waits for.
pub(super) struct Batcher {
    ctx: Rc<Ctx>,
    /// One per upload in flight; shared with the worker, which waits for all of them at the
    /// end, and with the batchers of spooled jobs.
    permits: Arc<Semaphore>,
    /// The objects being filled: one per tenant and partition that has payloads waiting (an
    /// object holds one tenant's payloads of one partition only).
    opens: Opens,
}

impl Batcher {
    /// A batcher with no object open yet.
    pub(super) fn new(ctx: Rc<Ctx>, permits: Arc<Semaphore>) -> Batcher {
        Batcher {
            ctx,
            permits,
            opens: Opens::default(),
        }
    }

    /// When the oldest of the objects being filled was opened.
    pub(super) fn oldest(&self) -> Option<Instant> {
        self.opens.oldest()
    }

    /// Adds one job's payloads to the objects being filled.
    pub(super) async fn add(&mut self, job: Job) {
        if job.spooled.is_some() {
            // A spooled request gets objects of its own, named by its record: the same
            // objects and keys however often it is replayed.
            let mut own = Batcher::new(self.ctx.clone(), self.permits.clone());
            own.fill(job).await;
            own.close_aged(Duration::ZERO).await;
        } else {
            self.fill(job).await;
        }
    }

    /// Closes every object being filled that has been open for `max_age` or longer, oldest
    /// first.
    pub(super) async fn close_aged(&mut self, max_age: Duration) {
        while let Some((_, slot)) = self.opens.by_age.first_key_value() {
            if self
                .opens
                .map
                .get(slot)
                .is_some_and(|o| o.opened.elapsed() < max_age)
            {
                break;
            }
            let slot = slot.clone();
            match self.opens.remove(&slot) {
                Some(o) => self.close(o).await,
                // Not in the map: cannot happen (both change together); drop the entry.
                None => {
                    self.opens.by_age.pop_first();
                }
            }
        }
    }

    /// Closes the object opened longest ago (to make room for another partition's); `false`
    /// if there was none.
    async fn close_oldest(&mut self) -> bool {
        let Some((_, slot)) = self.opens.by_age.pop_first() else {
            return false;
        };
        if let Some(o) = self.opens.map.remove(&slot) {
            inc(&self.ctx.stats.partitions_evicted, 1);
            self.close(o).await;
        }
        true
    }

    /// Adds one job's payloads to the objects being filled (each to its partition's),
    /// closing objects as they fill, and the oldest when a new partition would open more than
    /// `batch.max_open_partitions`.
    async fn fill(&mut self, job: Job) {
        // A clone: `self` is borrowed mutably below (to open and close objects).
        let ctx = &self.ctx.clone();
        // A replayed request is built into objects as the run that accepted it built them.
        let naming = job.spooled.as_ref().and_then(|s| s.naming.clone());
        let up = Upload {
            payloads: job.spans.len(),
            bytes: job.body.len(),
            pending: Cell::new(1),
            outcome: Cell::new(Delivery::Stored),
            waiter: RefCell::new(job.waiter),
            spooled: job.spooled,
        };
        if let Sink::Discard = ctx.sink {
            // Front-end benchmarks: count and drop the whole request, with no object, key or
            // timer (nothing is stored, so there is nothing to name or time).
            inc(&ctx.stats.payloads_uploaded, up.payloads as u64);
            let bytes: u64 = job.spans.iter().map(|&(a, b)| u64::from(b - a)).sum();
            inc(&ctx.stats.bytes_out, bytes);
            ctx.finish(&up, None);
            return;
        }
        let up = Rc::new(up);
        let batch = naming.as_ref().map_or(&ctx.config.batch, |n| &n.batch);
        let recorded = naming.as_deref().map(|n| Rc::new(recorded_keys(ctx, n)));
        let schema = schema_for(ctx, batch, naming.as_deref());
        let keys = recorded.as_deref().unwrap_or(&ctx.keys);
        let fields = keys.fields(job.tenant.as_deref(), job.received_secs, &job.headers);
        // Without `{payload.FIELD}` every payload of the request is in the same partition.
        let shared = (!keys.template().per_payload()).then(|| Slot {
            tenant: job.tenant.clone(),
            partition: keys.partition(&fields, b""),
        });
        for (i, &(start, end)) in job.spans.iter().enumerate() {
            let payload = &job.body[start as usize..end as usize];
            let own;
            let slot = match &shared {
                Some(s) => s,
                None => {
                    own = Slot {
                        tenant: job.tenant.clone(),
                        partition: keys.partition(&fields, payload),
                    };
                    &own
                }
            };
            // The common case, one lookup: the partition's object is open and has room.
            if let Some(o) = self
                .opens
                .map
                .get_mut(slot)
                .filter(|o| o.fits(payload, batch))
            {
                if push(ctx, o, payload, &up) && o.full(batch) {
                    if let Some(o) = self.opens.remove(slot) {
                        self.close(o).await;
                    }
                }
                continue;
            }
            // Its object has no room for the payload (or there is none): a new one.
            if let Some(o) = self.opens.remove(slot) {
                self.close(o).await;
            }
            let builder = match ObjectBuilder::new(batch, schema.as_ref()) {
                Ok(b) => b,
                Err(e) => {
                    // Only the compressor's set-up can fail here (memory); say so loudly.
                    tracing::error!(shard = ctx.shard, error = %e, "cannot start an object; payload LOST");
                    inc(&ctx.stats.payloads_failed, 1);
                    up.outcome.set(Delivery::Refused);
                    continue;
                }
            };
            let name = match &up.spooled {
                Some(sp) => ObjectName::Spooled {
                    segment: sp.id.segment,
                    offset: sp.id.offset,
                    index: i,
                },
                None => ctx.keys.seq_name(job.first_seq + i as u64),
            };
            self.opens.opened += 1;
            let mut o = Open {
                builder,
                name,
                keys: recorded.clone(),
                partition: slot.partition.clone(),
                opened: Instant::now(),
                order: self.opens.opened,
                members: Vec::new(),
            };
            if !push(ctx, &mut o, payload, &up) {
                continue;
            }
            if o.full(batch) {
                // Full at once (one payload per object): never kept open, so never counted
                // against the bound.
                self.close(o).await;
                continue;
            }
            while self.opens.map.len() >= batch.max_open_partitions.max(1) {
                if !self.close_oldest().await {
                    break;
                }
            }
            self.opens.put(slot, o);
        }
        ctx.finish(&up, None);
    }

    /// Closes an object and starts its upload once an in-flight permit is free: the object
    /// itself and, for a Parquet object with payloads that did not fit, its error output. Its
    /// jobs count it done once both are.
    async fn close(&self, o: Open) {
        let ctx = &self.ctx;
        let payloads = o.builder.payloads();
        let done = match o.builder.finish() {
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
        let keys = o.keys.as_deref().unwrap_or(&ctx.keys);
        let mut objects = Vec::with_capacity(2);
        if let Some((data, format, n)) = done.object {
            let key = keys.object_key(&o.partition, o.name, format.ext);
            objects.push((key, data, format, n));
        }
        if let Some(unfit) = done.unfit {
            let key = keys.unfit_key(&o.partition, o.name);
            let n = unfit.payloads as u64;
            if ctx
                .stats
                .payloads_unfit
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed)
                == 0
            {
                tracing::warn!(shard = ctx.shard, key, payloads = n, reason = %unfit.reason, "payloads that do not fit a Parquet object are stored as NDJSON in the error output (counted in corepost_payloads_unfit_total; logged once per shard, then at debug)");
            } else {
                tracing::debug!(shard = ctx.shard, key, payloads = n, reason = %unfit.reason, "payloads stored in the error output");
            }
            objects.push((key, unfit.data, UNFIT, unfit.payloads));
        }
        let spooled = matches!(o.name, ObjectName::Spooled { .. });
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return;
        };
        let ctx = ctx.clone();
        tokio::task::spawn_local(async move {
            let mut outcome = Outcome::Stored;
            for (key, data, format, n) in &objects {
                let one = ctx.deliver(key, data, *format, *n, spooled).await;
                outcome = outcome.and(one);
            }
            drop(permit);
            for m in &o.members {
                ctx.finish(m, Some(outcome));
            }
        });
    }
}

impl Open {
    /// Whether `payload` fits (an empty object takes any payload, however large).
    fn fits(&self, payload: &[u8], batch: &BatchConfig) -> bool {
        self.builder.payloads() == 0
            || self.builder.raw_bytes() + self.builder.cost(payload) <= batch.max_bytes
    }

    /// Whether it is full by count or bytes.
    fn full(&self, batch: &BatchConfig) -> bool {
        self.builder.payloads() >= batch.max_payloads || self.builder.raw_bytes() >= batch.max_bytes
    }
}

/// Adds one of `up`'s payloads to an object; `false` (logged, counted, the job marked)
/// if it could not be added.
fn push(ctx: &Ctx, o: &mut Open, payload: &[u8], up: &Rc<Upload>) -> bool {
    if let Err(e) = o.builder.push(payload) {
        tracing::error!(shard = ctx.shard, error = %e, "cannot add to an object; payload LOST");
        inc(&ctx.stats.payloads_failed, 1);
        up.outcome.set(Delivery::Refused);
        return false;
    }
    if !o.members.last().is_some_and(|m| Rc::ptr_eq(m, up)) {
        up.pending.set(up.pending.get() + 1);
        o.members.push(up.clone());
    }
    true
}

/// The fixed columns of a request's Parquet objects: none unless its batch settings name a
/// `batch.schema_file` (a replay of a record written without one infers, as its run did);
/// for a replay whose segment recorded the file's digest, the copy kept under it, so the
/// record is encoded as its run would have, whatever the file says now; otherwise this run's.
fn schema_for(ctx: &Ctx, batch: &BatchConfig, naming: Option<&Naming>) -> Option<SchemaRef> {
    if batch.format != BatchFormat::Parquet {
        return None;
    }
    batch.schema_file.as_ref()?;
    let Some(digest) = naming.and_then(|n| n.schema_sha256.as_deref()) else {
        return ctx.schema.clone();
    };
    let mut kept = ctx.kept_schemas.borrow_mut();
    let found = kept.entry(digest.to_string()).or_insert_with(|| {
        let dir = std::path::Path::new(&ctx.config.spool.dir);
        match super::schema_file::kept(dir, digest) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(shard = ctx.shard, error = %e, "spool: the schema file these records were taken with is gone; encoding them with this run's batch.schema_file");
                None
            }
        }
    });
    found.clone().or_else(|| ctx.schema.clone())
}

/// The key space a spool segment recorded (its prefix, instance, shard and template).
fn recorded_keys(ctx: &Ctx, n: &Naming) -> KeySpace {
    let template = match Template::parse(&n.template) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            // Only a template a later version wrote could fail here.
            tracing::warn!(shard = ctx.shard, template = %n.template, error = %e, "spool: the recorded key template does not parse; replaying under this run's");
            ctx.keys.template().clone()
        }
    };
    KeySpace::with_template(
        template,
        &n.prefix,
        &n.instance,
        n.shard.unwrap_or(ctx.shard),
        0,
    )
}
