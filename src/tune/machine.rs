//! Reading the machine: CPUs and their topology, the process's CPU restrictions, NICs and
//! their IRQs, limits, kernel, clock, THP, memory, a few sysctls. Every path is read under a
//! root (`/`, or a recorded tree for `--sysfs-root`). A file that is missing is noted as such;
//! a file whose contents make no sense is an error naming the file, never a panic.

use super::disk::SpoolDisk;
pub use super::nic::{irq_names_nic, parse_interrupts, Irq, Nic};
use super::root::{selected, Root};
use super::TuneError;
use std::collections::BTreeMap;

/// One online CPU and where it sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpu {
    /// CPU id.
    pub id: usize,
    /// Physical package (socket).
    pub package: usize,
    /// Core id within the package; `(package, core)` names a physical core.
    pub core: usize,
    /// NUMA node.
    pub node: usize,
    /// CPUs sharing this CPU's core (hyper-threads), itself included.
    pub siblings: Vec<usize>,
}

/// A resource limit pair; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Soft limit.
    pub soft: Option<u64>,
    /// Hard limit.
    pub hard: Option<u64>,
}

/// Everything `corepost tune` reads.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Online CPUs (`/sys/devices/system/cpu/online`).
    pub online: Vec<usize>,
    /// Topology of each online CPU, by id.
    pub cpus: Vec<Cpu>,
    /// Whether the topology files were present (otherwise each CPU is its own core).
    pub topology_known: bool,
    /// NUMA nodes and their CPUs (one node 0 with every CPU if the machine shows none).
    pub nodes: BTreeMap<usize, Vec<usize>>,
    /// The process's affinity mask (`Cpus_allowed_list`), if shown.
    pub affinity: Option<Vec<usize>>,
    /// The cgroup cpuset in force: the file it came from, and its CPUs.
    pub cpuset: Option<(String, Vec<usize>)>,
    /// Physical NICs (interfaces with a `device`).
    pub nics: Vec<Nic>,
    /// `RLIMIT_NOFILE`, if shown.
    pub nofile: Option<Limit>,
    /// `RLIMIT_MEMLOCK`, if shown.
    pub memlock: Option<Limit>,
    /// Kernel release string.
    pub kernel: Option<String>,
    /// `(major, minor)` of the kernel release.
    pub kernel_version: Option<(u32, u32)>,
    /// Current clocksource and the available ones.
    pub clocksource: Option<(String, Vec<String>)>,
    /// Transparent huge pages mode (`always`, `madvise`, `never`).
    pub thp: Option<String>,
    /// Memory: `MemTotal`, in bytes.
    pub mem_total: Option<u64>,
    /// The cgroup's memory limit (file, bytes), if one is set.
    pub cgroup_memory: Option<(String, u64)>,
    /// Selected sysctls (`/proc/sys/...` path → value), those present.
    pub sysctls: BTreeMap<&'static str, u64>,
    /// The disk under `spool.dir`.
    pub spool: SpoolDisk,
}

/// sysctls read (their values decide whether the script raises them).
pub const SYSCTLS: &[&str] = &[
    "/proc/sys/net/core/somaxconn",
    "/proc/sys/net/ipv4/tcp_max_syn_backlog",
    "/proc/sys/net/core/netdev_max_backlog",
    "/proc/sys/net/core/rps_sock_flow_entries",
    "/proc/sys/fs/nr_open",
];

/// Reads the machine under `root`; `spool_dir` is the configured `spool.dir`.
pub fn read(root: &Root, spool_dir: &str) -> Result<Machine, TuneError> {
    let online_path = "/sys/devices/system/cpu/online";
    let online = root.cpu_list(online_path, &root.read(online_path)?)?;
    if online.is_empty() {
        return Err(root.bad(online_path, "lists no CPU"));
    }
    let nodes = read_nodes(root, &online)?;
    let (cpus, topology_known) = read_topology(root, &online, &nodes)?;
    let (nofile, memlock) = read_limits(root)?;
    let kernel = root
        .read_opt("/proc/sys/kernel/osrelease")?
        .map(|t| t.trim().to_string());
    let kernel_version = match &kernel {
        Some(k) => Some(
            parse_kernel_version(k)
                .ok_or_else(|| root.bad("/proc/sys/kernel/osrelease", "no version number"))?,
        ),
        None => None,
    };
    let mut sysctls = BTreeMap::new();
    for &path in SYSCTLS {
        if let Some(t) = root.read_opt(path)? {
            sysctls.insert(path, root.number(path, &t)?);
        }
    }
    let (mem_total, cgroup_memory) = read_memory(root)?;
    Ok(Machine {
        affinity: read_affinity(root)?,
        cpuset: read_cpuset(root)?,
        nics: super::nic::read_nics(root)?,
        clocksource: read_clocksource(root)?,
        thp: read_thp(root)?,
        spool: super::disk::read(root, spool_dir)?,
        online,
        cpus,
        topology_known,
        nodes,
        nofile,
        memlock,
        kernel,
        kernel_version,
        mem_total,
        cgroup_memory,
        sysctls,
    })
}

/// The CPUs a process may run on as the machine under `root` shows them: online CPUs, within
/// the affinity mask and the cgroup cpuset (for `check-config --sysfs-root`).
pub fn allowed_cpus(root: &Root) -> Result<Vec<usize>, TuneError> {
    let online_path = "/sys/devices/system/cpu/online";
    let online = root.cpu_list(online_path, &root.read(online_path)?)?;
    Ok(allowed(
        &online,
        read_affinity(root)?.as_deref(),
        read_cpuset(root)?.as_ref().map(|(_, c)| c.as_slice()),
    ))
}

/// Online CPUs within the affinity mask and the cpuset (each when known).
pub fn allowed(
    online: &[usize],
    affinity: Option<&[usize]>,
    cpuset: Option<&[usize]>,
) -> Vec<usize> {
    online
        .iter()
        .copied()
        .filter(|c| affinity.is_none_or(|a| a.contains(c)))
        .filter(|c| cpuset.is_none_or(|s| s.contains(c)))
        .collect()
}

fn read_nodes(root: &Root, online: &[usize]) -> Result<BTreeMap<usize, Vec<usize>>, TuneError> {
    let mut nodes = BTreeMap::new();
    for name in root.list("/sys/devices/system/node")? {
        let Some(id) = name
            .strip_prefix("node")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let path = format!("/sys/devices/system/node/{name}/cpulist");
        if let Some(text) = root.read_opt(&path)? {
            let cpus: Vec<usize> = root
                .cpu_list(&path, &text)?
                .into_iter()
                .filter(|c| online.contains(c))
                .collect();
            if !cpus.is_empty() {
                nodes.insert(id, cpus);
            }
        }
    }
    if nodes.is_empty() {
        nodes.insert(0, online.to_vec());
    }
    Ok(nodes)
}

fn read_topology(
    root: &Root,
    online: &[usize],
    nodes: &BTreeMap<usize, Vec<usize>>,
) -> Result<(Vec<Cpu>, bool), TuneError> {
    let mut cpus = Vec::new();
    let mut known = true;
    for &id in online {
        let dir = format!("/sys/devices/system/cpu/cpu{id}/topology");
        let core_path = format!("{dir}/core_id");
        let pkg_path = format!("{dir}/physical_package_id");
        let sib_path = format!("{dir}/thread_siblings_list");
        let core = match root.read_opt(&core_path)? {
            Some(t) => root.number::<i64>(&core_path, &t)?,
            None => {
                known = false;
                id as i64
            }
        };
        let package = match root.read_opt(&pkg_path)? {
            // -1 when the firmware does not say.
            Some(t) => root.number::<i64>(&pkg_path, &t)?.max(0) as usize,
            None => 0,
        };
        let siblings = match root.read_opt(&sib_path)? {
            Some(t) => {
                let s = root.cpu_list(&sib_path, &t)?;
                if !s.contains(&id) {
                    return Err(root.bad(&sib_path, format!("does not list CPU {id} itself")));
                }
                s
            }
            None => vec![id],
        };
        let node = nodes
            .iter()
            .find(|(_, cs)| cs.contains(&id))
            .map(|(n, _)| *n)
            .unwrap_or(0);
        cpus.push(Cpu {
            id,
            package,
            core: core.max(0) as usize,
            node,
            siblings,
        });
    }
    Ok((cpus, known))
}

fn read_affinity(root: &Root) -> Result<Option<Vec<usize>>, TuneError> {
    let path = "/proc/self/status";
    let Some(text) = root.read_opt(path)? else {
        return Ok(None);
    };
    for line in text.lines() {
        if let Some(list) = line.strip_prefix("Cpus_allowed_list:") {
            return Ok(Some(root.cpu_list(path, list)?));
        }
    }
    Ok(None)
}

/// The cgroup cpuset in force: v2 (`cpuset.cpus.effective` in the process's cgroup, or at
/// the root of `/sys/fs/cgroup` as a container sees it), else v1 (`cpuset.effective_cpus`).
fn read_cpuset(root: &Root) -> Result<Option<(String, Vec<usize>)>, TuneError> {
    let (v2, v1) = cgroup_paths(root, "cpuset")?;
    let mut candidates = Vec::new();
    if let Some(p) = &v2 {
        candidates.push(format!(
            "/sys/fs/cgroup{}/cpuset.cpus.effective",
            trim_root(p)
        ));
    }
    candidates.push("/sys/fs/cgroup/cpuset.cpus.effective".to_string());
    if let Some(p) = &v1 {
        candidates.push(format!(
            "/sys/fs/cgroup/cpuset{}/cpuset.effective_cpus",
            trim_root(p)
        ));
    }
    candidates.push("/sys/fs/cgroup/cpuset/cpuset.effective_cpus".to_string());
    for path in candidates {
        if let Some(text) = root.read_opt(&path)? {
            let cpus = root.cpu_list(&path, &text)?;
            // An empty effective set means the controller is not enabled there.
            if !cpus.is_empty() {
                return Ok(Some((path, cpus)));
            }
        }
    }
    Ok(None)
}

/// `""` for the root cgroup `/`, else the path as is.
fn trim_root(p: &str) -> &str {
    if p == "/" {
        ""
    } else {
        p.trim_end_matches('/')
    }
}

/// The process's cgroup paths from `/proc/self/cgroup`: the v2 one (`0::PATH`) and the v1
/// one of `controller`.
fn cgroup_paths(
    root: &Root,
    controller: &str,
) -> Result<(Option<String>, Option<String>), TuneError> {
    let path = "/proc/self/cgroup";
    let Some(text) = root.read_opt(path)? else {
        return Ok((None, None));
    };
    let (mut v2, mut v1) = (None, None);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(cg)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(root.bad(path, format!("{line:?} is not `id:controllers:path`")));
        };
        if id == "0" && ctrls.is_empty() {
            v2 = Some(cg.to_string());
        } else if ctrls.split(',').any(|c| c == controller) {
            v1 = Some(cg.to_string());
        }
    }
    Ok((v2, v1))
}

/// `MemTotal`, and the cgroup's memory limit with the file it came from.
type Memory = (Option<u64>, Option<(String, u64)>);

fn read_memory(root: &Root) -> Result<Memory, TuneError> {
    let path = "/proc/meminfo";
    let mut total = None;
    if let Some(text) = root.read_opt(path)? {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("MemTotal:") {
                let kb = rest.trim().trim_end_matches("kB").trim();
                total = Some(root.number::<u64>(path, kb)? * 1024);
            }
        }
    }
    let (v2, v1) = cgroup_paths(root, "memory")?;
    let mut candidates = Vec::new();
    if let Some(p) = &v2 {
        candidates.push(format!("/sys/fs/cgroup{}/memory.max", trim_root(p)));
    }
    candidates.push("/sys/fs/cgroup/memory.max".to_string());
    if let Some(p) = &v1 {
        candidates.push(format!(
            "/sys/fs/cgroup/memory{}/memory.limit_in_bytes",
            trim_root(p)
        ));
    }
    for p in candidates {
        if let Some(text) = root.read_opt(&p)? {
            let t = text.trim();
            if t == "max" {
                break;
            }
            let n: u64 = root.number(&p, t)?;
            // cgroup v1 writes "no limit" as a number near 2^63.
            if n < 1 << 60 {
                return Ok((total, Some((p, n))));
            }
            break;
        }
    }
    Ok((total, None))
}

fn read_limits(root: &Root) -> Result<(Option<Limit>, Option<Limit>), TuneError> {
    let path = "/proc/self/limits";
    let Some(text) = root.read_opt(path)? else {
        return Ok((None, None));
    };
    let parse = |line: &str, rest: &str| -> Result<Limit, TuneError> {
        let mut f = rest.split_whitespace();
        let mut one = |what: &str| -> Result<Option<u64>, TuneError> {
            match f.next() {
                Some("unlimited") => Ok(None),
                Some(n) => n.parse().map(Some).map_err(|_| {
                    root.bad(
                        path,
                        format!("{line:?}: {what} limit {n:?} is not a number"),
                    )
                }),
                None => Err(root.bad(path, format!("{line:?}: no {what} limit"))),
            }
        };
        Ok(Limit {
            soft: one("soft")?,
            hard: one("hard")?,
        })
    };
    let (mut nofile, mut memlock) = (None, None);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Max open files") {
            nofile = Some(parse(line, rest)?);
        } else if let Some(rest) = line.strip_prefix("Max locked memory") {
            memlock = Some(parse(line, rest)?);
        }
    }
    Ok((nofile, memlock))
}

/// `(major, minor)` of a kernel release such as `6.1.0-18-amd64`.
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

fn read_clocksource(root: &Root) -> Result<Option<(String, Vec<String>)>, TuneError> {
    let dir = "/sys/devices/system/clocksource/clocksource0";
    let Some(cur) = root.read_opt(&format!("{dir}/current_clocksource"))? else {
        return Ok(None);
    };
    let avail = root
        .read_opt(&format!("{dir}/available_clocksource"))?
        .map(|t| t.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let cur = cur.trim();
    if cur.is_empty() || cur.contains(char::is_whitespace) {
        return Err(root.bad(
            &format!("{dir}/current_clocksource"),
            format!("{cur:?} is not a clocksource name"),
        ));
    }
    Ok(Some((cur.to_string(), avail)))
}

fn read_thp(root: &Root) -> Result<Option<String>, TuneError> {
    let path = "/sys/kernel/mm/transparent_hugepage/enabled";
    match root.read_opt(path)? {
        None => Ok(None),
        Some(t) => selected(&t)
            .map(Some)
            .ok_or_else(|| root.bad(path, format!("{:?} marks no mode with [ ]", t.trim()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupts_name_their_nic() {
        let text = "           CPU0       CPU1\n  0:         44          0   IO-APIC   2-edge      timer\n 38:          0       7325 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0\n100:        5   6  IR-PCI-MSI 524288-edge      eth0-TxRx-0\n101:        5   6  IR-PCI-MSI 524289-edge      i40e-eth0-TxRx-1\nNMI:          0          0   Non-maskable interrupts\nERR:          0\n";
        let irqs = parse_interrupts(text).unwrap();
        assert_eq!(irqs.len(), 4);
        assert_eq!(irqs[2].name, "eth0-TxRx-0");
        assert!(irq_names_nic("eth0-TxRx-0", "eth0"));
        assert!(irq_names_nic("i40e-eth0-TxRx-1", "eth0"));
        assert!(!irq_names_nic("eth01-TxRx-1", "eth0"));
        assert!(!irq_names_nic("virtio2-input.0", "eth0"));
        assert!(parse_interrupts("garbage\n").is_err());
        assert!(parse_interrupts("   CPU0 CPU1\n 5: 1\n").is_err());
    }

    #[test]
    fn kernel_versions_and_selections_parse() {
        assert_eq!(parse_kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(parse_kernel_version("5.19"), Some((5, 19)));
        assert_eq!(parse_kernel_version("linux"), None);
        assert_eq!(
            selected("always [madvise] never\n").as_deref(),
            Some("madvise")
        );
        assert_eq!(selected("none mq-deadline"), None);
    }

    #[test]
    fn allowed_is_online_within_mask_and_cpuset() {
        assert_eq!(
            allowed(&[0, 1, 2, 3], Some(&[0, 1, 2, 3]), Some(&[2, 3])),
            [2, 3]
        );
        assert_eq!(allowed(&[0, 1], None, None), [0, 1]);
        assert_eq!(allowed(&[0, 1, 2], Some(&[1, 2, 5]), None), [1, 2]);
    }
}
