//! The committer and the segment lifecycle: group commits (one `O_DSYNC` write per batch of
//! appends), sealing, creating, recycling and activating segment files, each step ordered for
//! crashes (see the module docs of `spool`).

use super::*;

/// The segment being written.
pub(super) struct Active {
    pub(super) id: u64,
    pub(super) file: DmaFile,
    /// End of the durable records.
    pub(super) end: u64,
    /// The bytes of `[end rounded down to BLOCK, end)`, rewritten by the next commit.
    pub(super) tail: Vec<u8>,
}

/// The committer task's state.
pub(super) struct Writer {
    pub(super) inner: Rc<Inner>,
    pub(super) active: Option<Active>,
    pub(super) next_id: u64,
    /// The next segment, being created in the background once the active one is half full
    /// (zero-filling takes a while; commits should not wait for it).
    pub(super) next: Option<glommio::Task<Result<Active, SpoolError>>>,
}

/// Fails what is still queued when the committer stops (cancelled or the executor ends).
pub(super) struct StopGuard(Rc<Inner>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        let mut q = self.0.queue.borrow_mut();
        q.stopped = true;
        for p in q.pending.drain(..) {
            p.slot.fill(Err(SpoolError::Closed));
        }
    }
}

impl Writer {
    pub(super) async fn run(mut self) {
        let _guard = StopGuard(self.inner.clone());
        let wait = Duration::from_micros(self.inner.opts.commit_wait_us);
        loop {
            let listener = self.inner.queued.listen();
            let oldest = self.inner.queue.borrow().pending.front().map(|p| p.at);
            let Some(oldest) = oldest else {
                listener.await;
                continue;
            };
            drop(listener);
            let left = wait.saturating_sub(oldest.elapsed());
            if !left.is_zero() {
                glommio::timer::sleep(left).await;
            }
            let batch: Vec<Pending> = self.inner.queue.borrow_mut().pending.drain(..).collect();
            self.commit(&batch).await;
        }
    }

    /// Lands `batch` in order, rolling over segments as needed; fills every slot.
    pub(super) async fn commit(&mut self, batch: &[Pending]) {
        let mut i = 0;
        while i < batch.len() {
            if self.active.is_none() {
                let created = match self.next.take() {
                    Some(task) => match task.await {
                        Ok(active) => Ok(active),
                        // Logged by `create`; try once more in the foreground.
                        Err(_) => self.create_segment().await,
                    },
                    None => self.create_segment().await,
                };
                match created {
                    Ok(a) => self.active = Some(a),
                    Err(e) => {
                        for p in &batch[i..] {
                            p.slot.fill(Err(e.again()));
                        }
                        return;
                    }
                }
            }
            let Some(active) = self.active.as_mut() else {
                return;
            };
            let (start, mut end) = (i, active.end);
            while i < batch.len() && end + batch[i].framed <= self.inner.opts.segment_bytes {
                end += batch[i].framed;
                i += 1;
            }
            if i == start {
                if active.end == format::data_start(self.inner.opts.context.len()) {
                    // Cannot happen (append checks the size), but never loop on it.
                    let (len, max) = (batch[i].len, 0);
                    batch[i].slot.fill(Err(SpoolError::TooLarge { len, max }));
                    i += 1;
                } else {
                    self.seal_active().await;
                }
                continue;
            }
            let records = &batch[start..i];
            match write_records(active, records).await {
                Ok(()) => {
                    crate::crash_point!("spool::commit::after_write");
                    let shared = &self.inner.shared;
                    shared.synced();
                    shared.commits.fetch_add(1, Relaxed);
                    let mut offset = active.end;
                    let mut ids = Vec::with_capacity(records.len());
                    for p in records {
                        ids.push(RecordId {
                            segment: active.id,
                            offset,
                        });
                        offset += p.framed;
                    }
                    active.end = offset;
                    if let Some(s) = shared.table().segments.get_mut(&active.id) {
                        s.live.extend(
                            ids.iter()
                                .zip(records)
                                .map(|(id, p)| (id.offset, id.offset + p.framed)),
                        );
                        s.end = offset;
                    }
                    let bytes: usize = records.iter().map(|p| p.len).sum();
                    shared.records.fetch_add(records.len() as u64, Relaxed);
                    shared.bytes.fetch_add(bytes as u64, Relaxed);
                    for (p, id) in records.iter().zip(ids) {
                        p.slot.fill(Ok(id));
                    }
                    self.prepare_next();
                }
                Err(e) => {
                    tracing::error!(segment = active.id, error = %e, "spool commit failed");
                    for p in records {
                        p.slot.fill(Err(e.again()));
                    }
                    self.seal_active().await;
                }
            }
        }
    }

    pub(super) async fn seal_active(&mut self) {
        if let Some(a) = self.active.take() {
            if let Err(e) = a.file.close().await {
                tracing::warn!(segment = a.id, error = %e, "spool: closing a segment failed");
            }
            self.inner.shared.seal(a.id);
        }
    }

    /// Creates, zero-fills and syncs the next segment, if the budget allows.
    pub(super) async fn create_segment(&mut self) -> Result<Active, SpoolError> {
        let new = self.reserve_segment()?;
        create(self.inner.clone(), new).await
    }

    /// Starts creating the next segment in the background, once the active one is half full
    /// and if the budget has room for it now.
    pub(super) fn prepare_next(&mut self) {
        let half = self.inner.opts.segment_bytes / 2;
        if self.next.is_some() || self.active.as_ref().is_none_or(|a| a.end < half) {
            return;
        }
        if let Ok(new) = self.reserve_segment() {
            self.next = Some(glommio::spawn_local(create(self.inner.clone(), new)));
        }
    }

    /// Counts a new segment against the budget and picks its id.
    pub(super) fn reserve_segment(&mut self) -> Result<NewSegment, SpoolError> {
        let (bytes, max) = (self.inner.opts.segment_bytes, self.inner.opts.max_bytes);
        let id = self.next_id.max(unix_micros());
        let shared = &self.inner.shared;
        let reuse;
        {
            let mut t = shared.table();
            // A file from the free pool is already counted in `live_bytes`.
            reuse = t.free.pop();
            if reuse.is_none() {
                if t.live_bytes + bytes > max {
                    return Err(SpoolError::Full);
                }
                t.live_bytes += bytes;
            }
            t.segments.insert(
                id,
                SegState {
                    live: BTreeMap::new(),
                    end: format::data_start(self.inner.opts.context.len()),
                    sealed: false,
                    bytes,
                },
            );
        }
        // Even if creation fails part-way, the id may be in spool.meta: never reuse it.
        self.next_id = id.saturating_add(1);
        Ok(NewSegment { id, reuse })
    }
}

/// A segment about to be created: its id, and the free file it reuses, if any.
#[derive(Debug, Clone, Copy)]
pub(super) struct NewSegment {
    pub(super) id: u64,
    pub(super) reuse: Option<u64>,
}

/// Creates a segment (already counted against the budget); on failure it is sealed so its
/// budget is returned.
pub(super) async fn create(inner: Rc<Inner>, new: NewSegment) -> Result<Active, SpoolError> {
    let id = new.id;
    let created = match new.reuse {
        Some(old) => reuse_file(&inner, old, id).await,
        None => try_create(&inner, id).await,
    };
    match created {
        Ok(active) => Ok(active),
        Err(e) => {
            tracing::error!(segment = id, error = %e, "spool: creating a segment failed");
            inner.shared.seal(id);
            Err(e)
        }
    }
}

/// Makes free file `old` segment `id`. Order matters for a crash at any step: the meta file
/// first (the id is never handed out again), then the new header written and synced while the
/// file still has its free name, then the rename, then (in [`activate`]) the directory sync.
/// So a file named as a segment always carries that segment's header: a crash before the
/// rename leaves a free file (adopted again at the next start), one after it an empty
/// segment, and never a segment file holding the records of the file's earlier use (stored
/// already, they would be replayed under new keys). Records of the earlier use further on
/// carry the old tag and end the data.
pub(super) async fn reuse_file(inner: &Inner, old: u64, id: u64) -> Result<Active, SpoolError> {
    let shared = &inner.shared;
    write_meta(shared, id).await?;
    crate::crash_point!("spool::reuse::after_meta");
    let file = OpenOptions::new()
        .write(true)
        .dma_open(shared.free_path(old))
        .await?;
    let header = format::segment_prefix(id, inner.opts.segment_bytes, &inner.opts.context);
    fill(&file, BLOCK, &header, Duration::ZERO).await?;
    file.fdatasync().await?;
    shared.synced();
    crate::crash_point!("spool::reuse::after_header");
    std::fs::rename(shared.free_path(old), shared.seg_path(id))?;
    crate::crash_point!("spool::reuse::after_rename");
    activate(inner, file, id, &header).await
}

/// Writes the whole segment file (header, then zeros) and syncs it and the directory.
/// Zero-filling instead of `fallocate` matters for latency: a commit into an fallocated
/// file converts unwritten extents, a metadata change that makes every `fdatasync` a journal
/// commit.
pub(super) async fn try_create(inner: &Inner, id: u64) -> Result<Active, SpoolError> {
    let shared = &inner.shared;
    write_meta(shared, id).await?;
    crate::crash_point!("spool::create::after_meta");
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .dma_open(shared.seg_path(id))
        .await?;
    if !BLOCK.is_multiple_of(file.alignment()) {
        return Err(io::Error::other("device alignment above 4096 bytes").into());
    }
    let header = format::segment_prefix(id, inner.opts.segment_bytes, &inner.opts.context);
    fill(&file, inner.opts.segment_bytes, &header, FILL_PAUSE).await?;
    crate::crash_point!("spool::create::after_fill");
    activate(inner, file, id, &header).await
}

/// Syncs a freshly written segment file and its directory entry, then reopens it for the
/// records with `O_DSYNC` (see [`write_records`]); the segment is then ready for records
/// after its header. (The zero fill is written without `O_DSYNC`: one sync at the end.)
pub(super) async fn activate(
    inner: &Inner,
    file: DmaFile,
    id: u64,
    header: &[u8],
) -> Result<Active, SpoolError> {
    file.fdatasync().await?;
    inner.shared.synced();
    inner.dir.sync().await?;
    inner.shared.synced();
    crate::crash_point!("spool::activate::after_dir_sync");
    if let Err(e) = file.close().await {
        tracing::warn!(segment = id, error = %e, "spool: closing a segment's fill handle failed");
    }
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_DSYNC.bits())
        .dma_open(inner.shared.seg_path(id))
        .await?;
    Ok(Active {
        id,
        file,
        end: header.len() as u64,
        tail: header.to_vec(),
    })
}

/// Writes `records` after `active.end` (rewriting the partial block before it), durably: the
/// segment is open with `O_DSYNC`, so the write completes only once its data is on stable
/// storage, as a `write` followed by `fdatasync` would (the kernel flushes the device's
/// cache, or writes with FUA), but as one io_uring operation: no second round trip through
/// the executor between the write and the sync. Updates `active.tail`; the caller advances
/// `active.end`.
pub(super) async fn write_records(
    active: &mut Active,
    records: &[Pending],
) -> Result<(), SpoolError> {
    let start = active.end - active.tail.len() as u64;
    let new_end = active.end + records.iter().map(|p| p.framed).sum::<u64>();
    let tag = format::segment_tag(active.id);
    let len = (new_end.div_ceil(BLOCK) * BLOCK - start) as usize;
    let mut buf = active.file.alloc_dma_buffer(len);
    let b = buf.as_bytes_mut();
    let mut at = active.tail.len();
    b[..at].copy_from_slice(&active.tail);
    for p in records {
        let n = p.framed as usize;
        format::encode_record_into(&mut b[at..at + n], &p.data, tag);
        at += n;
    }
    b[at..].fill(0);
    let tail_from = ((new_end / BLOCK * BLOCK) - start) as usize;
    let tail = b[tail_from..at].to_vec();
    if active.file.write_at(buf, start).await? != len {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short spool write").into());
    }
    active.tail = tail;
    Ok(())
}

/// Deletes one segment file (a deletion lost in a crash only means a replay).
pub(super) fn remove_segment(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::debug!(path = %path.display(), "spool segment deleted"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::error!(path = %path.display(), error = %e, "spool segment not deleted"),
    }
}
