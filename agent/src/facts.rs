//! Host facts for heartbeats (sysinfo) and the host's identity inputs
//! (machine-id, and the hostname it asks to be enrolled under).

use std::net::IpAddr;

use sysinfo::{CpuRefreshKind, Disks, Networks, System};

use seaport_shared::pki;
use seaport_shared::wire::HostFacts;

/// The agent's version, reported in every heartbeat.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Errors reading the host's identity.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("could not read the machine id from /etc/machine-id or /var/lib/dbus/machine-id; create one with systemd-machine-id-setup")]
    NoMachineId,
    #[error("could not read the hostname")]
    NoHostname,
}

/// What names a host: its machine id (reported in heartbeats) and hostname
/// (the name it asks to be enrolled under).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIdentity {
    pub machine_id: String,
    pub hostname: String,
}

impl HostIdentity {
    /// Reads the machine id and hostname of this host.
    pub fn from_system() -> Result<HostIdentity, FactsError> {
        let machine_id = ["/etc/machine-id", "/var/lib/dbus/machine-id"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .map(|s| s.trim().to_string())
            .find(|s| !s.is_empty())
            .ok_or(FactsError::NoMachineId)?;
        let hostname = System::host_name()
            .filter(|h| !h.is_empty())
            .ok_or(FactsError::NoHostname)?;
        Ok(HostIdentity {
            machine_id,
            hostname,
        })
    }

    /// The name this host asks for when it joins; the coordinator makes
    /// the node id from it.
    pub fn label(&self) -> String {
        pki::node_label(&self.hostname)
    }
}

/// The host's addresses worth reporting: not loopback, not link-local.
pub fn host_ips() -> Vec<IpAddr> {
    let networks = Networks::new_with_refreshed_list();
    let mut ips: Vec<IpAddr> = networks
        .list()
        .values()
        .flat_map(|n| n.ip_networks().iter().map(|i| i.addr))
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_link_local(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// A source of heartbeat facts.
pub trait FactsSource: Send {
    fn facts(&mut self) -> HostFacts;
}

/// Fixed facts (simulated agents, tests).
impl FactsSource for HostFacts {
    fn facts(&mut self) -> HostFacts {
        self.clone()
    }
}

/// Facts of the real host, refreshed for each heartbeat.
pub struct SystemFacts {
    host: HostIdentity,
    sys: System,
    cpus: u32,
}

/// This host's platform in OCI's names (`linux/amd64`, `linux/arm/v7`),
/// from the machine architecture the agent reports in its heartbeats, so
/// the agent picks the manifest the coordinator planned for it.
pub fn host_platform() -> seaport_rootfs::oci::Platform {
    seaport_rootfs::registry::platform::machine_platform(&System::cpu_arch())
}

impl SystemFacts {
    pub fn new(host: HostIdentity) -> Self {
        let mut sys = System::new();
        sys.refresh_cpu_list(CpuRefreshKind::nothing());
        let cpus = sys.cpus().len().max(1) as u32;
        SystemFacts { host, sys, cpus }
    }
}

impl FactsSource for SystemFacts {
    fn facts(&mut self) -> HostFacts {
        self.sys.refresh_memory();
        let disks = Disks::new_with_refreshed_list();
        let root = disks
            .list()
            .iter()
            .filter(|d| std::path::Path::new("/").starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len());
        HostFacts {
            hostname: System::host_name().unwrap_or_else(|| self.host.hostname.clone()),
            os: System::long_os_version()
                .or_else(System::name)
                .unwrap_or_default(),
            kernel: System::kernel_version().unwrap_or_default(),
            arch: System::cpu_arch(),
            cpus: self.cpus,
            memory_total: self.sys.total_memory(),
            memory_available: self.sys.available_memory(),
            disk_total: root.map(|d| d.total_space()).unwrap_or(0),
            disk_available: root.map(|d| d.available_space()).unwrap_or(0),
            ips: host_ips().iter().map(IpAddr::to_string).collect(),
            machine_id: self.host.machine_id.clone(),
            agent_version: AGENT_VERSION.to_string(),
            uptime_secs: System::uptime(),
            counters: crate::distribution::counters::snapshot(),
            balancer: crate::balancer::host::global().and_then(|b| b.facts()),
        }
    }
}
