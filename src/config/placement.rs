//! Which CPU each shard and each upload worker runs on.

use super::{ConfigError, Cores, ShardsConfig};

/// Where one shard runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardPlacement {
    /// Shard index, `0..n`.
    pub shard: usize,
    /// CPU of the shard's glommio executor.
    pub cpu: usize,
    /// CPU of the shard's upload worker thread.
    pub worker_cpu: usize,
}

/// Resolves the shard layout against `allowed`, the CPUs in the process's affinity mask
/// (ascending). Asking for a CPU that is not allowed, or more shards than allowed CPUs, is an
/// error rather than a silent fallback.
pub fn resolve_placement(
    cfg: &ShardsConfig,
    allowed: &[usize],
) -> Result<Vec<ShardPlacement>, ConfigError> {
    if allowed.is_empty() {
        return Err(ConfigError(
            "shards: the process's CPU affinity mask is empty or unreadable".into(),
        ));
    }
    let check = |key: &str, cpus: &[usize]| -> Result<(), ConfigError> {
        for c in cpus {
            if !allowed.contains(c) {
                return Err(ConfigError(format!(
                    "{key}: CPU {c} is not available to this process (allowed: {allowed:?})"
                )));
            }
        }
        Ok(())
    };
    let cpus: Vec<usize> = match (&cfg.cpus, &cfg.cores) {
        (Some(list), cores) => {
            if list.is_empty() {
                return Err(ConfigError("shards.cpus: must not be empty".into()));
            }
            if let Cores::Count(n) = cores {
                // The default count (1) yields to an explicit list.
                if *n != list.len() && *n != 1 {
                    return Err(ConfigError(format!(
                        "shards.cpus: lists {} CPUs but shards.cores is {n}",
                        list.len()
                    )));
                }
            }
            let mut seen = list.clone();
            seen.sort_unstable();
            seen.dedup();
            if seen.len() != list.len() {
                return Err(ConfigError(
                    "shards.cpus: a CPU is listed twice (one shard per core)".into(),
                ));
            }
            check("shards.cpus", list)?;
            list.clone()
        }
        (None, Cores::Count(n)) => {
            if *n > allowed.len() {
                return Err(ConfigError(format!(
                    "shards.cores: {n} shards asked for, but only {} CPUs are available to this process ({allowed:?})",
                    allowed.len()
                )));
            }
            allowed[..*n].to_vec()
        }
        (None, Cores::Named(_)) => allowed.to_vec(),
    };
    let workers = match &cfg.worker_cpus {
        Some(list) => {
            if list.len() != cpus.len() {
                return Err(ConfigError(format!(
                    "shards.worker_cpus: lists {} CPUs for {} shards",
                    list.len(),
                    cpus.len()
                )));
            }
            check("shards.worker_cpus", list)?;
            list.clone()
        }
        None => cpus.clone(),
    };
    Ok(cpus
        .iter()
        .zip(workers)
        .enumerate()
        .map(|(shard, (&cpu, worker_cpu))| ShardPlacement {
            shard,
            cpu,
            worker_cpu,
        })
        .collect())
}

/// The CPUs this process may run on (its affinity mask), ascending.
pub fn allowed_cpus() -> Vec<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(cores: Cores, cpus: Option<Vec<usize>>) -> ShardsConfig {
        ShardsConfig {
            cores,
            cpus,
            ..ShardsConfig::default()
        }
    }

    #[test]
    fn count_takes_first_allowed_cpus() {
        let p = resolve_placement(&cfg(Cores::Count(2), None), &[1, 3, 5]).unwrap();
        assert_eq!(p.iter().map(|s| s.cpu).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(p[1].worker_cpu, 3);
    }

    #[test]
    fn all_means_the_affinity_mask() {
        let p = resolve_placement(&cfg(Cores::Named("all".into()), None), &[1]).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].cpu, 1);
    }

    #[test]
    fn too_many_or_excluded_cpus_are_errors() {
        let e = resolve_placement(&cfg(Cores::Count(3), None), &[0, 1]).unwrap_err();
        assert!(e.0.starts_with("shards.cores"), "{e}");
        let e = resolve_placement(&cfg(Cores::Count(1), Some(vec![0])), &[1]).unwrap_err();
        assert!(e.0.contains("CPU 0 is not available"), "{e}");
        let e = resolve_placement(&cfg(Cores::Count(2), Some(vec![1, 1])), &[1]).unwrap_err();
        assert!(e.0.contains("twice"), "{e}");
    }

    #[test]
    fn worker_cpus_must_match() {
        let mut c = cfg(Cores::Count(2), None);
        c.worker_cpus = Some(vec![1]);
        assert!(resolve_placement(&c, &[0, 1]).is_err());
        c.worker_cpus = Some(vec![1, 0]);
        let p = resolve_placement(&c, &[0, 1]).unwrap();
        assert_eq!((p[0].cpu, p[0].worker_cpu), (0, 1));
    }

    #[test]
    fn this_process_has_cpus() {
        assert!(!allowed_cpus().is_empty());
    }
}
