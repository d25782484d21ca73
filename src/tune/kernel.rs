//! What the running kernel's version means for io_uring.

/// The oldest kernel glommio runs on (it needs `IORING_OP_*` networking operations).
pub const GLOMMIO_MIN: (u32, u32) = (5, 8);

/// Kernels before this count io_uring rings (not only registered buffers) against
/// `RLIMIT_MEMLOCK`; from 5.12 ring memory is charged to the memory cgroup instead.
pub const RINGS_UNLOCKED_FROM: (u32, u32) = (5, 12);

/// io_uring setup flags and features, with the kernel that introduced each and what it does.
pub const URING_FEATURES: &[(&str, (u32, u32), &str)] = &[
    (
        "IORING_FEAT_FAST_POLL",
        (5, 7),
        "network reads and writes are retried by poll inside the kernel, no worker threads",
    ),
    (
        "IORING_SETUP_SQPOLL without privileges",
        (5, 11),
        "a kernel thread drains the submission queue",
    ),
    (
        "IORING_SETUP_SUBMIT_ALL",
        (5, 18),
        "a failed submission does not stop the rest of a batch",
    ),
    (
        "IORING_SETUP_COOP_TASKRUN",
        (5, 19),
        "completions run at the next syscall instead of by interrupting the thread",
    ),
    (
        "IORING_SETUP_SINGLE_ISSUER",
        (6, 0),
        "one thread submits, so the kernel skips locking (a shard's ring fits this)",
    ),
    (
        "IORING_SETUP_DEFER_TASKRUN",
        (6, 1),
        "completion work runs only when the shard asks for completions",
    ),
    (
        "IORING_SETUP_NO_SQARRAY",
        (6, 6),
        "one indirection less per submission",
    ),
];

/// The features of [`URING_FEATURES`] that kernel `v` has, and those it lacks.
pub fn uring_features(v: (u32, u32)) -> (Vec<&'static str>, Vec<&'static str>) {
    let (mut has, mut lacks) = (Vec::new(), Vec::new());
    for (name, since, _) in URING_FEATURES {
        if v >= *since {
            has.push(*name);
        } else {
            lacks.push(*name);
        }
    }
    (has, lacks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_follow_the_version() {
        let (has, lacks) = uring_features((5, 19));
        assert!(has.contains(&"IORING_SETUP_COOP_TASKRUN"));
        assert!(lacks.contains(&"IORING_SETUP_SINGLE_ISSUER"));
        assert!(lacks.contains(&"IORING_SETUP_DEFER_TASKRUN"));
        let (has, lacks) = uring_features((6, 1));
        assert!(has.contains(&"IORING_SETUP_DEFER_TASKRUN"));
        assert!(lacks.contains(&"IORING_SETUP_NO_SQARRAY"));
        assert_eq!(uring_features((4, 19)).0.len(), 0);
        assert!((6, 0) >= RINGS_UNLOCKED_FROM && (5, 10) < RINGS_UNLOCKED_FROM);
    }
}
