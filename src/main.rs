//! `corepost serve`, `corepost check-config` and `corepost tune`: parse flags, load the
//! configuration, run (or write a tuning profile for this machine).

use clap::{Args, Parser, Subcommand};
use corepost::config::{self, Flags, SinkKind, Sources};
use corepost::tune;
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
    Tune(tune::command::TuneArgs),
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
        Cmd::Tune(t) => {
            return match tune::command::run(t) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("corepost tune: {e}");
                    ExitCode::from(e.exit_status())
                }
            }
        }
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
    match corepost::lifecycle::serve(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corepost: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}
