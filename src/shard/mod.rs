//! Shards: one glommio executor per configured core, pinned, each with its own `SO_REUSEPORT`
//! listener, parser buffers, counters and queue sender; plus start-up and shutdown of the whole
//! server.

mod error;
mod spools;

pub use error::ShardError;

use crate::config::{allowed_cpus, resolve_placement, Ack, Config};
use crate::dirlock::DirLock;
use crate::http::{Front, FrontParts, Listener};
use crate::intake::{Intake, Parts};
use crate::keys::{host_name, unix_micros, KeySpace};
use crate::metrics::{ShardStats, ShardView};
use crate::queue::{channel, Budget};
use crate::shutdown::{Local, Phase, Shutdown};
use crate::upload::{self, WorkerSetup};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// A running server: its shards and upload workers.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    shards: usize,
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    drain_timeout: Duration,
    /// The one shutdown signal every shard and upload worker listens to.
    shutdown: Arc<Shutdown>,
    /// What SIGHUP re-reads.
    reloaders: crate::reload::Reloaders,
    /// Writes the spools' release checkpoints; the last ones once the workers have ended.
    checkpointer: spools::Checkpointer,
    views: Arc<Vec<ShardView>>,
    /// Locks on the data directories, held until the server has stopped (dropped last).
    _locks: Vec<DirLock>,
}

/// Starts every shard and upload worker; returns once all listeners are bound.
pub fn start(mut config: Config) -> Result<Server, ShardError> {
    let placement = resolve_placement(&config.shards, &allowed_cpus())?;
    let fds = crate::fd_limit::fit_connections(
        placement.len(),
        config.shards.max_connections,
        config.upload.max_in_flight,
    );
    config.shards.max_connections = fds.max_connections;
    let config = Arc::new(config);
    let tokens = load_tokens(&config)?;
    // Before anything reads or writes a data directory: no other process may be using it.
    let mut locks = lock_data_dirs(&config)?;
    let mut adopted = spools::find_adopted(&config, placement.len());
    if config.server.ack != Ack::Durable && adopted.iter().any(|a| !a.is_empty()) {
        // Not a data directory of this configuration, but it holds requests to deliver.
        locks.push(DirLock::acquire("spool.dir", Path::new(&config.spool.dir))?);
    }
    let instance = config.keys.instance.clone().unwrap_or_else(host_name);
    let shutdown = Shutdown::new();
    let workers = start_workers(&config, &placement, &instance, &shutdown)?;
    let (mut addr, admin_addr) = addresses(&config)?;
    // Read (and checked) before any shard starts: a bad file stops the start, naming it.
    let tls = match &config.tls {
        Some(t) => Some(Arc::new(crate::tls::Tls::new(t, placement.len())?)),
        None => None,
    };
    let common = Common {
        config: config.clone(),
        instance,
        views: Arc::new(workers.views),
        shutdown,
        tokens: tokens.clone(),
        tls: tls.clone(),
    };
    let (mut admin_bound, mut executors) = (None, Vec::new());
    let drain_timeout = Duration::from_millis(config.upload.drain_timeout_ms);
    // Shard 0 binds first so that port 0 resolves to one port that the others then share;
    // it also serves the admin listener (the metrics cover every shard).
    for (p, sender) in placement.iter().zip(workers.senders) {
        let admin = admin_addr.filter(|_| p.shard == 0);
        let adopt = std::mem::take(&mut adopted[p.shard]);
        // A shard that cannot start stops the ones already serving, as a first signal would.
        let started = spawn_shard(&common, p, (sender, adopt), (addr, admin))
            .inspect_err(|_| common.shutdown.begin(drain_timeout))?;
        addr = started.addr;
        admin_bound = admin_bound.or(started.admin);
        executors.push(started.executor);
    }
    let reloaders = crate::reload::Reloaders::default();
    if let Some(tls) = tls {
        reloaders.add("tls certificate", move || tls.reload());
    }
    if let Some(t) = tokens {
        reloaders.add("tokens", move || t.reload());
    }
    let every = Duration::from_millis(config.spool.checkpoint_ms);
    let checkpointer =
        spools::Checkpointer::start(common.views.clone(), every).map_err(|source| {
            common.shutdown.begin(drain_timeout);
            ShardError::Thread {
                what: "the spool checkpoint thread",
                source,
            }
        })?;
    Ok(Server {
        checkpointer,
        views: common.views.clone(),
        addr,
        admin: admin_bound,
        shards: placement.len(),
        executors,
        workers: workers.threads,
        drain_timeout,
        shutdown: common.shutdown,
        reloaders,
        _locks: locks,
    })
}

/// The token set every shard checks against (`[auth] tokens_file`); SIGHUP replaces it.
fn load_tokens(config: &Config) -> Result<Option<Arc<crate::auth::Tokens>>, ShardError> {
    let Some(path) = &config.auth.tokens_file else {
        return Ok(None);
    };
    let tokens = crate::auth::Tokens::load(Path::new(path)).map_err(ShardError::Tokens)?;
    tracing::info!("auth: {}", tokens.describe());
    Ok(Some(tokens))
}

/// `server.listen` and `server.admin_listen`, parsed and checked to be free.
fn addresses(config: &Config) -> Result<(SocketAddr, Option<SocketAddr>), ShardError> {
    let parse = |key, value: &String| {
        value.parse().map_err(|_| ShardError::Address {
            key,
            value: value.clone(),
        })
    };
    let addr: SocketAddr = parse("server.listen", &config.server.listen)?;
    crate::listen::check_port_free(addr)?;
    let admin = match &config.server.admin_listen {
        Some(a) => {
            let a = parse("server.admin_listen", a)?;
            crate::listen::check_port_free(a)?;
            Some(a)
        }
        None => None,
    };
    Ok((addr, admin))
}

/// The upload workers, with each shard's counters, budget and end of its queue.
struct Workers {
    views: Vec<ShardView>,
    senders: Vec<crate::queue::JobSender>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Starts one upload worker per shard, each with its shard's queue and budget.
fn start_workers(
    config: &Arc<Config>,
    placement: &[crate::config::ShardPlacement],
    instance: &str,
    shutdown: &Arc<Shutdown>,
) -> Result<Workers, ShardError> {
    let start_micros = unix_micros();
    // Parsed once; validation has refused a template that does not parse.
    let template = Arc::new(
        crate::keys::Template::parse(&config.keys.template).map_err(ShardError::Template)?,
    );
    let stored_anywhere: Arc<std::sync::atomic::AtomicU64> = Arc::default();
    let mut w = Workers {
        views: Vec::new(),
        senders: Vec::new(),
        threads: Vec::new(),
    };
    for p in placement {
        let stats = Arc::new(ShardStats::sharing(stored_anywhere.clone()));
        let budget = Arc::new(Budget::new(
            config.queue.max_payloads,
            config.queue.max_bytes,
        ));
        let (tx, rx) = channel(budget.clone());
        let keys = KeySpace::with_template(
            template.clone(),
            &config.keys.prefix,
            instance,
            p.shard,
            start_micros,
        );
        let setup = WorkerSetup {
            shard: p.shard,
            cpu: p.worker_cpu,
            rx,
            shutdown: shutdown.clone(),
            replay_spill: p.shard == 0,
            budget: budget.clone(),
            stats: stats.clone(),
            keys,
            config: config.clone(),
        };
        w.threads
            .push(upload::spawn(setup).map_err(|source| ShardError::Thread {
                what: "an upload worker",
                source,
            })?);
        w.views.push(ShardView {
            stats,
            budget,
            spool: Arc::default(),
            max_connections: config.shards.max_connections,
        });
        w.senders.push(tx);
    }
    Ok(w)
}

/// What every shard shares.
struct Common {
    config: Arc<Config>,
    instance: String,
    views: Arc<Vec<ShardView>>,
    shutdown: Arc<Shutdown>,
    tokens: Option<Arc<crate::auth::Tokens>>,
    tls: Option<Arc<crate::tls::Tls>>,
}

/// A shard's executor, bound and serving.
struct Started {
    executor: glommio::ExecutorJoinHandle<()>,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
}

/// What a shard reports once bound: its address and its admin listener's, or why it failed.
type Bound = Result<(SocketAddr, Option<SocketAddr>), ShardError>;

/// Starts shard `p`'s executor on its CPU and waits until it is listening.
fn spawn_shard(
    common: &Common,
    p: &crate::config::ShardPlacement,
    (sender, adopt): (crate::queue::JobSender, Vec<spools::Adopted>),
    addrs: (SocketAddr, Option<SocketAddr>),
) -> Result<Started, ShardError> {
    let shard = p.shard;
    let (bound_tx, bound_rx) = std::sync::mpsc::channel::<Bound>();
    let setup = ShardSetup {
        shard,
        config: common.config.clone(),
        instance: common.instance.clone(),
        views: common.views.clone(),
        shutdown: common.shutdown.clone(),
        tokens: common.tokens.clone(),
        tls: common.tls.as_ref().map(|t| t.shards[shard].clone()),
        sender,
        adopt,
    };
    let g = &common.config.glommio;
    let mut builder = LocalExecutorBuilder::new(Placement::Fixed(p.cpu))
        .name(&format!("shard-{shard}"))
        .io_memory(g.io_memory_kib * 1024)
        .ring_depth(g.ring_depth);
    if g.spin_before_park_us > 0 {
        builder = builder.spin_before_park(Duration::from_micros(g.spin_before_park_us));
    }
    let executor = builder
        .spawn(move || run_shard(setup, addrs, bound_tx))
        .map_err(|source| ShardError::Executor {
            shard,
            cpu: p.cpu,
            source,
        })?;
    let (addr, admin) = bound_rx.recv().map_err(|_| ShardError::Vanished(shard))??;
    Ok(Started {
        executor,
        addr,
        admin,
    })
}

/// What one shard's executor is started with.
struct ShardSetup {
    shard: usize,
    config: Arc<Config>,
    instance: String,
    views: Arc<Vec<ShardView>>,
    shutdown: Arc<Shutdown>,
    tokens: Option<Arc<crate::auth::Tokens>>,
    tls: Option<crate::tls::ShardTls>,
    sender: crate::queue::JobSender,
    /// Spools of an earlier run that this shard delivers (see `spools`).
    adopt: Vec<spools::Adopted>,
}

/// A shard's life on its executor: opens (and recovers) its spool, binds its listeners
/// (reporting the addresses, or why not, on `bound`), replays its spool and serves until
/// stopped.
async fn run_shard(
    s: ShardSetup,
    addrs: (SocketAddr, Option<SocketAddr>),
    bound: std::sync::mpsc::Sender<Bound>,
) {
    let (shard, cfg) = (s.shard, s.config.clone());
    let spool = if cfg.server.ack == Ack::Durable {
        let dir = Path::new(&cfg.spool.dir).join(format!("shard-{shard}"));
        match spools::open(&cfg, &s.instance, shard, &dir, false, &s.views[shard]).await {
            Ok(opened) => Some(opened),
            Err(e) => {
                let _ = bound.send(Err(e));
                return;
            }
        }
    } else {
        None
    };
    // An adopted spool that cannot be opened is logged and left for a later start: refusing
    // to start would stop the new requests too (and loop under a restarting supervisor).
    let mut adopted = Vec::new();
    for a in &s.adopt {
        match spools::open(&cfg, &s.instance, a.index, &a.dir, true, &s.views[shard]).await {
            Ok(opened) => adopted.push((opened, a.index)),
            Err(e) => {
                tracing::error!(shard, error = %e, "spool: cannot deliver a spool an earlier run left; it is kept")
            }
        }
    }
    let listeners = match bind(shard, addrs) {
        Ok(l) => l,
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    let addr = listeners
        .0
        .local_addr()
        .and_then(|a| {
            let admin = listeners.1.as_ref().map(|l| l.local_addr()).transpose()?;
            Ok((a, admin))
        })
        .map_err(ShardError::LocalAddr);
    let _ = bound.send(addr);
    let shutdown = Local::follow(s.shutdown);
    let intake = Rc::new(Intake::new(Parts {
        shard,
        config: cfg.clone(),
        sender: s.sender,
        stats: s.views[shard].stats.clone(),
        tokens: s.tokens.map(crate::auth::ShardTokens::new),
        shutdown: shutdown.clone(),
        spool: spool.as_ref().map(|(sp, rel, _)| (sp.clone(), rel.clone())),
    }));
    for (opened, index) in spool.into_iter().map(|o| (o, shard)).chain(adopted) {
        spools::replay_unless_discarding(&intake, &cfg, opened, index);
    }
    let grace = Duration::from_millis(cfg.server.shutdown_grace_ms);
    let front = Rc::new(Front::new(FrontParts {
        id: shard,
        config: cfg,
        intake: intake.clone(),
        views: s.views,
        shutdown: shutdown.clone(),
        tls: s.tls,
    }));
    shard_main(front, &intake, &shutdown, listeners, grace).await;
}

/// The shard's listeners: the public one, and the admin one if it has it.
fn bind(
    shard: usize,
    (addr, admin): (SocketAddr, Option<SocketAddr>),
) -> Result<(TcpListener, Option<TcpListener>), ShardError> {
    let listener = crate::listen::shard_listener(addr).map_err(|source| ShardError::Listen {
        shard,
        addr,
        source,
    })?;
    let admin = admin
        .map(crate::listen::shard_listener)
        .transpose()
        .map_err(|source| ShardError::AdminListen {
            addr: admin,
            source,
        })?;
    Ok((listener, admin))
}

/// Locks every data directory this configuration uses (creating it if missing): the spool
/// (`ack = "durable"`), the spill directory, the fs sink's root (`sink.kind = "fs"`).
fn lock_data_dirs(config: &Config) -> Result<Vec<DirLock>, ShardError> {
    let mut locks = Vec::new();
    for (key, dir) in config.data_dirs() {
        locks.push(DirLock::acquire(key, Path::new(dir))?);
    }
    Ok(locks)
}

/// Runs a shard: serves its listeners until shutdown begins, then waits for its connections
/// (at most `server.shutdown_grace_ms`, or until the signal is hurried), and closes its queue
/// so that its upload worker finishes once it has drained it.
async fn shard_main(
    front: Rc<Front>,
    intake: &Intake,
    shutdown: &Local,
    (listener, admin): (TcpListener, Option<TcpListener>),
    grace: Duration,
) {
    let admin = admin.map(|l| glommio::spawn_local(front.clone().accept_loop(l, Listener::Admin)));
    let listener = front.clone().accept_loop(listener, Listener::Public).await;
    if let Some(a) = admin {
        drop(a.await);
    }
    drop(listener);
    // Requests in progress get the grace period; connections still open after it are dropped.
    front
        .connections_closed(async {
            let _ = futures_lite::future::or(
                shutdown.reached(Phase::Hurry),
                glommio::timer::sleep(grace),
            )
            .await;
        })
        .await;
    intake.close();
}

impl Server {
    /// The address every shard listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address, if `server.admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// What SIGHUP re-reads (the token list, the TLS certificate): call
    /// [`reload_all`](crate::reload::Reloaders::reload_all) on a clone from any thread.
    pub fn reloaders(&self) -> crate::reload::Reloaders {
        self.reloaders.clone()
    }

    /// Stops accepting, lets requests in progress finish, drains every queue to the sink
    /// (what the drain deadline leaves is spilled, or left in the durable spool), and returns
    /// when all threads have ended. If `hurry` resolves first (a second signal), the drain
    /// ends at once: connections are dropped and what is undelivered is spilled now.
    pub fn shutdown(
        self,
        hurry: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ShardError> {
        self.shutdown.begin(self.drain_timeout);
        let shutdown = self.shutdown.clone();
        // Detached: if no second signal comes, the process exits with it still waiting.
        let _ = std::thread::Builder::new()
            .name("hurry".into())
            .spawn(move || {
                futures_lite::future::block_on(hurry);
                tracing::warn!("second signal: ending the drain now");
                shutdown.hurry();
            });
        let mut result = Ok(());
        for (i, h) in self.executors.into_iter().enumerate() {
            if let Err(e) = h.join() {
                result = Err(ShardError::Ended {
                    shard: i,
                    source: e,
                });
            }
        }
        for (i, h) in self.workers.into_iter().enumerate() {
            if h.join().is_err() {
                result = Err(ShardError::WorkerPanicked(i));
            }
        }
        // Every release has happened: persist them, so the next start replays none of them.
        self.checkpointer.finish(&self.views);
        result
    }
}

/// Starts the server, calls `ready` with its address, runs until `shutdown` resolves, then
/// shuts down gracefully.
pub fn run(
    config: Config,
    ready: impl FnOnce(&Server),
    shutdown: impl std::future::Future<Output = ()>,
    hurry: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ShardError> {
    let server = start(config)?;
    ready(&server);
    futures_lite::future::block_on(shutdown);
    server.shutdown(hurry)
}
