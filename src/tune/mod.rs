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
//! - [`cpulist`] parses and formats the kernel's CPU lists and masks;
//! - [`command`] is the command line: its flags, and writing the profile and the script.

pub mod command;
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

use crate::config::{resolve_placement, Config, ConfigError, ConfigErrors, Cores};
use std::io;
use std::path::{Path, PathBuf};

pub use plan::{Options, Plan, WorkerPlacement};
pub use root::Root;

/// Why `corepost tune` could not do its job; names the file when a file is to blame.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// A file of the machine is there but could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file, under the root.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A directory of the machine is there but could not be listed.
    #[error("{}: cannot list: {source}", path.display())]
    List {
        /// The directory, under the root.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file `corepost tune` cannot do without is not there.
    #[error("{}: missing (corepost tune needs it)", path.display())]
    Missing {
        /// The file, under the root.
        path: PathBuf,
    },
    /// A file whose contents make no sense.
    #[error("{}: {what}", path.display())]
    Contents {
        /// The file, under the root.
        path: PathBuf,
        /// What is wrong with them, in words.
        what: String,
    },
    /// A file that should hold a CPU list does not.
    #[error("{}: {source}", path.display())]
    CpuList {
        /// The file, under the root.
        path: PathBuf,
        /// What does not parse.
        #[source]
        source: cpulist::CpuListError,
    },
    /// `/proc/interrupts` does not parse.
    #[error("{}: {source}", path.display())]
    Interrupts {
        /// The file, under the root.
        path: PathBuf,
        /// What does not parse.
        #[source]
        source: nic::InterruptsError,
    },
    /// `/proc/self/mountinfo` does not parse.
    #[error("{}: {source}", path.display())]
    Mountinfo {
        /// The file, under the root.
        path: PathBuf,
        /// The line that does not parse.
        #[source]
        source: disk::MountinfoError,
    },
    /// The configuration file (`--config`) could not be read.
    #[error("config file {}: cannot read: {source}", path.display())]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The configuration file is not a configuration.
    #[error("config file {}: {source}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What does not parse.
        #[source]
        source: toml::de::Error,
    },
    /// No plan fits the machine read under `root`.
    #[error("{}: {source}", root.display())]
    Plan {
        /// Where the machine was read from.
        root: PathBuf,
        /// Why.
        #[source]
        source: plan::PlanError,
    },
    /// The profile does not pass the checks `check-config` would make: a bug here, reported
    /// instead of written.
    #[error("corepost tune wrote a profile it cannot use (a bug): {0}")]
    SelfCheck(#[source] SelfCheckError),
    /// The profile or the script could not be written.
    #[error("cannot write {what}: {source}")]
    Write {
        /// The file, or `standard output`.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl TuneError {
    /// The exit status `corepost tune` ends with: 2 when the configuration given is to blame
    /// (as for `serve` and `check-config`), else 1.
    pub fn exit_status(&self) -> u8 {
        match self {
            TuneError::ConfigRead { .. } | TuneError::Config { .. } => 2,
            _ => 1,
        }
    }
}

/// How a profile failed its self-check ([`TuneError::SelfCheck`]).
#[derive(Debug, thiserror::Error)]
pub enum SelfCheckError {
    /// It does not read back as a configuration.
    #[error("{0}")]
    Toml(#[source] toml::de::Error),
    /// It does not read back as the shard CPUs planned.
    #[error("the shard CPUs do not read back")]
    ShardCpus,
    /// With the configuration, it does not validate.
    #[error("{0}")]
    Invalid(#[source] ConfigErrors),
    /// Its CPUs cannot be placed.
    #[error("{0}")]
    Placement(#[source] ConfigError),
    /// It does not place the workers as planned.
    #[error("the worker CPUs do not read back")]
    WorkerCpus,
}

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
    let text = std::fs::read_to_string(path).map_err(|source| TuneError::ConfigRead {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| TuneError::Config {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the machine under `root` and plans for it.
pub fn tune(root: &Root, cfg: &Config, opt: &Options) -> Result<Tuned, TuneError> {
    let m = machine::read(root, &cfg.spool.dir)?;
    let plan = plan::plan(&m, cfg, opt).map_err(|source| TuneError::Plan {
        root: root.base().to_path_buf(),
        source,
    })?;
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
    use SelfCheckError as Bug;
    let read: Config = toml::from_str(profile).map_err(|e| TuneError::SelfCheck(Bug::Toml(e)))?;
    if read.shards.cpus.as_deref() != Some(&plan.shard_cpus[..])
        || read.shards.cores != Cores::Count(plan.shard_cpus.len())
    {
        return Err(TuneError::SelfCheck(Bug::ShardCpus));
    }
    let mut merged = cfg.clone();
    merged.shards = read.shards;
    merged.queue = read.queue;
    merged.upload = read.upload;
    merged.glommio = read.glommio;
    merged
        .validate()
        .map_err(|e| TuneError::SelfCheck(Bug::Invalid(e)))?;
    let placed = resolve_placement(&merged.shards, &plan.allowed)
        .map_err(|e| TuneError::SelfCheck(Bug::Placement(e)))?;
    if placed.iter().map(|p| p.worker_cpu).collect::<Vec<_>>() != plan.worker_cpus {
        return Err(TuneError::SelfCheck(Bug::WorkerCpus));
    }
    Ok(())
}
