//! Writing: the tuning profile (a comment block saying what was read and why each value was
//! chosen, then `[shards]`, `[queue]`, `[upload]`, `[glommio]`) and the shell script of
//! recommended system changes, each with the reason for it.

use super::cpulist::{format as list, hex_mask};
use super::kernel;
use super::machine::Machine;
use super::plan::{Plan, RPS_SOCK_FLOW_ENTRIES};
use super::root::Root;
use std::fmt::Write as _;

/// Comment lines, `# ` each.
#[derive(Debug, Default)]
struct Comments(String);

impl Comments {
    /// One comment, wrapped at [`WIDTH`] columns; continuation lines are indented two
    /// spaces more than the first.
    fn line(&mut self, text: impl AsRef<str>) {
        let text = text.as_ref();
        if text.is_empty() {
            self.0.push_str("#\n");
            return;
        }
        self.0.push_str(&wrap(text, "# "));
    }
}

/// Width of the comment lines written.
const WIDTH: usize = 100;

/// `text` as lines starting with `prefix`, wrapped at spaces to [`WIDTH`] columns.
fn wrap(text: &str, prefix: &str) -> String {
    let indent = text.len() - text.trim_start().len();
    let cont = format!("{prefix}{}", " ".repeat(indent + 2));
    let mut out = String::new();
    let mut line = format!("{prefix}{}", &text[..indent]);
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.len() + 1 + word.len() > WIDTH {
            out.push_str(line.trim_end());
            out.push('\n');
            line = cont.clone();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(line.trim_end());
    out.push('\n');
    out
}

fn or_missing(v: Option<String>, what: &str) -> String {
    v.unwrap_or_else(|| format!("{what} not found"))
}

fn limit_text(l: Option<u64>) -> String {
    l.map_or("unlimited".into(), |n| n.to_string())
}

/// A TOML array of CPU ids, wrapped at 16 per line.
fn toml_cpus(cpus: &[usize]) -> String {
    let rows: Vec<String> = cpus
        .chunks(16)
        .map(|c| {
            c.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    format!("[{}]", rows.join(",\n        "))
}

/// The profile: comments, then the four sections a profile may hold.
pub fn profile(root: &Root, m: &Machine, p: &Plan) -> String {
    let mut c = Comments::default();
    c.line(format!(
        "corepost tuning profile, written by `corepost tune` (corepost {}) from the machine under {}.",
        env!("CARGO_PKG_VERSION"),
        root.base().display()
    ));
    c.line(
        "Check it: corepost check-config --profile FILE; use it: corepost serve --profile FILE.",
    );
    c.line("Each value below says what was read and why. Run `corepost tune` again when the CPUs, NICs or");
    c.line(
        "limits change; its --script FILE lists the system changes it recommends (it makes none).",
    );
    c.line("");
    c.line("CPUs");
    c.line(format!(
        "  online (/sys/devices/system/cpu/online): {}",
        list(&m.online)
    ));
    c.line(format!(
        "  affinity mask (/proc/self/status Cpus_allowed_list): {}",
        or_missing(m.affinity.as_ref().map(|a| list(a)), "not shown,")
    ));
    c.line(format!(
        "  cgroup cpuset: {}",
        match &m.cpuset {
            Some((file, cpus)) => format!("{} ({file})", list(cpus)),
            None => "none found".into(),
        }
    ));
    let threads = p.cores.iter().map(|c| c.cpus.len()).max().unwrap_or(1);
    let packages: std::collections::BTreeSet<usize> = m
        .cpus
        .iter()
        .filter(|c| p.allowed.contains(&c.id))
        .map(|c| c.package)
        .collect();
    c.line(format!(
        "  allowed (online, in the mask and the cpuset): {}: {} CPUs, {} cores, up to {threads} thread(s) per core, {} package(s){}",
        list(&p.allowed),
        p.allowed.len(),
        p.cores.len(),
        packages.len(),
        if m.topology_known { "" } else { " (no topology files: each CPU counted as a core)" }
    ));
    for (node, cpus) in &m.nodes {
        c.line(format!("  NUMA node {node}: {}", list(cpus)));
    }
    c.line("NICs (/sys/class/net/*/device, queues/, /proc/interrupts)");
    if m.nics.is_empty() {
        c.line("  no physical NIC (only virtual interfaces)");
    }
    for n in &m.nics {
        let irqs = if n.irqs.is_empty() {
            "no IRQ in /proc/interrupts names it".to_string()
        } else {
            let nums: Vec<usize> = n.irqs.iter().map(|i| i.number as usize).collect();
            format!(
                "IRQs {} ({}{})",
                list(&nums),
                n.irqs[0].name,
                if n.irqs.len() > 1 { ", ..." } else { "" }
            )
        };
        c.line(format!(
            "  {} ({}, NUMA node {}): {} rx / {} tx queues, {irqs}",
            n.name,
            n.driver.as_deref().unwrap_or("driver unknown"),
            n.numa_node.map_or("unknown".into(), |x| x.to_string()),
            n.rx_queues.len(),
            n.tx_queues.len()
        ));
    }
    c.line("");
    c.line(format!("IRQ CPUs: {}", p.irq_rule));
    if !p.irq_cpus.is_empty() && !p.irq_shared {
        c.line("  The shards stay off them: a shard never competes with packet processing for its CPU.");
    }
    c.line(format!(
        "Shards: {} on CPUs {}{}",
        p.shard_cpus.len(),
        list(&p.shard_cpus),
        if p.irq_cpus.is_empty() || p.irq_shared {
            " (every allowed CPU)".to_string()
        } else {
            format!(
                " (the allowed CPUs less the IRQ CPUs {})",
                list(&p.irq_cpus)
            )
        }
    ));
    c.line(format!("Upload workers: {}", p.worker_rule));
    c.line(format!("shards.max_connections: {}", p.connections_note));
    c.line(format!(
        "glommio.ring_depth: {} (one entry per 64 connections, a power of two from 128 to 2048)",
        p.ring_depth
    ));
    c.line(format!(
        "glommio.io_memory_kib: {} ({})",
        p.io_memory_kib, p.memlock_note
    ));
    c.line(format!("queue.max_bytes: {}", p.queue_note));
    c.line("queue.max_payloads, upload.max_in_flight: from the configuration (not properties of the machine)");
    c.line(format!(
        "glommio.spin_before_park_us: {}",
        if p.spin_before_park_us > 0 {
            format!(
                "{} (a dedicated machine with 8 or more shards: busy-poll briefly for latency)",
                p.spin_before_park_us
            )
        } else {
            "0 (not a dedicated machine, or few shards: idle shards use no CPU)".into()
        }
    ));
    c.line("");
    match (&m.kernel, m.kernel_version) {
        (Some(k), Some(v)) => {
            let (has, lacks) = kernel::uring_features(v);
            c.line(format!(
                "Kernel {k} (/proc/sys/kernel/osrelease), io_uring:"
            ));
            c.line(format!(
                "  has: {}",
                if has.is_empty() {
                    "none of these".into()
                } else {
                    has.join(", ")
                }
            ));
            if !lacks.is_empty() {
                c.line(format!("  lacks: {}", lacks.join(", ")));
            }
            c.line("  (corepost's glommio-ng sets COOP_TASKRUN on its main ring where the kernel has it; the others say what a newer runtime could use)");
            c.line(format!(
                "  rings counted in RLIMIT_MEMLOCK: {}",
                if v < kernel::RINGS_UNLOCKED_FROM {
                    "yes (before 5.12)"
                } else {
                    "no (5.12 or later: only registered buffers)"
                }
            ));
        }
        _ => c.line("Kernel: /proc/sys/kernel/osrelease not found"),
    }
    c.line(format!(
        "Limits (/proc/self/limits): open files {}, locked memory {}",
        m.nofile.map_or("not shown".into(), |l| format!(
            "soft {} hard {}",
            limit_text(l.soft),
            limit_text(l.hard)
        )),
        m.memlock.map_or("not shown".into(), |l| format!(
            "soft {} hard {}",
            limit_text(l.soft),
            limit_text(l.hard)
        ))
    ));
    c.line(format!("Clocksource: {}", clock_note(m)));
    c.line(format!(
        "Transparent huge pages: {}",
        match m.thp.as_deref() {
            Some("always") => "always: khugepaged and allocation-time compaction can stall a shard; the script sets madvise",
            Some(mode) => if mode == "madvise" { "madvise (fine)" } else { "never (fine)" },
            None => "not shown",
        }
    ));
    c.line(format!("Spool disk: {}", disk_note(m)));
    if !p.warnings.is_empty() {
        c.line("");
        c.line("WARNINGS");
        for w in &p.warnings {
            c.line(format!("  {w}"));
        }
    }
    let mut out = c.0;
    out.push('\n');
    let _ = writeln!(out, "[shards]");
    let _ = writeln!(out, "cores = {}", p.shard_cpus.len());
    let _ = writeln!(out, "cpus = {}", toml_cpus(&p.shard_cpus));
    if p.worker_cpus != p.shard_cpus {
        let _ = writeln!(out, "worker_cpus = {}", toml_cpus(&p.worker_cpus));
    }
    let _ = writeln!(out, "max_connections = {}", p.max_connections);
    let _ = writeln!(out, "\n[queue]");
    let _ = writeln!(out, "max_payloads = {}", p.queue_max_payloads);
    let _ = writeln!(out, "max_bytes = {}", p.queue_max_bytes);
    let _ = writeln!(out, "\n[upload]");
    let _ = writeln!(out, "max_in_flight = {}", p.max_in_flight);
    let _ = writeln!(out, "\n[glommio]");
    let _ = writeln!(out, "spin_before_park_us = {}", p.spin_before_park_us);
    let _ = writeln!(out, "io_memory_kib = {}", p.io_memory_kib);
    let _ = writeln!(out, "ring_depth = {}", p.ring_depth);
    out
}

/// `(current, recommended)` clocksource when a faster one is available.
fn better_clock(m: &Machine) -> Option<(&str, &str)> {
    let (cur, avail) = m.clocksource.as_ref()?;
    let slow = matches!(cur.as_str(), "hpet" | "acpi_pm" | "xen" | "jiffies");
    (slow && avail.iter().any(|a| a == "tsc")).then_some((cur.as_str(), "tsc"))
}

fn clock_note(m: &Machine) -> String {
    match &m.clocksource {
        None => "not shown".into(),
        Some((cur, _)) => match better_clock(m) {
            Some(_) => format!("{cur}: reading it is a system call, and every request reads the clock; tsc is available and the script switches to it"),
            None => match cur.as_str() {
                "tsc" | "kvm-clock" | "arch_sys_counter" | "hyperv_clocksource_tsc_page" => {
                    format!("{cur} (read in user space, fine)")
                }
                other => format!("{other} (no faster one available)"),
            },
        },
    }
}

/// The scheduler the spool's disk should have, if it has another.
fn better_scheduler(m: &Machine) -> Option<(&str, &'static str)> {
    let (cur, avail) = m.spool.scheduler.as_ref()?;
    let want = if m.spool.rotational == Some(true) {
        "mq-deadline"
    } else {
        "none"
    };
    (cur != want && avail.iter().any(|a| a == want)).then_some((cur.as_str(), want))
}

fn disk_note(m: &Machine) -> String {
    let d = &m.spool;
    let mut s = format!("spool.dir {:?} (looked up as {})", d.dir, d.looked_up);
    match &d.mount {
        None => s.push_str(": no mount found in /proc/self/mountinfo"),
        Some((mp, fs, src, dev)) => {
            let _ = write!(s, " is on {mp} ({fs}, {src}, device {dev})");
            match (&d.device, &d.disk, &d.scheduler) {
                (None, _, _) => s.push_str(": not a block device, so no I/O scheduler; the durable spool needs direct I/O on a real disk"),
                (Some(dev), Some(disk), Some((cur, _))) => {
                    let rot = match d.rotational {
                        Some(true) => "rotational",
                        Some(false) => "not rotational",
                        None => "rotational unknown",
                    };
                    let part = if dev != disk { format!("partition {dev} of ") } else { String::new() };
                    let _ = write!(s, ": {part}disk {disk} ({rot}), scheduler {cur}");
                    match better_scheduler(m) {
                        Some((_, want)) => {
                            let _ = write!(s, "; the script sets {want} (spool writes are large, sequential and synchronous: {want} adds the least latency)");
                        }
                        None => s.push_str(" (fine)"),
                    }
                }
                (Some(dev), _, _) => {
                    let _ = write!(s, ": block device {dev}, its disk's scheduler not found");
                }
            }
        }
    }
    s
}

/// The script of recommended system changes. Paths in it are the real ones (`/proc`,
/// `/sys`), never the recorded tree's.
pub fn script(root: &Root, m: &Machine, p: &Plan) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "#!/bin/sh");
    let _ = writeln!(w, "# System changes recommended by `corepost tune` (corepost {}) for the machine read under {},", env!("CARGO_PKG_VERSION"), root.base().display());
    let _ = writeln!(w, "# to go with the profile it wrote. corepost tune never changes the system itself: read this,");
    let _ = writeln!(w, "# then run it as root. Settings under /proc and /sys last until the next reboot (IRQ affinity");
    let _ = writeln!(
        w,
        "# also until the driver is reloaded): run it at boot, e.g. from a oneshot unit ordered"
    );
    let _ = writeln!(w, "# Before=corepost.service.");
    let _ = writeln!(w, "set -eu");
    let _ = writeln!(
        w,
        "[ \"$(id -u)\" -eq 0 ] || {{ echo \"$0: run as root\" >&2; exit 1; }}"
    );

    if p.irq_moves.is_empty() {
        let _ = writeln!(w, "\n# No NIC IRQs were found (a VM's virtio queues or a container's veth): nothing to pin,");
        let _ = writeln!(w, "# and irqbalance, if any, can stay.");
    } else {
        let _ = writeln!(w, "\n# irqbalance would move the NIC's IRQs back onto the shards' CPUs: stop it for good.");
        let _ = writeln!(w, "# (To keep it for other devices instead, ban the shard CPUs in /etc/default/irqbalance:");
        let _ = writeln!(
            w,
            "#  IRQBALANCE_BANNED_CPULIST={} (irqbalance 1.8 or later), and restart it.)",
            list(&p.shard_cpus)
        );
        let _ = writeln!(w, "if command -v systemctl >/dev/null 2>&1; then");
        let _ = writeln!(
            w,
            "    systemctl disable --now irqbalance.service 2>/dev/null || true"
        );
        let _ = writeln!(w, "fi");
        let _ = writeln!(
            w,
            "\n# NIC IRQs onto the IRQ CPUs {} ({}), one CPU each, in turn.",
            list(&p.irq_cpus),
            if p.irq_shared {
                "every CPU: too few to set any apart"
            } else {
                "set apart from the shards"
            }
        );
        for mv in &p.irq_moves {
            let _ = writeln!(
                w,
                "echo {} > /proc/irq/{}/smp_affinity_list  # {} {}",
                mv.cpu, mv.irq.number, mv.nic, mv.irq.name
            );
        }
    }
    if !p.rps.is_empty() {
        let _ = writeln!(w, "\n# RPS/RFS: the IRQs land on few CPUs; steer each flow's protocol processing to the CPU whose");
        let _ = writeln!(w, "# shard reads that socket (RFS), among the shard CPUs (RPS), so the IRQ CPUs only take the");
        let _ = writeln!(
            w,
            "# interrupts and the packet is handled where it is consumed."
        );
        let _ = writeln!(
            w,
            "echo {RPS_SOCK_FLOW_ENTRIES} > /proc/sys/net/core/rps_sock_flow_entries"
        );
        for q in &p.rps {
            let _ = writeln!(
                w,
                "echo {} > /sys/class/net/{}/queues/rx-{}/rps_cpus  # CPUs {}",
                hex_mask(&q.cpus),
                q.nic,
                q.queue,
                list(&q.cpus)
            );
        }
        for (nic, q, n) in &p.rps_flow_cnt {
            let _ = writeln!(
                w,
                "echo {n} > /sys/class/net/{nic}/queues/rx-{q}/rps_flow_cnt"
            );
        }
    }
    if !p.xps.is_empty() {
        let _ = writeln!(w, "\n# XPS: each shard CPU sends on a transmit queue of its own (the shard CPUs dealt out over the");
        let _ = writeln!(w, "# queues), so CPUs do not contend for one queue's lock.");
        for q in &p.xps {
            let _ = writeln!(
                w,
                "echo {} > /sys/class/net/{}/queues/tx-{}/xps_cpus  # CPUs {}",
                hex_mask(&q.cpus),
                q.nic,
                q.queue,
                list(&q.cpus)
            );
        }
    }

    w.push('\n');
    w.push_str(&wrap(&format!("sysctls (values read: {}). Kept in /etc/sysctl.d/90-corepost.conf so they survive a reboot.", sysctls_read(m)), "# "));
    let mut conf: Vec<(String, u64, String)> = Vec::new();
    let mut want = |key: &str, path: &str, value: u64, why: String| {
        let cur = m.sysctls.get(path).copied();
        if cur.is_none_or(|c| c < value) {
            conf.push((key.to_string(), value, why));
        }
    };
    let backlog = crate::listen::BACKLOG as u64;
    want(
        "net.core.somaxconn",
        "/proc/sys/net/core/somaxconn",
        backlog,
        format!("each shard listens with a backlog of {backlog}; the kernel caps it at this"),
    );
    want("net.ipv4.tcp_max_syn_backlog", "/proc/sys/net/ipv4/tcp_max_syn_backlog", 8192, "a burst of new connections (clients reconnecting after a deploy) waits here; when it is full SYNs are dropped and clients wait a second to retry".into());
    if !p.rps.is_empty() {
        want(
            "net.core.netdev_max_backlog",
            "/proc/sys/net/core/netdev_max_backlog",
            10_000,
            "RPS queues packets per CPU here; a short queue drops them under bursts".into(),
        );
    }
    want(
        "fs.nr_open",
        "/proc/sys/fs/nr_open",
        1_048_576,
        "LimitNOFILE=1048576 (the unit's) cannot exceed this".into(),
    );
    if conf.is_empty() {
        let _ = writeln!(w, "# All are already at least what corepost needs.");
    } else {
        let _ = writeln!(w, "cat > /etc/sysctl.d/90-corepost.conf <<'EOF'");
        for (k, v, why) in &conf {
            w.push_str(&wrap(why, "# "));
            let _ = writeln!(w, "{k} = {v}");
        }
        let _ = writeln!(w, "EOF");
        let _ = writeln!(w, "sysctl -q -p /etc/sysctl.d/90-corepost.conf");
    }

    w.push('\n');
    w.push_str(&wrap(&format!("Limits of the unit: descriptors for every connection (the profile's max_connections were fitted to {}), locked memory for glommio's io_uring buffers. The packaged unit already sets these; this drop-in holds them for a unit of your own too. Run `corepost tune --nofile 1048576 --memlock unlimited` to plan for them.", limits_read(p)), "# "));
    let _ = writeln!(w, "mkdir -p /etc/systemd/system/corepost.service.d");
    let _ = writeln!(
        w,
        "cat > /etc/systemd/system/corepost.service.d/limits.conf <<'EOF'"
    );
    let _ = writeln!(
        w,
        "[Service]\nLimitNOFILE=1048576\nLimitMEMLOCK=infinity\nEOF"
    );
    let _ = writeln!(
        w,
        "if command -v systemctl >/dev/null 2>&1; then systemctl daemon-reload; fi"
    );

    if let Some((cur, want)) = better_clock(m) {
        let _ = writeln!(w, "\n# Clocksource {cur}: every read is a system call, and each request reads the clock. tsc is");
        let _ = writeln!(
            w,
            "# read in user space. (For every boot: clocksource=tsc on the kernel command line.)"
        );
        let _ = writeln!(
            w,
            "echo {want} > /sys/devices/system/clocksource/clocksource0/current_clocksource"
        );
    }
    if m.thp.as_deref() == Some("always") {
        let _ = writeln!(w, "\n# Transparent huge pages \"always\": compaction when memory is allocated, and khugepaged, can");
        let _ = writeln!(
            w,
            "# stall a shard; madvise keeps huge pages for programs that ask. (For every boot:"
        );
        let _ = writeln!(
            w,
            "# transparent_hugepage=madvise on the kernel command line.)"
        );
        let _ = writeln!(
            w,
            "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled"
        );
    }
    if let (Some((cur, want)), Some(disk)) = (better_scheduler(m), &m.spool.disk) {
        let _ = writeln!(w, "\n# The spool's disk ({disk}) uses {cur}; the durable spool's writes are large, sequential and");
        let _ = writeln!(
            w,
            "# synchronous, and {want} adds the least latency for a{} disk.",
            if want == "none" {
                " non-rotational"
            } else {
                " rotational"
            }
        );
        let _ = writeln!(w, "echo {want} > /sys/block/{disk}/queue/scheduler");
    }
    for warn in &p.warnings {
        w.push('\n');
        w.push_str(&wrap(&format!("WARNING: {warn}"), "# "));
    }
    s
}

fn sysctls_read(m: &Machine) -> String {
    if m.sysctls.is_empty() {
        return "none found".into();
    }
    m.sysctls
        .iter()
        .map(|(k, v)| {
            let key = k.trim_start_matches("/proc/sys/").replace('/', ".");
            format!("{key} {v}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The limit the profile's connections were fitted to, as its note says.
fn limits_read(p: &Plan) -> String {
    match p.connections_note.split_once(':') {
        Some((limit, _)) => limit.to_string(),
        None => p.connections_note.clone(),
    }
}
