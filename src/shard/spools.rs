//! The spools a shard delivers from: its own (`ack = "durable"`), and any spool an earlier run
//! left in `spool.dir` that no shard of this run writes (the run had more cores, or `ack` was
//! `durable` and is not now). The spool belongs to the data, not to the settings: every
//! spool found is delivered, whatever `ack` and `cores` are now. Also the release checkpoints
//! of all of them (`spool.checkpoint_ms`, and once more at shutdown).

use super::ShardError;
use crate::config::{Ack, Config, SinkKind};
use crate::intake::Intake;
use crate::job::Naming;
use crate::metrics::{inc, ShardView};
use crate::spool::{RecoveryReport, Releaser, Spool, SpoolOptions};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// A spool directory an earlier run left, to be delivered by a shard of this run.
#[derive(Debug, Clone)]
pub(super) struct Adopted {
    /// The shard index it belonged to (`shard-{index}`): its records keep that index's keys.
    pub(super) index: usize,
    pub(super) dir: PathBuf,
}

/// The spools under `dir` that hold segments and that no shard of this run writes, each given
/// to shard `index % shards`, with a log line saying what was found.
pub(super) fn find_adopted(config: &Config, shards: usize) -> Vec<Vec<Adopted>> {
    let durable = config.server.ack == Ack::Durable;
    let mut per_shard = vec![Vec::new(); shards];
    let Ok(entries) = std::fs::read_dir(&config.spool.dir) else {
        return per_shard;
    };
    let mut found: Vec<Adopted> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let index = name.strip_prefix("shard-")?.parse::<usize>().ok()?;
            let owned = durable && index < shards;
            (!owned && holds_segments(&e.path())).then(|| Adopted {
                index,
                dir: e.path(),
            })
        })
        .collect();
    found.sort_by_key(|a| a.index);
    for a in found {
        let by = a.index % shards;
        tracing::warn!(dir = %a.dir.display(), shard = by, ack = ?config.server.ack, shards,
            "spool: found requests an earlier run accepted (with other `ack` or `cores` settings); delivering them");
        per_shard[by].push(a);
    }
    per_shard
}

fn holds_segments(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten()
            .any(|f| f.file_name().to_string_lossy().ends_with(".seg"))
    })
}

/// Opens (and recovers) the spool of shard index `index` in `dir`, reporting what recovery
/// found; `drain_only` for an adopted one (see [`SpoolOptions::drain_only`]).
pub(super) async fn open(
    cfg: &Config,
    instance: &str,
    index: usize,
    dir: &Path,
    drain_only: bool,
    view: &ShardView,
) -> Result<(Rc<Spool>, Releaser, RecoveryReport), ShardError> {
    // Recorded in every segment: how this run builds and names the objects of its records.
    let naming = Naming {
        prefix: cfg.keys.prefix.clone(),
        instance: instance.to_string(),
        batch: cfg.batch.clone(),
        shard: Some(index),
        template: cfg.keys.template.clone(),
        schema_sha256: keep_schema(cfg, index)?,
    };
    let opts = SpoolOptions {
        dir: dir.to_path_buf(),
        segment_bytes: cfg.spool.segment_bytes,
        max_bytes: cfg.spool.max_bytes,
        commit_wait_us: cfg.spool.commit_wait_us,
        context: serde_json::to_vec(&naming)
            .map_err(|source| ShardError::SpoolContext { index, source })?,
        drain_only,
    };
    let (spool, report) = Spool::open(opts)
        .await
        .map_err(|source| ShardError::Spool {
            index,
            dir: dir.to_path_buf(),
            source,
        })?;
    for t in &report.torn_tails {
        tracing::warn!(spool = index, segment = t.segment, offset = t.offset, bytes = t.bytes, reason = %t.reason, "spool: torn tail cut off (a crash mid-write; nothing there was acknowledged)");
    }
    // Each corrupt range is also logged by the spool itself, with its place.
    inc(&view.stats.spool_torn_tails, report.torn_tails.len() as u64);
    inc(&view.stats.spool_corrupt, report.corrupt.len() as u64);
    if !report.records.is_empty() || report.skipped > 0 {
        tracing::info!(
            spool = index,
            replayed = report.records.len(),
            stored = report.skipped,
            "spool: replaying the requests not yet known to be stored (the release checkpoint names those that were)"
        );
    }
    let releaser = spool.releaser();
    view.spool.add(releaser.clone());
    Ok((Rc::new(spool), releaser, report))
}

/// With Parquet objects and `batch.schema_file`: a copy of the file kept beside the spools,
/// and its digest, for the segments to record.
fn keep_schema(cfg: &Config, index: usize) -> Result<Option<String>, ShardError> {
    let Some(path) = cfg.batch.schema_file.as_deref() else {
        return Ok(None);
    };
    if cfg.batch.format != crate::config::BatchFormat::Parquet {
        return Ok(None);
    }
    let (_, text) = crate::upload::schema_file::read(path).map_err(ShardError::SchemaFile)?;
    let dir = Path::new(&cfg.spool.dir);
    crate::upload::schema_file::keep(dir, &text, index)
        .map(Some)
        .map_err(|source| ShardError::SchemaCopy {
            dir: dir.to_path_buf(),
            source,
        })
}

/// Starts the replay of what an earlier run left in a spool, unless the sink discards:
/// nothing would be stored, yet the records would be released, so they are kept for a run
/// with a real sink.
pub(super) fn replay_unless_discarding(
    intake: &Rc<Intake>,
    cfg: &Config,
    (spool, releaser, report): (Rc<Spool>, Releaser, RecoveryReport),
    index: usize,
) {
    if cfg.sink.kind != SinkKind::Discard {
        let task = crate::intake::replay(intake.clone(), spool, releaser, index, report);
        glommio::spawn_local(task).detach();
    } else if !report.records.is_empty() {
        tracing::warn!(spool = index, records = report.records.len(), "sink discard: requests an earlier run left in the spool are kept for a run with a real sink");
    }
}

/// Writes every spool's release checkpoint every `spool.checkpoint_ms` (when records were
/// released since the last one), on a thread of its own: a small write and a data sync, off
/// the shards' and workers' loops.
#[derive(Debug)]
pub(super) struct Checkpointer {
    stop: flume::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    pub(super) fn start(views: Arc<Vec<ShardView>>, every: Duration) -> std::io::Result<Self> {
        let (stop, stopped) = flume::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                while let Err(flume::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    views.iter().for_each(|v| v.spool.checkpoint());
                }
            })?;
        Ok(Checkpointer { stop, thread })
    }

    /// Stops the thread, then writes the last checkpoints: called once every release has
    /// happened (the upload workers have ended), so a clean stop replays nothing released.
    pub(super) fn finish(self, views: &[ShardView]) {
        drop(self.stop);
        if self.thread.join().is_err() {
            tracing::error!("spool checkpoint thread panicked");
        }
        views.iter().for_each(|v| v.spool.checkpoint());
    }
}
