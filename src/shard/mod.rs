//! Shards: one glommio executor per configured core, pinned, each with its own `SO_REUSEPORT`
//! listener, parser buffers, counters and queue sender; plus start-up and shutdown of the whole
//! server.
#![forbid(unsafe_code)]

use crate::config::{allowed_cpus, resolve_placement, Ack, Config, SinkKind};
use crate::dirlock::DirLock;
use crate::http::{serve_connection, Listener, Scratch};
use crate::ingest::{BodyParser, IngestError};
use crate::keys::{host_name, unix_micros, KeySpace};
use crate::metrics::{dec, inc, ShardStats, ShardView};
use crate::queue::{channel, Budget, Job, JobSender, Naming, Reservation};
use crate::spool::{RecoveryReport, Releaser, Spool, SpoolOptions};
use crate::upload::{self, WorkerSetup};
use anyhow::{anyhow, Context as _};
use event_listener::Event;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A shard-local shutdown signal: set once, wakes every waiter.
#[derive(Debug, Default)]
pub struct Shutdown {
    flag: Cell<bool>,
    event: Event,
}

impl Shutdown {
    /// Starts shutdown on this shard.
    pub fn trigger(&self) {
        self.flag.set(true);
        self.event.notify(usize::MAX);
    }

    /// Whether shutdown has started.
    pub fn is_triggered(&self) -> bool {
        self.flag.get()
    }

    /// Resolves once shutdown has started.
    pub async fn wait(&self) {
        loop {
            if self.flag.get() {
                return;
            }
            let listener = self.event.listen();
            if self.flag.get() {
                return;
            }
            listener.await;
        }
    }
}

/// Everything one shard owns. Lives in an `Rc` on the shard's executor; nothing here is shared
/// with another core except the counters (read by scrapes) and the queue.
#[derive(Debug)]
pub struct ShardCtx {
    /// Shard index.
    pub id: usize,
    /// The configuration.
    pub config: Arc<Config>,
    /// Body parser with its reusable buffers.
    pub parser: RefCell<BodyParser>,
    /// The shard's end of its queue; taken (closing the queue) when the shard stops.
    sender: RefCell<Option<JobSender>>,
    /// The shard's queue budget.
    pub budget: Arc<Budget>,
    /// Next payload sequence number (part of every key).
    seq: Cell<u64>,
    /// This shard's counters.
    pub stats: Arc<ShardStats>,
    /// Every shard's counters, for `/metrics`.
    pub views: Arc<Vec<ShardView>>,
    /// Read scratch for the hyper adapter.
    pub scratch: Scratch,
    /// Shard-local shutdown signal.
    pub shutdown: Shutdown,
    /// Process-wide "shutting down" flag, for `/readyz` on every shard.
    stopping: Arc<AtomicBool>,
    /// Open connections.
    open: Cell<usize>,
    /// The durable spool (`ack = "durable"`) and the handle the worker releases records with.
    pub spool: Option<(Rc<Spool>, Releaser)>,
    /// TLS of the public listener (`[tls]`), with this shard's certificate slot.
    pub tls: Option<crate::tls::ShardTls>,
    /// The token set in force (`[auth]`); `None`: payload requests need no token.
    pub tokens: Option<crate::auth::ShardTokens>,
}

impl ShardCtx {
    /// Reserves `n` consecutive sequence numbers and returns the first.
    pub fn take_seq(&self, n: usize) -> u64 {
        let first = self.seq.get();
        self.seq.set(first + n as u64);
        first
    }

    /// The outcome of a token check, with a refusal counted (by reason; never the token).
    pub fn authorized(
        &self,
        checked: Result<Option<crate::auth::Tenant>, crate::auth::Refusal>,
    ) -> Result<Option<crate::auth::Tenant>, IngestError> {
        checked.map_err(|why| {
            self.stats.auth_refused(why);
            IngestError::Unauthorized(why)
        })
    }

    /// Queues a job whose room was reserved.
    pub fn send_reserved(&self, job: Job, r: Reservation) -> Result<(), IngestError> {
        match self.sender.borrow().as_ref() {
            Some(tx) => tx.send_reserved(job, r),
            None => Err(IngestError::ShuttingDown),
        }
    }

    /// Ready: not shutting down, and every shard ready (its worker running, its sink checked
    /// and not failing, its spool writing): connections are spread over all shards, so one
    /// that cannot deliver fails its share of clients.
    pub fn ready(&self) -> bool {
        self.not_ready().is_empty()
    }

    /// Why the server is not ready (empty when it is).
    pub fn not_ready(&self) -> Vec<String> {
        if self.stopping.load(Relaxed) {
            return vec!["shutting down".into()];
        }
        self.views
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.stats.not_ready().map(|why| format!("shard {i}: {why}")))
            .collect()
    }
}

/// A running server: its shards and upload workers.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    shards: usize,
    stops: Vec<flume::Sender<()>>,
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    drains: Vec<flume::Sender<Instant>>,
    drain_timeout: Duration,
    /// Set by a second signal: the shards stop waiting for requests in progress.
    hurry: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    /// What SIGHUP re-reads.
    reloaders: crate::reload::Reloaders,
    /// Locks on the data directories, held until the server has stopped (dropped last).
    _locks: Vec<DirLock>,
}

/// Starts every shard and upload worker; returns once all listeners are bound.
pub fn start(mut config: Config) -> anyhow::Result<Server> {
    let placement =
        resolve_placement(&config.shards, &allowed_cpus()).map_err(|e| anyhow!("{e}"))?;
    let fds = crate::fd_limit::fit_connections(
        placement.len(),
        config.shards.max_connections,
        config.upload.max_in_flight,
    );
    config.shards.max_connections = fds.max_connections;
    let config = Arc::new(config);
    let instance = config.keys.instance.clone().unwrap_or_else(host_name);
    let start_micros = unix_micros();
    let stopping = Arc::new(AtomicBool::new(false));
    let hurry = Arc::new(AtomicBool::new(false));

    // The token set every shard checks against; SIGHUP replaces it (registered below).
    let tokens = match &config.auth.tokens_file {
        Some(path) => Some(
            crate::auth::Tokens::load(Path::new(path))
                .map_err(|e| anyhow!("auth.tokens_file: {e}"))?,
        ),
        None => None,
    };
    if let Some(t) = &tokens {
        tracing::info!("auth: {}", t.describe());
    }
    // Before anything reads or writes a data directory: no other process may be using it.
    let locks = lock_data_dirs(&config)?;
    if config.server.ack == Ack::Durable {
        check_spool_dirs(&config.spool.dir, placement.len())?;
    }
    let mut views = Vec::new();
    let mut senders = Vec::new();
    let mut workers = Vec::new();
    let mut drains = Vec::new();
    for p in &placement {
        // Two deadlines at most: the first signal's, and an earlier one from a second signal.
        let (drain_tx, drain_rx) = flume::bounded::<Instant>(2);
        drains.push(drain_tx);
        let stats = Arc::new(ShardStats::default());
        let budget = Arc::new(Budget::new(
            config.queue.max_payloads,
            config.queue.max_bytes,
        ));
        let (tx, rx) = channel(budget.clone());
        let keys = KeySpace::new(&config.keys.prefix, &instance, p.shard, start_micros);
        workers.push(
            upload::spawn(WorkerSetup {
                shard: p.shard,
                cpu: p.worker_cpu,
                rx,
                drain: drain_rx,
                replay_spill: p.shard == 0,
                budget: budget.clone(),
                stats: stats.clone(),
                keys,
                config: config.clone(),
            })
            .context("starting an upload worker")?,
        );
        views.push(ShardView {
            stats,
            budget,
            spool: Arc::new(std::sync::OnceLock::new()),
            max_connections: config.shards.max_connections,
        });
        senders.push(tx);
    }
    let views = Arc::new(views);

    let mut addr: SocketAddr = config.server.listen.parse().map_err(|_| {
        anyhow!(
            "server.listen: {:?} is not an address",
            config.server.listen
        )
    })?;
    crate::listen::check_port_free(addr)?;
    let admin_addr: Option<SocketAddr> = match &config.server.admin_listen {
        Some(a) => {
            let a = a
                .parse()
                .map_err(|_| anyhow!("server.admin_listen: {a:?} is not an address"))?;
            crate::listen::check_port_free(a)?;
            Some(a)
        }
        None => None,
    };
    // Read (and checked) before any shard starts: a bad file stops the start, naming it.
    let tls = match &config.tls {
        Some(t) => Some(Arc::new(
            crate::tls::Tls::new(t, placement.len()).map_err(|e| anyhow!(e))?,
        )),
        None => None,
    };
    let reloaders = crate::reload::Reloaders::default();
    if let Some(tls) = &tls {
        let tls = tls.clone();
        reloaders.add("tls certificate", move || tls.reload());
    }
    let mut admin_bound = None;
    let mut stops = Vec::new();
    let mut executors = Vec::new();
    // Shard 0 binds first so that port 0 resolves to one port that the others then share.
    for (p, sender) in placement.iter().zip(senders) {
        let (stop_tx, stop_rx) = flume::bounded::<()>(1);
        let (bound_tx, bound_rx) =
            std::sync::mpsc::channel::<Result<(SocketAddr, Option<SocketAddr>), String>>();
        // Shard 0 also serves the admin listener (the metrics cover every shard).
        let admin_addr = admin_addr.filter(|_| p.shard == 0);
        let (cfg, views, stopping) = (config.clone(), views.clone(), stopping.clone());
        let hurry = hurry.clone();
        let instance = instance.clone();
        let tokens = tokens.clone();
        let shard = p.shard;
        let shard_tls = tls.as_ref().map(|t| t.shards[shard].clone());
        let g = &config.glommio;
        let mut builder = LocalExecutorBuilder::new(Placement::Fixed(p.cpu))
            .name(&format!("shard-{shard}"))
            .io_memory(g.io_memory_kib * 1024)
            .ring_depth(g.ring_depth);
        if g.spin_before_park_us > 0 {
            builder = builder.spin_before_park(Duration::from_micros(g.spin_before_park_us));
        }
        let handle = builder
            .spawn(move || async move {
                let spool = if cfg.server.ack == Ack::Durable {
                    match open_spool(&cfg, &instance, shard, &views[shard]).await {
                        Ok(opened) => Some(opened),
                        Err(e) => {
                            let _ = bound_tx.send(Err(e));
                            return;
                        }
                    }
                } else {
                    None
                };
                let listener = match crate::listen::shard_listener(addr) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = bound_tx
                            .send(Err(format!("shard {shard}: cannot listen on {addr}: {e}")));
                        return;
                    }
                };
                let admin = match admin_addr.map(crate::listen::shard_listener) {
                    None => None,
                    Some(Ok(l)) => Some(l),
                    Some(Err(e)) => {
                        let _ = bound_tx.send(Err(format!(
                            "cannot listen on server.admin_listen {admin_addr:?}: {e}"
                        )));
                        return;
                    }
                };
                let bound = listener.local_addr().map_err(|e| e.to_string()).and_then(|a| {
                    let admin = admin.as_ref().map(|l| l.local_addr()).transpose();
                    Ok((a, admin.map_err(|e| e.to_string())?))
                });
                let _ = bound_tx.send(bound);
                let view = &views[shard];
                let ctx = Rc::new(ShardCtx {
                    id: shard,
                    parser: RefCell::new(BodyParser::new(cfg.server.parser)),
                    sender: RefCell::new(Some(sender)),
                    budget: view.budget.clone(),
                    seq: Cell::new(0),
                    stats: view.stats.clone(),
                    views: views.clone(),
                    scratch: Rc::new(RefCell::new(vec![0u8; 64 * 1024].into_boxed_slice())),
                    shutdown: Shutdown::default(),
                    stopping,
                    open: Cell::new(0),
                    spool: spool.as_ref().map(|(sp, rel, _)| (sp.clone(), rel.clone())),
                    tls: shard_tls,
                    tokens: tokens.map(crate::auth::ShardTokens::new),
                    config: cfg,
                });
                if let Some((_, _, report)) = spool {
                    if ctx.config.sink.kind == SinkKind::Discard {
                        // Nothing would be stored, yet the records would be released: keep
                        // an earlier run's requests for a run with a real sink.
                        if !report.records.is_empty() {
                            tracing::warn!(shard, records = report.records.len(), "sink discard: requests an earlier run left in the spool are kept for a run with a real sink");
                        }
                    } else {
                        glommio::spawn_local(replay_spool(ctx.clone(), report)).detach();
                    }
                }
                shard_main(ctx, listener, admin, stop_rx, hurry).await;
            })
            .map_err(|e| anyhow!("starting shard {shard} on CPU {}: {e}", p.cpu))?;
        let (bound, admin) = bound_rx
            .recv()
            .map_err(|_| anyhow!("shard {shard} stopped before binding"))?
            .map_err(|e| anyhow!(e))?;
        addr = bound;
        admin_bound = admin_bound.or(admin);
        stops.push(stop_tx);
        executors.push(handle);
    }
    if let Some(t) = tokens {
        reloaders.add("tokens", move || t.reload());
    }
    Ok(Server {
        addr,
        admin: admin_bound,
        shards: placement.len(),
        stops,
        executors,
        workers,
        drains,
        drain_timeout: Duration::from_millis(config.upload.drain_timeout_ms),
        hurry,
        stopping,
        reloaders,
        _locks: locks,
    })
}

/// Locks every data directory this configuration uses (creating it if missing): the spool
/// (`ack = "durable"`), the spill directory, the fs sink's root (`sink.kind = "fs"`).
fn lock_data_dirs(config: &Config) -> anyhow::Result<Vec<DirLock>> {
    let mut locks = Vec::new();
    for (key, dir) in config.data_dirs() {
        locks.push(DirLock::acquire(key, Path::new(dir))?);
    }
    Ok(locks)
}

/// Refuses to start when the spool directory holds a shard's spool that no shard of this
/// configuration would read (fewer shards than last time): its requests would wait unseen.
fn check_spool_dirs(dir: &str, shards: usize) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(k) = name
            .strip_prefix("shard-")
            .and_then(|k| k.parse::<usize>().ok())
        {
            let holds_segments = std::fs::read_dir(e.path())
                .map(|rd| {
                    rd.flatten()
                        .any(|f| f.file_name().to_string_lossy().ends_with(".seg"))
                })
                .unwrap_or(false);
            if k >= shards && holds_segments {
                return Err(anyhow!(
                    "spool.dir: {dir}/{name} holds requests of shard {k}, but only {shards} shards are configured; start with at least {} shards to deliver them",
                    k + 1
                ));
            }
        }
    }
    Ok(())
}

/// Opens (and recovers) shard `shard`'s spool, reporting what recovery found.
async fn open_spool(
    cfg: &Config,
    instance: &str,
    shard: usize,
    view: &ShardView,
) -> Result<(Rc<Spool>, Releaser, RecoveryReport), String> {
    let dir = Path::new(&cfg.spool.dir).join(format!("shard-{shard}"));
    // Recorded in every segment: how this run builds and names the objects of its records.
    let naming = Naming {
        prefix: cfg.keys.prefix.clone(),
        instance: instance.to_string(),
        batch: cfg.batch.clone(),
    };
    let opts = SpoolOptions {
        dir: dir.clone(),
        segment_bytes: cfg.spool.segment_bytes,
        max_bytes: cfg.spool.max_bytes,
        commit_wait_us: cfg.spool.commit_wait_us,
        context: serde_json::to_vec(&naming).map_err(|e| e.to_string())?,
    };
    let (spool, report) = Spool::open(opts).await.map_err(|e| {
        format!(
            "shard {shard}: cannot open the spool in {}: {e}",
            dir.display()
        )
    })?;
    for t in &report.torn_tails {
        tracing::warn!(shard, segment = t.segment, offset = t.offset, bytes = t.bytes, reason = %t.reason, "spool: torn tail cut off (a crash mid-write; nothing there was acknowledged)");
    }
    // Each corrupt range is also logged by the spool itself, with its place.
    inc(&view.stats.spool_torn_tails, report.torn_tails.len() as u64);
    inc(&view.stats.spool_corrupt, report.corrupt.len() as u64);
    if !report.records.is_empty() {
        tracing::info!(
            shard,
            records = report.records.len(),
            "spool: replaying requests not yet known to be stored"
        );
    }
    let releaser = spool.releaser();
    let _ = view.spool.set(releaser.clone());
    Ok((Rc::new(spool), releaser, report))
}

/// Hands every recovered spool record to the upload worker again, waiting for queue room,
/// with the naming its segment recorded. A record that can never be delivered (it no longer
/// parses, or it is larger than the whole queue) goes to the dead-letter directory instead of
/// blocking the records after it.
async fn replay_spool(ctx: Rc<ShardCtx>, report: RecoveryReport) {
    let Some((spool, releaser)) = ctx.spool.clone() else {
        return;
    };
    let mut namings: std::collections::HashMap<u64, Option<Arc<Naming>>> = Default::default();
    let (max_payloads, max_bytes) = (ctx.config.queue.max_payloads, ctx.config.queue.max_bytes);
    for rec in report.records {
        let id = rec.id;
        let naming = namings
            .entry(id.segment)
            .or_insert_with(|| {
                let raw = report.contexts.get(&id.segment)?;
                match serde_json::from_slice::<Naming>(raw) {
                    Ok(n) => Some(Arc::new(n)),
                    Err(e) => {
                        tracing::warn!(shard = ctx.id, segment = id.segment, error = %e, "spool: unreadable naming context; replaying with the current configuration");
                        None
                    }
                }
            })
            .clone();
        // Room for the record before it is read: replay holds no more than the queue may.
        let want = rec.len.saturating_sub(crate::spool::RECORD_HEADER);
        if want > max_bytes {
            let why = format!(
                "{want} bytes: more than the whole queue holds (queue.max_bytes {max_bytes})"
            );
            match spool.read_record(&rec).await {
                Ok(data) => {
                    let body = crate::spool::split_record(&data).map_or(&data[..], |r| r.body);
                    dead_letter(&ctx, &releaser, id, body, &why)
                }
                Err(e) => {
                    tracing::error!(shard = ctx.id, segment = id.segment, offset = id.offset, error = %e, "spool: cannot read a recorded request; kept in the spool")
                }
            }
            continue;
        }
        let room = loop {
            match ctx.budget.reserve_bytes(want) {
                Ok(r) => break Some(r),
                Err(_) if ctx.shutdown.is_triggered() => break None,
                Err(_) => glommio::timer::sleep(Duration::from_millis(10)).await,
            }
        };
        let Some(mut room) = room else {
            return;
        };
        let data = match spool.read_record(&rec).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(shard = ctx.id, segment = id.segment, offset = id.offset, error = %e, "spool: cannot read a recorded request; kept in the spool");
                continue;
            }
        };
        let Some((secs, tenant, header)) = crate::spool::split_record(&data).map(|r| {
            (
                r.received_secs,
                r.tenant.map(crate::auth::Tenant::from),
                r.header_len,
            )
        }) else {
            dead_letter(
                &ctx,
                &releaser,
                id,
                &data,
                "record too short to hold a request, or its tenant unreadable",
            );
            continue;
        };
        let body = bytes::Bytes::from(data).slice(header..);
        let mut spans = Vec::new();
        if let Err(e) = ctx.parser.borrow_mut().parse(&body, &mut spans) {
            dead_letter(
                &ctx,
                &releaser,
                id,
                &body,
                &format!("no longer parses: {e}"),
            );
            continue;
        }
        let n = spans.len();
        if n == 0 {
            releaser.release(id);
            continue;
        }
        if n > max_payloads {
            let why = format!(
                "{n} payloads: more than the whole queue holds (queue.max_payloads {max_payloads})"
            );
            dead_letter(&ctx, &releaser, id, &body, &why);
            continue;
        }
        room.shrink_to(body.len());
        let reservation = loop {
            match room.add_payloads(n) {
                Ok(()) => break Some(room),
                Err(_) if ctx.shutdown.is_triggered() => break None,
                Err(_) => glommio::timer::sleep(Duration::from_millis(10)).await,
            }
        };
        let Some(reservation) = reservation else {
            return;
        };
        let job = Job {
            body,
            spans,
            first_seq: 0,
            received_secs: secs,
            tenant,
            ack: None,
            spooled: Some(crate::queue::Spooled {
                id,
                releaser: releaser.clone(),
                naming,
            }),
        };
        if ctx.send_reserved(job, reservation).is_err() {
            return;
        }
        inc(&ctx.stats.payloads_replayed, n as u64);
    }
}

/// Moves a spool record that can never be delivered to `{spool.dir}/dead-letter/shard-{k}/`
/// (as `{segment}-{offset}.json`, the request body as received), then releases it. If that
/// write fails the record stays in the spool (retried at the next start).
fn dead_letter(
    ctx: &ShardCtx,
    releaser: &Releaser,
    id: crate::spool::RecordId,
    body: &[u8],
    why: &str,
) {
    let dir = std::path::Path::new(&ctx.config.spool.dir)
        .join("dead-letter")
        .join(format!("shard-{}", ctx.id));
    let path = dir.join(format!("{:020}-{}.json", id.segment, id.offset));
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        let mut f = std::fs::File::create(&path)?;
        std::io::Write::write_all(&mut f, body)?;
        f.sync_all()?;
        std::fs::File::open(&dir)?.sync_all()
    });
    match written {
        Ok(()) => {
            tracing::error!(shard = ctx.id, segment = id.segment, offset = id.offset, file = %path.display(), reason = why, "spool: undeliverable request moved to the dead-letter directory");
            inc(&ctx.stats.spool_dead_letters, 1);
            releaser.release(id);
        }
        Err(e) => {
            tracing::error!(shard = ctx.id, segment = id.segment, offset = id.offset, reason = why, error = %e, "spool: undeliverable request, and the dead-letter directory cannot take it; kept in the spool");
        }
    }
}

/// Accepts connections on `listener` until shutdown (within the shard's connection limit)
/// and returns it.
async fn accept_loop(ctx: Rc<ShardCtx>, listener: TcpListener, on: Listener) -> TcpListener {
    let max = ctx.config.shards.max_connections;
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            ctx.shutdown.wait().await;
            None
        })
        .await;
        match accepted {
            None => return listener,
            Some(Ok(stream)) => {
                if ctx.open.get() >= max {
                    inc(&ctx.stats.connections_rejected, 1);
                    drop(stream);
                    continue;
                }
                ctx.open.set(ctx.open.get() + 1);
                inc(&ctx.stats.connections_open, 1);
                let conn_ctx = ctx.clone();
                glommio::spawn_local(async move {
                    serve_connection(stream, conn_ctx.clone(), on).await;
                    conn_ctx.open.set(conn_ctx.open.get() - 1);
                    dec(&conn_ctx.stats.connections_open, 1);
                })
                .detach();
            }
            Some(Err(e)) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(shard = ctx.id, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn shard_main(
    ctx: Rc<ShardCtx>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    stop: flume::Receiver<()>,
    hurry: Arc<AtomicBool>,
) {
    let stopper = ctx.clone();
    glommio::spawn_local(async move {
        let _ = stop.recv_async().await;
        stopper.shutdown.trigger();
    })
    .detach();
    let admin = admin.map(|l| glommio::spawn_local(accept_loop(ctx.clone(), l, Listener::Admin)));
    let listener = accept_loop(ctx.clone(), listener, Listener::Public).await;
    if let Some(a) = admin {
        drop(a.await);
    }
    drop(listener);
    // Requests in progress get the grace period; connections still open after it are dropped.
    let deadline = Instant::now() + Duration::from_millis(ctx.config.server.shutdown_grace_ms);
    while ctx.open.get() > 0 && Instant::now() < deadline && !hurry.load(Relaxed) {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    // Closing the queue lets the upload worker finish once it has drained it.
    ctx.sender.borrow_mut().take();
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
    ) -> anyhow::Result<()> {
        self.stopping.store(true, Relaxed);
        let deadline = Instant::now() + self.drain_timeout;
        for d in &self.drains {
            let _ = d.try_send(deadline);
        }
        for s in &self.stops {
            let _ = s.send(());
        }
        let (drains, flag) = (self.drains.clone(), self.hurry.clone());
        // Detached: if no second signal comes, the process exits with it still waiting.
        let _ = std::thread::Builder::new()
            .name("hurry".into())
            .spawn(move || {
                futures_lite::future::block_on(hurry);
                tracing::warn!("second signal: ending the drain now");
                flag.store(true, Relaxed);
                for d in &drains {
                    let _ = d.try_send(Instant::now());
                }
            });
        let mut result = Ok(());
        for (i, h) in self.executors.into_iter().enumerate() {
            if let Err(e) = h.join() {
                result = Err(anyhow!("shard {i} ended abnormally: {e}"));
            }
        }
        for (i, h) in self.workers.into_iter().enumerate() {
            if h.join().is_err() {
                result = Err(anyhow!("upload worker {i} panicked"));
            }
        }
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
) -> anyhow::Result<()> {
    let server = start(config)?;
    ready(&server);
    futures_lite::future::block_on(shutdown);
    server.shutdown(hurry)
}
