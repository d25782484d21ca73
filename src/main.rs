//! `corepost serve` and `corepost check-config`: parse flags, load the configuration, run.
#![forbid(unsafe_code)]

use clap::{Args, Parser, Subcommand};
use corepost::config::{self, Flags, SinkKind, Sources};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// corepost: take a flood of HTTP POSTs and land every payload in S3.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the server (until SIGTERM or SIGINT, then drain and exit).
    Serve(Opts),
    /// Print the merged configuration, or every error in it (each naming its key).
    CheckConfig(Opts),
}

#[derive(Debug, Args)]
struct Opts {
    /// Configuration file (TOML).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Tuning profile (TOML; see tuning/).
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8080; port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Where payloads go.
    #[arg(long, value_parser = parse_sink)]
    sink: Option<SinkKind>,
    /// Root directory of the fs sink.
    #[arg(long, value_name = "DIR")]
    fs_root: Option<String>,
    /// Number of shards (one per core), or `all`.
    #[arg(long, value_name = "N")]
    cores: Option<String>,
    /// Directory for payloads that could not be delivered (uploaded first at the next start).
    #[arg(long, value_name = "DIR")]
    spill_dir: Option<String>,
    /// Directory of the per-shard durable spools (`ack = "durable"`).
    #[arg(long, value_name = "DIR")]
    spool_dir: Option<String>,
}

fn parse_sink(s: &str) -> Result<SinkKind, String> {
    match s {
        "fs" => Ok(SinkKind::Fs),
        "s3" => Ok(SinkKind::S3),
        "discard" => Ok(SinkKind::Discard),
        _ => Err(format!("{s:?} is not one of fs, s3, discard")),
    }
}

fn load(o: Opts) -> Result<config::Config, String> {
    let src = Sources {
        config_file: o.config,
        profile_file: o.profile,
        env: std::env::vars().collect(),
        flags: Flags {
            listen: o.listen,
            sink: o.sink,
            fs_root: o.fs_root,
            cores: o.cores,
            spill_dir: o.spill_dir,
            spool_dir: o.spool_dir,
        },
    };
    let cfg = config::load(&src).map_err(|e| e.to_string())?;
    config::resolve_placement(&cfg.shards, &config::allowed_cpus()).map_err(|e| e.to_string())?;
    Ok(cfg)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // glommio's reactor logs an ERROR when its probe for polled I/O support on the
                // spool's disk races a file close; it only disables a ring corepost does not
                // use, so it is not shown by default.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("info,glommio::reactor=off")
                }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Crash tests only: arms the crash points named in `FAILPOINTS`.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let (serve, opts) = match cli.cmd {
        Cmd::Serve(o) => (true, o),
        Cmd::CheckConfig(o) => (false, o),
    };
    let cfg = match load(opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration errors:\n{e}");
            return ExitCode::from(2);
        }
    };
    if !serve {
        print!("{}", cfg.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    let (sig_tx, sig_rx) = flume::unbounded::<i32>();
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Every signal is passed on: the first starts the graceful drain, a second ends it.
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig_tx.send(sig).is_err() {
                break;
            }
        }
    });
    let sig_rx2 = sig_rx.clone();
    let sink = cfg.sink.kind;
    let result = corepost::shard::run(
        cfg,
        |server| {
            // The one line scripts and tests wait for.
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
        },
        async move {
            if let Ok(sig) = sig_rx.recv_async().await {
                tracing::info!(
                    signal = sig,
                    "shutting down: draining queues (a second signal ends the drain at once)"
                );
            }
        },
        async move {
            let _ = sig_rx2.recv_async().await;
        },
    );
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("corepost: {e:#}");
            ExitCode::FAILURE
        }
    }
}
