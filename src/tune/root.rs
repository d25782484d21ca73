//! Where `corepost tune` reads the machine's files from (`/`, or a recorded tree for
//! `--sysfs-root`), and the sysfs selection format that both the machine's reader
//! ([`super::machine`]) and the spool disk's ([`super::disk`]) parse.

use super::cpulist;
use super::TuneError;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Where the machine's files are read from: `/`, or a recorded tree.
#[derive(Debug, Clone)]
pub struct Root {
    base: PathBuf,
}

impl Root {
    /// Files are read under `base` (`/` for the running machine).
    pub fn new(base: impl Into<PathBuf>) -> Root {
        Root { base: base.into() }
    }

    /// Whether this is the running machine (`/`) rather than a recorded tree.
    pub fn is_live(&self) -> bool {
        self.base == Path::new("/")
    }

    /// The path of the machine's `path` (absolute, e.g. `/proc/self/limits`) under the root.
    pub fn path(&self, path: &str) -> PathBuf {
        self.base.join(path.trim_start_matches('/'))
    }

    /// The root, for messages.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The contents of `path`, or `None` if it does not exist. Any other failure to read it
    /// is an error naming the file.
    pub fn read_opt(&self, path: &str) -> Result<Option<String>, TuneError> {
        let full = self.path(path);
        match std::fs::read_to_string(&full) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TuneError::Read { path: full, source }),
        }
    }

    /// The contents of `path`, which must exist.
    pub fn read(&self, path: &str) -> Result<String, TuneError> {
        self.read_opt(path)?.ok_or_else(|| TuneError::Missing {
            path: self.path(path),
        })
    }

    /// Names of the entries of directory `path` (empty if it does not exist), sorted.
    pub fn list(&self, path: &str) -> Result<Vec<String>, TuneError> {
        let full = self.path(path);
        let rd = match std::fs::read_dir(&full) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(TuneError::List { path: full, source }),
        };
        let mut names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Whether `path` exists under the root.
    pub fn exists(&self, path: &str) -> bool {
        self.path(path).exists()
    }

    /// An error about the contents of `path`: `what` is wrong with them, in words.
    pub fn bad(&self, path: &str, what: impl std::fmt::Display) -> TuneError {
        TuneError::Contents {
            path: self.path(path),
            what: what.to_string(),
        }
    }

    /// Parses `path`'s contents as a CPU list.
    pub(super) fn cpu_list(&self, path: &str, text: &str) -> Result<Vec<usize>, TuneError> {
        cpulist::parse(text).map_err(|source| TuneError::CpuList {
            path: self.path(path),
            source,
        })
    }

    /// Parses `path`'s contents (trimmed) as a number.
    pub(super) fn number<T: std::str::FromStr>(
        &self,
        path: &str,
        text: &str,
    ) -> Result<T, TuneError> {
        text.trim()
            .parse()
            .map_err(|_| self.bad(path, format!("{:?} is not a number", text.trim())))
    }
}

/// The bracketed choice of a sysfs selection file (`always [madvise] never` → `madvise`).
pub fn selected(text: &str) -> Option<String> {
    let start = text.find('[')?;
    let end = start + text[start..].find(']')?;
    Some(text[start + 1..end].to_string())
}
