//! Preflight checks: what an agent checks on its host before an install
//! changes anything, and how results travel and are ignored.
//!
//! The agent checks its own host (swap, ports, IPv4 forwarding, a foreign
//! container runtime or kubelet, disk, clock, `br_netfilter`, CPUs, memory,
//! cgroups); the coordinator adds what needs every host at once (duplicate
//! hostnames and node names). Each result is a [`CheckResult`] named by one
//! of [`CHECKS`] (ports by `port-N`), so `--ignore-preflight NAME,...`
//! ([`Ignore`]) turns chosen errors into `ignored`, as kubeadm's flag does.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterName, Role};

/// Ports a control-plane host needs free: the API server, etcd (client and
/// peer), the kubelet, the controller manager and the scheduler.
pub const MASTER_PORTS: [u16; 6] = [6443, 2379, 2380, 10250, 10257, 10259];
/// Ports a worker needs free: the kubelet.
pub const NODE_PORTS: [u16; 1] = [10250];
/// The local registry's port when the cluster env names none.
pub const DEFAULT_REGISTRY_PORT: u16 = 5000;
/// Clock skew against the coordinator above which a host is warned about.
pub const MAX_CLOCK_SKEW_MS: i64 = 5_000;
/// kubeadm's minimum CPUs on a control-plane host (a warning below it).
pub const MIN_MASTER_CPUS: u32 = 2;
/// kubeadm's minimum memory, 1700 MiB (a warning below it).
pub const MIN_MEMORY_BYTES: u64 = 1700 * 1024 * 1024;

/// Every check's name (ports are `port-N`, one per port).
pub const CHECKS: [&str; 11] = [
    "swap",
    "ports",
    "ip-forward",
    "hostname",
    "runtime",
    "disk",
    "clock",
    "br-netfilter",
    "cpu",
    "memory",
    "cgroups",
];

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    /// Reported; does not stop an install.
    Warning,
    /// An error the operator chose to ignore.
    Ignored,
    /// Stops an install before it touches any host.
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Ignored => "ignored",
            Level::Error => "error",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One check on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// One of [`CHECKS`], or `port-N`.
    pub check: String,
    pub level: Level,
    /// What was found (and, for an error, what to do).
    pub detail: String,
}

impl CheckResult {
    pub fn new(check: impl Into<String>, level: Level, detail: impl Into<String>) -> Self {
        CheckResult {
            check: check.into(),
            level,
            detail: detail.into(),
        }
    }
}

/// Every check of one host, as `seaport check` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostChecks {
    pub ip: String,
    pub role: Role,
    pub node_id: String,
    /// The hostname the agent read when it checked (empty if it could not).
    pub hostname: String,
    pub checks: Vec<CheckResult>,
}

impl HostChecks {
    /// The checks that stop an install.
    pub fn errors(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| c.level == Level::Error)
    }

    /// The checks as a table: check, result, detail.
    pub fn table(&self) -> String {
        let width = self
            .checks
            .iter()
            .map(|c| c.check.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut out = format!("{:<width$}  {:<7}  DETAIL\n", "CHECK", "RESULT");
        for c in &self.checks {
            out.push_str(&format!(
                "{:<width$}  {:<7}  {}\n",
                c.check,
                c.level.as_str(),
                c.detail
            ));
        }
        out
    }
}

/// The agent's task: check this host for `cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightTask {
    pub cluster: ClusterName,
    pub role: Role,
    /// Ports that must be free (unless this cluster's install holds them).
    pub ports: Vec<u16>,
    /// The registry port among `ports`, on the registry host.
    pub registry_port: Option<u16>,
    /// Bytes the image needs under the data directory (0: not known).
    pub disk_needed: u64,
    /// The coordinator's clock when it sent the task, Unix milliseconds.
    pub coordinator_time_ms: i64,
}

/// The ports a host of `role` needs free; `registry_port` on the registry
/// host.
pub fn ports_for(role: Role, registry_port: Option<u16>) -> Vec<u16> {
    let mut ports: Vec<u16> = if role.is_master() {
        MASTER_PORTS.to_vec()
    } else {
        NODE_PORTS.to_vec()
    };
    ports.extend(registry_port);
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// A `--ignore-preflight` value that names no check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--ignore-preflight: unknown check {name:?}; checks are {}, port-N for one port, and all", CHECKS.join(", "))]
pub struct UnknownCheck {
    pub name: String,
}

/// The checks whose errors the operator ignores (`--ignore-preflight`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ignore(Vec<String>);

impl Ignore {
    /// Parses names (case-insensitive): a check of [`CHECKS`], `port-N`,
    /// or `all`.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Ignore, UnknownCheck> {
        let mut out = Vec::new();
        for n in names {
            let n = n.as_ref().trim().to_ascii_lowercase();
            if n.is_empty() {
                continue;
            }
            let port_ok = n
                .strip_prefix("port-")
                .is_some_and(|p| p.parse::<u16>().is_ok());
            if !(n == "all" || CHECKS.contains(&n.as_str()) || port_ok) {
                return Err(UnknownCheck { name: n });
            }
            out.push(n);
        }
        Ok(Ignore(out))
    }

    pub fn names(&self) -> &[String] {
        &self.0
    }

    /// Whether errors of `check` are ignored (`ports` covers every
    /// `port-N`).
    pub fn covers(&self, check: &str) -> bool {
        self.0
            .iter()
            .any(|n| n == "all" || n == check || (n == "ports" && check.starts_with("port-")))
    }

    /// Turns the errors it covers into [`Level::Ignored`].
    pub fn apply(&self, checks: &mut [CheckResult]) {
        for c in checks {
            if c.level == Level::Error && self.covers(&c.check) {
                c.level = Level::Ignored;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_by_role() {
        assert_eq!(
            ports_for(Role::Master0, Some(5000)),
            vec![2379, 2380, 5000, 6443, 10250, 10257, 10259]
        );
        assert_eq!(ports_for(Role::Node, None), vec![10250]);
    }

    #[test]
    fn ignore_names_and_applies() {
        let ig = Ignore::parse(&["Swap", "port-6443"]).unwrap();
        let mut checks = vec![
            CheckResult::new("swap", Level::Error, "on"),
            CheckResult::new("port-6443", Level::Error, "in use"),
            CheckResult::new("port-2379", Level::Error, "in use"),
            CheckResult::new("clock", Level::Warning, "skew"),
        ];
        ig.apply(&mut checks);
        let levels: Vec<Level> = checks.iter().map(|c| c.level).collect();
        assert_eq!(
            levels,
            vec![Level::Ignored, Level::Ignored, Level::Error, Level::Warning]
        );
        assert!(Ignore::parse(&["ports"]).unwrap().covers("port-2379"));
        assert!(Ignore::parse(&["all"]).unwrap().covers("hostname"));
        let err = Ignore::parse(&["swapp"]).unwrap_err();
        assert!(err.to_string().contains("unknown check \"swapp\""), "{err}");
        assert!(Ignore::parse(&["port-99999"]).is_err());
    }

    #[test]
    fn table_lists_every_check() {
        let h = HostChecks {
            ip: "10.0.0.1".into(),
            role: Role::Node,
            node_id: "n".into(),
            hostname: "h".into(),
            checks: vec![
                CheckResult::new("swap", Level::Error, "swap is on"),
                CheckResult::new("cgroups", Level::Ok, "v2"),
            ],
        };
        let t = h.table();
        assert!(t.contains("swap     error    swap is on"), "{t}");
        assert_eq!(h.errors().count(), 1);
    }
}
