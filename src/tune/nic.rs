//! The NICs: physical interfaces, their receive and transmit queues, and their IRQs from
//! `/proc/interrupts` and the device's `msi_irqs`.

use super::root::Root;
use super::TuneError;

/// One IRQ line of `/proc/interrupts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Irq {
    /// IRQ number (`/proc/irq/N`).
    pub number: u32,
    /// The action's name (last column), e.g. `eth0-TxRx-3`.
    pub name: String,
}

/// A physical network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// Interface name.
    pub name: String,
    /// Driver (from the device's `uevent`), if known.
    pub driver: Option<String>,
    /// NUMA node of the device, if known (`-1` in sysfs means none).
    pub numa_node: Option<usize>,
    /// Receive queue numbers (`queues/rx-N`).
    pub rx_queues: Vec<usize>,
    /// Transmit queue numbers (`queues/tx-N`).
    pub tx_queues: Vec<usize>,
    /// The interface's IRQs: `/proc/interrupts` lines naming it (or `*-TxRx-*` ones when it
    /// is the only NIC), and its device's `msi_irqs`.
    pub irqs: Vec<Irq>,
}

/// What is wrong with a `/proc/interrupts` text (each names the line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterruptsError {
    /// No header line.
    #[error("empty")]
    Empty,
    /// The header names no `CPUn` column.
    #[error("first line {0:?} names no CPU column")]
    NoCpuColumn(String),
    /// A line that does not start with `IRQ:`.
    #[error("{0:?} does not start with `IRQ:`")]
    NoIrq(String),
    /// A numbered line with fewer counts than the header has CPUs.
    #[error("{line:?} has fewer than {cpus} CPU columns")]
    FewColumns {
        /// The line.
        line: String,
        /// CPU columns of the header.
        cpus: usize,
    },
    /// A CPU column that is not a number.
    #[error("{0:?}: a CPU column is not a count")]
    NotACount(String),
}

/// Parses `/proc/interrupts`: the numbered lines and their names (the last column).
pub fn parse_interrupts(text: &str) -> Result<Vec<Irq>, InterruptsError> {
    let mut lines = text.lines();
    let header = lines.next().ok_or(InterruptsError::Empty)?;
    let ncpu = header
        .split_whitespace()
        .filter(|w| w.starts_with("CPU"))
        .count();
    if ncpu == 0 {
        return Err(InterruptsError::NoCpuColumn(header.to_string()));
    }
    let mut irqs = Vec::new();
    for line in lines {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        let Some(num) = first.strip_suffix(':') else {
            return Err(InterruptsError::NoIrq(line.to_string()));
        };
        // NMI, LOC and other per-CPU counters have names, not numbers.
        let Ok(number) = num.parse::<u32>() else {
            continue;
        };
        let rest: Vec<&str> = f.collect();
        if rest.len() < ncpu {
            return Err(InterruptsError::FewColumns {
                line: line.to_string(),
                cpus: ncpu,
            });
        }
        if rest[..ncpu].iter().any(|c| c.parse::<u64>().is_err()) {
            return Err(InterruptsError::NotACount(line.to_string()));
        }
        // Chip, hardware IRQ, then the actions' names (`name1, name2` when shared).
        let name = rest[ncpu..]
            .last()
            .map(|s| s.trim_end_matches(','))
            .unwrap_or("");
        irqs.push(Irq {
            number,
            name: name.to_string(),
        });
    }
    Ok(irqs)
}

/// Whether IRQ name `irq` names interface `nic`: `eth0`, `eth0-TxRx-3`, `i40e-eth0-TxRx-0`,
/// but not `eth01`.
pub fn irq_names_nic(irq: &str, nic: &str) -> bool {
    irq.match_indices(nic).any(|(i, _)| {
        let before = irq[..i].chars().next_back();
        let after = irq[i + nic.len()..].chars().next();
        let edge = |c: Option<char>| c.is_none_or(|c| !c.is_ascii_alphanumeric());
        edge(before) && edge(after)
    })
}

/// The physical NICs (those with a `device`), their queues and IRQs.
pub fn read_nics(root: &Root) -> Result<Vec<Nic>, TuneError> {
    let irqs = match root.read_opt("/proc/interrupts")? {
        Some(t) => parse_interrupts(&t).map_err(|source| TuneError::Interrupts {
            path: root.path("/proc/interrupts"),
            source,
        })?,
        None => Vec::new(),
    };
    let mut nics = Vec::new();
    for name in root.list("/sys/class/net")? {
        let dir = format!("/sys/class/net/{name}");
        // Virtual interfaces (lo, bridges, veth, ifb) have no device.
        if !root.exists(&format!("{dir}/device")) {
            continue;
        }
        let driver = root
            .read_opt(&format!("{dir}/device/uevent"))?
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("DRIVER=").map(String::from))
            });
        let numa_path = format!("{dir}/device/numa_node");
        let numa_node = match root.read_opt(&numa_path)? {
            Some(t) => {
                let n: i64 = root.number(&numa_path, &t)?;
                usize::try_from(n).ok()
            }
            None => None,
        };
        let (mut rx_queues, mut tx_queues) = (Vec::new(), Vec::new());
        for q in root.list(&format!("{dir}/queues"))? {
            if let Some(n) = q.strip_prefix("rx-").and_then(|n| n.parse().ok()) {
                rx_queues.push(n);
            } else if let Some(n) = q.strip_prefix("tx-").and_then(|n| n.parse().ok()) {
                tx_queues.push(n);
            }
        }
        rx_queues.sort_unstable();
        tx_queues.sort_unstable();
        let msi: Vec<u32> = root
            .list(&format!("{dir}/device/msi_irqs"))?
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        let nic_irqs = irqs
            .iter()
            .filter(|i| irq_names_nic(&i.name, &name) || msi.contains(&i.number))
            .cloned()
            .collect();
        nics.push(Nic {
            name,
            driver,
            numa_node,
            rx_queues,
            tx_queues,
            irqs: nic_irqs,
        });
    }
    // `*-TxRx-*` lines that name no interface belong to the NIC when there is only one.
    if nics.len() == 1 {
        let taken: Vec<u32> = nics[0].irqs.iter().map(|i| i.number).collect();
        let more: Vec<Irq> = irqs
            .iter()
            .filter(|i| i.name.contains("-TxRx-") && !taken.contains(&i.number))
            .cloned()
            .collect();
        nics[0].irqs.extend(more);
        nics[0].irqs.sort_by_key(|i| i.number);
    }
    Ok(nics)
}
