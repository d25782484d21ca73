//! The disk under `spool.dir`: its mount (`/proc/self/mountinfo`), block device
//! (`/sys/dev/block/MAJ:MIN`), the whole disk for a partition, and that disk's I/O scheduler.

use super::root::{selected, Root};
use super::TuneError;
use std::path::{Component, Path, PathBuf};

/// Where the spool directory lives and how its disk is scheduled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolDisk {
    /// The spool directory as configured.
    pub dir: String,
    /// The path looked up (absolute; on the live machine the nearest existing ancestor,
    /// symlinks resolved).
    pub looked_up: String,
    /// Mount point, file system type, source and `major:minor` from `mountinfo`.
    pub mount: Option<(String, String, String, String)>,
    /// Block device of the mount (`vda1`), when it is one.
    pub device: Option<String>,
    /// The whole disk (`vda` for `vda1`), whose queue has the scheduler.
    pub disk: Option<String>,
    /// Scheduler in use and the ones available.
    pub scheduler: Option<(String, Vec<String>)>,
    /// Whether the disk is rotational.
    pub rotational: Option<bool>,
}

/// One line of `mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `major:minor` of the mounted device.
    pub dev: String,
    /// Where it is mounted.
    pub mount_point: String,
    /// File system type.
    pub fs_type: String,
    /// Mount source (`/dev/vda1`, `overlay`, `tmpfs`).
    pub source: String,
}

/// A line of `/proc/self/mountinfo` that is not a mount (the line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a mountinfo line")]
pub struct MountinfoError(pub String);

/// Parses `/proc/self/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Result<Vec<Mount>, MountinfoError> {
    let mut mounts = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let sep = f.iter().position(|w| *w == "-");
        let (Some(sep), true) = (sep, f.len() >= 5) else {
            return Err(MountinfoError(line.to_string()));
        };
        if sep < 6 || f.len() < sep + 3 || !f[2].contains(':') {
            return Err(MountinfoError(line.to_string()));
        }
        mounts.push(Mount {
            dev: f[2].to_string(),
            mount_point: unescape(f[4]),
            fs_type: f[sep + 1].to_string(),
            source: unescape(f[sep + 2]),
        });
    }
    Ok(mounts)
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount holding `path` (absolute, normalized): the longest mount point that contains it,
/// the last one mounted when several share it.
pub fn mount_of<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    let mut best: Option<&Mount> = None;
    for m in mounts {
        if path.starts_with(&m.mount_point)
            && best.is_none_or(|b| m.mount_point.len() >= b.mount_point.len())
        {
            best = Some(m);
        }
    }
    best
}

/// `path` made absolute (against the working directory) with `.` and `..` removed.
fn normalize(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| Path::new("/").join(path));
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// On the live machine: the nearest existing ancestor of `path`, symlinks resolved, so the
/// mount found is the one the spool will really be created on.
fn existing_ancestor(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    loop {
        if let Ok(real) = p.canonicalize() {
            // The part not created yet lies on the same mount as its existing parent.
            let rest = path.strip_prefix(&p).unwrap_or(Path::new(""));
            return real.join(rest);
        }
        if !p.pop() {
            return path.to_path_buf();
        }
    }
}

/// Finds the disk under `spool_dir` and its scheduler. Missing pieces are left `None` (a
/// container's overlay root has no block device); malformed files are errors.
pub fn read(root: &Root, spool_dir: &str) -> Result<SpoolDisk, TuneError> {
    let mut path = normalize(Path::new(spool_dir));
    if root.is_live() {
        path = existing_ancestor(&path);
    }
    let mut disk = SpoolDisk {
        dir: spool_dir.to_string(),
        looked_up: path.display().to_string(),
        ..SpoolDisk::default()
    };
    let mi = "/proc/self/mountinfo";
    let Some(text) = root.read_opt(mi)? else {
        return Ok(disk);
    };
    let mounts = parse_mountinfo(&text).map_err(|source| TuneError::Mountinfo {
        path: root.path(mi),
        source,
    })?;
    let Some(m) = mount_of(&mounts, &path) else {
        return Ok(disk);
    };
    disk.mount = Some((
        m.mount_point.clone(),
        m.fs_type.clone(),
        m.source.clone(),
        m.dev.clone(),
    ));
    let dev_dir = format!("/sys/dev/block/{}", m.dev);
    let uevent_path = format!("{dev_dir}/uevent");
    let Some(uevent) = root.read_opt(&uevent_path)? else {
        // Not a block device (overlay, tmpfs, btrfs subvolume, NFS).
        return Ok(disk);
    };
    let field = |k: &str| {
        uevent
            .lines()
            .find_map(|l| l.strip_prefix(k).map(str::to_string))
    };
    let Some(devname) = field("DEVNAME=") else {
        return Err(root.bad(&uevent_path, "has no DEVNAME="));
    };
    let partition = field("DEVTYPE=").as_deref() == Some("partition")
        || root.exists(&format!("{dev_dir}/partition"));
    let whole = if partition {
        // /sys/block/DISK/PART exists for each partition of DISK.
        root.list("/sys/block")?
            .into_iter()
            .find(|d| root.exists(&format!("/sys/block/{d}/{devname}")))
    } else {
        Some(devname.clone())
    };
    disk.device = Some(devname);
    let Some(whole) = whole else {
        return Ok(disk);
    };
    let sched_path = format!("/sys/block/{whole}/queue/scheduler");
    if let Some(t) = root.read_opt(&sched_path)? {
        let all: Vec<String> = t
            .split_whitespace()
            .map(|s| s.trim_matches(|c| c == '[' || c == ']').to_string())
            .collect();
        let cur = selected(&t)
            // A device without a scheduler choice shows just `none`.
            .or_else(|| (all.len() == 1).then(|| all[0].clone()))
            .ok_or_else(|| {
                root.bad(
                    &sched_path,
                    format!("{:?} marks no scheduler with [ ]", t.trim()),
                )
            })?;
        disk.scheduler = Some((cur, all));
    }
    let rot_path = format!("/sys/block/{whole}/queue/rotational");
    if let Some(t) = root.read_opt(&rot_path)? {
        disk.rotational = Some(match t.trim() {
            "0" => false,
            "1" => true,
            other => return Err(root.bad(&rot_path, format!("{other:?} is neither 0 nor 1"))),
        });
    }
    disk.disk = Some(whole);
    Ok(disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_mount_point_holds_the_path() {
        let text = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                    40 27 259:1 / /var/lib rw,relatime shared:1 - xfs /dev/nvme0n1p1 rw\n\
                    41 27 0:50 / /var/lib\\040x rw - tmpfs tmpfs rw\n";
        let mounts = parse_mountinfo(text).unwrap();
        assert_eq!(mounts[2].mount_point, "/var/lib x");
        let m = mount_of(&mounts, Path::new("/var/lib/corepost/spool")).unwrap();
        assert_eq!((m.dev.as_str(), m.fs_type.as_str()), ("259:1", "xfs"));
        assert_eq!(
            mount_of(&mounts, Path::new("/var/libx")).unwrap().dev,
            "254:0"
        );
        assert_eq!(
            mount_of(&mounts, Path::new("/var/lib x/a")).unwrap().dev,
            "0:50"
        );
        assert!(parse_mountinfo("1 2 3\n").is_err());
    }

    #[test]
    fn relative_dirs_are_normalized() {
        let p = normalize(Path::new("/a/./b/../c"));
        assert_eq!(p, Path::new("/a/c"));
    }
}
