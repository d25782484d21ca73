//! Where the NIC's interrupts and packets go: each IRQ to an IRQ CPU (the NIC's NUMA node
//! first), RPS/RFS to the shard CPUs when the IRQs are set apart, XPS one transmit queue per
//! group of shard CPUs.

use super::machine::{Irq, Machine};

/// One IRQ's new home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrqMove {
    /// Interface.
    pub nic: String,
    /// The IRQ.
    pub irq: Irq,
    /// CPU it is pinned to.
    pub cpu: usize,
}

/// Receive or transmit steering of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueCpus {
    /// Interface.
    pub nic: String,
    /// Queue number.
    pub queue: usize,
    /// CPUs.
    pub cpus: Vec<usize>,
}

/// Global RFS table size recommended with RPS.
pub const RPS_SOCK_FLOW_ENTRIES: usize = 32768;

/// The steering decided for every NIC with IRQs.
#[derive(Debug, Default)]
pub struct Steering {
    /// NIC IRQs and the CPU each should go to.
    pub irq_moves: Vec<IrqMove>,
    /// RPS per receive queue (only when IRQ CPUs are set apart).
    pub rps: Vec<QueueCpus>,
    /// RFS flow entries per receive queue (with RPS).
    pub rps_flow_cnt: Vec<(String, usize, usize)>,
    /// XPS per transmit queue.
    pub xps: Vec<QueueCpus>,
}

/// Steering for the NICs of `m` with IRQs on `irq_cpus` and shards on `shard_cpus`.
pub fn steer(m: &Machine, irq_cpus: &[usize], irq_shared: bool, shard_cpus: &[usize]) -> Steering {
    let mut out = Steering::default();
    for nic in m.nics.iter().filter(|n| !n.irqs.is_empty()) {
        // The NIC's own node first, then the rest, each in CPU order.
        let mut order: Vec<usize> = irq_cpus.to_vec();
        order.sort_by_key(|c| {
            let node = m.cpus.iter().find(|x| x.id == *c).map(|x| x.node);
            (node != nic.numa_node, *c)
        });
        for (i, irq) in nic.irqs.iter().enumerate() {
            out.irq_moves.push(IrqMove {
                nic: nic.name.clone(),
                irq: irq.clone(),
                cpu: order[i % order.len()],
            });
        }
        if !irq_shared {
            for &q in &nic.rx_queues {
                out.rps.push(QueueCpus {
                    nic: nic.name.clone(),
                    queue: q,
                    cpus: shard_cpus.to_vec(),
                });
                out.rps_flow_cnt.push((
                    nic.name.clone(),
                    q,
                    RPS_SOCK_FLOW_ENTRIES / nic.rx_queues.len().max(1),
                ));
            }
        }
        if nic.tx_queues.len() > 1 {
            for (i, &q) in nic.tx_queues.iter().enumerate() {
                let cpus: Vec<usize> = shard_cpus
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| k % nic.tx_queues.len() == i)
                    .map(|(_, c)| *c)
                    .collect();
                if !cpus.is_empty() {
                    out.xps.push(QueueCpus {
                        nic: nic.name.clone(),
                        queue: q,
                        cpus,
                    });
                }
            }
        }
    }
    out
}
