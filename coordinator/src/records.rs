//! What the coordinator keeps about its nodes, join tokens, admin
//! certificates and image assignments: plain data, no I/O. The state
//! store ([`crate::state`]) keeps them; the planner ([`crate::plan`]) binds
//! hosts to nodes with them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use seaport_shared::cluster::ImageDigest;
use seaport_shared::digest::Digest;
use seaport_shared::wire::{AdminCertInfo, HostFacts, IpBinding, NodeAddress};

/// A stored join token (never the secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub secret_hash: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub uses_left: u32,
    /// The existing node this token re-enrolls (`token create --node`);
    /// `None`: it enrolls new nodes only.
    #[serde(default)]
    pub node_id: Option<String>,
}

/// A stored admin certificate (never its key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminRecord {
    pub serial: u64,
    pub name: String,
    pub issued_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    /// The coordinator's own, under `ROOT/coordinator/`.
    pub local: bool,
}

impl AdminRecord {
    pub fn info(&self) -> AdminCertInfo {
        AdminCertInfo {
            serial: self.serial,
            name: self.name.clone(),
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            local: self.local,
        }
    }
}

/// Whether two textual IPs are the same address (`::ffff:a.b.c.d` is
/// `a.b.c.d`); text that is not an IP equals only itself.
pub fn same_ip(a: &str, b: &str) -> bool {
    match (a.parse::<std::net::IpAddr>(), b.parse::<std::net::IpAddr>()) {
        (Ok(x), Ok(y)) => x.to_canonical() == y.to_canonical(),
        _ => a == b,
    }
}

/// A stored node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeRecord {
    pub node_id: String,
    pub hostname: String,
    pub ips: Vec<String>,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_total: u64,
    pub machine_id: String,
    pub agent_version: String,
    pub enrolled_at: i64,
    pub cert_serial: u64,
    pub cert_expires: i64,
    /// Certificates of this node with a lower serial are refused (issued
    /// before its latest enrollment).
    pub min_serial: u64,
    pub revoked: bool,
    pub revoked_at: Option<i64>,
    pub last_seen: Option<i64>,
    /// The source address of the node's latest authenticated connection,
    /// as the coordinator saw it (evidence, unlike `ips`).
    pub observed_ip: Option<String>,
    pub observed_at: Option<i64>,
    /// Host IPs an admin bound to this node (`seaport nodes approve`).
    pub approved_ips: Vec<String>,
}

impl NodeRecord {
    /// What ties `ip` to this node, if anything: an admin's approval, the
    /// node's own connection coming from an address it reports, or only its
    /// report.
    pub fn binding(&self, ip: &str) -> Option<IpBinding> {
        let claimed = self.ips.iter().any(|c| same_ip(c, ip));
        if self.approved_ips.iter().any(|a| same_ip(a, ip)) {
            Some(IpBinding::Approved)
        } else if claimed && self.observed_ip.as_deref().is_some_and(|o| same_ip(o, ip)) {
            Some(IpBinding::Connection)
        } else if claimed {
            Some(IpBinding::Claimed)
        } else {
            None
        }
    }

    /// Every address claimed or approved, with its binding.
    pub fn addresses(&self) -> Vec<NodeAddress> {
        let mut out: Vec<NodeAddress> = Vec::new();
        for ip in self.ips.iter().chain(&self.approved_ips) {
            if out.iter().any(|a| same_ip(&a.ip, ip)) {
                continue;
            }
            if let Some(binding) = self.binding(ip) {
                out.push(NodeAddress {
                    ip: ip.clone(),
                    binding,
                });
            }
        }
        out
    }

    /// Copies the slowly changing facts; returns whether anything changed.
    pub fn apply_facts(&mut self, f: &HostFacts) -> bool {
        let changed = self.hostname != f.hostname
            || self.ips != f.ips
            || self.os != f.os
            || self.kernel != f.kernel
            || self.arch != f.arch
            || self.cpus != f.cpus
            || self.memory_total != f.memory_total
            || self.machine_id != f.machine_id
            || self.agent_version != f.agent_version;
        if changed {
            self.hostname = f.hostname.clone();
            self.ips = f.ips.clone();
            self.os = f.os.clone();
            self.kernel = f.kernel.clone();
            self.arch = f.arch.clone();
            self.cpus = f.cpus;
            self.memory_total = f.memory_total;
            self.machine_id = f.machine_id.clone();
            self.agent_version = f.agent_version.clone();
        }
        changed
    }
}

/// A certificate just signed inside an enrollment or renewal transaction.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub expires: i64,
}

/// An image assigned to nodes, as stored (see [`crate::distribution`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    pub image: String,
    /// What the name pointed at when it was assigned: the manifest, or a
    /// multi-platform index.
    pub manifest_digest: ImageDigest,
    /// Manifest, config and layers, with their sizes (for an index: the
    /// index and every assigned platform's blobs).
    pub blobs: Vec<(Digest, u64)>,
    pub nodes: Vec<String>,
    pub created_at: i64,
    /// For a multi-platform image: what each node fetches (the index and
    /// its own platform's manifest, config and layers).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_blobs: BTreeMap<String, Vec<(Digest, u64)>>,
}

impl Assignment {
    /// The blobs `node_id` fetches.
    pub fn blobs_of(&self, node_id: &str) -> &[(Digest, u64)] {
        self.node_blobs.get(node_id).unwrap_or(&self.blobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_bindings_need_evidence() {
        let mut n = NodeRecord {
            node_id: "n-1".into(),
            ips: vec!["10.0.0.1".into(), "10.0.0.2".into()],
            ..Default::default()
        };
        assert_eq!(n.binding("10.0.0.1"), Some(IpBinding::Claimed));
        n.observed_ip = Some("10.0.0.1".into());
        assert_eq!(n.binding("10.0.0.1"), Some(IpBinding::Connection));
        assert_eq!(n.binding("::ffff:10.0.0.1"), Some(IpBinding::Connection));
        assert_eq!(n.binding("10.0.0.2"), Some(IpBinding::Claimed));
        // Connecting from an address it does not report binds nothing (NAT).
        n.observed_ip = Some("192.0.2.7".into());
        assert_eq!(n.binding("192.0.2.7"), None);
        assert_eq!(n.binding("10.0.0.1"), Some(IpBinding::Claimed));
        n.approved_ips = vec!["10.0.0.9".into()];
        assert_eq!(n.binding("10.0.0.9"), Some(IpBinding::Approved));
        let shown: Vec<(String, IpBinding)> = n
            .addresses()
            .into_iter()
            .map(|a| (a.ip, a.binding))
            .collect();
        assert_eq!(
            shown,
            [
                ("10.0.0.1".to_string(), IpBinding::Claimed),
                ("10.0.0.2".to_string(), IpBinding::Claimed),
                ("10.0.0.9".to_string(), IpBinding::Approved),
            ]
        );
    }
}
