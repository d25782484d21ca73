//! `corepost serve`, `corepost check-config` and `corepost tune`: parse the command line and
//! hand over to the library (`config::load_placed`, `lifecycle::serve`,
//! `tune::command::run`). The flags themselves are declared there (`config::Sources`).

use clap::{Args, Parser, Subcommand};
use corepost::config::{self, Sources};
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
    Serve(Sources),
    /// Print the merged configuration, or every error in it (each naming its key).
    CheckConfig(CheckOpts),
    /// Read this machine (CPUs, NICs and IRQs, limits, kernel, disks) and write a tuning
    /// profile for it, and optionally a script of recommended system changes. Changes nothing.
    Tune(tune::command::TuneArgs),
}

#[derive(Debug, Args)]
struct CheckOpts {
    #[command(flatten)]
    sources: Sources,
    /// Check the shard placement against the machine recorded under DIR (as `tune
    /// --sysfs-root` reads it) instead of this process's CPUs.
    #[arg(long, value_name = "DIR")]
    sysfs_root: Option<PathBuf>,
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
    // `check` is `Some` for check-config, holding its `--sysfs-root`.
    let (sources, check) = match Cli::parse().cmd {
        Cmd::Serve(s) => (s, None),
        Cmd::CheckConfig(c) => (c.sources, Some(c.sysfs_root)),
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
    let allowed = match check.as_ref().and_then(Option::as_ref) {
        Some(dir) => match tune::machine::allowed_cpus(&tune::Root::new(dir)) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("configuration errors:\n--sysfs-root: {e}");
                return ExitCode::from(2);
            }
        },
        None => config::allowed_cpus(),
    };
    let cfg = match config::load_placed(&sources.with_process_env(), &allowed) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration errors:\n{e}");
            return ExitCode::from(2);
        }
    };
    if check.is_some() {
        print!("{}", cfg.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    match corepost::lifecycle::serve(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corepost: {e}");
            ExitCode::FAILURE
        }
    }
}
