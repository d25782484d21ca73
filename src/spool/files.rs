//! File helpers of the spool: listing segments and free files, zero-filling a new segment,
//! reading a whole file, writing `spool.meta`.

use super::*;

pub(super) fn invalid(msg: &str) -> SpoolError {
    SpoolError::InvalidOptions(msg.to_owned())
}

/// Ids of the segment files in `dir`, ascending. Other files are left alone.
pub(super) fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        match name.strip_suffix(".seg") {
            Some(digits) if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) => {
                match digits.parse() {
                    Ok(id) => ids.push(id),
                    Err(_) => tracing::warn!(file = name, "spool: segment id out of range"),
                }
            }
            _ => {}
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Free files left by an earlier run, kept for reuse if they have the current segment size
/// (at most the pool's size; others are deleted).
pub(super) fn adopt_free_files(dir: &Path, size: u64, pool: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return ids;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(digits) = name.strip_suffix(".free") else {
            continue;
        };
        let fits = e.metadata().is_ok_and(|m| m.len() == size);
        match digits.parse::<u64>() {
            Ok(id) if fits && ids.len() < pool => ids.push(id),
            _ => remove_segment(&e.path()),
        }
    }
    ids
}

/// Creates `path` and writes `size` bytes to it: `first` then zeros, `pause` between 256 KiB
/// writes; then syncs it.
pub(super) async fn write_zeros(
    path: &Path,
    size: u64,
    first: &[u8],
    pause: Duration,
) -> Result<(), SpoolError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .dma_open(path)
        .await?;
    fill(&file, size, first, pause).await?;
    file.fdatasync().await?;
    file.close().await?;
    Ok(())
}

/// Writes `size` bytes to `file`: `first`, then zeros, in paced chunks.
pub(super) async fn fill(
    file: &DmaFile,
    size: u64,
    first: &[u8],
    pause: Duration,
) -> Result<(), SpoolError> {
    // Paced: a burst of megabytes of zeros in the device queue would hold up the active
    // segment's commits (their flush waits for it).
    let chunk = FILL_CHUNK.min(size);
    let mut pos = 0;
    while pos < size {
        if pos > 0 && !pause.is_zero() {
            glommio::timer::sleep(pause).await;
        }
        let len = chunk.min(size - pos) as usize;
        let mut buf = file.alloc_dma_buffer(len);
        let b = buf.as_bytes_mut();
        b.fill(0);
        if pos == 0 {
            b[..first.len()].copy_from_slice(first);
        }
        if file.write_at(buf, pos).await? != len {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short segment write").into());
        }
        pos += len as u64;
    }
    Ok(())
}

/// The whole content of a file, read with O_DIRECT.
pub(super) async fn read_file(path: &Path) -> Result<Vec<u8>, SpoolError> {
    let file = DmaFile::open(path).await?;
    let size = file.file_size().await?;
    let mut out = Vec::with_capacity(size.min(1 << 28) as usize);
    while (out.len() as u64) < size {
        let got = file.read_at_aligned(out.len() as u64, READ_CHUNK).await?;
        out.extend_from_slice(&got);
        if got.len() < READ_CHUNK {
            break;
        }
    }
    file.close().await?;
    Ok(out)
}

/// Records `hwm` as the highest segment id ever created; the caller syncs the directory.
pub(super) async fn write_meta(shared: &Shared, hwm: u64) -> Result<(), SpoolError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(shared.dir.join(META_TMP))
        .await?;
    let mut buf = file.alloc_dma_buffer(BLOCK as usize);
    let bytes = buf.as_bytes_mut();
    bytes.fill(0);
    bytes[..format::META_LEN].copy_from_slice(&format::encode_meta(hwm));
    if file.write_at(buf, 0).await? != BLOCK as usize {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short write of spool.meta").into());
    }
    file.fdatasync().await?;
    shared.synced();
    file.rename(shared.dir.join(META_FILE)).await?;
    file.close().await?;
    Ok(())
}
