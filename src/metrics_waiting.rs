//! What waits for the store outside the memory queues (`/metrics` and `/readyz`).

use super::ShardView;
use std::sync::atomic::Ordering::Relaxed;

/// What waits for the store outside the memory queues: in the durable spools and the spill
/// directory (`/metrics` and `/readyz`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Waiting {
    /// Spooled requests not yet stored, in every shard's spools.
    pub spool_records: u64,
    /// Spill files, and their bytes.
    pub spill_files: u64,
    /// See `spill_files`.
    pub spill_bytes: u64,
    /// Age of the oldest of them (see `corepost_waiting_oldest_seconds`), 0 when none.
    pub oldest_seconds: u64,
}

impl Waiting {
    /// Sums what every shard's spools and the spill directory hold.
    pub fn of(shards: &[ShardView]) -> Waiting {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut w = Waiting::default();
        let mut oldest = u64::MAX;
        for sh in shards {
            if let Some(sp) = sh.spool.stats() {
                w.spool_records += sp.live_records;
                if sp.oldest_live_segment > 0 {
                    // Segment ids are their creation time in µs (see `spool`).
                    oldest = oldest.min(sp.oldest_live_segment / 1_000_000);
                }
            }
            w.spill_files += sh.stats.spill_files.load(Relaxed);
            w.spill_bytes += sh.stats.spill_bytes.load(Relaxed);
            match sh.stats.spill_oldest_unix.load(Relaxed) {
                0 => {}
                t => oldest = oldest.min(t),
            }
        }
        if oldest != u64::MAX {
            w.oldest_seconds = now.saturating_sub(oldest);
        }
        w
    }
}
