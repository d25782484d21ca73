//! Opening a spool: its options checked, its segments recovered, its free pool filled.

use super::*;

/// Refuses impossible options; returns the largest record a segment can hold.
pub(super) fn check_options(opts: &SpoolOptions) -> Result<usize, SpoolError> {
    if !opts.segment_bytes.is_multiple_of(BLOCK) || opts.segment_bytes < 2 * BLOCK {
        return Err(invalid(
            "segment_bytes must be a multiple of 4096, at least 8192",
        ));
    }
    if opts.max_bytes < opts.segment_bytes {
        return Err(invalid("max_bytes must hold at least one segment"));
    }
    if opts.context.len() > format::MAX_CONTEXT {
        return Err(invalid("context longer than 1024 bytes"));
    }
    Ok(
        (opts.segment_bytes - format::data_start(opts.context.len()) - format::FRAME_HEADER)
            .min(u32::MAX as u64) as usize,
    )
}

/// The highest segment id ever created, from `spool.meta` (`None`: no valid file).
pub(super) fn read_meta(dir: &Path) -> Result<Option<u64>, SpoolError> {
    match std::fs::read(dir.join(META_FILE)) {
        Ok(buf) => Ok(format::decode_meta(&buf).or_else(|| {
            tracing::warn!(dir = %dir.display(), "spool.meta is invalid, ignored");
            None
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Reads every segment on disk into the release table (sealed: the writer never appends to
/// a segment of an earlier run) and the report; returns the report and the segments that
/// hold no records.
pub(super) async fn recover_segments(
    shared: &Shared,
    ids: &[u64],
    progress: &checkpoint::Checkpoint,
) -> Result<(RecoveryReport, Vec<u64>), SpoolError> {
    let mut report = RecoveryReport::default();
    let mut empty = Vec::new();
    for &id in ids {
        let buf = read_file(&shared.seg_path(id)).await?;
        let scan = format::scan(id, &buf);
        if let Some(t) = &scan.torn {
            tracing::warn!(segment = id, offset = t.offset, bytes = t.bytes, reason = %t.reason,
                "spool: torn tail cut");
        }
        for c in &scan.corrupt {
            tracing::error!(segment = id, offset = c.offset, length = c.length,
                reason = %c.reason, "spool: corrupt range skipped");
        }
        if let Some(reason) = &scan.stale {
            tracing::warn!(segment = id, %reason,
                "spool: a recycled file without its new header; it holds no records of this segment");
        }
        // Records the last checkpoint knows were stored are not replayed.
        let before = scan.records.len();
        let records: Vec<Recovered> = scan
            .records
            .into_iter()
            .filter(|r| !progress.released(r.id))
            .collect();
        report.skipped += before - records.len();
        let live: BTreeMap<u64, u64> = records
            .iter()
            .map(|r| (r.id.offset, r.id.offset + format::framed_len(r.len)))
            .collect();
        let has_records = !live.is_empty();
        if !has_records {
            empty.push(id);
        }
        let bytes = buf.len() as u64;
        let mut t = shared.table();
        t.live_bytes += bytes;
        t.segments.insert(
            id,
            SegState {
                live,
                end: bytes,
                sealed: true,
                bytes,
            },
        );
        drop(t);
        report.records.extend(records);
        report.torn_tails.extend(scan.torn);
        report.corrupt.extend(scan.corrupt);
        if let (Some(context), true) = (scan.context, has_records) {
            report.contexts.insert(id, context);
        }
    }
    Ok((report, empty))
}

/// The free pool: files left by the last run (`adopted`), then new ones written now, before
/// any commit has to wait behind their zeros (budget permitting, with room left for the first
/// segment). Returns how many were written.
pub(super) async fn fill_free_pool(
    shared: &Shared,
    opts: &SpoolOptions,
    adopted: Vec<u64>,
    next_id: &mut u64,
) -> Result<usize, SpoolError> {
    {
        let mut t = shared.table();
        for id in adopted {
            t.free.push(id);
            t.live_bytes += opts.segment_bytes;
        }
    }
    let mut prepared = 0;
    loop {
        {
            let t = shared.table();
            if t.free.len() >= shared.pool || t.live_bytes + 2 * opts.segment_bytes > opts.max_bytes
            {
                break;
            }
        }
        let id = (*next_id).max(unix_micros());
        *next_id = id + 1;
        write_zeros(
            &shared.free_path(id),
            opts.segment_bytes,
            &[],
            Duration::ZERO,
        )
        .await?;
        let mut t = shared.table();
        t.free.push(id);
        t.live_bytes += opts.segment_bytes;
        prepared += 1;
    }
    Ok(prepared)
}
