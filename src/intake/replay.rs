//! Replay at start-up: the requests an earlier run left in the shard's spool go to the upload
//! worker again, with the naming their segment recorded.

use super::Intake;
use crate::job::{Job, Naming, Spooled};
use crate::metrics::inc;
use crate::queue::Reservation;
use crate::spool::{RecordId, Recovered, RecoveryReport, Releaser, Spool};
use futures_lite::future;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

/// Hands every recovered spool record to the upload worker again, waiting for queue room,
/// with the naming its segment recorded. A record that can never be delivered (it no longer
/// parses, or it is larger than the whole queue) goes to the dead-letter directory instead of
/// blocking the records after it. Ends early at shutdown: what is left stays in the spool.
///
/// `from` is the spool's own shard index (its directory `shard-{from}`): a record keeps the
/// keys of the shard that wrote it, and its dead letters go to `dead-letter/shard-{from}`.
pub async fn replay(
    intake: Rc<Intake>,
    spool: Rc<Spool>,
    releaser: Releaser,
    from: usize,
    report: RecoveryReport,
) {
    let spool = &*spool;
    let releaser = &releaser;
    let mut namings: HashMap<u64, Option<Arc<Naming>>> = HashMap::new();
    for rec in &report.records {
        let naming = namings
            .entry(rec.id.segment)
            .or_insert_with(|| naming_of(&intake, &report, rec.id.segment, from))
            .clone();
        let stopped = future::or(
            async { Some(intake.replay_one(spool, releaser, rec, naming, from).await) },
            async {
                intake.shutdown.stopping().await;
                None
            },
        )
        .await;
        match stopped {
            Some(Ok(())) => {}
            Some(Err(Stop)) | None => return,
        }
    }
}

/// The queue is closed: replay ends.
struct Stop;

/// The naming a segment recorded (`None`: unreadable, replayed as this run names things),
/// with the shard of the spool it came from if the segment predates recording it.
fn naming_of(
    intake: &Intake,
    report: &RecoveryReport,
    segment: u64,
    from: usize,
) -> Option<Arc<Naming>> {
    let raw = report.contexts.get(&segment)?;
    match serde_json::from_slice::<Naming>(raw) {
        Ok(mut n) => {
            n.shard.get_or_insert(from);
            Some(Arc::new(n))
        }
        Err(e) => {
            tracing::warn!(shard = intake.shard, segment, error = %e, "spool: unreadable naming context; replaying with the current configuration");
            None
        }
    }
}

impl Intake {
    /// Replays one record: waits for its room, reads it, checks it, queues it.
    async fn replay_one(
        &self,
        spool: &Spool,
        releaser: &Releaser,
        rec: &Recovered,
        naming: Option<Arc<Naming>>,
        from: usize,
    ) -> Result<(), Stop> {
        let id = rec.id;
        let (max_payloads, max_bytes) =
            (self.config.queue.max_payloads, self.config.queue.max_bytes);
        let want = rec.len.saturating_sub(super::record::RECORD_HEADER);
        if want > max_bytes {
            let why = format!(
                "{want} bytes: more than the whole queue holds (queue.max_bytes {max_bytes})"
            );
            if let Some(data) = self.read(spool, rec).await {
                let body = super::record::split_record(&data).map_or(&data[..], |r| r.body);
                self.dead_letter(releaser, from, id, body, &why);
            }
            return Ok(());
        }
        // Room for the record before it is read: replay holds no more than the queue may.
        let mut room = Reservation::wait_for_bytes(&self.budget, want).await;
        let Some(data) = self.read(spool, rec).await else {
            return Ok(());
        };
        let Some((secs, tenant, headers, header)) = super::record::split_record(&data).map(|r| {
            (
                r.received_secs,
                r.tenant.map(crate::auth::Tenant::from),
                r.header_values(),
                r.header_len,
            )
        }) else {
            let why = "record too short to hold a request, or its tenant unreadable";
            self.dead_letter(releaser, from, id, &data, why);
            return Ok(());
        };
        let body = bytes::Bytes::from(data).slice(header..);
        let mut spans = Vec::new();
        if let Err(e) = self.parser.borrow_mut().parse(&body, &mut spans) {
            self.dead_letter(releaser, from, id, &body, &format!("no longer parses: {e}"));
            return Ok(());
        }
        let n = spans.len();
        if n == 0 {
            releaser.release(id);
            return Ok(());
        }
        if n > max_payloads {
            let why = format!(
                "{n} payloads: more than the whole queue holds (queue.max_payloads {max_payloads})"
            );
            self.dead_letter(releaser, from, id, &body, &why);
            return Ok(());
        }
        room.shrink_to(body.len());
        room.wait_for_payloads(n).await;
        let spooled = Spooled {
            id,
            releaser: releaser.clone(),
            naming,
        };
        let job = Job::spooled(body, spans, secs, tenant, headers, spooled);
        self.send(job, room).map_err(|_| Stop)?;
        inc(&self.stats.payloads_replayed, n as u64);
        Ok(())
    }

    /// A recorded request's bytes; `None` (logged, kept in the spool) if they cannot be read.
    async fn read(&self, spool: &Spool, rec: &Recovered) -> Option<Vec<u8>> {
        match spool.read_record(rec).await {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::error!(shard = self.shard, segment = rec.id.segment, offset = rec.id.offset, error = %e, "spool: cannot read a recorded request; kept in the spool");
                None
            }
        }
    }

    /// Moves a spool record that can never be delivered to
    /// `{spool.dir}/dead-letter/shard-{k}/` (as `{segment}-{offset}.json`, the request body as
    /// received), then releases it. If that write fails the record stays in the spool
    /// (retried at the next start).
    fn dead_letter(&self, releaser: &Releaser, from: usize, id: RecordId, body: &[u8], why: &str) {
        let dir = std::path::Path::new(&self.config.spool.dir)
            .join("dead-letter")
            .join(format!("shard-{from}"));
        let path = dir.join(format!("{:020}-{}.json", id.segment, id.offset));
        let written = std::fs::create_dir_all(&dir).and_then(|()| {
            let mut f = std::fs::File::create(&path)?;
            std::io::Write::write_all(&mut f, body)?;
            f.sync_all()?;
            std::fs::File::open(&dir)?.sync_all()
        });
        match written {
            Ok(()) => {
                tracing::error!(shard = self.shard, segment = id.segment, offset = id.offset, file = %path.display(), reason = why, "spool: undeliverable request moved to the dead-letter directory");
                inc(&self.stats.spool_dead_letters, 1);
                releaser.release(id);
            }
            Err(e) => {
                tracing::error!(shard = self.shard, segment = id.segment, offset = id.offset, reason = why, error = %e, "spool: undeliverable request, and the dead-letter directory cannot take it; kept in the spool");
            }
        }
    }
}
