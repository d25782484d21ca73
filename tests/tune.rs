//! `corepost tune` through the real binary: on the machines recorded under `tests/machines/`
//! (read with `--sysfs-root`) and on this machine. Every profile it writes must pass
//! `corepost check-config`; the placement decisions are checked in the profile, the system
//! changes in the script.

mod common;

use common::*;
use corepost::config::Config;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn corepost(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corepost"))
        .args(args)
        .output()
        .expect("run corepost")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn machine(name: &str) -> PathBuf {
    repo().join("tests/machines").join(name)
}

/// What `corepost tune` wrote for one machine.
struct Tuned {
    profile: String,
    script: String,
    stderr: String,
    config: Config,
    _dir: tempfile::TempDir,
}

/// Runs `corepost tune --sysfs-root ROOT --out F --script S ARGS`, then `corepost
/// check-config --profile F --sysfs-root ROOT`, both of which must succeed.
fn tune(root: &Path, args: &[&str]) -> Tuned {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("profile.toml");
    let script = dir.path().join("tune.sh");
    let root_s = root.to_str().unwrap();
    let mut all = vec![
        "tune",
        "--sysfs-root",
        root_s,
        "--out",
        out.to_str().unwrap(),
        "--script",
        script.to_str().unwrap(),
    ];
    all.extend(args);
    let o = corepost(&all);
    assert!(
        o.status.success(),
        "corepost tune failed: {}",
        text(&o.stderr)
    );
    let check = corepost(&[
        "check-config",
        "--profile",
        out.to_str().unwrap(),
        "--sysfs-root",
        root_s,
    ]);
    assert!(
        check.status.success(),
        "check-config refused the profile: {}",
        text(&check.stderr)
    );
    let profile = std::fs::read_to_string(&out).unwrap();
    assert!(
        profile.starts_with("# corepost tuning profile"),
        "the profile starts with its comment block"
    );
    Tuned {
        config: toml::from_str(&profile).unwrap(),
        script: std::fs::read_to_string(&script).unwrap(),
        stderr: text(&o.stderr),
        profile,
        _dir: dir,
    }
}

/// IRQ number → CPU from the script's `echo CPU > /proc/irq/N/smp_affinity_list` lines.
fn irq_affinity(script: &str) -> BTreeMap<u32, usize> {
    script
        .lines()
        .filter(|l| l.contains("/smp_affinity_list"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let irq = f[3]
                .trim_start_matches("/proc/irq/")
                .trim_end_matches("/smp_affinity_list");
            (irq.parse().unwrap(), f[1].parse().unwrap())
        })
        .collect()
}

/// Every file under `dir` with its contents.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn copy_tree(from: &Path, to: &Path) {
    for (p, bytes) in snapshot(from) {
        let dest = to.join(p.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(dest, bytes).unwrap();
    }
}

#[test]
fn metal_32_sets_irq_cores_apart_on_both_numa_nodes() {
    let root = machine("metal-32");
    let before = snapshot(&root);
    let t = tune(&root, &["--spool-dir", "/var/lib/corepost/spool"]);
    let shards = t.config.shards.cpus.clone().unwrap();
    // 32 cores × 2 threads, two nodes: one whole core per 16 cores, one on each node
    // (node 0: CPUs 0 and 32, node 1: CPUs 16 and 48), the 60 other CPUs run shards.
    let irq_cpus = BTreeSet::from([0, 16, 32, 48]);
    assert_eq!(shards.len(), 60, "{}", t.profile);
    for c in &irq_cpus {
        assert!(!shards.contains(c), "IRQ CPU {c} runs a shard: {shards:?}");
    }
    assert!(
        t.config.shards.worker_cpus.is_none(),
        "workers on their shard's CPU"
    );
    // Every NIC IRQ (eth0-TxRx-0..7 and eth0's own, 98..=106) goes to an IRQ CPU, and the
    // IRQ CPUs of both nodes take some; other devices' IRQs (nvme, timer) stay where they are.
    let moves = irq_affinity(&t.script);
    assert_eq!(
        moves.keys().copied().collect::<Vec<_>>(),
        (98..=106).collect::<Vec<_>>(),
        "{}",
        t.script
    );
    let used: BTreeSet<usize> = moves.values().copied().collect();
    assert_eq!(used, irq_cpus, "IRQs spread over all IRQ CPUs");
    assert!(
        used.iter().any(|c| [0, 32].contains(c)) && used.iter().any(|c| [16, 48].contains(c)),
        "IRQ CPUs on both nodes: {used:?}"
    );
    assert!(t.script.contains("systemctl disable --now irqbalance"));
    // RPS steers to the shard CPUs only: bits 0, 16, 32, 48 clear.
    assert!(t
        .script
        .contains("echo fffefffe,fffefffe > /sys/class/net/eth0/queues/rx-0/rps_cpus"));
    assert!(t
        .script
        .contains("/sys/class/net/eth0/queues/tx-7/xps_cpus"));
    assert!(
        !t.script.contains("eth1/queues"),
        "eth1 has no IRQs: left alone"
    );
    // What else it read: an hpet clock, THP always, a 5.10 kernel, the NVMe under the spool.
    assert!(t
        .script
        .contains("echo tsc > /sys/devices/system/clocksource"));
    assert!(t
        .script
        .contains("echo madvise > /sys/kernel/mm/transparent_hugepage"));
    assert!(t
        .profile
        .contains("lacks: IORING_SETUP_SQPOLL without privileges"));
    assert!(t.profile.contains("partition nvme0n1p1 of disk nvme0n1"));
    assert!(
        !t.script.contains("/queue/scheduler"),
        "none is right for NVMe"
    );
    // 524288 descriptors over 60 shards; 8 MiB of locked memory cannot hold the io memory.
    assert_eq!(t.config.shards.max_connections, 8641);
    assert_eq!(t.config.glommio.io_memory_kib, 64);
    assert!(t.stderr.contains("RLIMIT_MEMLOCK"), "{}", t.stderr);
    // Planned for the unit's limits instead, the io memory fits and connections grow.
    let u = tune(&root, &["--nofile", "1048576", "--memlock", "unlimited"]);
    assert_eq!(u.config.glommio.io_memory_kib, 16384);
    assert!(u.config.shards.max_connections > 8641);
    assert!(!u.stderr.contains("warning"), "{}", u.stderr);
    // Reading the recorded tree changed nothing in it.
    assert!(
        snapshot(&root) == before,
        "corepost tune wrote into the recorded tree"
    );
    // On this machine (fewer CPUs), the same profile is refused, naming the CPU.
    if !Path::new("/sys/devices/system/cpu/cpu63").exists() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(&f, &t.profile).unwrap();
        let o = corepost(&["check-config", "--profile", f.to_str().unwrap()]);
        assert!(!o.status.success());
        assert!(
            text(&o.stderr).contains("shards.cpus: CPU"),
            "{}",
            text(&o.stderr)
        );
    }
}

#[test]
fn metal_32_puts_workers_on_the_sibling_threads_when_asked() {
    let t = tune(&machine("metal-32"), &["--workers", "sibling"]);
    let shards = t.config.shards.cpus.unwrap();
    let workers = t.config.shards.worker_cpus.unwrap();
    // One shard per compute core on its first thread, the worker on the second (k + 32).
    assert_eq!(shards.len(), 30);
    for (s, w) in shards.iter().zip(&workers) {
        assert_eq!(*w, s + 32, "{shards:?} {workers:?}");
    }
    assert!(!shards.contains(&0) && !shards.contains(&16));
}

#[test]
fn vm_uses_every_cpu_and_moves_no_irq() {
    let t = tune(
        &machine("vm-2vcpu"),
        &["--spool-dir", "/var/lib/corepost/spool"],
    );
    assert_eq!(t.config.shards.cpus, Some(vec![0, 1]));
    assert!(t.profile.contains("no NIC IRQs found"), "{}", t.profile);
    // virtio's IRQs name no interface: nothing is pinned, irqbalance stays.
    assert!(irq_affinity(&t.script).is_empty(), "{}", t.script);
    assert!(!t.script.contains("irqbalance.service"));
    assert!(!t.script.contains("rps_cpus"));
    // 524288 descriptors are plenty for two shards of 10,000.
    assert_eq!(t.config.shards.max_connections, 10_000);
    // The spool is on partition vda1; the scheduler is the whole disk's.
    assert!(
        t.profile.contains("partition vda1 of disk vda"),
        "{}",
        t.profile
    );
    assert!(t
        .script
        .contains("echo none > /sys/block/vda/queue/scheduler"));
    assert!(t.script.contains("net.ipv4.tcp_max_syn_backlog = 8192"));
}

#[test]
fn container_gets_only_its_cpuset_and_its_memory_limit() {
    let t = tune(&machine("container-cpuset"), &[]);
    // The affinity mask shows all 8 CPUs, the cgroup's cpuset only 2-3.
    assert_eq!(t.config.shards.cpus, Some(vec![2, 3]), "{}", t.profile);
    // The host's eno1-TxRx IRQs show in /proc/interrupts, but the container has no such NIC.
    assert!(irq_affinity(&t.script).is_empty(), "{}", t.script);
    // memory.max 512 MiB: a quarter over two shards.
    assert_eq!(t.config.queue.max_bytes, 64 << 20);
    // Docker's default 64 KiB memlock: glommio would refuse to start.
    assert!(
        t.stderr.contains("glommio refuses to start"),
        "{}",
        t.stderr
    );
    assert!(t.profile.contains("not a block device"));
}

#[test]
fn malformed_machine_files_are_errors_naming_the_file() {
    for (file, bad) in [
        ("sys/devices/system/cpu/cpu1/topology/core_id", "one\n"),
        ("sys/devices/system/cpu/online", "0-x\n"),
        ("proc/self/limits", "Max open files  lots  1024  files\n"),
        ("proc/interrupts", "no header here\n"),
        ("sys/fs/cgroup/cpuset.cpus.effective", "3-1\n"),
        ("proc/self/mountinfo", "what\n"),
        (
            "sys/kernel/mm/transparent_hugepage/enabled",
            "always madvise never\n",
        ),
        ("sys/block/vda/queue/rotational", "maybe\n"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&machine("vm-2vcpu"), dir.path());
        std::fs::write(dir.path().join(file), bad).unwrap();
        let o = corepost(&[
            "tune",
            "--sysfs-root",
            dir.path().to_str().unwrap(),
            "--spool-dir",
            "/var/lib/corepost/spool",
        ]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{file}: {err}");
        assert!(
            err.contains(file),
            "{file}: the error names the file: {err}"
        );
        assert!(!err.contains("panicked"), "{file}: {err}");
        assert!(o.stdout.is_empty(), "{file}: no profile written");
    }
}

#[test]
fn tune_on_this_machine_writes_a_profile_a_server_starts_with() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("profile.toml");
    let o = corepost(&["tune", "--out", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let check = corepost(&["check-config", "--profile", f.to_str().unwrap()]);
    assert!(check.status.success(), "{}", text(&check.stderr));
    let cfg: Config = toml::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
    let shards = cfg.shards.cpus.unwrap().len();
    let s = Server::start(
        &["--profile", f.to_str().unwrap(), "--sink", "discard"],
        &[],
    );
    assert!(
        s.ready_line.contains(&format!("({shards} shards")),
        "{}",
        s.ready_line
    );
    assert_eq!(post(s.addr, BODY10).status, 200);
    assert!(s.stop(30).success());
}
