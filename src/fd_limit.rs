//! File descriptors: the soft `RLIMIT_NOFILE` is raised to the hard limit at start, and
//! `shards.max_connections` is lowered (with a warning) when the shards' connections plus a
//! reserve for everything else (spool segments, fs sink and spill files, store sockets,
//! listeners) would not fit: running out of descriptors fails those too, not only `accept`.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors kept for the process itself (logs, listeners' setup, lock files).
const RESERVE_BASE: u64 = 64;
/// Descriptors kept per shard beyond its connections: spool segments and the free pool,
/// files of the fs sink and spill directory, the worker's runtime.
const RESERVE_PER_SHARD: u64 = 32;

/// What [`fit_connections`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft limit now in force.
    pub limit: u64,
    /// Connections each shard may hold.
    pub max_connections: usize,
}

/// Raises the soft descriptor limit to the hard one and returns how many connections each of
/// `shards` shards may hold: `wanted`, or fewer if `shards × wanted` plus the reserve (which
/// includes `max_in_flight` store connections per worker) exceeds the limit.
pub fn fit_connections(shards: usize, wanted: usize, max_in_flight: usize) -> FdBudget {
    let limit = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard {
                match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    Ok(()) => hard,
                    Err(e) => {
                        tracing::warn!(soft, hard, error = %e, "cannot raise the file descriptor limit");
                        soft
                    }
                }
            } else {
                soft
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the file descriptor limit");
            return FdBudget {
                limit: 0,
                max_connections: wanted,
            };
        }
    };
    let max_connections = budget(limit, shards, wanted, max_in_flight);
    if max_connections < wanted {
        tracing::warn!(
            limit,
            shards,
            configured = wanted,
            max_connections,
            "shards.max_connections lowered to fit the file descriptor limit (RLIMIT_NOFILE); raise the limit (e.g. LimitNOFILE=) to allow more"
        );
    }
    FdBudget {
        limit,
        max_connections,
    }
}

/// Connections per shard that fit in `limit` descriptors (at least 1): what is left after a
/// reserve for the process and, per shard, for its spool, sink and spill files and its
/// `max_in_flight` store connections, shared by the shards. `corepost tune` plans with it.
pub fn budget(limit: u64, shards: usize, wanted: usize, max_in_flight: usize) -> usize {
    let shards = shards.max(1) as u64;
    let reserve = RESERVE_BASE + shards * (RESERVE_PER_SHARD + max_in_flight as u64);
    let per_shard = limit.saturating_sub(reserve) / shards;
    (wanted as u64).min(per_shard).max(1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_the_limit_with_a_reserve() {
        // The usual soft limit of 1,024 cannot hold two shards of 10,000 connections.
        let n = budget(1024, 2, 10_000, 64);
        assert!(n < 10_000);
        assert!(2 * n as u64 + 64 + 2 * (32 + 64) <= 1024, "{n}");
        // A generous limit keeps what was asked for.
        assert_eq!(budget(1 << 20, 2, 10_000, 64), 10_000);
        // Never zero.
        assert_eq!(budget(10, 4, 10_000, 64), 1);
    }
}
