//! The server as a process: the signals it answers, what it tells systemd, and how it stops.
//! [`serve`] is `corepost serve` once the configuration is loaded.
//!
//! # Signals
//! One thread ([`forward`]) waits for SIGTERM, SIGINT and SIGHUP and passes them on over two
//! channels: SIGHUP to the reload thread, which runs the server's
//! [`Reloaders`](crate::reload::Reloaders) between `RELOADING=1` and `READY=1`; the others to
//! the shutdown below.
//!
//! # Shutdown
//! Shutdown is one signal, [`Shutdown`](crate::shutdown::Shutdown), shared by every shard and
//! upload worker and raised in two steps. The first SIGTERM or SIGINT resolves the `shutdown`
//! future given to [`shard::run`] ([`first_signal`]: `STOPPING=1` to systemd, one log line),
//! which calls [`Server::shutdown`](crate::shard::Server::shutdown): it moves the signal to
//! *draining*, with the drain deadline `upload.drain_timeout_ms` from now. A second signal
//! resolves the `hurry` future, which moves it to *hurry*: the deadline becomes now. Nothing
//! else carries a stop: each part reads or awaits the signal (a shard through its
//! shard-local copy, [`Local`](crate::shutdown::Local)).
//!
//! # Who listens to what
//!
//! | part | on *draining* | on *hurry* |
//! | --- | --- | --- |
//! | `/readyz`, `corepost_ready` (every shard) | "shutting down", `503` | — |
//! | a shard's accept loops, connections (keep-alive ends, TLS handshakes are dropped), intake (`503` shutting down), spool replay | stop | — |
//! | a shard's wait for its open connections (its `Gate`) | wait up to `server.shutdown_grace_ms` | stop waiting |
//! | an upload worker's store attempts and spill redelivery | stop at the drain deadline | stop now: spill what is left |
//!
//! Once its connections are done, a shard closes its queue: that is the end of the upload
//! worker's input (not a stop signal), and the worker ends once it has drained the queue.
//! The second signal is watched by a detached thread (`hurry`) while the calling thread joins
//! the shards and workers; if no second signal comes, the process exits with it waiting.

use crate::config::Config;
use crate::shard::{self, Server};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::io::Write as _;

/// Why `corepost serve` could not run (or stopped abnormally).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The server did not start, or a part of it ended abnormally.
    #[error(transparent)]
    Server(#[from] shard::ShardError),
}

/// Runs the server with `config` until SIGTERM or SIGINT, answering SIGHUP with a reload;
/// returns once it has drained and stopped.
pub fn serve(config: Config) -> Result<(), ServeError> {
    let (stop_tx, stop_rx) = flume::unbounded::<i32>();
    let (hup_tx, hup_rx) = flume::unbounded::<()>();
    let signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(ServeError::Signals)?;
    std::thread::spawn(move || forward(signals, stop_tx, hup_tx));
    let sink = config.sink.kind;
    let second = stop_rx.clone();
    shard::run(
        config,
        |server| {
            announce(server, sink);
            let reloaders = server.reloaders();
            std::thread::spawn(move || {
                while hup_rx.recv().is_ok() {
                    let _ = crate::notify::notify("RELOADING=1");
                    reloaders.reload_all();
                    let _ = crate::notify::notify("READY=1");
                }
            });
            // systemd (Type=notify): started once every listener is bound.
            if let Err(e) = crate::notify::notify("READY=1") {
                tracing::warn!(error = %e, "cannot tell systemd the server is ready (NOTIFY_SOCKET)");
            }
        },
        first_signal(stop_rx),
        async move {
            let _ = second.recv_async().await;
        },
    )?;
    tracing::info!("stopped");
    Ok(())
}

/// The signal thread: SIGHUP goes to the reload thread; every other signal is passed on
/// (the first starts the graceful drain, a second ends it).
fn forward(mut signals: Signals, stop: flume::Sender<i32>, hup: flume::Sender<()>) {
    for sig in signals.forever() {
        if sig == SIGHUP {
            let _ = hup.send(());
        } else if stop.send(sig).is_err() {
            break;
        }
    }
}

/// Resolves at the first SIGTERM or SIGINT, having told systemd and the log.
async fn first_signal(stop: flume::Receiver<i32>) {
    if let Ok(sig) = stop.recv_async().await {
        let _ = crate::notify::notify("STOPPING=1");
        tracing::info!(
            signal = sig,
            "shutting down: draining queues (a second signal ends the drain at once)"
        );
    }
}

/// Prints the one line scripts and tests wait for.
fn announce(server: &Server, sink: crate::config::SinkKind) {
    let mut out = std::io::stdout().lock();
    let admin = server
        .admin_addr()
        .map(|a| format!(", admin on {a}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "corepost ready: listening on {} ({} shards, sink {sink}){admin}",
        server.local_addr(),
        server.shards()
    );
    let _ = out.flush();
}
