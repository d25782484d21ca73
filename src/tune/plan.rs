//! Deciding: which CPUs take the NIC's interrupts and which the shards, where the upload
//! workers go, and the capacities that fit the machine's limits. Pure functions of what
//! `machine` read, so each rule is tested on its own.

use super::machine::{Cpu, Machine};
use super::sizing;
use super::steering;
use crate::config::Config;

pub use super::sizing::{
    fit_io_memory, queue_bytes, ring_bytes, ring_depth, wanted_connections, GLOMMIO_MIN_MEMLOCK,
    RINGS_PER_SHARD,
};
pub use super::steering::{IrqMove, QueueCpus, RPS_SOCK_FLOW_ENTRIES};
use std::collections::BTreeMap;

/// Where the upload workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkerPlacement {
    /// On the shard's own CPU (as the shipped profiles do): the queue hand-off stays in that
    /// CPU's cache.
    #[default]
    Same,
    /// On the hyper-thread sibling of the shard's CPU: the shard gets a whole core's front end
    /// and the worker its sibling; one shard per core.
    Sibling,
}

/// What the planner may be told beyond the machine.
#[derive(Debug, Clone)]
pub struct Options {
    /// Compute cores per IRQ core on big machines (perftune's `--cores-per-irq-core`).
    pub cores_per_irq_core: usize,
    /// Where the upload workers go.
    pub workers: WorkerPlacement,
    /// Plan for this `RLIMIT_NOFILE` instead of the one read (e.g. the unit's 1048576).
    pub nofile: Option<u64>,
    /// Plan for this `RLIMIT_MEMLOCK` (`Some(None)`: unlimited) instead of the one read.
    pub memlock: Option<Option<u64>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cores_per_irq_core: 16,
            workers: WorkerPlacement::Same,
            nofile: None,
            memlock: None,
        }
    }
}

/// One physical core: its allowed CPUs (ascending) and NUMA node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Core {
    /// Allowed CPUs of the core (hyper-threads), ascending.
    pub cpus: Vec<usize>,
    /// NUMA node.
    pub node: usize,
}

/// Groups the `allowed` CPUs by physical core, ordered by their lowest CPU.
pub fn cores(cpus: &[Cpu], allowed: &[usize]) -> Vec<Core> {
    let mut by_core: BTreeMap<(usize, usize), Core> = BTreeMap::new();
    for c in cpus.iter().filter(|c| allowed.contains(&c.id)) {
        by_core
            .entry((c.package, c.core))
            .or_insert_with(|| Core {
                cpus: Vec::new(),
                node: c.node,
            })
            .cpus
            .push(c.id);
    }
    let mut out: Vec<Core> = by_core.into_values().collect();
    for c in &mut out {
        c.cpus.sort_unstable();
    }
    out.sort_by_key(|c| c.cpus[0]);
    out
}

/// The CPUs set apart for NIC interrupts, and why (after Seastar perftune's
/// `auto_detect_irq_mask`):
/// - up to 4 CPUs: none set apart, IRQs and shards share all of them (too few to spare one);
/// - up to 4 cores: one CPU (its hyper-thread sibling still runs a shard);
/// - up to `per_irq_core` cores: one whole core;
/// - more: one whole core per `per_irq_core` cores, taken in turn from each NUMA node
///   (`first_node`, the NIC's, first), so every node handles its share of the interrupts.
///
/// Returns `(irq_cpus, shared, rule)`: `shared` means the IRQ CPUs also run shards.
pub fn irq_cpus(
    cores: &[Core],
    per_irq_core: usize,
    first_node: Option<usize>,
) -> (Vec<usize>, bool, String) {
    let pus: usize = cores.iter().map(|c| c.cpus.len()).sum();
    let mut all: Vec<usize> = cores.iter().flat_map(|c| c.cpus.clone()).collect();
    all.sort_unstable();
    // Nodes in the order IRQ cores are taken from, each with its cores in order.
    let mut nodes: BTreeMap<usize, Vec<&Core>> = BTreeMap::new();
    for c in cores {
        nodes.entry(c.node).or_default().push(c);
    }
    let mut order: Vec<usize> = nodes.keys().copied().collect();
    if let Some(first) = first_node.filter(|n| nodes.contains_key(n)) {
        order.retain(|n| *n != first);
        order.insert(0, first);
    }
    let first_core = || nodes[&order[0]][0];
    if pus <= 4 {
        return (
            all,
            true,
            format!("{pus} CPUs (4 or fewer): none set apart; the IRQs are spread over all of them and the shards use all of them"),
        );
    }
    if cores.len() <= 4 {
        let cpu = first_core().cpus[0];
        return (
            vec![cpu],
            false,
            format!(
                "{} cores (4 or fewer): one CPU thread, {cpu}, takes the IRQs",
                cores.len()
            ),
        );
    }
    let per = per_irq_core.max(2);
    if cores.len() <= per {
        let c = first_core();
        return (
            c.cpus.clone(),
            false,
            format!(
                "{} cores ({per} or fewer): one whole core (CPUs {}) takes the IRQs",
                cores.len(),
                super::cpulist::format(&c.cpus)
            ),
        );
    }
    let want = (cores.len() / per).max(1);
    let mut taken: Vec<usize> = Vec::new();
    let mut next: BTreeMap<usize, usize> = BTreeMap::new();
    let mut picked = 0;
    'outer: while picked < want {
        let mut any = false;
        for n in &order {
            let i = next.entry(*n).or_insert(0);
            if let Some(c) = nodes[n].get(*i) {
                *i += 1;
                taken.extend(&c.cpus);
                picked += 1;
                any = true;
                if picked == want {
                    break 'outer;
                }
            }
        }
        if !any {
            break;
        }
    }
    taken.sort_unstable();
    let rule = format!(
        "{} cores: one whole core per {per} cores, {want} in all, taken in turn from each NUMA node: CPUs {}",
        cores.len(),
        super::cpulist::format(&taken)
    );
    (taken, false, rule)
}

/// Shard and worker CPUs on the compute cores (`cores` less the IRQ CPUs).
pub fn place(
    cores: &[Core],
    irq: &[usize],
    shared: bool,
    workers: WorkerPlacement,
) -> (Vec<usize>, Vec<usize>, String) {
    let compute: Vec<Vec<usize>> = cores
        .iter()
        .map(|c| {
            c.cpus
                .iter()
                .copied()
                .filter(|x| shared || !irq.contains(x))
                .collect::<Vec<_>>()
        })
        .filter(|c| !c.is_empty())
        .collect();
    let same = || {
        let mut cpus: Vec<usize> = compute.iter().flatten().copied().collect();
        cpus.sort_unstable();
        (cpus.clone(), cpus)
    };
    match workers {
        WorkerPlacement::Same => {
            let (s, w) = same();
            (
                s,
                w,
                "each upload worker on its shard's CPU: the queue hand-off stays in that CPU's cache (the shipped profiles do the same)".into(),
            )
        }
        WorkerPlacement::Sibling => {
            if compute.iter().all(|c| c.len() < 2) {
                let (s, w) = same();
                return (
                    s,
                    w,
                    "--workers sibling asked for, but no compute core has two threads: each upload worker on its shard's CPU".into(),
                );
            }
            let mut pairs: Vec<(usize, usize)> = compute
                .iter()
                .map(|c| (c[0], *c.get(1).unwrap_or(&c[0])))
                .collect();
            pairs.sort_unstable();
            (
                pairs.iter().map(|p| p.0).collect(),
                pairs.iter().map(|p| p.1).collect(),
                "one shard per core on its first thread, its upload worker on the core's second thread (--workers sibling)".into(),
            )
        }
    }
}

/// Everything decided.
#[derive(Debug, Clone)]
pub struct Plan {
    /// CPUs the process may use.
    pub allowed: Vec<usize>,
    /// Physical cores of the allowed CPUs.
    pub cores: Vec<Core>,
    /// Whether NIC IRQs were found (the machine's interrupts are ours to place).
    pub dedicated: bool,
    /// CPUs for NIC IRQs (empty without NIC IRQs).
    pub irq_cpus: Vec<usize>,
    /// Whether the IRQ CPUs also run shards.
    pub irq_shared: bool,
    /// Why those IRQ CPUs.
    pub irq_rule: String,
    /// Shard CPUs.
    pub shard_cpus: Vec<usize>,
    /// Upload worker CPUs, one per shard.
    pub worker_cpus: Vec<usize>,
    /// Why the workers are where they are.
    pub worker_rule: String,
    /// `shards.max_connections`.
    pub max_connections: usize,
    /// How it was fitted.
    pub connections_note: String,
    /// `glommio.io_memory_kib`.
    pub io_memory_kib: usize,
    /// How it was fitted.
    pub memlock_note: String,
    /// `glommio.ring_depth`.
    pub ring_depth: usize,
    /// `glommio.spin_before_park_us`.
    pub spin_before_park_us: u64,
    /// `queue.max_bytes`.
    pub queue_max_bytes: usize,
    /// How it was chosen.
    pub queue_note: String,
    /// `queue.max_payloads` (from the configuration).
    pub queue_max_payloads: usize,
    /// `upload.max_in_flight` (from the configuration).
    pub max_in_flight: usize,
    /// NIC IRQs and the CPU each should go to.
    pub irq_moves: Vec<IrqMove>,
    /// RPS per receive queue (only when IRQ CPUs are set apart).
    pub rps: Vec<QueueCpus>,
    /// RFS flow entries per receive queue (with RPS).
    pub rps_flow_cnt: Vec<(String, usize, usize)>,
    /// XPS per transmit queue.
    pub xps: Vec<QueueCpus>,
    /// Problems the user should act on.
    pub warnings: Vec<String>,
}

/// Why no plan fits the machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The affinity mask and the cgroup cpuset leave no online CPU.
    #[error("no online CPU is in both the affinity mask and the cgroup cpuset")]
    NoAllowedCpu,
    /// The IRQ CPUs took every CPU.
    #[error("no CPU left for the shards")]
    NoShardCpu,
}

/// Decides everything for `m`, with the settings of `cfg` that bound the choices (body and
/// batch sizes, concurrent uploads).
pub fn plan(m: &Machine, cfg: &Config, opt: &Options) -> Result<Plan, PlanError> {
    let allowed = super::machine::allowed(
        &m.online,
        m.affinity.as_deref(),
        m.cpuset.as_ref().map(|(_, c)| c.as_slice()),
    );
    if allowed.is_empty() {
        return Err(PlanError::NoAllowedCpu);
    }
    let cores = cores(&m.cpus, &allowed);
    let mut warnings = Vec::new();
    let nic_with_irqs = m.nics.iter().find(|n| !n.irqs.is_empty());
    let dedicated = nic_with_irqs.is_some();
    let (irq_cpus, irq_shared, irq_rule) = match nic_with_irqs {
        Some(nic) => irq_cpus(&cores, opt.cores_per_irq_core, nic.numa_node),
        None => (
            Vec::new(),
            false,
            "no NIC IRQs found (a VM's virtio or a container's veth): nothing to set apart, shards on every allowed CPU".into(),
        ),
    };
    let (shard_cpus, worker_cpus, worker_rule) = place(&cores, &irq_cpus, irq_shared, opt.workers);
    if shard_cpus.is_empty() {
        return Err(PlanError::NoShardCpu);
    }
    let shards = shard_cpus.len();
    let max_in_flight = cfg.upload.max_in_flight;
    let (max_connections, connections_note) =
        sizing::connections(m, opt.nofile, shards, dedicated, max_in_flight);
    let ring_depth = ring_depth(max_connections);
    let (io_memory_kib, memlock_note) =
        sizing::io_memory(m, opt.memlock, shards, ring_depth, dedicated, &mut warnings);
    let (queue_max_bytes, queue_note) = sizing::queue(m, cfg, shards, &mut warnings);
    let spin_before_park_us = if dedicated && shards >= 8 { 50 } else { 0 };
    let steering = steering::steer(m, &irq_cpus, irq_shared, &shard_cpus);
    Ok(Plan {
        allowed,
        cores,
        dedicated,
        irq_cpus,
        irq_shared,
        irq_rule,
        shard_cpus,
        worker_cpus,
        worker_rule,
        max_connections,
        connections_note,
        io_memory_kib,
        memlock_note,
        ring_depth,
        spin_before_park_us,
        queue_max_bytes,
        queue_note,
        queue_max_payloads: cfg.queue.max_payloads,
        max_in_flight,
        irq_moves: steering.irq_moves,
        rps: steering.rps,
        rps_flow_cnt: steering.rps_flow_cnt,
        xps: steering.xps,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n_cores` cores of `threads` threads over `nodes` nodes, Linux numbering: thread `t`
    /// of core `c` is CPU `c + t × n_cores`; cores split evenly over the nodes in order.
    fn machine(n_cores: usize, threads: usize, nodes: usize) -> Vec<Cpu> {
        let per_node = n_cores / nodes;
        let mut cpus = Vec::new();
        for t in 0..threads {
            for c in 0..n_cores {
                cpus.push(Cpu {
                    id: c + t * n_cores,
                    package: c / per_node,
                    core: c % per_node,
                    node: c / per_node,
                    siblings: (0..threads).map(|k| c + k * n_cores).collect(),
                });
            }
        }
        cpus.sort_by_key(|c| c.id);
        cpus
    }

    fn all(cpus: &[Cpu]) -> Vec<usize> {
        cpus.iter().map(|c| c.id).collect()
    }

    #[test]
    fn four_cpus_or_fewer_share_everything() {
        let m = machine(2, 2, 1);
        let cs = cores(&m, &all(&m));
        let (irq, shared, _) = irq_cpus(&cs, 16, None);
        assert!(shared);
        assert_eq!(irq, [0, 1, 2, 3]);
        let (shards, _, _) = place(&cs, &irq, shared, WorkerPlacement::Same);
        assert_eq!(shards, [0, 1, 2, 3]);
    }

    #[test]
    fn small_machines_give_one_thread_then_one_core() {
        // 4 cores × 2 threads: one CPU thread; its sibling (4) still runs a shard.
        let m = machine(4, 2, 1);
        let cs = cores(&m, &all(&m));
        let (irq, shared, _) = irq_cpus(&cs, 16, None);
        assert_eq!((irq.as_slice(), shared), (&[0][..], false));
        let (shards, _, _) = place(&cs, &irq, shared, WorkerPlacement::Same);
        assert_eq!(shards, [1, 2, 3, 4, 5, 6, 7]);
        // 8 cores × 2 threads: a whole core, both threads.
        let m = machine(8, 2, 1);
        let cs = cores(&m, &all(&m));
        let (irq, _, _) = irq_cpus(&cs, 16, None);
        assert_eq!(irq, [0, 8]);
        let (shards, _, _) = place(&cs, &irq, false, WorkerPlacement::Same);
        assert_eq!(shards.len(), 14);
        assert!(!shards.contains(&0) && !shards.contains(&8));
    }

    #[test]
    fn big_machines_spread_irq_cores_over_the_nodes() {
        // 32 cores × 2 threads on two nodes: 2 IRQ cores, one per node, with their siblings.
        let m = machine(32, 2, 2);
        let cs = cores(&m, &all(&m));
        let (irq, shared, rule) = irq_cpus(&cs, 16, None);
        assert!(!shared);
        assert_eq!(irq, [0, 16, 32, 48], "{rule}");
        // The NIC's node goes first when the count does not divide evenly.
        let m = machine(48, 1, 2);
        let cs = cores(&m, &all(&m));
        let (irq, _, _) = irq_cpus(&cs, 16, Some(1));
        assert_eq!(irq, [0, 24, 25]);
        // 64 cores, 4 nodes, 8 per IRQ core: 8 IRQ cores, two per node.
        let m = machine(64, 1, 4);
        let cs = cores(&m, &all(&m));
        let (irq, _, _) = irq_cpus(&cs, 8, None);
        assert_eq!(irq, [0, 1, 16, 17, 32, 33, 48, 49]);
        let (shards, workers, _) = place(&cs, &irq, false, WorkerPlacement::Same);
        assert_eq!(shards.len(), 56);
        assert_eq!(shards, workers);
        assert!(irq.iter().all(|c| !shards.contains(c)));
    }

    #[test]
    fn only_allowed_cpus_count() {
        // A cpuset of CPUs 2-3 on an 8-CPU machine: two CPUs, shared.
        let m = machine(8, 1, 1);
        let cs = cores(&m, &[2, 3]);
        assert_eq!(cs.len(), 2);
        let (irq, shared, _) = irq_cpus(&cs, 16, None);
        assert!(shared);
        let (shards, _, _) = place(&cs, &irq, shared, WorkerPlacement::Same);
        assert_eq!(shards, [2, 3]);
    }

    #[test]
    fn sibling_workers_take_the_second_thread() {
        let m = machine(8, 2, 1);
        let cs = cores(&m, &all(&m));
        let (irq, shared, _) = irq_cpus(&cs, 16, None);
        let (shards, workers, _) = place(&cs, &irq, shared, WorkerPlacement::Sibling);
        assert_eq!(shards, [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(workers, [9, 10, 11, 12, 13, 14, 15]);
        // Without hyper-threads it falls back to the shard's own CPU.
        let m = machine(8, 1, 1);
        let cs = cores(&m, &all(&m));
        let (shards, workers, why) = place(&cs, &[0], false, WorkerPlacement::Sibling);
        assert_eq!(shards, workers);
        assert!(why.contains("no compute core has two threads"), "{why}");
    }

    #[test]
    fn capacities_fit_the_limits() {
        assert_eq!(ring_depth(10_000), 256);
        assert_eq!(ring_depth(50_000), 1024);
        assert_eq!(ring_depth(100), 128);
        assert_eq!(ring_depth(1 << 30), 2048);
        // Unlimited memlock keeps what is wanted.
        assert_eq!(fit_io_memory(16384, None, 60, 1024, false).0, 16384);
        // 8 MiB over 2 shards × 3 rings: about 1.3 MiB each.
        let (kib, _, warn) = fit_io_memory(10240, Some(8 << 20), 2, 256, false);
        assert!(warn.is_none());
        assert!(
            2 * 3 * kib * 1024 + 64 * 1024 <= 8 << 20 && kib >= 1300,
            "{kib}"
        );
        // Before 5.12 the rings count too.
        let (old, _, _) = fit_io_memory(10240, Some(8 << 20), 2, 256, true);
        assert!(old < kib);
        // Too little to register anything, or too little to start.
        assert!(fit_io_memory(10240, Some(1 << 20), 8, 256, false)
            .2
            .is_some());
        let (kib, _, warn) = fit_io_memory(10240, Some(64 << 10), 1, 128, false);
        assert_eq!(kib, 64);
        assert!(warn.unwrap().contains("refuses to start"));
    }

    #[test]
    fn queues_share_a_quarter_of_memory() {
        const MIB: usize = 1 << 20;
        assert_eq!(queue_bytes(Some(4 << 30), 2, MIB), 128 * MIB);
        assert_eq!(queue_bytes(Some(1 << 30), 8, MIB), 32 * MIB);
        assert_eq!(queue_bytes(Some(256 << 20), 8, MIB), 16 * MIB);
        assert_eq!(queue_bytes(None, 8, MIB), 64 * MIB);
        // Never below the largest body.
        assert_eq!(queue_bytes(Some(256 << 20), 8, 40 * MIB + 1), 41 * MIB);
    }
}
