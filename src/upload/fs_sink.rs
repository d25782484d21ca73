//! The fs sink: objects as files under a directory, written atomically (a dot-file, then a
//! rename); also the spill directory's writer.

use super::error::Cause;
use super::UploadError;
use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The local-directory sink; also the spill directory's writer.
#[derive(Debug)]
pub struct FsSink {
    root: PathBuf,
    /// Directories already created, so a steady stream of objects costs no `mkdir` calls.
    made: RefCell<HashSet<PathBuf>>,
    /// fsync each file before renaming it into place (the spill directory needs this; the fs
    /// sink with `ack = "queued"` does not).
    durable: bool,
    /// Appended to every file name: the spill directory's files end in [`SPILL_SUFFIX`], so
    /// its replay takes only what corepost wrote there.
    suffix: &'static str,
}

/// Ending of every file corepost writes to the spill directory (`{key}.spill`).
pub const SPILL_SUFFIX: &str = ".spill";

/// Directories an [`FsSink`] remembers having made, at most.
const MADE_DIRS: usize = 4096;

impl FsSink {
    /// Files under `root`; `durable` fsyncs each file before it is renamed into place.
    pub fn new(root: impl Into<PathBuf>, durable: bool) -> Self {
        Self {
            root: root.into(),
            made: RefCell::new(HashSet::new()),
            durable,
            suffix: "",
        }
    }

    /// The spill directory's writer: files named `{key}.spill`, synced together at the end
    /// of a drain (see the worker).
    pub fn spill(root: impl Into<PathBuf>) -> Self {
        Self {
            suffix: SPILL_SUFFIX,
            ..Self::new(root, false)
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes one file atomically (temporary dot-file, then rename).
    pub fn put(&self, key: &str, data: &[u8]) -> Result<(), UploadError> {
        let path = if self.suffix.is_empty() {
            self.root.join(key)
        } else {
            self.root.join(format!("{key}{}", self.suffix))
        };
        let io = |what: &str, p: &Path, e: std::io::Error| {
            let permission = e.kind() == std::io::ErrorKind::PermissionDenied;
            let cause = Cause::of(format!("{what} {}: {e}", p.display()), e);
            if permission {
                UploadError::Permanent(cause)
            } else {
                UploadError::Transient(cause)
            }
        };
        let dir = path.parent().unwrap_or(&self.root);
        if !self.made.borrow().contains(dir) {
            std::fs::create_dir_all(dir).map_err(|e| io("mkdir", dir, e))?;
            let mut made = self.made.borrow_mut();
            // Partitioned keys (`keys.template`) make new directories for as long as the
            // process runs: remembering them all would grow without bound. Forgetting costs
            // one `mkdir` that finds the directory there.
            if made.len() >= MADE_DIRS {
                made.clear();
            }
            made.insert(dir.to_path_buf());
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A dot-file in the same directory: the rename is atomic, and listings that skip dot
        // files never see a partial object.
        let tmp = dir.join(format!(".{name}.tmp"));
        if self.durable {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
            f.write_all(data).map_err(|e| io("write", &tmp, e))?;
            f.sync_all().map_err(|e| io("fsync", &tmp, e))?;
        } else {
            std::fs::write(&tmp, data).map_err(|e| io("write", &tmp, e))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| io("rename", &path, e))?;
        if self.durable {
            if let Ok(d) = std::fs::File::open(dir) {
                d.sync_all().map_err(|e| io("fsync", dir, e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_sink_writes_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FsSink::new(dir.path(), true);
        sink.put("p/2026/01/02/03/a-0-1-2.json", b"{\"a\":1}")
            .unwrap();
        let got = std::fs::read(dir.path().join("p/2026/01/02/03/a-0-1-2.json")).unwrap();
        assert_eq!(got, b"{\"a\":1}");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("p/2026/01/02/03"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left behind: {names:?}");
    }

    #[test]
    fn the_fs_sinks_memory_of_directories_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FsSink::new(dir.path(), false);
        let n = MADE_DIRS + 10;
        for i in 0..n {
            sink.put(&format!("p/e={i}/a-0-1-{i}.ndjson"), b"{}\n")
                .unwrap();
            assert!(sink.made.borrow().len() <= MADE_DIRS);
        }
        // After forgetting, a directory made before is written into again.
        sink.put("p/e=0/a-0-1-again.ndjson", b"{}\n").unwrap();
        let files = std::fs::read_dir(dir.path().join("p")).unwrap().count();
        assert_eq!(files, n);
        assert!(dir.path().join("p/e=0/a-0-1-again.ndjson").exists());
    }
}
