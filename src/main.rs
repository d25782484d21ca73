//! `corepost serve`, `corepost check-config` and `corepost tune`: parse flags, load the
//! configuration, run (or write a tuning profile for this machine).

use clap::{Args, Parser, Subcommand};
use corepost::config::{self, Flags, SinkKind, Sources};
use corepost::tune;
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
    CheckConfig(CheckOpts),
    /// Read this machine (CPUs, NICs and IRQs, limits, kernel, disks) and write a tuning
    /// profile for it, and optionally a script of recommended system changes. Changes nothing.
    Tune(TuneOpts),
}

#[derive(Debug, Args)]
struct CheckOpts {
    #[command(flatten)]
    opts: Opts,
    /// Check the shard placement against the machine recorded under DIR (as `tune
    /// --sysfs-root` reads it) instead of this process's CPUs.
    #[arg(long, value_name = "DIR")]
    sysfs_root: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct TuneOpts {
    /// Write the profile here (default: standard output).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Also write a shell script of the system changes recommended (IRQ affinity, irqbalance,
    /// RPS/XPS, sysctls, unit limits). It is never run by corepost.
    #[arg(long, value_name = "FILE")]
    script: Option<PathBuf>,
    /// Read a recorded tree instead of / (every /sys and /proc path is read under DIR).
    #[arg(long, value_name = "DIR")]
    sysfs_root: Option<PathBuf>,
    /// Configuration file: spool.dir, body and batch sizes and upload.max_in_flight bound the
    /// plan.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The spool directory whose disk is inspected (overrides the configuration's spool.dir).
    #[arg(long, value_name = "DIR")]
    spool_dir: Option<String>,
    /// Upload workers on the shard's own CPU (`same`) or its hyper-thread sibling (`sibling`).
    #[arg(long, value_name = "same|sibling", value_parser = parse_workers, default_value = "same")]
    workers: tune::WorkerPlacement,
    /// Compute cores per IRQ core on machines of more than this many cores (perftune's rule).
    #[arg(long, value_name = "N", default_value_t = 16)]
    cores_per_irq_core: usize,
    /// Plan for this RLIMIT_NOFILE instead of the one read (e.g. the unit's 1048576).
    #[arg(long, value_name = "N")]
    nofile: Option<u64>,
    /// Plan for this RLIMIT_MEMLOCK in bytes, or `unlimited`, instead of the one read.
    #[arg(long, value_name = "BYTES", value_parser = parse_memlock)]
    memlock: Option<MemlockArg>,
}

/// `--memlock`: bytes, or `None` for unlimited (a newtype: clap reads `Option<Option<_>>` as
/// an optional value of a flag).
#[derive(Debug, Clone, Copy)]
struct MemlockArg(Option<u64>);

fn parse_workers(s: &str) -> Result<tune::WorkerPlacement, String> {
    match s {
        "same" => Ok(tune::WorkerPlacement::Same),
        "sibling" => Ok(tune::WorkerPlacement::Sibling),
        _ => Err(format!("{s:?} is not one of same, sibling")),
    }
}

fn parse_memlock(s: &str) -> Result<MemlockArg, String> {
    match s {
        "unlimited" | "infinity" => Ok(MemlockArg(None)),
        n => n
            .parse()
            .map(|b| MemlockArg(Some(b)))
            .map_err(|_| format!("{s:?} is neither a number of bytes nor `unlimited`")),
    }
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
    /// Close a keep-alive connection after its next request once it is this old
    /// (server.max_connection_age_ms; 0 = never), so a load balancer can place it again.
    #[arg(long, value_name = "MS")]
    max_connection_age_ms: Option<String>,
    /// TLS on the public listener: PEM certificate chain (`tls.cert_file`).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<String>,
    /// TLS on the public listener: PEM private key (`tls.key_file`).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<String>,
    /// File of bearer tokens (and their tenants): payload requests without a listed token
    /// get `401`. Re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    tokens_file: Option<String>,
}

fn parse_sink(s: &str) -> Result<SinkKind, String> {
    match s {
        "fs" => Ok(SinkKind::Fs),
        "s3" => Ok(SinkKind::S3),
        "discard" => Ok(SinkKind::Discard),
        _ => Err(format!("{s:?} is not one of fs, s3, discard")),
    }
}

/// Loads the configuration and checks the shard placement against `allowed` (this process's
/// CPUs unless given).
fn load(o: Opts, allowed: Option<Vec<usize>>) -> Result<config::Config, String> {
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
            max_connection_age_ms: o.max_connection_age_ms,
            tls_cert: o.tls_cert,
            tls_key: o.tls_key,
            tokens_file: o.tokens_file,
        },
    };
    let cfg = config::load(&src).map_err(|e| e.to_string())?;
    let allowed = allowed.unwrap_or_else(config::allowed_cpus);
    config::resolve_placement(&cfg.shards, &allowed).map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// `corepost tune`: plan, then write the profile (and the script) where asked.
fn run_tune(o: TuneOpts) -> ExitCode {
    let mut cfg = match &o.config {
        Some(path) => match tune::read_config(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("corepost tune: {e}");
                return ExitCode::from(2);
            }
        },
        None => config::Config::default(),
    };
    if let Some(dir) = o.spool_dir {
        cfg.spool.dir = dir;
    }
    let root = tune::Root::new(o.sysfs_root.unwrap_or_else(|| PathBuf::from("/")));
    let opt = tune::Options {
        cores_per_irq_core: o.cores_per_irq_core,
        workers: o.workers,
        nofile: o.nofile,
        memlock: o.memlock.map(|m| m.0),
    };
    let tuned = match tune::tune(&root, &cfg, &opt) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("corepost tune: {e}");
            return ExitCode::FAILURE;
        }
    };
    let write = |path: &PathBuf, text: &str, exec: bool| -> Result<(), String> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if exec { 0o755 } else { 0o644 })
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        f.write_all(text.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let wrote = match &o.out {
        Some(path) => write(path, &tuned.profile, false),
        None => std::io::stdout()
            .lock()
            .write_all(tuned.profile.as_bytes())
            .map_err(|e| format!("standard output: {e}")),
    }
    .and_then(|()| match &o.script {
        Some(path) => write(path, &tuned.script, true),
        None => Ok(()),
    });
    if let Err(e) = wrote {
        eprintln!("corepost tune: cannot write {e}");
        return ExitCode::FAILURE;
    }
    let p = &tuned.plan;
    eprintln!(
        "corepost tune: {} shards on CPUs {}; IRQ CPUs {}",
        p.shard_cpus.len(),
        tune::cpulist::format(&p.shard_cpus),
        if p.irq_cpus.is_empty() {
            "none (no NIC IRQs)".to_string()
        } else {
            tune::cpulist::format(&p.irq_cpus)
        }
    );
    for w in &p.warnings {
        eprintln!("corepost tune: warning: {w}");
    }
    ExitCode::SUCCESS
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
    let (serve, opts, allowed) = match cli.cmd {
        Cmd::Serve(o) => (true, o, None),
        Cmd::CheckConfig(c) => {
            let allowed = match &c.sysfs_root {
                Some(dir) => match tune::machine::allowed_cpus(&tune::Root::new(dir)) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        eprintln!("configuration errors:\n--sysfs-root: {e}");
                        return ExitCode::from(2);
                    }
                },
                None => None,
            };
            (false, c.opts, allowed)
        }
        Cmd::Tune(t) => return run_tune(t),
    };
    let cfg = match load(opts, allowed) {
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
    let (hup_tx, hup_rx) = flume::unbounded::<()>();
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SIGHUP reloads (see `reload`). Every other signal is passed on: the first starts the
    // graceful drain, a second ends it.
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGHUP {
                let _ = hup_tx.send(());
            } else if sig_tx.send(sig).is_err() {
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
            let reloaders = server.reloaders();
            std::thread::spawn(move || {
                while hup_rx.recv().is_ok() {
                    let _ = corepost::notify::notify("RELOADING=1");
                    reloaders.reload_all();
                    let _ = corepost::notify::notify("READY=1");
                }
            });
            // systemd (Type=notify): started once every listener is bound.
            if let Err(e) = corepost::notify::notify("READY=1") {
                tracing::warn!(error = %e, "cannot tell systemd the server is ready (NOTIFY_SOCKET)");
            }
        },
        async move {
            if let Ok(sig) = sig_rx.recv_async().await {
                let _ = corepost::notify::notify("STOPPING=1");
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
