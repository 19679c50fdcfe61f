//! Preflight checks of this host, before an install changes anything
//! (`seaport check`, and the first stage of `run`, `apply`, `join` and
//! upgrades).
//!
//! [`gather`] reads the host as it is now ([`HostState`]: /proc/swaps,
//! listening TCP sockets from /proc/net/tcp and tcp6, IPv4 forwarding, the
//! hostname, free space under the data directory, `br_netfilter`, CPUs,
//! memory, cgroup v2, which container runtimes and kubelet are active) and
//! what this cluster's journal says Seaport installed here
//! ([`Installed`]); [`evaluate`] turns both into results, without I/O.
//!
//! What a previous install of the same cluster holds is not an error, so a
//! rerun or an upgrade passes: a port is Seaport's when the journal has the
//! step that opens it done (the registry port: `registry`; the Kubernetes
//! ports: `kubeadm`), a running unit when the journal records enabling it,
//! and the disk check passes when the cluster's rootfs is unpacked here
//! already (a rerun or an upgrade: an upgrade's extra layers are not
//! sized).

use std::collections::BTreeSet;
use std::path::Path;

use seaport_shared::cluster::Step;
use seaport_shared::preflight::{
    CheckResult, Level, PreflightTask, MAX_CLOCK_SKEW_MS, MIN_MASTER_CPUS, MIN_MEMORY_BYTES,
};

use crate::apply::journal::{Change, Journal, StepStatus};

/// Container runtimes and the kubelet: active ones Seaport did not start
/// are errors (kubeadm's own check refuses a second runtime too).
pub const RUNTIME_UNITS: [&str; 5] = [
    "containerd.service",
    "docker.service",
    "cri-docker.service",
    "crio.service",
    "kubelet.service",
];

/// The host as it is now. `None` where it could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostState {
    pub hostname: String,
    /// Active swap areas: (name, size in KiB).
    pub swaps: Vec<(String, u64)>,
    /// TCP ports some socket listens on (IPv4 and IPv6).
    pub listening: BTreeSet<u16>,
    pub ip_forward: Option<bool>,
    /// Free bytes under the data directory (for unprivileged users too).
    pub disk_free: Option<u64>,
    pub now_ms: i64,
    pub br_netfilter: bool,
    pub cpus: u32,
    pub memory_bytes: Option<u64>,
    pub cgroup_v2: bool,
    /// Units of [`RUNTIME_UNITS`] that are active.
    pub active_units: Vec<String>,
}

/// What this cluster's journal on the host says Seaport did here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    /// Steps done.
    pub steps_done: BTreeSet<String>,
    /// Units the install enabled (and started).
    pub units: BTreeSet<String>,
}

impl Installed {
    /// Reads the journal of `cluster` under `state_dir` (empty when there
    /// is none or it cannot be read).
    pub fn read(state_dir: &Path, cluster: &str) -> Installed {
        if !Journal::exists(state_dir, cluster) {
            return Installed::default();
        }
        let Ok(j) = Journal::open(state_dir, cluster) else {
            return Installed::default();
        };
        let st = j.state();
        Installed {
            steps_done: st
                .steps
                .iter()
                .filter(|(_, r)| r.status == StepStatus::Done)
                .map(|(n, _)| n.clone())
                .collect(),
            units: st
                .changes
                .iter()
                .filter_map(|c| match c {
                    Change::UnitEnabled { unit, .. } => Some(unit.clone()),
                    _ => None,
                })
                .collect(),
        }
    }

    fn has(&self, step: Step) -> bool {
        self.steps_done.contains(step.as_str())
    }
}

/// Reads the host (as root, `/`), with `data_root` for the disk check.
pub fn gather(data_root: &Path) -> HostState {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let mut listening = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Some(t) = read(table) {
            listening.extend(listening_ports(&t));
        }
    }
    HostState {
        hostname: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
        swaps: read("/proc/swaps").map(|t| swaps(&t)).unwrap_or_default(),
        listening,
        ip_forward: read("/proc/sys/net/ipv4/ip_forward").map(|v| v.trim() == "1"),
        disk_free: free_bytes(data_root),
        now_ms: now_ms(),
        br_netfilter: Path::new("/sys/module/br_netfilter").exists()
            || Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_bytes: read("/proc/meminfo").and_then(|t| mem_total(&t)),
        cgroup_v2: Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        active_units: RUNTIME_UNITS
            .iter()
            .filter(|u| unit_active(u))
            .map(|u| u.to_string())
            .collect(),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn unit_active(unit: &str) -> bool {
    std::process::Command::new("systemctl")
        .args(["is-active", "--quiet", unit])
        .stdin(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Free bytes of the file system under `dir` (its nearest existing
/// ancestor).
fn free_bytes(dir: &Path) -> Option<u64> {
    let existing = dir.ancestors().find(|p| p.exists())?;
    let st = nix::sys::statvfs::statvfs(existing).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Active swap areas in /proc/swaps: (name, size in KiB).
pub fn swaps(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.to_string(), f.get(2)?.parse().ok()?))
        })
        .collect()
}

/// Local ports of sockets in state LISTEN (0A) in /proc/net/tcp or tcp6.
pub fn listening_ports(text: &str) -> BTreeSet<u16> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(3) != Some(&"0A") {
                return None;
            }
            let port = f.get(1)?.rsplit(':').next()?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

/// MemTotal of /proc/meminfo, in bytes.
pub fn mem_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// The results of every check, in a fixed order.
pub fn evaluate(task: &PreflightTask, host: &HostState, installed: &Installed) -> Vec<CheckResult> {
    use Level::*;
    let mut out = Vec::new();
    let mut push = |check: &str, level, detail: String| {
        out.push(CheckResult::new(check, level, detail));
    };

    // Swap: kubelet refuses to start with swap on.
    if host.swaps.is_empty() {
        push("swap", Ok, "no active swap".into());
    } else {
        let names: Vec<String> = host
            .swaps
            .iter()
            .map(|(n, kib)| format!("{n} ({} MiB)", kib / 1024))
            .collect();
        push(
            "swap",
            Error,
            format!(
                "swap is on: {}; turn it off (swapoff -a, and remove it from /etc/fstab)",
                names.join(", ")
            ),
        );
    }

    // Ports: free, or held by this cluster's own install.
    for &port in &task.ports {
        let name = format!("port-{port}");
        if !host.listening.contains(&port) {
            push(&name, Ok, "free".into());
            continue;
        }
        let owner = if Some(port) == task.registry_port {
            Step::Registry
        } else {
            Step::Kubeadm
        };
        if installed.has(owner) {
            push(
                &name,
                Ok,
                format!("in use by this cluster's install (step {})", owner.as_str()),
            );
        } else {
            push(
                &name,
                Error,
                format!(
                    "port {port} is in use; stop what listens on it (ss -ltnp 'sport = :{port}')"
                ),
            );
        }
    }

    match host.ip_forward {
        Some(true) => push("ip-forward", Ok, "net.ipv4.ip_forward = 1".into()),
        Some(false) => push(
            "ip-forward",
            Error,
            "net.ipv4.ip_forward = 0; set it to 1 (sysctl -w net.ipv4.ip_forward=1, and in /etc/sysctl.d/)".into(),
        ),
        None => push(
            "ip-forward",
            Error,
            "/proc/sys/net/ipv4/ip_forward cannot be read".into(),
        ),
    }

    // A runtime or kubelet running that this cluster's install did not
    // start: the install would fight it.
    let foreign: Vec<&String> = host
        .active_units
        .iter()
        .filter(|u| !installed.units.contains(*u))
        .collect();
    if foreign.is_empty() {
        let ours: Vec<&String> = host.active_units.iter().collect();
        push(
            "runtime",
            Ok,
            if ours.is_empty() {
                "no container runtime or kubelet running".into()
            } else {
                format!(
                    "running, installed by this cluster: {}",
                    ours.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        );
    } else {
        push(
            "runtime",
            Error,
            format!(
                "{} running but not installed by Seaport; stop and disable it (systemctl disable --now UNIT) or reset what installed it",
                foreign.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
        );
    }

    let unpacked = installed.has(Step::Rootfs);
    match host.disk_free {
        _ if task.disk_needed == 0 => push(
            "disk",
            Ok,
            host.disk_free
                .map_or("free space unknown (no image to size)".into(), |f| {
                    format!("{} free (no image to size)", gib(f))
                }),
        ),
        _ if unpacked => push(
            "disk",
            Ok,
            "this cluster's rootfs is unpacked here already".into(),
        ),
        Some(free) if free < task.disk_needed => push(
            "disk",
            Error,
            format!(
                "{} free under the data directory, the image needs about {}; free some space",
                gib(free),
                gib(task.disk_needed)
            ),
        ),
        Some(free) => push(
            "disk",
            Ok,
            format!("{} free, about {} needed", gib(free), gib(task.disk_needed)),
        ),
        None => push(
            "disk",
            Error,
            "free space under the data directory cannot be read".into(),
        ),
    }

    let skew = host.now_ms - task.coordinator_time_ms;
    if skew.abs() > MAX_CLOCK_SKEW_MS {
        push(
            "clock",
            Warning,
            format!(
                "{:+.1} s from the coordinator's clock; certificates and tokens need clocks within seconds (use NTP)",
                skew as f64 / 1000.0
            ),
        );
    } else {
        push(
            "clock",
            Ok,
            format!("{:+.1} s from the coordinator", skew as f64 / 1000.0),
        );
    }

    if host.br_netfilter {
        push("br-netfilter", Ok, "loaded".into());
    } else {
        push(
            "br-netfilter",
            Warning,
            "br_netfilter is not loaded; most network plugins need it (modprobe br_netfilter)"
                .into(),
        );
    }

    if task.role.is_master() && host.cpus < MIN_MASTER_CPUS {
        push(
            "cpu",
            Warning,
            format!(
                "{} CPU, kubeadm wants at least {MIN_MASTER_CPUS} on a control-plane host",
                host.cpus
            ),
        );
    } else {
        push("cpu", Ok, format!("{} CPUs", host.cpus));
    }

    match host.memory_bytes {
        Some(m) if m < MIN_MEMORY_BYTES => push(
            "memory",
            Warning,
            format!(
                "{} MiB, kubeadm wants at least {} MiB",
                m >> 20,
                MIN_MEMORY_BYTES >> 20
            ),
        ),
        Some(m) => push("memory", Ok, format!("{} MiB", m >> 20)),
        None => push("memory", Warning, "/proc/meminfo cannot be read".into()),
    }

    if host.cgroup_v2 {
        push("cgroups", Ok, "cgroup v2".into());
    } else {
        push(
            "cgroups",
            Warning,
            "cgroup v1; Kubernetes deprecates it (boot with systemd.unified_cgroup_hierarchy=1)"
                .into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use seaport_shared::cluster::{ClusterName, Role};

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1936 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0B0012C6:C350 0C0012C6:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
";

    fn task(role: Role) -> PreflightTask {
        PreflightTask {
            cluster: ClusterName::parse("c").unwrap(),
            role,
            ports: seaport_shared::preflight::ports_for(role, Some(5000)),
            registry_port: Some(5000),
            disk_needed: 3 << 30,
            coordinator_time_ms: 1_000_000,
        }
    }

    fn healthy() -> HostState {
        HostState {
            hostname: "h1".into(),
            swaps: vec![],
            listening: BTreeSet::new(),
            ip_forward: Some(true),
            disk_free: Some(10 << 30),
            now_ms: 1_000_500,
            br_netfilter: true,
            cpus: 2,
            memory_bytes: Some(4 << 30),
            cgroup_v2: true,
            active_units: vec![],
        }
    }

    fn level<'a>(results: &'a [CheckResult], check: &str) -> &'a CheckResult {
        results
            .iter()
            .find(|c| c.check == check)
            .unwrap_or_else(|| panic!("no {check} in {results:?}"))
    }

    #[test]
    fn parses_proc_files() {
        // 0x1F90 = 8080 and 0x1936 = 6454 listen; 0xC350 is a connection.
        assert_eq!(
            listening_ports(TCP).into_iter().collect::<Vec<_>>(),
            vec![6454, 8080]
        );
        let swaps_text = "Filename\tType\tSize\tUsed\tPriority\n/swapfile  file  1048572  0  -2\n";
        assert_eq!(swaps(swaps_text), vec![("/swapfile".to_string(), 1048572)]);
        assert!(swaps("Filename\tType\tSize\tUsed\tPriority\n").is_empty());
        assert_eq!(
            mem_total("MemTotal:        2048 kB\nMemFree: 1 kB\n"),
            Some(2048 * 1024)
        );
    }

    #[test]
    fn a_healthy_host_passes_every_check() {
        let r = evaluate(&task(Role::Master0), &healthy(), &Installed::default());
        let bad: Vec<&CheckResult> = r.iter().filter(|c| c.level != Level::Ok).collect();
        assert!(bad.is_empty(), "{bad:?}");
        assert!(r.iter().any(|c| c.check == "port-6443"));
        assert!(r.iter().any(|c| c.check == "port-5000"));
    }

    #[test]
    fn each_problem_is_its_own_error_or_warning() {
        let host = HostState {
            swaps: vec![("/swapfile".into(), 1 << 20)],
            listening: [6443, 22].into_iter().collect(),
            ip_forward: Some(false),
            disk_free: Some(1 << 30),
            now_ms: 1_000_000 + 9_000,
            br_netfilter: false,
            cpus: 1,
            memory_bytes: Some(1 << 30),
            cgroup_v2: false,
            active_units: vec!["containerd.service".into()],
            ..healthy()
        };
        let r = evaluate(&task(Role::Master0), &host, &Installed::default());
        for check in ["swap", "port-6443", "ip-forward", "runtime", "disk"] {
            assert_eq!(level(&r, check).level, Level::Error, "{check}: {r:?}");
        }
        for check in ["clock", "br-netfilter", "cpu", "memory", "cgroups"] {
            assert_eq!(level(&r, check).level, Level::Warning, "{check}: {r:?}");
        }
        assert_eq!(level(&r, "port-2379").level, Level::Ok);
        assert!(level(&r, "swap").detail.contains("/swapfile"));
        assert!(level(&r, "runtime").detail.contains("containerd.service"));
        // A worker needs one CPU and only the kubelet's port.
        let w = evaluate(&task(Role::Node), &host, &Installed::default());
        assert_eq!(level(&w, "cpu").level, Level::Ok);
        assert!(!w.iter().any(|c| c.check == "port-6443"));
    }

    #[test]
    fn what_this_clusters_install_holds_is_not_an_error() {
        let host = HostState {
            listening: [5000, 6443, 10250].into_iter().collect(),
            disk_free: Some(1 << 20),
            active_units: vec!["containerd.service".into(), "kubelet.service".into()],
            ..healthy()
        };
        let installed = Installed {
            steps_done: ["rootfs", "registry", "kubeadm"]
                .into_iter()
                .map(String::from)
                .collect(),
            units: ["containerd.service", "kubelet.service"]
                .into_iter()
                .map(String::from)
                .collect(),
        };
        let r = evaluate(&task(Role::Master0), &host, &installed);
        let bad: Vec<&CheckResult> = r.iter().filter(|c| c.level != Level::Ok).collect();
        assert!(bad.is_empty(), "{bad:?}");
        // Without the registry step, the registry's port is someone else's.
        let partial = Installed {
            steps_done: ["kubeadm".to_string()].into_iter().collect(),
            ..installed.clone()
        };
        let r = evaluate(&task(Role::Master0), &host, &partial);
        assert_eq!(level(&r, "port-5000").level, Level::Error);
        assert_eq!(level(&r, "port-6443").level, Level::Ok);
    }
}
