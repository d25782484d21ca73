//! Configuration: built-in defaults, then a config file, then a tuning profile, then the
//! environment, then command-line flags (later wins), then validation.
//!
//! Every struct here is the user's reference: each field's doc comment says what it does and
//! why it exists. Unknown keys are errors (`deny_unknown_fields`) and `validate` names the key
//! of every impossible value.
#![forbid(unsafe_code)]

mod load;
mod placement;

pub use load::{load, Flags, Sources};
pub use placement::{allowed_cpus, resolve_placement, ShardPlacement};

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
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// A file of tokens, one per line, each optionally followed by whitespace and a tenant
    /// (`[a-z0-9][a-z0-9._-]*`) whose payloads are stored under `{keys.prefix}/{tenant}/`;
    /// `#` comment lines. When set, every payload request must carry a listed token
    /// (`Authorization: Bearer TOKEN`, or the body's `token` field) or gets `401`. SIGHUP
    /// re-reads it. Unset (the default): anyone who reaches the port may post.
    /// `--tokens-file`, `COREPOST_TOKENS_FILE`.
    pub tokens_file: Option<String>,
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

/// The body parser behind `ingest::BodyParser`.
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
    /// timeouts); `0` retries until the store answers, so an outage fills the queue and turns
    /// into `503`s instead of loss.
    pub max_attempts: u32,
    /// First retry delay; each retry doubles it (full jitter), up to `backoff_max_ms`.
    pub backoff_base_ms: u64,
    /// Longest delay between two attempts. After throttling (`429`, `503`, `SlowDown`) the
    /// backoff goes two steps further, up to twice this cap, with equal jitter.
    pub backoff_max_ms: u64,
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
    /// deadline, or refused by the store for good (bad credentials, missing bucket). Files are
    /// named by object key and fsynced; the next start uploads and deletes them.
    pub spill_dir: String,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            max_attempts: 0,
            backoff_base_ms: 50,
            backoff_max_ms: 5_000,
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

/// How payloads are grouped into objects.
///
/// With `max_payloads = 1` and no compression every payload is its own `.json` object (the Go
/// service's layout: one PUT per payload). Otherwise an object is NDJSON, one payload per line
/// in arrival order, closed when it holds `max_payloads` payloads or `max_bytes` bytes or has
/// been open for `max_age_ms`, whichever comes first; keys end `.ndjson`, `.ndjson.gz` or
/// `.ndjson.zst`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Payloads per object at most. `1` (with no compression) keeps one object per payload.
    pub max_payloads: usize,
    /// Uncompressed NDJSON bytes per object at most; a payload that would pass it starts the
    /// next object (a single larger payload gets an object of its own).
    pub max_bytes: usize,
    /// An object is closed this long after its first payload arrived, even if no more come,
    /// so a quiet shard still delivers.
    pub max_age_ms: u64,
    /// `none`, `gzip` or `zstd`; sets `Content-Encoding` and the key's suffix.
    pub compression: Compression,
    /// Compression level: gzip 0–9 (default 6), zstd 1–22 (default 3).
    pub level: Option<i32>,
    /// Objects of this many (stored) bytes or more are sent with multipart upload.
    pub multipart_threshold_bytes: usize,
    /// Part size for multipart upload (S3 requires at least 5 MiB for all parts but the last).
    pub part_bytes: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_payloads: 1,
            max_bytes: 1 << 20,
            max_age_ms: 1_000,
            compression: Compression::None,
            level: None,
            multipart_threshold_bytes: 64 << 20,
            part_bytes: 8 << 20,
        }
    }
}

impl BatchConfig {
    /// Whether objects are NDJSON batches (otherwise one `.json` object per payload).
    pub fn ndjson(&self) -> bool {
        self.max_payloads > 1 || self.compression != Compression::None
    }
}

/// Compression of batched objects.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Plain NDJSON.
    None,
    /// gzip (`Content-Encoding: gzip`, `.ndjson.gz`).
    Gzip,
    /// Zstandard (`Content-Encoding: zstd`, `.ndjson.zst`).
    Zstd,
}

/// The per-shard durable spool (`ack = "durable"`): segment files written with direct I/O,
/// group-committed with one synchronous (O_DSYNC) write per commit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the spools; shard `k` uses `{dir}/shard-{k}`. Must be on a real disk
    /// (direct I/O). A restart with fewer shards than the directory holds is refused, so no
    /// shard's spool is left unread.
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
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: "corepost-spool".into(),
            segment_bytes: 64 << 20,
            max_bytes: 1 << 30,
            commit_wait_us: 50,
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
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            prefix: "corepost".into(),
            instance: None,
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

/// A configuration error; the message always names the key (or variable, or flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// All errors found in one configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Checks every value that the types alone cannot; each error names its key.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs = Vec::new();
        let mut bad = |key: &str, msg: String| errs.push(ConfigError(format!("{key}: {msg}")));
        if let Some(a) = &self.server.admin_listen {
            if a.parse::<std::net::SocketAddr>().is_err() {
                bad(
                    "server.admin_listen",
                    format!("{a:?} is not an IP:port address"),
                );
            } else if *a == self.server.listen && !a.ends_with(":0") {
                bad(
                    "server.admin_listen",
                    "must differ from server.listen".into(),
                );
            }
        }
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            bad(
                "server.listen",
                format!("{:?} is not an IP:port address", self.server.listen),
            );
        }
        if self.server.max_body_bytes == 0 || self.server.max_body_bytes > 1 << 30 {
            bad(
                "server.max_body_bytes",
                "must be between 1 and 1073741824".into(),
            );
        }
        if self.server.max_decoded_bytes < self.server.max_body_bytes
            || self.server.max_decoded_bytes > 1 << 30
        {
            bad(
                "server.max_decoded_bytes",
                format!(
                    "must be between server.max_body_bytes ({}) and 1073741824: a body accepted plain must also be accepted compressed",
                    self.server.max_body_bytes
                ),
            );
        }
        self.validate_batch(&mut bad);
        if self.server.ack == Ack::Durable {
            self.validate_spool(&mut bad);
        }
        for (key, v) in [
            (
                "server.header_read_timeout_ms",
                self.server.header_read_timeout_ms,
            ),
            (
                "server.body_read_timeout_ms",
                self.server.body_read_timeout_ms,
            ),
            ("server.write_timeout_ms", self.server.write_timeout_ms),
            ("upload.request_timeout_ms", self.upload.request_timeout_ms),
            ("upload.backoff_base_ms", self.upload.backoff_base_ms),
            ("upload.drain_timeout_ms", self.upload.drain_timeout_ms),
            ("server.ack_timeout_ms", self.server.ack_timeout_ms),
            ("batch.max_age_ms", self.batch.max_age_ms),
        ] {
            if v == 0 {
                bad(key, "must be greater than 0".into());
            }
        }
        if self.server.max_header_bytes < 1024 {
            bad("server.max_header_bytes", "must be at least 1024".into());
        }
        if self.upload.backoff_max_ms < self.upload.backoff_base_ms {
            bad(
                "upload.backoff_max_ms",
                "must be at least upload.backoff_base_ms".into(),
            );
        }
        if let Cores::Named(name) = &self.shards.cores {
            if name != "all" {
                bad(
                    "shards.cores",
                    format!("{name:?} is neither a number nor \"all\""),
                );
            }
        }
        if self.shards.cores == Cores::Count(0) {
            bad("shards.cores", "must be at least 1".into());
        }
        if self.shards.max_connections == 0 {
            bad("shards.max_connections", "must be at least 1".into());
        }
        if self.queue.max_payloads == 0 {
            bad(
                "queue.max_payloads",
                "must be at least 1 (MAX_QUEUE)".into(),
            );
        }
        if self.queue.max_bytes < self.server.max_body_bytes {
            bad(
                "queue.max_bytes",
                format!(
                    "must be at least server.max_body_bytes ({}), or no full-size request could ever be queued",
                    self.server.max_body_bytes
                ),
            );
        }
        if self.upload.max_in_flight == 0 || self.upload.max_in_flight > 4096 {
            bad(
                "upload.max_in_flight",
                "must be between 1 and 4096 (MAX_WORKERS)".into(),
            );
        }
        if self.sink.kind == SinkKind::S3 {
            if self.sink.s3.bucket.as_deref().unwrap_or("").is_empty() {
                bad(
                    "sink.s3.bucket",
                    "required for the s3 sink (S3_BUCKET)".into(),
                );
            }
            if self.sink.s3.access_key_id.is_none() || self.sink.s3.secret_access_key.is_none() {
                bad(
                    "sink.s3.access_key_id",
                    "credentials required for the s3 sink (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)".into(),
                );
            }
            if let Some(ep) = &self.sink.s3.endpoint {
                if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                    bad(
                        "sink.s3.endpoint",
                        format!("{ep:?} must start with http:// or https://"),
                    );
                }
            }
        }
        if self.upload.spill_dir.is_empty() {
            bad("upload.spill_dir", "must not be empty".into());
        }
        if self.sink.kind == SinkKind::Fs && self.sink.fs.root.is_empty() {
            bad("sink.fs.root", "must not be empty".into());
        }
        self.validate_data_dirs(&mut bad);
        if self.keys.prefix.starts_with('/') || self.keys.prefix.contains("..") {
            bad(
                "keys.prefix",
                "must not start with '/' or contain '..'".into(),
            );
        }
        if let Some(inst) = &self.keys.instance {
            if inst.is_empty() || inst.contains('/') {
                bad(
                    "keys.instance",
                    "must be non-empty and contain no '/'".into(),
                );
            }
        }
        if let Some(tls) = &self.tls {
            self.validate_tls(tls, &mut bad);
        }
        if let Some(path) = &self.auth.tokens_file {
            // Read here so that `check-config` and start-up refuse a malformed file; the
            // message names the line, never a token.
            if let Err(e) = crate::auth::TokenSet::load(std::path::Path::new(path)) {
                bad("auth.tokens_file", e);
            }
        }
        if self.glommio.io_memory_kib < 64 {
            bad("glommio.io_memory_kib", "must be at least 64".into());
        }
        if !(8..=32768).contains(&self.glommio.ring_depth) {
            bad("glommio.ring_depth", "must be between 8 and 32768".into());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// The data directories this configuration uses, with their keys: the spool (`ack =
    /// "durable"`), the spill directory, the fs sink's root (`sink.kind = "fs"`). Each is
    /// locked by the running server.
    pub fn data_dirs(&self) -> Vec<(&'static str, &str)> {
        let mut dirs = Vec::new();
        if self.server.ack == Ack::Durable {
            dirs.push(("spool.dir", self.spool.dir.as_str()));
        }
        dirs.push(("upload.spill_dir", self.upload.spill_dir.as_str()));
        if self.sink.kind == SinkKind::Fs {
            dirs.push(("sink.fs.root", self.sink.fs.root.as_str()));
        }
        dirs
    }

    /// No data directory may be another, or lie inside another: the spill replay would upload
    /// (and delete) the fs sink's objects or the spool's segments, the fs sink would write
    /// objects among the spool's or the spill directory's files.
    fn validate_data_dirs(&self, bad: &mut impl FnMut(&str, String)) {
        let dirs: Vec<_> = self
            .data_dirs()
            .into_iter()
            .filter(|(_, d)| !d.is_empty())
            .map(|(key, d)| (key, d, resolve_dir(d)))
            .collect();
        for (i, (key_a, a, abs_a)) in dirs.iter().enumerate() {
            for (key_b, b, abs_b) in &dirs[i + 1..] {
                if abs_a == abs_b {
                    bad(
                        key_b,
                        format!("{b:?} is the same directory as {key_a} ({a:?}); data directories must not overlap"),
                    );
                } else if abs_b.starts_with(abs_a) {
                    bad(
                        key_b,
                        format!(
                            "{b:?} is inside {key_a} ({a:?}); data directories must not overlap"
                        ),
                    );
                } else if abs_a.starts_with(abs_b) {
                    bad(
                        key_a,
                        format!(
                            "{a:?} is inside {key_b} ({b:?}); data directories must not overlap"
                        ),
                    );
                }
            }
        }
    }

    /// Both files named and usable (read, parsed, the key matching the certificate): a bad
    /// file is reported at start (and by `check-config`) with its name.
    fn validate_tls(&self, tls: &TlsConfig, bad: &mut impl FnMut(&str, String)) {
        if tls.handshake_timeout_ms == 0 {
            bad("tls.handshake_timeout_ms", "must be greater than 0".into());
        }
        let mut named = true;
        for (key, v) in [
            ("tls.cert_file", &tls.cert_file),
            ("tls.key_file", &tls.key_file),
        ] {
            if v.is_empty() {
                bad(key, "required with [tls] (--tls-cert, --tls-key)".into());
                named = false;
            }
        }
        if named {
            for e in crate::tls::check(tls) {
                // Each message starts with its key.
                let (key, msg) = e.split_once(": ").unwrap_or(("tls", e.as_str()));
                bad(key, msg.to_string());
            }
        }
    }

    fn validate_spool(&self, bad: &mut impl FnMut(&str, String)) {
        let sp = &self.spool;
        if sp.dir.is_empty() {
            bad("spool.dir", "must not be empty".into());
        }
        if !sp.segment_bytes.is_multiple_of(4096)
            || sp.segment_bytes < self.server.max_body_bytes as u64 + 4096
        {
            bad(
                "spool.segment_bytes",
                format!(
                    "must be a multiple of 4096 and at least server.max_body_bytes + 4096 ({})",
                    self.server.max_body_bytes + 4096
                ),
            );
        }
        if sp.max_bytes < 2 * sp.segment_bytes {
            bad(
                "spool.max_bytes",
                "must be at least twice spool.segment_bytes".into(),
            );
        }
    }

    fn validate_batch(&self, bad: &mut impl FnMut(&str, String)) {
        let b = &self.batch;
        if b.max_payloads == 0 {
            bad("batch.max_payloads", "must be at least 1".into());
        }
        // A batch larger than the queue budget could never fill: the shard would refuse
        // requests until max_age closed it.
        if self.queue.max_payloads > 0 && b.max_payloads > self.queue.max_payloads {
            bad(
                "batch.max_payloads",
                format!(
                    "must not exceed queue.max_payloads ({})",
                    self.queue.max_payloads
                ),
            );
        }
        if b.max_bytes == 0 || b.max_bytes > self.queue.max_bytes {
            bad(
                "batch.max_bytes",
                format!(
                    "must be between 1 and queue.max_bytes ({})",
                    self.queue.max_bytes
                ),
            );
        }
        if let Some(level) = b.level {
            let (lo, hi) = match b.compression {
                Compression::Gzip => (0, 9),
                Compression::Zstd => (1, 22),
                Compression::None => (0, 0),
            };
            if b.compression == Compression::None {
                bad(
                    "batch.level",
                    "set only with batch.compression = \"gzip\" or \"zstd\"".into(),
                );
            } else if !(lo..=hi).contains(&level) {
                bad("batch.level", format!("must be between {lo} and {hi}"));
            }
        }
        if b.part_bytes < 5 << 20 {
            bad(
                "batch.part_bytes",
                "must be at least 5242880 (S3's smallest part)".into(),
            );
        }
        if b.multipart_threshold_bytes < b.part_bytes {
            bad(
                "batch.multipart_threshold_bytes",
                "must be at least batch.part_bytes".into(),
            );
        }
    }

    /// The configuration as TOML, with secrets redacted (for `check-config`).
    pub fn to_redacted_toml(&self) -> String {
        let mut c = self.clone();
        if c.sink.s3.secret_access_key.is_some() {
            c.sink.s3.secret_access_key = Some("<redacted>".into());
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

/// `dir` as an absolute path with `.` and `..` resolved, for comparing directories: symlinks
/// are resolved in the longest part that exists (`canonicalize`), the rest, not created yet,
/// is taken as written.
fn resolve_dir(dir: &str) -> PathBuf {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| PathBuf::from(dir));
    let parts: Vec<Component<'_>> = abs.components().collect();
    let (mut out, rest) = (1..=parts.len())
        .rev()
        .find_map(|n| {
            let head: PathBuf = parts[..n].iter().collect();
            head.canonicalize().ok().map(|real| (real, &parts[n..]))
        })
        .unwrap_or((PathBuf::new(), &parts[..]));
    for part in rest {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn errors_name_their_keys() {
        let mut c = Config::default();
        c.server.listen = "nowhere".into();
        c.queue.max_payloads = 0;
        c.upload.max_in_flight = 0;
        c.shards.cores = Cores::Named("many".into());
        c.sink.kind = SinkKind::S3;
        let errs = c.validate().unwrap_err().0;
        let text: Vec<_> = errs
            .iter()
            .map(|e| e.0.split(':').next().unwrap())
            .collect();
        assert_eq!(
            text,
            [
                "server.listen",
                "shards.cores",
                "queue.max_payloads",
                "upload.max_in_flight",
                "sink.s3.bucket",
                "sink.s3.access_key_id"
            ]
        );
    }

    #[test]
    fn the_decoded_body_cap_is_at_least_the_body_limit() {
        let mut c = Config::default();
        assert_eq!(c.server.max_decoded_bytes, 16 << 20);
        c.server.max_body_bytes = 32 << 20;
        let text = c.validate().unwrap_err().to_string();
        assert!(
            text.starts_with(
                "server.max_decoded_bytes: must be between server.max_body_bytes (33554432)"
            ),
            "{text}"
        );
        c.server.max_decoded_bytes = 32 << 20;
        c.queue.max_bytes = 64 << 20;
        assert_eq!(c.validate(), Ok(()));
        c.server.max_decoded_bytes = (1 << 30) + 1;
        assert!(c.validate().is_err());
        // It may exceed the queue: such a body gets 413 naming queue.max_bytes.
        let mut c = Config::default();
        c.queue.max_bytes = 8 << 20;
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn every_ack_mode_is_valid_and_the_spool_is_checked_when_durable() {
        let mut c = Config::default();
        c.server.ack = Ack::Uploaded;
        assert_eq!(c.validate(), Ok(()));
        c.server.ack = Ack::Durable;
        assert_eq!(c.validate(), Ok(()));
        c.spool.segment_bytes = 1 << 20;
        c.spool.max_bytes = 1 << 20;
        let text = c.validate().unwrap_err().to_string();
        assert!(text.contains("spool.segment_bytes"), "{text}");
        assert!(text.contains("spool.max_bytes"), "{text}");
    }

    #[test]
    fn batch_limits_are_checked() {
        let mut c = Config::default();
        c.batch.max_payloads = 1000;
        c.queue.max_payloads = 100;
        c.batch.compression = Compression::Gzip;
        c.batch.level = Some(12);
        c.batch.part_bytes = 1 << 20;
        let text = c.validate().unwrap_err().to_string();
        for key in ["batch.max_payloads", "batch.level", "batch.part_bytes"] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
        let mut c = Config::default();
        c.batch.level = Some(3);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("batch.level"));
        c.batch.compression = Compression::Zstd;
        assert_eq!(c.validate(), Ok(()));
        assert!(c.batch.ndjson());
        assert!(!Config::default().batch.ndjson());
    }

    /// The keys named by the errors of `c` that are about overlapping data directories.
    fn overlaps(c: &Config) -> Vec<String> {
        match c.validate() {
            Ok(()) => Vec::new(),
            Err(errs) => errs
                .0
                .iter()
                .map(|e| e.0.clone())
                .filter(|e| e.contains("same directory as") || e.contains("is inside"))
                .collect(),
        }
    }

    #[test]
    fn data_directories_must_not_overlap() {
        let tmp = tempfile::tempdir().unwrap();
        let t = |p: &str| format!("{}/{p}", tmp.path().display());
        let mut c = Config::default();
        c.upload.spill_dir = t("a/b");
        c.sink.fs.root = t("a/./c/../b/");
        assert_eq!(
            overlaps(&c),
            [format!(
                "sink.fs.root: {:?} is the same directory as upload.spill_dir ({:?}); data directories must not overlap",
                t("a/./c/../b/"),
                t("a/b")
            )]
        );
        // One inside the other, either way round; the error names both keys.
        c.sink.fs.root = t("a");
        let errs = overlaps(&c);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("upload.spill_dir: ") && errs[0].contains("is inside sink.fs.root"),
            "{errs:?}"
        );
        c.sink.fs.root = t("a/b/objects");
        let errs = overlaps(&c);
        assert!(
            errs.len() == 1
                && errs[0].starts_with("sink.fs.root: ")
                && errs[0].contains("is inside upload.spill_dir"),
            "{errs:?}"
        );
        // A sibling whose name merely starts the same is not inside.
        c.sink.fs.root = t("a/b2");
        assert_eq!(overlaps(&c), Vec::<String>::new());
        // The fs root counts only with the fs sink.
        c.sink.fs.root = t("a/b");
        c.sink.kind = SinkKind::Discard;
        assert_eq!(overlaps(&c), Vec::<String>::new());
        // The spool counts only with ack = "durable".
        c.spool.dir = t("a/b/spool");
        assert_eq!(overlaps(&c), Vec::<String>::new());
        c.server.ack = Ack::Durable;
        let errs = overlaps(&c);
        assert!(
            errs.len() == 1
                && errs[0].starts_with("spool.dir: ")
                && errs[0].contains("upload.spill_dir"),
            "{errs:?}"
        );
        // Relative paths resolve against the working directory.
        let mut c = Config::default();
        c.upload.spill_dir = "data".into();
        c.sink.fs.root = std::env::current_dir()
            .unwrap()
            .join("data/objects")
            .display()
            .to_string();
        assert_eq!(overlaps(&c).len(), 1);
    }

    #[test]
    fn overlap_is_seen_through_symlinks_even_below_directories_not_created_yet() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mut c = Config::default();
        c.sink.fs.root = real.display().to_string();
        c.upload.spill_dir = link.join("spill/not-yet").display().to_string();
        let errs = overlaps(&c);
        assert!(
            errs.len() == 1
                && errs[0].starts_with("upload.spill_dir: ")
                && errs[0].contains("is inside sink.fs.root"),
            "{errs:?}"
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let mut c = Config::default();
        c.sink.s3.secret_access_key = Some("hunter2".into());
        let out = c.to_redacted_toml();
        assert!(!out.contains("hunter2"));
        assert!(out.contains("<redacted>"));
    }
}
