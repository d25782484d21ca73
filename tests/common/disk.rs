//! Files under a directory, and small file systems on loop devices (a full disk, a power
//! cut).

use std::path::{Path, PathBuf};
use std::process::Command;

/// All files under `dir`, recursively, except dot-files: the data directories' lock file
/// (`.corepost.lock`) and files still being written are not data.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if !p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A small ext4 file system on a loop device, mounted in a temp dir (tests run as root);
/// unmounted and deleted on drop.
pub struct LoopFs {
    pub image: PathBuf,
    pub mount: PathBuf,
    _dir: tempfile::TempDir,
}

fn run_ok(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl LoopFs {
    /// A fresh file system of `mib` MiB, mounted with `opts` (`mount -o`).
    pub fn new(mib: u64, opts: &str) -> LoopFs {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let image = dir.path().join("fs.img");
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(mib << 20).unwrap();
        drop(f);
        run_ok("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        LoopFs::mount(dir, image, opts)
    }

    fn mount(dir: tempfile::TempDir, image: PathBuf, opts: &str) -> LoopFs {
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let o = format!("loop,{opts}");
        run_ok(
            "mount",
            &["-o", &o, image.to_str().unwrap(), mount.to_str().unwrap()],
        );
        LoopFs {
            image,
            mount,
            _dir: dir,
        }
    }

    /// What a power cut now would leave: a copy of the device's blocks as written so far
    /// (data only in the page cache is not there), mounted (its journal replayed).
    pub fn power_cut_copy(&self) -> LoopFs {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let image = dir.path().join("copy.img");
        std::fs::copy(&self.image, &image).unwrap();
        LoopFs::mount(dir, image, "rw")
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}
