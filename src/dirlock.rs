//! Exclusive locks on the data directories (the spool, the spill directory, the fs sink's
//! root), so that two corepost processes never share one: two spools in one directory would
//! overwrite each other's segments, two processes replaying one spill directory would upload
//! its files twice.
//!
//! Each locked directory holds a lock file, [`LOCK_FILE`], with an exclusive `flock` on it for
//! the life of the process, and the holder's pid as text (for the message that refuses a
//! second process). The kernel drops the lock when the process ends, however it ends
//! (`kill -9` included), so a stale lock file never needs cleaning up. The name starts with a
//! dot: the spill replay skips dot-files, the spool reads only its `shard-*` directories, and
//! object keys always contain a `/`, so no object is ever stored under that name.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Name of the lock file in every locked directory.
pub const LOCK_FILE: &str = ".corepost.lock";

/// How long to wait for a new holder to write its pid before reporting it as unknown.
const PID_WAIT: Duration = Duration::from_millis(500);

/// An exclusive lock on one data directory, held until dropped (or the process ends).
#[derive(Debug)]
pub struct DirLock {
    key: &'static str,
    dir: PathBuf,
    /// The locked lock file; closing it releases the lock.
    _file: File,
}

/// Why a directory could not be locked; the message names the configuration key and the
/// directory.
#[derive(Debug, thiserror::Error)]
pub enum DirLockError {
    /// Another process holds the lock.
    #[error("{key} {} is in use by another corepost process ({})", .dir.display(), holder_text(*.holder))]
    InUse {
        /// The configuration key naming the directory.
        key: &'static str,
        /// The directory.
        dir: PathBuf,
        /// The holder's pid, if its lock file says.
        holder: Option<u32>,
    },
    /// The directory or its lock file cannot be created, opened or locked.
    #[error("{key} {}: cannot {what}: {source}", .dir.display())]
    Io {
        /// The configuration key naming the directory.
        key: &'static str,
        /// The directory.
        dir: PathBuf,
        /// What failed.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

fn holder_text(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".into(),
    }
}

impl DirLock {
    /// Creates `dir` if missing and takes the exclusive lock on its lock file, recording our
    /// pid there. `key` is the configuration key that names `dir`, for the error message.
    pub fn acquire(key: &'static str, dir: &Path) -> Result<DirLock, DirLockError> {
        let io = |what: &'static str| {
            move |source| DirLockError::Io {
                key,
                dir: dir.to_path_buf(),
                what,
                source,
            }
        };
        std::fs::create_dir_all(dir).map_err(io("create the directory"))?;
        let path = dir.join(LOCK_FILE);
        // Not truncated on open: until we hold the lock, the pid in it is the holder's.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open its lock file"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(DirLockError::InUse {
                    key,
                    dir: dir.to_path_buf(),
                    holder: holder_pid(&mut file),
                })
            }
            Err(TryLockError::Error(e)) => return Err(io("lock its lock file")(e)),
        }
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
            .map_err(io("write its lock file"))?;
        Ok(DirLock {
            key,
            dir: dir.to_path_buf(),
            _file: file,
        })
    }

    /// The configuration key naming the locked directory.
    pub fn key(&self) -> &'static str {
        self.key
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The pid in a lock file someone else holds. A holder that has only just taken the lock may
/// not have written it yet, so an empty file is read again for a moment.
fn holder_pid(file: &mut File) -> Option<u32> {
    let deadline = Instant::now() + PID_WAIT;
    loop {
        let mut text = String::new();
        let read = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_string(&mut text));
        if read.is_ok() {
            if let Ok(pid) = text.trim().parse() {
                return Some(pid);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_directory_is_refused_with_the_holders_pid_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("not/yet/there");
        let first = DirLock::acquire("upload.spill_dir", &dir).unwrap();
        assert_eq!(first.key(), "upload.spill_dir");
        assert_eq!(first.dir(), dir);
        let text = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        // flock locks belong to the open file, so a second open in this process conflicts
        // just as another process would.
        let err = DirLock::acquire("upload.spill_dir", &dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "upload.spill_dir {} is in use by another corepost process (pid {})",
                dir.display(),
                std::process::id()
            )
        );
        drop(first);
        let again = DirLock::acquire("upload.spill_dir", &dir).unwrap();
        drop(again);
    }

    #[test]
    fn a_directory_that_cannot_be_created_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let err = DirLock::acquire("sink.fs.root", &file.join("sub"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("sink.fs.root "), "{err}");
        assert!(
            err.contains("a-file/sub: cannot create the directory"),
            "{err}"
        );
    }
}
