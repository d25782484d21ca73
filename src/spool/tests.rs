//! Spool tests on a real executor and a real disk (O_DIRECT, so not tmpfs).

use super::format::framed_len;
use super::*;
use glommio::LocalExecutorBuilder;
use std::future::Future;
use std::io::{Seek, SeekFrom, Write};

/// Runs `f` on a fresh glommio executor on this thread.
fn run<F: Future<Output = ()>>(f: F) {
    LocalExecutorBuilder::default().make().unwrap().run(f);
}

fn tempdir() -> tempfile::TempDir {
    // std::env::temp_dir() is on the root ext4 disk here; glommio would quietly skip O_DIRECT
    // on a tmpfs, which keeps the tests working but no longer exercises alignment.
    tempfile::tempdir().unwrap()
}

fn opts(dir: &Path, segment_bytes: u64, max_bytes: u64, commit_wait_us: u64) -> SpoolOptions {
    SpoolOptions {
        dir: dir.to_path_buf(),
        segment_bytes,
        max_bytes,
        commit_wait_us,
        context: b"ctx".to_vec(),
        drain_only: false,
    }
}

fn payload(i: usize) -> Vec<u8> {
    let n = (i * 37) % 1500;
    format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(n)).into_bytes()
}

fn segment_files(dir: &Path) -> Vec<u64> {
    list_segments(dir).unwrap()
}

/// The data of every recovered record, read back through the spool.
async fn contents(spool: &Spool, records: &[Recovered]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for r in records {
        out.push(spool.read_record(r).await.unwrap());
    }
    out
}

async fn reopen(o: &SpoolOptions) -> (Spool, RecoveryReport) {
    Spool::open(o.clone()).await.unwrap()
}

/// A fresh spool with `n` records of `payload(i)`; returns their ids, the spool dropped.
async fn append_n(o: &SpoolOptions, n: usize) -> Vec<RecordId> {
    let (spool, report) = reopen(o).await;
    assert!(report.records.is_empty());
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(spool.append(payload(i)).await.unwrap());
    }
    ids
}

fn patch(o: &SpoolOptions, segment: u64, at: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(o.dir.join(format!("{segment:020}.seg")))
        .unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn appends_come_back_in_order_after_reopen() {
    let dir = tempdir();
    // Small segments so that the records span several of them.
    let o = opts(dir.path(), 16 * 4096, 1 << 30, 0);
    run(async move {
        let ids = append_n(&o, 300).await;
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.last().unwrap().segment > ids[0].segment, "rolled over");
        let (spool, report) = reopen(&o).await;
        let got: Vec<RecordId> = report.records.iter().map(|r| r.id).collect();
        assert_eq!(got, ids);
        let expected: Vec<Vec<u8>> = (0..ids.len()).map(payload).collect();
        assert_eq!(contents(&spool, &report.records).await, expected);
        assert!(report.torn_tails.is_empty() && report.corrupt.is_empty());
    });
}

#[test]
fn concurrent_appends_are_group_committed() {
    let dir = tempdir();
    let o = opts(dir.path(), 1 << 20, 1 << 30, 1000);
    run(async move {
        let (spool, _) = reopen(&o).await;
        let spool = Rc::new(spool);
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let spool = spool.clone();
                glommio::spawn_local(async move { (spool.append(payload(i)).await.unwrap(), i) })
            })
            .collect();
        let mut done = Vec::new();
        for t in tasks {
            done.push(t.await);
        }
        let stats = spool.stats();
        assert_eq!(stats.records_appended, 200);
        assert!(stats.data_syncs < 50, "{stats:?}");
        drop(spool);
        let (spool, report) = reopen(&o).await;
        done.sort();
        let got: Vec<RecordId> = report.records.iter().map(|r| r.id).collect();
        assert_eq!(got, done.iter().map(|&(id, _)| id).collect::<Vec<_>>());
        let expected: Vec<Vec<u8>> = done.iter().map(|&(_, i)| payload(i)).collect();
        assert_eq!(contents(&spool, &report.records).await, expected);
    });
}

#[test]
fn torn_tail_is_cut_and_reported() {
    let dir = tempdir();
    let o = opts(dir.path(), 16 * 4096, 1 << 30, 0);
    run(async move {
        let ids = append_n(&o, 10).await;
        let last = ids[9];
        // The commit of the last record reached the disk only in part.
        let end = last.offset + framed_len(payload(9).len());
        patch(&o, last.segment, end - 12, &[0; 12]);
        let (spool, report) = reopen(&o).await;
        let got: Vec<RecordId> = report.records.iter().map(|r| r.id).collect();
        assert_eq!(got, ids[..9]);
        assert!(report.corrupt.is_empty());
        assert_eq!(report.torn_tails.len(), 1);
        let torn = &report.torn_tails[0];
        assert_eq!((torn.segment, torn.offset), (last.segment, last.offset));
        assert_eq!(torn.reason, CorruptReason::BadCrc);
        assert!(torn.bytes > 0 && torn.bytes <= end - last.offset);
        // The spool goes on in a new segment.
        let new = spool.append(b"after".to_vec()).await.unwrap();
        assert!(new.segment > last.segment);
        drop(spool);
        let (spool, report) = reopen(&o).await;
        assert_eq!(report.records.len(), 10);
        assert_eq!(report.records[9].id, new);
        assert_eq!(
            spool.read_record(&report.records[9]).await.unwrap(),
            b"after"
        );
    });
}

#[test]
fn truncated_segment_is_reported_as_corruption_not_only_a_torn_tail() {
    let dir = tempdir();
    let o = opts(dir.path(), 16 * 4096, 1 << 30, 0);
    run(async move {
        let ids = append_n(&o, 5).await;
        let path = o.dir.join(format!("{:020}.seg", ids[4].segment));
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.set_len(ids[4].offset + 20).unwrap();
        f.sync_all().unwrap();
        let (_spool, report) = reopen(&o).await;
        assert_eq!(report.records.len(), 4);
        assert_eq!(report.torn_tails[0].offset, ids[4].offset);
        assert_eq!(report.torn_tails[0].reason, CorruptReason::BadLength);
        // Acknowledged records were lost with the file's end: that is corruption, reported
        // as such (a crash of ours never shortens a segment file).
        assert_eq!(report.corrupt.len(), 1, "{:?}", report.corrupt);
        assert_eq!(
            report.corrupt[0].reason,
            CorruptReason::Truncated { size: 16 * 4096 }
        );
    });
}

#[test]
fn corruption_in_the_middle_is_reported_and_skipped() {
    for case in ["data", "length", "magic"] {
        let dir = tempdir();
        let o = opts(dir.path(), 16 * 4096, 1 << 30, 0);
        run(async move {
            let ids = append_n(&o, 10).await;
            let bad = ids[4];
            let (at, bytes, reason) = match case {
                "data" => (bad.offset + 20, vec![b'#'], CorruptReason::BadCrc),
                "length" => (
                    bad.offset + 4,
                    vec![0xff, 0xff, 0xff, 0x7f],
                    CorruptReason::BadLength,
                ),
                _ => (bad.offset, vec![0], CorruptReason::BadMagic),
            };
            patch(&o, bad.segment, at, &bytes);
            let (spool, report) = reopen(&o).await;
            let got: Vec<RecordId> = report.records.iter().map(|r| r.id).collect();
            let expected: Vec<RecordId> = ids.iter().copied().filter(|&id| id != bad).collect();
            assert_eq!(got, expected, "{case}");
            let data = contents(&spool, &report.records).await;
            assert_eq!(data[4], payload(5), "{case}");
            assert_eq!(
                report.corrupt,
                [Corrupt {
                    segment: bad.segment,
                    offset: bad.offset,
                    length: ids[5].offset - bad.offset,
                    reason,
                }],
                "{case}"
            );
            assert!(report.torn_tails.is_empty(), "{case}");
        });
    }
}

#[test]
fn released_sealed_segments_are_retired() {
    let dir = tempdir();
    // 8 records of 1000 bytes fill a segment: 32 + 8 * 1016 = 8160 <= 8192.
    let o = opts(dir.path(), 8192, 1 << 20, 0);
    run(async move {
        let (spool, _) = reopen(&o).await;
        let mut ids = Vec::new();
        for _ in 0..20 {
            ids.push(spool.append(vec![b'7'; 1000]).await.unwrap());
        }
        let segs: Vec<u64> = ids.iter().map(|id| id.segment).collect();
        let (a, b, c) = (segs[0], segs[8], segs[16]);
        assert_eq!(segs.iter().filter(|&&s| s == a).count(), 8);
        assert_eq!(
            segment_files(&o.dir)
                .into_iter()
                .filter(|&s| s <= c)
                .collect::<Vec<_>>(),
            [a, b, c]
        );
        let releaser = spool.releaser();
        let ids2 = ids.clone();
        // Released from another thread, like the upload worker.
        std::thread::spawn(move || {
            for id in ids2.iter().filter(|id| id.segment != b) {
                releaser.release(*id);
                releaser.release(*id); // a second release is ignored
            }
            for id in ids2.iter().filter(|id| id.segment == b).skip(1) {
                releaser.release(*id);
            }
        })
        .join()
        .unwrap();
        // a: sealed and released: gone. b: one record left. c: still being written (half
        // full, so the next segment is being created in the background: ignored here).
        let written = || -> Vec<u64> {
            segment_files(&o.dir)
                .into_iter()
                .filter(|&s| s <= c)
                .collect()
        };
        assert_eq!(written(), [b, c]);
        assert_eq!(spool.stats().live_records, 1);
        spool.releaser().release(ids[8]);
        assert_eq!(written(), [c]);
        // c, the next one, and a and b kept in the free pool for reuse.
        assert_eq!(spool.stats().live_bytes, 4 * 8192);
        assert!(o.dir.join(format!("{a:020}.free")).exists());
    });
}

#[test]
fn recycled_files_hold_only_their_new_records_after_reopen() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempdir();
    let o = opts(dir.path(), 8192, 1 << 20, 0);
    run(async move {
        let (spool, _) = reopen(&o).await;
        // Six segments' worth, all released: sealed segments go to the free pool and come
        // back as new segments, so a handful of files serve them all (same inodes).
        let mut inodes = std::collections::HashSet::new();
        for _ in 0..48 {
            let id = spool.append(vec![b'o'; 1000]).await.unwrap();
            spool.releaser().release(id);
            for e in std::fs::read_dir(&o.dir).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "seg" || x == "free") {
                    inodes.insert(std::fs::metadata(p).unwrap().ino());
                }
            }
        }
        assert!(
            inodes.len() <= 2 + FREE_POOL,
            "files reused: {} inodes",
            inodes.len()
        );
        let mut kept = Vec::new();
        for i in 0..24u8 {
            kept.push(spool.append(vec![b'a' + i % 26; 1000]).await.unwrap());
        }
        drop(spool);
        let (spool, report) = reopen(&o).await;
        let got: Vec<RecordId> = report.records.iter().map(|r| r.id).collect();
        assert_eq!(
            got, kept,
            "exactly the unreleased records, none of the earlier use"
        );
        for (data, i) in contents(&spool, &report.records)
            .await
            .into_iter()
            .zip(0u8..)
        {
            assert_eq!(data, vec![b'a' + i % 26; 1000]);
        }
        assert!(report.torn_tails.is_empty(), "{:?}", report.torn_tails);
        assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
    });
}

#[test]
fn full_spool_accepts_again_after_release() {
    let dir = tempdir();
    let o = opts(dir.path(), 8192, 3 * 8192, 0);
    run(async move {
        let (spool, _) = reopen(&o).await;
        let mut ids = Vec::new();
        let full = loop {
            match spool.append(vec![b'1'; 1000]).await {
                Ok(id) => ids.push(id),
                Err(e) => break e,
            }
        };
        assert!(matches!(full, SpoolError::Full), "{full:?}");
        assert_eq!(ids.len(), 24);
        assert!(matches!(
            spool.append(b"x".to_vec()).await,
            Err(SpoolError::Full)
        ));
        assert_eq!(spool.stats().live_bytes, 3 * 8192);
        for id in &ids[..8] {
            spool.releaser().release(*id);
        }
        let id = spool.append(b"again".to_vec()).await.unwrap();
        assert!(id.segment > ids[23].segment);
    });
}

#[test]
fn recovered_records_must_be_released_and_full_budget_still_opens() {
    let dir = tempdir();
    let o = opts(dir.path(), 8192, 2 * 8192, 0);
    run(async move {
        let (spool, _) = reopen(&o).await;
        let mut ids = Vec::new();
        for _ in 0..16 {
            // Two full segments: the whole budget.
            ids.push(spool.append(vec![b'r'; 1000]).await.unwrap());
        }
        drop(spool);
        let (spool, report) = reopen(&o).await;
        assert_eq!(report.records.len(), 16);
        assert!(matches!(
            spool.append(b"x".to_vec()).await,
            Err(SpoolError::Full)
        ));
        for id in &ids[..8] {
            spool.releaser().release(*id);
        }
        assert_eq!(segment_files(&o.dir), [ids[8].segment]);
        spool.append(b"x".to_vec()).await.unwrap();
    });
}

#[test]
fn segment_ids_never_repeat_after_deletion() {
    let dir = tempdir();
    let o = opts(dir.path(), 8192, 1 << 20, 0);
    // A segment whose id is far ahead of the clock, as if the clock had stepped back since.
    let future = unix_micros() + 3_600_000_000_000;
    let mut seg = format::segment_header(future, 8192).to_vec();
    seg.extend_from_slice(&format::encode_record(b"old", format::segment_tag(future)));
    seg.resize(8192, 0);
    std::fs::write(dir.path().join(format!("{future:020}.seg")), seg).unwrap();
    run(async move {
        let (spool, report) = reopen(&o).await;
        assert_eq!(report.records.len(), 1);
        spool.releaser().release(report.records[0].id);
        assert!(
            segment_files(&o.dir).is_empty(),
            "recovered segment deleted"
        );
        drop(spool);
        // Nothing on disk names the old id any more; spool.meta does.
        let (spool, _) = reopen(&o).await;
        let first = spool.append(b"new".to_vec()).await.unwrap();
        assert!(first.segment > future);
        spool.releaser().release(first);
        drop(spool);
        let (spool, report) = reopen(&o).await;
        assert_eq!(report.records.len(), 1);
        spool.releaser().release(report.records[0].id);
        drop(spool);
        let (spool, _) = reopen(&o).await;
        let second = spool.append(b"newer".to_vec()).await.unwrap();
        assert!(second.segment > first.segment);
    });
}

#[test]
fn oversized_records_are_refused() {
    let dir = tempdir();
    let o = opts(dir.path(), 8192, 1 << 20, 0);
    run(async move {
        let (spool, _) = reopen(&o).await;
        let max = spool.max_record_len();
        assert_eq!(max as u64, 8192 - super::format::data_start(3) - 16);
        let err = spool.append(vec![1; max + 1]).await.unwrap_err();
        assert!(matches!(err, SpoolError::TooLarge { len, .. } if len == max + 1));
        assert!(spool.append(vec![2; 1 << 20]).await.is_err());
        let id = spool.append(vec![3; max]).await.unwrap();
        drop(spool);
        let (_spool, report) = reopen(&o).await;
        assert_eq!(report.records.len(), 1);
        assert_eq!(report.records[0].id, id);
        assert_eq!(report.records[0].len, max);
    });
}

#[test]
fn invalid_options_are_refused() {
    let dir = tempdir();
    run(async move {
        for (seg, max) in [(4096, 1 << 20), (10_000, 1 << 20), (8192, 4096)] {
            let err = Spool::open(opts(dir.path(), seg, max, 0))
                .await
                .unwrap_err();
            assert!(matches!(err, SpoolError::InvalidOptions(_)), "{err:?}");
        }
    });
}

#[test]
fn releaser_and_stats_cross_threads() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Releaser>();
    check::<SpoolStats>();
}

#[test]
fn each_segment_hands_back_the_context_it_was_written_with() {
    let dir = tempdir();
    let mut o = opts(dir.path(), 8192, 1 << 20, 0);
    run(async move {
        let first = append_n(&o, 3).await;
        // The next run writes with another context; the old segment keeps its own.
        o.context = b"second run".to_vec();
        let (spool, report) = reopen(&o).await;
        assert_eq!(report.records.len(), 3);
        assert_eq!(
            report.contexts.get(&first[0].segment).map(Vec::as_slice),
            Some(&b"ctx"[..])
        );
        let new = spool.append(b"x".to_vec()).await.unwrap();
        drop(spool);
        let (_spool, report) = reopen(&o).await;
        assert_eq!(
            report.contexts.get(&new.segment).map(Vec::as_slice),
            Some(&b"second run"[..])
        );
        o.context = vec![0; 1025];
        assert!(
            Spool::open(o.clone()).await.is_err(),
            "a context over 1 KiB is refused"
        );
    });
}

#[test]
fn a_checkpoint_keeps_released_records_from_being_replayed() {
    let dir = tempdir();
    // Small segments: the records span several, some of which become fully released.
    let o = opts(dir.path(), 16 * 4096, 1 << 30, 0);
    run(async move {
        let (spool, _) = reopen(&o).await;
        let mut ids = Vec::new();
        for i in 0..300 {
            ids.push(spool.append(payload(i)).await.unwrap());
        }
        let rel = spool.releaser();
        // Released: the first 200, and every third of the rest.
        let kept: Vec<RecordId> = ids
            .iter()
            .enumerate()
            .filter(|&(i, _)| i >= 200 && i % 3 != 0)
            .map(|(_, &id)| id)
            .collect();
        for id in ids.iter().filter(|id| !kept.contains(id)) {
            rel.release(*id);
        }
        rel.checkpoint();
        drop(spool);
        let gone = released_in_deleted(&ids, &o);
        let (spool, report) = reopen(&o).await;
        let got: Vec<RecordId> = report.records.iter().map(|r| r.id).collect();
        assert_eq!(got, kept, "only what was not released comes back");
        assert_eq!(report.skipped, 300 - kept.len() - gone);
        let expected: Vec<Vec<u8>> = (0..300)
            .filter(|&i| i >= 200 && i % 3 != 0)
            .map(payload)
            .collect();
        assert_eq!(contents(&spool, &report.records).await, expected);
        // Everything released and checkpointed: a start replays nothing, and the segments go.
        let rel = spool.releaser();
        for id in &kept {
            rel.release(*id);
        }
        rel.checkpoint();
        drop(spool);
        let (spool, report) = reopen(&o).await;
        assert!(report.records.is_empty(), "{:?}", report.records.len());
        assert_eq!(spool.stats().live_records, 0);
        assert!(
            segment_files(&o.dir).is_empty(),
            "fully released segments are retired"
        );
    });
}

/// Records of `ids` whose segment file is already gone (sealed and fully released): recovery
/// never sees them.
fn released_in_deleted(ids: &[RecordId], o: &SpoolOptions) -> usize {
    let on_disk = segment_files(&o.dir);
    ids.iter()
        .filter(|id| !on_disk.contains(&id.segment))
        .count()
}

#[test]
fn without_a_checkpoint_every_record_is_replayed() {
    let dir = tempdir();
    let o = opts(dir.path(), 1 << 20, 1 << 30, 0);
    run(async move {
        let (spool, _) = reopen(&o).await;
        let mut ids = Vec::new();
        for i in 0..20 {
            ids.push(spool.append(payload(i)).await.unwrap());
        }
        let rel = spool.releaser();
        for id in &ids {
            rel.release(*id);
        }
        // Released, but not checkpointed (a crash within the checkpoint interval): replayed.
        drop(spool);
        let (_spool, report) = reopen(&o).await;
        assert_eq!(report.records.len(), 20);
        // A damaged checkpoint counts as none.
        std::fs::write(o.dir.join(checkpoint::CKPT_FILE), b"CPSPCKPT garbage").unwrap();
        drop(_spool);
        let (_spool, report) = reopen(&o).await;
        assert_eq!(report.records.len(), 20);
    });
}
