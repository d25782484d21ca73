//! `corepost tune`: reads the machine (CPUs and their topology, the process's affinity mask
//! and cgroup cpuset, NIC queues and IRQs, limits, kernel, clock, THP, the spool's disk) and
//! writes a tuning profile that fits it, plus, on request, a shell script of the system
//! changes it recommends. It never changes the system itself.
//!
//! - [`root`] is where files are read from: `/`, or a recorded tree for `--sysfs-root`;
//! - [`machine`] reads (under a root), with [`nic`] for NIC queues and IRQs;
//! - [`disk`] finds the disk under `spool.dir` and its I/O scheduler;
//! - [`kernel`] says what the kernel's version means for io_uring;
//! - [`plan`] decides (pure functions, each rule tested alone);
//! - [`render`] writes the profile and the script;
//! - [`cpulist`] parses and formats the kernel's CPU lists and masks.

pub mod cpulist;
pub mod disk;
pub mod kernel;
pub mod machine;
pub mod nic;
pub mod plan;
pub mod render;
pub mod root;
pub mod sizing;
pub mod steering;

use crate::config::{resolve_placement, Config, Cores};
use std::path::Path;

pub use plan::{Options, Plan, WorkerPlacement};
pub use root::Root;

/// Why `corepost tune` could not do its job; names the file when a file is to blame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TuneError(pub String);

/// What `corepost tune` produced.
#[derive(Debug, Clone)]
pub struct Tuned {
    /// The tuning profile (TOML with its comment block).
    pub profile: String,
    /// The shell script of recommended system changes.
    pub script: String,
    /// The decisions, for a summary.
    pub plan: Plan,
}

/// Reads a configuration file for the values that bound the plan (`spool.dir`, body and
/// batch sizes, `upload.max_in_flight`). Unlike `serve`, it does not validate the whole
/// configuration (S3 credentials usually come from the unit's environment, not the shell).
pub fn read_config(path: &Path) -> Result<Config, TuneError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TuneError(format!("config file {}: cannot read: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| TuneError(format!("config file {}: {e}", path.display())))
}

/// Reads the machine under `root` and plans for it.
pub fn tune(root: &Root, cfg: &Config, opt: &Options) -> Result<Tuned, TuneError> {
    let m = machine::read(root, &cfg.spool.dir)?;
    let plan = plan::plan(&m, cfg, opt)
        .map_err(|e| TuneError(format!("{}: {e}", root.base().display())))?;
    let profile = render::profile(root, &m, &plan);
    self_check(&profile, cfg, &plan)?;
    let script = render::script(root, &m, &plan);
    Ok(Tuned {
        profile,
        script,
        plan,
    })
}

/// The profile must read back as the values planned, and with the configuration it must
/// pass the same validation and placement checks as `check-config`: a profile that
/// `check-config` refuses is a bug here, reported instead of written.
fn self_check(profile: &str, cfg: &Config, plan: &Plan) -> Result<(), TuneError> {
    let bug = |e: String| {
        TuneError(format!(
            "corepost tune wrote a profile it cannot use (a bug): {e}"
        ))
    };
    let read: Config = toml::from_str(profile).map_err(|e| bug(e.to_string()))?;
    if read.shards.cpus.as_deref() != Some(&plan.shard_cpus[..])
        || read.shards.cores != Cores::Count(plan.shard_cpus.len())
    {
        return Err(bug("the shard CPUs do not read back".into()));
    }
    let mut merged = cfg.clone();
    merged.shards = read.shards;
    merged.queue = read.queue;
    merged.upload = read.upload;
    merged.glommio = read.glommio;
    merged.validate().map_err(|e| bug(e.to_string()))?;
    let placed =
        resolve_placement(&merged.shards, &plan.allowed).map_err(|e| bug(e.to_string()))?;
    if placed.iter().map(|p| p.worker_cpu).collect::<Vec<_>>() != plan.worker_cpus {
        return Err(bug("the worker CPUs do not read back".into()));
    }
    Ok(())
}
