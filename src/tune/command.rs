//! `corepost tune`'s command line: its flags, and writing what [`tune`](super::tune) planned
//! (the profile, the script) with a summary on standard error.

use super::{cpulist, read_config, tune, Options, Root, TuneError, WorkerPlacement};
use crate::config::Config;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The flags of `corepost tune`.
#[derive(Debug, clap::Args)]
pub struct TuneArgs {
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
    workers: WorkerPlacement,
    /// Compute cores per IRQ core on machines of more than this many cores (perftune's rule).
    #[arg(long, value_name = "N", default_value_t = 16)]
    cores_per_irq_core: usize,
    /// Plan for this RLIMIT_NOFILE instead of the one read (e.g. the unit's 1048576).
    #[arg(long, value_name = "N")]
    nofile: Option<u64>,
    /// Plan for this RLIMIT_MEMLOCK in bytes, or `unlimited`, instead of the one read.
    #[arg(long, value_name = "BYTES", value_parser = parse_memlock)]
    memlock: Option<Memlock>,
}

/// `--memlock`: bytes, or `None` for unlimited (a newtype: clap reads `Option<Option<_>>` as
/// an optional value of a flag).
#[derive(Debug, Clone, Copy)]
struct Memlock(Option<u64>);

/// A value clap refuses for one of the flags above (it prints it after the flag's name).
#[derive(Debug, thiserror::Error)]
enum BadValue {
    #[error("{0:?} is not one of same, sibling")]
    Workers(String),
    #[error("{0:?} is neither a number of bytes nor `unlimited`")]
    Memlock(String),
}

fn parse_workers(s: &str) -> Result<WorkerPlacement, BadValue> {
    match s {
        "same" => Ok(WorkerPlacement::Same),
        "sibling" => Ok(WorkerPlacement::Sibling),
        _ => Err(BadValue::Workers(s.into())),
    }
}

fn parse_memlock(s: &str) -> Result<Memlock, BadValue> {
    match s {
        "unlimited" | "infinity" => Ok(Memlock(None)),
        n => n
            .parse()
            .map(|b| Memlock(Some(b)))
            .map_err(|_| BadValue::Memlock(s.into())),
    }
}

/// `corepost tune`: plans, writes the profile (and the script) where asked, and prints a
/// summary and the plan's warnings on standard error.
pub fn run(args: TuneArgs) -> Result<(), TuneError> {
    let mut cfg = match &args.config {
        Some(path) => read_config(path)?,
        None => Config::default(),
    };
    if let Some(dir) = args.spool_dir {
        cfg.spool.dir = dir;
    }
    let root = Root::new(args.sysfs_root.unwrap_or_else(|| PathBuf::from("/")));
    let opt = Options {
        cores_per_irq_core: args.cores_per_irq_core,
        workers: args.workers,
        nofile: args.nofile,
        memlock: args.memlock.map(|m| m.0),
    };
    let tuned = tune(&root, &cfg, &opt)?;
    match &args.out {
        Some(path) => write(path, &tuned.profile, false)?,
        None => std::io::stdout()
            .lock()
            .write_all(tuned.profile.as_bytes())
            .map_err(|source| TuneError::Write {
                what: "standard output".into(),
                source,
            })?,
    }
    if let Some(path) = &args.script {
        write(path, &tuned.script, true)?;
    }
    let p = &tuned.plan;
    eprintln!(
        "corepost tune: {} shards on CPUs {}; IRQ CPUs {}",
        p.shard_cpus.len(),
        cpulist::format(&p.shard_cpus),
        if p.irq_cpus.is_empty() {
            "none (no NIC IRQs)".to_string()
        } else {
            cpulist::format(&p.irq_cpus)
        }
    );
    for w in &p.warnings {
        eprintln!("corepost tune: warning: {w}");
    }
    Ok(())
}

/// Writes `text` to `path` (replacing it), executable for the script.
fn write(path: &Path, text: &str, exec: bool) -> Result<(), TuneError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if exec { 0o755 } else { 0o644 })
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|source| TuneError::Write {
            what: path.display().to_string(),
            source,
        })
}
