//! Configuration: built-in defaults, then a config file, then a tuning profile, then the
//! environment, then command-line flags (later wins), then validation.
//!
//! Every struct here is the user's reference: each field's doc comment says what it does and
//! why it exists. Unknown keys are errors (`deny_unknown_fields`) and `validate` names the key
//! of every impossible value.

mod batch;
mod load;
mod placement;
#[cfg(test)]
mod tests;
mod validate;

pub use batch::{BatchConfig, BatchFormat, Compression};
pub use load::{load, load_placed, FlagError, Flags, Sources};
pub use placement::{allowed_cpus, resolve_placement, ShardPlacement};
pub use validate::{ConfigError, ConfigErrors};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Component, PathBuf};

/// The whole server configuration, as merged from all layers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP front end: address, limits, timeouts, what a `200` promises.
    pub server: ServerConfig,
    /// How many shards (one glommio executor each) and on which CPUs.
    pub shards: ShardsConfig,
    /// Per-shard queue between the HTTP shard and its upload worker.
    pub queue: QueueConfig,
    /// Upload worker behaviour: concurrency and retries.
    pub upload: UploadConfig,
    /// Where payloads are stored.
    pub sink: SinkConfig,
    /// How payloads are grouped into objects: one per payload, or NDJSON batches, compressed
    /// or not.
    pub batch: BatchConfig,
    /// The per-shard write-ahead spool behind `ack = "durable"`.
    pub spool: SpoolConfig,
    /// How object keys are built.
    pub keys: KeysConfig,
    /// Knobs passed to each glommio executor.
    pub glommio: GlommioConfig,
    /// TLS on the public listener; absent (the default) means plain HTTP.
    pub tls: Option<TlsConfig>,
    /// Who may post: bearer tokens and their tenants.
    pub auth: AuthConfig,
}

/// TLS on the public listener (`[tls]`). With it, `server.listen` speaks only TLS 1.2/1.3
/// (ALPN `http/1.1`): a client that sends anything else is disconnected without an answer.
/// The admin listener (`server.admin_listen`), meant for a private network, stays plain HTTP.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's certificate first (`--tls-cert`,
    /// `COREPOST_TLS_CERT_FILE`). Re-read on SIGHUP.
    pub cert_file: String,
    /// PEM private key of that certificate: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) (`--tls-key`,
    /// `COREPOST_TLS_KEY_FILE`). Re-read on SIGHUP. Never printed.
    pub key_file: String,
    /// PEM CA certificates; when set, every client must present a certificate that chains to
    /// one of them, or its handshake fails (`COREPOST_TLS_CLIENT_CA_FILE`). Read at start.
    pub client_ca_file: Option<String>,
    /// A client must complete its TLS handshake within this time after connecting, or the
    /// connection is closed: a client that connects and stalls holds no connection slot for
    /// longer. (`server.header_read_timeout_ms` then applies to the request head.)
    pub handshake_timeout_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: String::new(),
            key_file: String::new(),
            client_ca_file: None,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// Bearer tokens (see the `auth` module and the README's "Tokens and tenants").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// A file of tokens, one per line, each optionally followed by whitespace and a tenant
    /// (`[a-z0-9][a-z0-9._-]*`) whose payloads are stored under `{keys.prefix}/{tenant}/`;
    /// `#` comment lines. When set, every payload request must carry a listed token
    /// (`Authorization: Bearer TOKEN`, or the body's `token` field) or gets `401`. SIGHUP
    /// re-reads it. Unset (the default): anyone who reaches the port may post.
    /// `--tokens-file`, `COREPOST_TOKENS_FILE`.
    pub tokens_file: Option<String>,
    /// With `tokens_file` set: the share of each shard's `queue.max_bytes`, in percent, that
    /// requests without an `Authorization` header may hold together while their bodies are
    /// read (their token is in the body, so it cannot be checked before the body is in). Past
    /// it such requests get `503` (`413` for a body larger than the whole share, which is
    /// never less than `server.max_body_bytes`), while clients that send `Authorization:
    /// Bearer TOKEN` keep finding room: stalled bodies of unknown clients cannot take the
    /// whole queue. 1 to 100; 100 turns the bound off.
    pub unverified_queue_percent: u8,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            tokens_file: None,
            unverified_queue_percent: 25,
        }
    }
}

/// HTTP front-end settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address every shard listens on (each with its own `SO_REUSEPORT` socket). Port 0 picks a
    /// free port; the ready line prints the one bound.
    pub listen: String,
    /// Optional address of the admin listener: when set, `/metrics`, `/healthz` and `/readyz`
    /// are served there (by shard 0) and not on the public listener, so that the public
    /// address takes payloads only.
    pub admin_listen: Option<String>,
    /// Largest request body accepted; larger ones get `413` without being read into memory.
    /// For a compressed body (`Content-Encoding`) this counts the bytes on the wire.
    pub max_body_bytes: usize,
    /// Largest body accepted once decoded (`Content-Encoding: gzip`, `deflate` or `zstd`):
    /// decoding stops, and the request gets `413`, as soon as the output passes it, so a
    /// small compressed body that would expand to gigabytes costs at most this much memory.
    /// At least `max_body_bytes` (a body accepted plain is accepted compressed), at most
    /// 1 GiB. The decoded bytes are what counts against `queue.max_bytes`.
    pub max_decoded_bytes: usize,
    /// Which body parser to use: `simd` (simd-json tape and structural indexes; refuses
    /// numbers beyond 64 bits or f64 range and lone surrogate escapes) or `serde` (serde_json
    /// raw values; stores such payloads as sent). Both keep payloads as the bytes the client
    /// sent. `benches/ingest.rs` compares them.
    pub parser: ParserKind,
    /// What a `200` promises: `queued` (in the shard's memory queue, the Go service's promise;
    /// the default), `durable` (in the shard's fsynced spool on local disk; survives a crash)
    /// or `uploaded` (every payload of the request is in the store).
    pub ack: Ack,
    /// With `ack = "uploaded"`: how long a request waits for its payloads to be stored before
    /// it is answered `503` (the payloads stay queued and are still delivered; see the
    /// duplicates in `docs/operations.md`).
    pub ack_timeout_ms: u64,
    /// A client must send its complete request head within this time, or the connection is
    /// closed (slow-loris protection).
    pub header_read_timeout_ms: u64,
    /// A request body must arrive completely within this time, or the request gets `408`.
    pub body_read_timeout_ms: u64,
    /// A write to a client (an answer) must make progress within this time, or the
    /// connection is closed: a client that pipelines requests and never reads the answers
    /// would otherwise hold its connection slot forever.
    pub write_timeout_ms: u64,
    /// Largest request head (request line plus headers) accepted; hyper's minimum is 8192.
    pub max_header_bytes: usize,
    /// On shutdown, requests in progress get this long to finish before their connections are
    /// closed.
    pub shutdown_grace_ms: u64,
    /// Once a connection is this old, the answer to its next accepted request (2xx; a refusal
    /// may leave part of its body unread) carries `Connection: close` and the connection is
    /// closed after it, so that a load balancer gets to place the client's next connection
    /// again (after a restart or a scale-out, long-lived keep-alive connections would
    /// otherwise stay on the machines they started on). A request in progress is never cut;
    /// an idle connection is not closed for its age (that would race a request the client is
    /// sending on it). Each connection's age is
    /// drawn between 90% and 100% of this, so connections opened together do not all
    /// reconnect at once. 0 (the default) turns it off: L7 balancers (nginx, HAProxy, Envoy,
    /// cloud ALBs) choose a machine per request anyway, and a client talking to one machine
    /// gains nothing from reconnecting; set it behind L4 balancers (e.g. 300000).
    pub max_connection_age_ms: u64,
    /// Value of `Retry-After` (seconds) on `503` answers.
    pub retry_after_secs: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            admin_listen: None,
            max_body_bytes: 1 << 20,
            max_decoded_bytes: 16 << 20,
            parser: ParserKind::Simd,
            ack: Ack::Queued,
            ack_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            write_timeout_ms: 30_000,
            max_header_bytes: 16 * 1024,
            shutdown_grace_ms: 10_000,
            max_connection_age_ms: 0,
            retry_after_secs: 1,
        }
    }
}

/// The body parser behind `parse::BodyParser`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ParserKind {
    /// serde_json into borrowed raw values: validates, keeps each payload's bytes as sent.
    Serde,
    /// simd-json tape (reused buffers) for validation and shape, structural indexes for the
    /// payload byte ranges.
    Simd,
}

/// What a `200` promises.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Ack {
    /// The payloads are in the shard's memory queue.
    Queued,
    /// The request is in the shard's fsynced spool: it survives a crash or `kill -9`.
    Durable,
    /// Every payload of the request is in the store.
    Uploaded,
}

/// Number of shards: a count, or `"all"` for every CPU the process may use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Cores {
    /// Exactly this many shards, on the first CPUs of the affinity mask.
    Count(usize),
    /// A keyword; only `"all"` is valid.
    Named(String),
}

/// Shard count and placement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShardsConfig {
    /// Number of shards (`N` or `"all"`). One glommio executor per shard, each pinned to a CPU.
    pub cores: Cores,
    /// Explicit CPU ids for the shards (overrides the first-N choice). Each must be in the
    /// process's affinity mask (`taskset`, cgroup cpusets); its length must match `cores`.
    pub cpus: Option<Vec<usize>>,
    /// CPU ids for the upload workers, one per shard. Default: the shard's own CPU.
    pub worker_cpus: Option<Vec<usize>>,
    /// Open connections allowed per shard; further connections are closed at once. Lowered at
    /// start to fit `RLIMIT_NOFILE` (whose soft limit is raised to the hard one).
    pub max_connections: usize,
}

impl Default for ShardsConfig {
    fn default() -> Self {
        Self {
            cores: Cores::Count(1),
            cpus: None,
            worker_cpus: None,
            max_connections: 10_000,
        }
    }
}

/// Per-shard queue bounds. A request is queued whole or not at all.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Payloads queued or uploading per shard before new requests get `503`. Also the most
    /// payloads one request may hold (more: `413`).
    pub max_payloads: usize,
    /// Request bytes held per shard (queued or uploading) before new requests get `503`: the
    /// shard's memory ceiling for payload data.
    pub max_bytes: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_payloads: 100_000,
            max_bytes: 64 << 20,
        }
    }
}

/// Upload worker settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UploadConfig {
    /// Concurrent PUTs per shard. `MAX_WORKERS` sets it.
    pub max_in_flight: usize,
    /// Attempts per object for transient failures (connection errors, 5xx, SlowDown,
    /// timeouts) before it is treated as refused (below); `0` retries until the store
    /// answers, so an outage fills the queue and turns into `503`s instead of loss.
    pub max_attempts: u32,
    /// First retry delay; each retry doubles it (full jitter), up to `backoff_max_ms`.
    pub backoff_base_ms: u64,
    /// Longest delay between two attempts. After throttling (`429`, `503`, `SlowDown`) the
    /// backoff goes two steps further, up to twice this cap, with equal jitter.
    pub backoff_max_ms: u64,
    /// Longest delay between two attempts at data the store refused for good (403, 404
    /// NoSuchBucket, bad credentials, clock skew, fs sink permissions) or that used up
    /// `max_attempts`. Such data is never dropped: a spooled request stays in memory and in
    /// its spool and is tried again; other objects are written to `spill_dir`, which is
    /// delivered while running. The delay starts at one second and doubles up to this cap
    /// (full jitter), so data is stored within about this long of the store accepting again.
    pub refused_backoff_max_ms: u64,
    /// Time limit for one PUT request.
    pub request_timeout_ms: u64,
    /// After SIGTERM, the queues have this long to drain into the sink. What is still
    /// undelivered then is written to `spill_dir` and uploaded first at the next start.
    pub drain_timeout_ms: u64,
    /// After waking for a job, the worker takes everything queued, then waits this long
    /// (microseconds) before looking again, so a busy shard wakes its worker about
    /// 1/`queue_poll_us` times a second rather than once per request. 0 wakes per request.
    pub queue_poll_us: u64,
    /// Local directory for payloads that could not be delivered: left over at the drain
    /// deadline, or refused by the store (bad credentials, missing bucket). Files are named by
    /// object key and fsynced; shard 0's worker uploads and deletes them while running (with
    /// the `refused_backoff_max_ms` backoff while the store refuses) and at the next start.
    pub spill_dir: String,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            max_attempts: 0,
            backoff_base_ms: 50,
            backoff_max_ms: 5_000,
            refused_backoff_max_ms: 30_000,
            request_timeout_ms: 30_000,
            drain_timeout_ms: 30_000,
            queue_poll_us: 1_000,
            spill_dir: "corepost-spill".into(),
        }
    }
}

/// The kind of sink.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// Objects as files under a local directory (no setup needed; the default).
    Fs,
    /// An S3 or S3-compatible store.
    S3,
    /// Count and drop. For benchmarks of the front end only.
    Discard,
}

impl fmt::Display for SinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SinkKind::Fs => "fs",
            SinkKind::S3 => "s3",
            SinkKind::Discard => "discard",
        })
    }
}

/// Where payloads go.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SinkConfig {
    /// `fs`, `s3` or `discard`.
    pub kind: SinkKind,
    /// Settings of the `fs` sink.
    pub fs: FsSinkConfig,
    /// Settings of the `s3` sink.
    pub s3: S3SinkConfig,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            kind: SinkKind::Fs,
            fs: FsSinkConfig::default(),
            s3: S3SinkConfig::default(),
        }
    }
}

/// The local-directory sink.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FsSinkConfig {
    /// Directory under which objects are written, one file per key (atomically, by rename).
    pub root: String,
}

impl Default for FsSinkConfig {
    fn default() -> Self {
        Self {
            root: "corepost-data".into(),
        }
    }
}

/// The S3 sink.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct S3SinkConfig {
    /// Endpoint URL of an S3-compatible store (`S3_ENDPOINT`); empty means AWS itself.
    pub endpoint: Option<String>,
    /// Region name (`S3_REGION`).
    pub region: String,
    /// Bucket name (`S3_BUCKET`). Required for the s3 sink.
    pub bucket: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible stores need.
    pub path_style: bool,
    /// Access key id; `AWS_ACCESS_KEY_ID` overrides it.
    pub access_key_id: Option<String>,
    /// Secret access key; `AWS_SECRET_ACCESS_KEY` overrides it. Never printed.
    pub secret_access_key: Option<String>,
}

impl Default for S3SinkConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: "us-east-1".into(),
            bucket: None,
            path_style: true,
            access_key_id: None,
            secret_access_key: None,
        }
    }
}

/// The per-shard durable spool (`ack = "durable"`): segment files written with direct I/O,
/// group-committed with one synchronous (O_DSYNC) write per commit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the spools; shard `k` uses `{dir}/shard-{k}`. Must be on a real disk
    /// (direct I/O). Whatever `ack` and `cores` are now, every spool found here at start is
    /// delivered: one of a shard index this run does not have (fewer cores) by shard
    /// `index % cores`, and all of them when `ack` is no longer `durable`.
    pub dir: String,
    /// Size of each segment file (zero-filled when created, so commits only flush data), a multiple of 4096; bounds the largest
    /// request, so it must exceed `server.max_body_bytes` by at least 4096.
    pub segment_bytes: u64,
    /// Disk budget per shard: live segments beyond it turn into `503` until the store has
    /// taken what they hold.
    pub max_bytes: u64,
    /// Group commit: the longest an accepted request waits for others before the one
    /// synchronous (O_DSYNC) write that makes all of them durable (microseconds). Requests
    /// arriving while a commit is on its way to the disk join the next one anyway, so a short
    /// wait suffices; `benches/e2e/durable-probe.sh RATE SEGMENT_BYTES WAIT` measures a setting.
    pub commit_wait_us: u64,
    /// How often release progress is persisted (`release.ckpt` per spool, written and synced
    /// only when records were stored since the last one), in milliseconds. A clean stop
    /// writes it last, so a start replays nothing stored; after a crash a start replays what
    /// was not stored, plus at most what was stored in the last interval.
    pub checkpoint_ms: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: "corepost-spool".into(),
            segment_bytes: 64 << 20,
            max_bytes: 1 << 30,
            commit_wait_us: 50,
            checkpoint_ms: 1000,
        }
    }
}

/// Object key settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    /// First path segment of every key (`S3_PREFIX`).
    pub prefix: String,
    /// Name of this process in keys, so instances behind one load balancer never collide.
    /// Default: the host name.
    pub instance: Option<String>,
    /// Layout of object keys: path segments separated by `/`, with variables `{prefix}`,
    /// `{tenant}`, `{yyyy}` `{mm}` `{dd}` `{hh}` `{mi}` (UTC, when the request arrived),
    /// `{instance}`, `{shard}`, `{start}`, `{seq}`, `{payload.FIELD}` (a field of each
    /// payload; `os.name` for a nested one) and `{header.NAME}` (a request header). Values
    /// are percent-encoded outside `[A-Za-z0-9._-]` and at most 128 bytes; a missing one is
    /// `__HIVE_DEFAULT_PARTITION__`. The last segment names the object and must hold
    /// `{instance}`, `{shard}`, `{start}` and `{seq}`; the segments before it are the
    /// object's partition (objects are batched per partition, see
    /// `batch.max_open_partitions`). The extension follows. The default is the layout keys
    /// always had. See "Key templates" in docs/operations.md.
    pub template: String,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            prefix: "corepost".into(),
            instance: None,
            template: crate::keys::DEFAULT_TEMPLATE.into(),
        }
    }
}

/// glommio executor knobs, per shard.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GlommioConfig {
    /// Busy-poll this long before parking an idle executor: lower latency, more CPU.
    pub spin_before_park_us: u64,
    /// Locked memory per executor for io_uring buffers, in KiB.
    pub io_memory_kib: usize,
    /// Entries in each io_uring ring.
    pub ring_depth: usize,
}

impl Default for GlommioConfig {
    fn default() -> Self {
        Self {
            spin_before_park_us: 0,
            io_memory_kib: 10 * 1024,
            ring_depth: 128,
        }
    }
}
