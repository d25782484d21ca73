//! What travels from a shard to its upload worker: an accepted request ([`Job`]), its spool
//! record ([`Spooled`], [`Naming`]), and what became of it ([`Delivery`]), told to the
//! request's [`Waiter`] with `ack = "uploaded"`. The queue that
//! carries it is [`queue`](crate::queue).

use crate::parse::Span;
use crate::spool::{RecordId, Releaser};
use bytes::Bytes;
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
    pub waiter: Option<Waiter>,
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
            waiter: None,
            spooled: Some(spooled),
        }
    }
}

/// The request handler waiting for what became of its payloads (`ack = "uploaded"`): the
/// upload worker tells it once, when the last of them is stored or given up on.
#[derive(Debug)]
pub struct Waiter(tokio::sync::oneshot::Sender<Delivery>);

impl Waiter {
    /// A waiter, and the future its handler awaits (an error: the worker dropped the job
    /// without telling, which only happens when it is gone).
    pub fn new() -> (Waiter, tokio::sync::oneshot::Receiver<Delivery>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Waiter(tx), rx)
    }

    /// Tells the handler. It may have stopped waiting (its client gave up, or
    /// `upload.ack_timeout_ms` passed): nothing to do then.
    pub fn tell(self, outcome: Delivery) {
        let _ = self.0.send(outcome);
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
    /// The SHA-256 of `batch.schema_file`'s text, whose copy is kept in
    /// `{spool.dir}/schemas/` (see `upload::schema_file`): replays encode with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_sha256: Option<String>,
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
