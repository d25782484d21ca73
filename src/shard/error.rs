//! Why the server did not start, or did not stop cleanly.

use crate::config::ConfigError;
use crate::dirlock::DirLockError;
use crate::listen::PortInUse;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why [`start`](super::start) or [`Server::shutdown`](super::Server::shutdown) failed. As
/// elsewhere in the crate, the message names the setting or part to blame and includes its
/// cause's words; the cause is also kept as the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The shards cannot be placed on this process's CPUs.
    #[error(transparent)]
    Placement(#[from] ConfigError),
    /// `auth.tokens_file` cannot be loaded.
    #[error("auth.tokens_file: {0}")]
    Tokens(#[source] crate::auth::TokensError),
    /// `[tls]`: the certificate, key or client CA cannot be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A data directory is locked by another process, or cannot be locked.
    #[error(transparent)]
    Lock(#[from] DirLockError),
    /// `keys.template` does not parse (validation refuses it first; `keys` says why in words).
    #[error("keys.template: {0}")]
    Template(#[source] crate::keys::TemplateError),
    /// `batch.schema_file` (Parquet) cannot be read for the copy durable replays encode with.
    #[error("batch.schema_file: {0}")]
    SchemaFile(#[source] crate::upload::schema_file::SchemaFileError),
    /// The copy of `batch.schema_file` cannot be kept beside the spools.
    #[error("batch.schema_file: cannot keep a copy in {dir}: {source}")]
    SchemaCopy {
        /// Where the copies go.
        dir: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `server.listen` or `server.admin_listen` is not an address.
    #[error("{key}: {value:?} is not an address")]
    Address {
        /// The setting.
        key: &'static str,
        /// Its value.
        value: String,
    },
    /// Another process listens on the port.
    #[error(transparent)]
    PortInUse(#[from] PortInUse),
    /// A thread (an upload worker, the spool checkpointer) could not be started.
    #[error("starting {what}: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A shard's executor could not be started on its CPU.
    #[error("starting shard {shard} on CPU {cpu}: {source}")]
    Executor {
        /// The shard.
        shard: usize,
        /// Its CPU.
        cpu: usize,
        /// Why.
        #[source]
        source: glommio::GlommioError<()>,
    },
    /// A shard's executor ended before it reported its listeners.
    #[error("shard {0} stopped before binding")]
    Vanished(usize),
    /// A shard's spool could not be opened (or recovered).
    #[error("spool of shard {index}: cannot open the spool in {}: {source}", dir.display())]
    Spool {
        /// The spool's shard index.
        index: usize,
        /// Its directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: crate::spool::SpoolError,
    },
    /// A spool's naming context (recorded in every segment) could not be encoded.
    #[error("spool of shard {index}: {source}")]
    SpoolContext {
        /// The spool's shard index.
        index: usize,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A shard could not bind the public listener.
    #[error("shard {shard}: cannot listen on {addr}: {source}")]
    Listen {
        /// The shard.
        shard: usize,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Shard 0 could not bind the admin listener.
    #[error("cannot listen on server.admin_listen {addr:?}: {source}")]
    AdminListen {
        /// The address.
        addr: Option<SocketAddr>,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A bound listener has no local address.
    #[error("{0}")]
    LocalAddr(#[source] glommio::GlommioError<()>),
    /// A shard's executor ended abnormally (a panic).
    #[error("shard {shard} ended abnormally: {source}")]
    Ended {
        /// The shard.
        shard: usize,
        /// How.
        #[source]
        source: glommio::GlommioError<()>,
    },
    /// An upload worker panicked.
    #[error("upload worker {0} panicked")]
    WorkerPanicked(usize),
}
