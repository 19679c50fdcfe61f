//! The install plan: from an image and a set of hosts with roles to an
//! ordered list of phases, each a set of per-node tasks (the agent's step
//! names), in the order sealer installs a cluster:
//!
//! 1. `rootfs` on every host (unpack and render),
//! 2. `runtime` on every host,
//! 3. `registry` on the registry host(s) (the first master by default),
//! 4. `registry-access` on every host (names, mirrors, binaries, units,
//!    the image's init hooks),
//! 5. `init-master0`: `kubeadm init` on the first master,
//! 6. `join-master-N`: the other masters join one at a time,
//! 7. `join-nodes`: the workers join in parallel,
//! 8. `launch`: the image's apps, from the first master (when it has any).
//!
//! Pure: no I/O, deterministic for the same input, so it is persisted and
//! compared as is. [`match_nodes`] maps host IPs to enrolled nodes by
//! evidence (the node's connection comes from the IP, or an admin approved
//! it), never by what a node only says, and says how to bootstrap a host
//! that has no agent; [`check_hostnames`] refuses two hosts of one cluster
//! with one hostname.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use seaport_shared::cluster::{ClusterName, ImageDigest, Phase, Role, Step};
use seaport_shared::wire::IpBinding;

use crate::records::NodeRecord;

/// Errors from planning.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// No master was given.
    #[error("a cluster needs at least one master (-m IP)")]
    NoMaster,
    /// An address is not an IP.
    #[error("{0:?} is not an IP address")]
    BadIp(String),
    /// The same IP is listed twice.
    #[error("host {0} is listed twice")]
    Duplicate(String),
    /// A registry host is not one of the hosts.
    #[error("registry host {0} is not one of the cluster's hosts")]
    UnknownRegistryHost(String),
    /// Hosts without an enrolled agent.
    #[error("no agent is enrolled on {}: bootstrap them first (`seaport token create`, then `seaport bootstrap script --token T` on each host, or cloud-init with `seaport bootstrap cloud-init --token T`), and check `seaport nodes`", .0.join(", "))]
    NoAgent(Vec<String>),
    /// Hosts whose platform the image has no manifest for.
    #[error("image {image} has no manifest for the platform of host {}; the image has: {available}", .hosts.join(", "))]
    NoPlatform {
        /// The image.
        image: String,
        /// Each host as `IP (os/arch)`.
        hosts: Vec<String>,
        /// The image's platforms.
        available: String,
    },
    /// The manifest a host would apply cannot be installed.
    #[error("image {image}, manifest for {platform}: {reason}")]
    Unusable {
        /// The image.
        image: String,
        /// The platform of that manifest.
        platform: String,
        /// Why (e.g. a layer of an unknown media type).
        reason: String,
    },
    /// Nodes say they have the IP, none proves it.
    #[error("host {ip} is not bound to any node: {} only claim{} it ({}). A node is bound to a host IP when its connection comes from that IP, or when an admin approves it: if one of them is that host (behind NAT, or connecting through another interface), run `seaport nodes approve NODE --ip {ip}`", .claims.iter().map(|(n, _)| format!("node {n}")).collect::<Vec<_>>().join(" and "), if .claims.len() == 1 { "s" } else { "" }, .claims.iter().map(|(n, from)| format!("{n} connects from {}", from.as_deref().unwrap_or("nowhere yet"))).collect::<Vec<_>>().join(", "))]
    Unbound {
        ip: String,
        /// (node id, where its connection comes from).
        claims: Vec<(String, Option<String>)>,
    },
    /// Two or more nodes are bound to one IP.
    #[error("host {ip} is bound to more than one node: {}; remove the one that is not that host (`seaport nodes remove NODE`) or withdraw an approval (`seaport nodes unapprove NODE --ip {ip}`)", .nodes.iter().map(|(n, b)| format!("{n} (by {})", b.as_str())).collect::<Vec<_>>().join(", "))]
    Conflict {
        ip: String,
        nodes: Vec<(String, IpBinding)>,
    },
    /// The IP belonged to a removed node; a new node connecting from it
    /// needs an admin's word.
    #[error("host {ip} belonged to removed node {removed}; node {node} connects from it now: if it is that host, approve it with `seaport nodes approve {node} --ip {ip}`")]
    Held {
        ip: String,
        node: String,
        removed: String,
    },
    /// One node is bound to two hosts of the plan.
    #[error("node {node} is bound to hosts {} and {}: one node serves one host", .ips.0, .ips.1)]
    SameNode { node: String, ips: (String, String) },
    /// Two hosts of one cluster carry the same hostname (the Kubernetes
    /// node name).
    #[error("hostname {hostname} is claimed by more than one host of the cluster: {}; hostnames must be unique in a cluster (Kubernetes names nodes by them)", .hosts.iter().map(|(ip, n)| format!("{ip} (node {n})")).collect::<Vec<_>>().join(", "))]
    SameHostname {
        hostname: String,
        /// (host IP, node id).
        hosts: Vec<(String, String)>,
    },
}

/// A host's role as the user gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostRole {
    /// Control plane.
    Master,
    /// Worker.
    Node,
}

/// A host of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSpec {
    /// Its IP.
    pub ip: String,
    /// Its role.
    pub role: HostRole,
}

/// What the planner needs to know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanInput {
    /// The cluster's name.
    pub cluster: ClusterName,
    /// What the image resolved to.
    pub image: ImageDigest,
    /// The hosts, masters first in the order given (the first is master0).
    pub hosts: Vec<HostSpec>,
    /// Registry hosts; empty means the first master.
    pub registry_hosts: Vec<String>,
    /// Whether the image has apps to launch after the cluster is up.
    pub has_launch: bool,
}

/// Work for one host in one phase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// The host.
    pub host: String,
    /// Its role.
    pub role: Role,
    /// The agent steps, in order.
    pub steps: Vec<Step>,
}

/// A phase of the plan with its tasks: the tasks run in parallel, phases
/// one after another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedPhase {
    /// Which phase (`runtime`, `join-master-1` ...).
    pub phase: Phase,
    /// The tasks.
    pub tasks: Vec<Task>,
}

/// The plan of an install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The cluster.
    pub cluster: ClusterName,
    /// The image.
    pub image: ImageDigest,
    /// The phases, in order.
    pub phases: Vec<PlannedPhase>,
}

impl Plan {
    /// Every step of `host`, in the order it runs.
    pub fn steps_of(&self, host: &str) -> Vec<Step> {
        self.phases
            .iter()
            .flat_map(|p| p.tasks.iter().filter(|t| t.host == host))
            .flat_map(|t| t.steps.iter().cloned())
            .collect()
    }
}

/// Computes the plan.
pub fn plan(input: &PlanInput) -> Result<Plan, PlanError> {
    let mut seen = BTreeSet::new();
    for h in &input.hosts {
        h.ip.parse::<IpAddr>()
            .map_err(|_| PlanError::BadIp(h.ip.clone()))?;
        if !seen.insert(h.ip.as_str()) {
            return Err(PlanError::Duplicate(h.ip.clone()));
        }
    }
    let masters: Vec<&HostSpec> = input
        .hosts
        .iter()
        .filter(|h| h.role == HostRole::Master)
        .collect();
    let nodes: Vec<&HostSpec> = input
        .hosts
        .iter()
        .filter(|h| h.role == HostRole::Node)
        .collect();
    let master0 = masters.first().ok_or(PlanError::NoMaster)?;
    let registry_hosts: Vec<String> = if input.registry_hosts.is_empty() {
        vec![master0.ip.clone()]
    } else {
        for r in &input.registry_hosts {
            if !seen.contains(r.as_str()) {
                return Err(PlanError::UnknownRegistryHost(r.clone()));
            }
        }
        input.registry_hosts.clone()
    };
    let role_of = |h: &HostSpec| match h.role {
        HostRole::Master if h.ip == master0.ip => Role::Master0,
        HostRole::Master => Role::Master,
        HostRole::Node => Role::Node,
    };
    let ordered: Vec<&HostSpec> = masters.iter().chain(nodes.iter()).copied().collect();
    let task = |h: &HostSpec, role: Role, phase: Phase| Task {
        host: h.ip.clone(),
        role,
        steps: phase.steps().to_vec(),
    };
    let all = |phase: Phase| -> PlannedPhase {
        PlannedPhase {
            phase,
            tasks: ordered.iter().map(|h| task(h, role_of(h), phase)).collect(),
        }
    };
    let mut phases = vec![
        all(Phase::Rootfs),
        all(Phase::Runtime),
        PlannedPhase {
            phase: Phase::Registry,
            tasks: ordered
                .iter()
                .filter(|h| registry_hosts.contains(&h.ip))
                .map(|h| task(h, role_of(h), Phase::Registry))
                .collect(),
        },
        all(Phase::RegistryAccess),
        PlannedPhase {
            phase: Phase::InitMaster0,
            tasks: vec![task(master0, Role::Master0, Phase::InitMaster0)],
        },
    ];
    for (i, m) in masters.iter().enumerate().skip(1) {
        let phase = Phase::JoinMaster(i as u32);
        phases.push(PlannedPhase {
            phase,
            tasks: vec![task(m, Role::Master, phase)],
        });
    }
    if !nodes.is_empty() {
        phases.push(PlannedPhase {
            phase: Phase::JoinNodes,
            tasks: nodes
                .iter()
                .map(|n| task(n, Role::Node, Phase::JoinNodes))
                .collect(),
        });
    }
    if input.has_launch {
        phases.push(PlannedPhase {
            phase: Phase::Launch,
            tasks: vec![task(master0, Role::Master0, Phase::Launch)],
        });
    }
    Ok(Plan {
        cluster: input.cluster.clone(),
        image: input.image,
        phases,
    })
}

/// The node bound to host `ip`, if any node has anything to do with it.
///
/// Bound means evidence: the node's latest connection comes from the IP
/// and it reports the IP, or an admin approved the IP for it. What a node
/// only claims binds nothing: claims alone give [`PlanError::Unbound`]
/// (naming every claimant); two bound nodes give [`PlanError::Conflict`]
/// (never "the first wins"). An IP a removed node was bound to is held:
/// a new node bound only by its connection needs an approval
/// ([`PlanError::Held`]). `Ok(None)`: no node claims it.
pub fn bind_host(ip: &str, nodes: &[NodeRecord]) -> Result<Option<String>, PlanError> {
    let with = |revoked: bool| -> Vec<(&NodeRecord, IpBinding)> {
        nodes
            .iter()
            .filter(|n| n.revoked == revoked)
            .filter_map(|n| n.binding(ip).map(|b| (n, b)))
            .collect()
    };
    let live = with(false);
    let bound: Vec<&(&NodeRecord, IpBinding)> =
        live.iter().filter(|(_, b)| b.is_evidence()).collect();
    match bound.as_slice() {
        [] if live.is_empty() => Ok(None),
        [] => Err(PlanError::Unbound {
            ip: ip.to_string(),
            claims: live
                .iter()
                .map(|(n, _)| (n.node_id.clone(), n.observed_ip.clone()))
                .collect(),
        }),
        [(node, binding)] => {
            if *binding == IpBinding::Connection {
                if let Some((removed, _)) = with(true).into_iter().find(|(_, b)| b.is_evidence()) {
                    return Err(PlanError::Held {
                        ip: ip.to_string(),
                        node: node.node_id.clone(),
                        removed: removed.node_id.clone(),
                    });
                }
            }
            Ok(Some(node.node_id.clone()))
        }
        many => Err(PlanError::Conflict {
            ip: ip.to_string(),
            nodes: many.iter().map(|(n, b)| (n.node_id.clone(), *b)).collect(),
        }),
    }
}

/// Maps each host IP to the node bound to it ([`bind_host`]). Every host
/// without any node is named in one error; any other binding problem is
/// returned as it is found.
pub fn match_nodes(
    hosts: &[HostSpec],
    nodes: &[NodeRecord],
) -> Result<BTreeMap<String, String>, PlanError> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut missing = Vec::new();
    for h in hosts {
        match bind_host(&h.ip, nodes)? {
            Some(id) => {
                if let Some((other, _)) = out.iter().find(|(_, n)| **n == id) {
                    return Err(PlanError::SameNode {
                        node: id,
                        ips: (other.clone(), h.ip.clone()),
                    });
                }
                out.insert(h.ip.clone(), id);
            }
            None => missing.push(h.ip.clone()),
        }
    }
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(PlanError::NoAgent(missing))
    }
}

/// The manifest each host applies: the image's manifest for the platform
/// its agent reports (`arch` as `uname -m` names it, e.g. `x86_64` for
/// `linux/amd64`), matched as a registry pull matches platforms. Every host
/// whose platform the image lacks is named in one error, with the platforms
/// the image has. A host whose agent reported no architecture yet is left
/// to its agent, which refuses a manifest for another platform itself.
/// Each chosen manifest's layers must be of media types the agents read.
pub fn host_manifests(
    image: &seaport_rootfs::store::StoredImage,
    hosts: &[(String, String)],
) -> Result<BTreeMap<String, seaport_shared::digest::Digest>, PlanError> {
    use seaport_rootfs::registry::platform::{machine_platform, platform_string};
    let mut out = BTreeMap::new();
    let mut missing = Vec::new();
    for (ip, arch) in hosts {
        if arch.is_empty() {
            continue;
        }
        let platform = machine_platform(arch);
        match image.for_platform(&platform) {
            Ok(m) => {
                seaport_rootfs::media::check_layers(&m.manifest.layers).map_err(|e| {
                    PlanError::Unusable {
                        image: image.name.to_string(),
                        platform: platform_string(&platform),
                        reason: e.to_string(),
                    }
                })?;
                out.insert(ip.clone(), m.manifest_digest);
            }
            Err(_) => missing.push(format!("{ip} ({})", platform_string(&platform))),
        }
    }
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(PlanError::NoPlatform {
            image: image.name.to_string(),
            hosts: missing,
            available: image.platforms().join(", "),
        })
    }
}

/// Refuses two hosts with one hostname (compared as Kubernetes does, in
/// lowercase). `hosts` is (IP, node id, hostname); empty hostnames (a node
/// that never reported) are not compared.
pub fn check_hostnames(hosts: &[(String, String, String)]) -> Result<(), PlanError> {
    let mut by_name: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (ip, node, hostname) in hosts {
        if hostname.is_empty() {
            continue;
        }
        by_name
            .entry(hostname.to_ascii_lowercase())
            .or_default()
            .push((ip.clone(), node.clone()));
    }
    match by_name.into_iter().find(|(_, hosts)| hosts.len() > 1) {
        Some((hostname, hosts)) => Err(PlanError::SameHostname { hostname, hosts }),
        None => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn hosts(masters: &[&str], nodes: &[&str]) -> Vec<HostSpec> {
        masters
            .iter()
            .map(|ip| HostSpec {
                ip: ip.to_string(),
                role: HostRole::Master,
            })
            .chain(nodes.iter().map(|ip| HostSpec {
                ip: ip.to_string(),
                role: HostRole::Node,
            }))
            .collect()
    }

    fn input(h: Vec<HostSpec>) -> PlanInput {
        PlanInput {
            cluster: ClusterName::parse("c").unwrap(),
            image: seaport_shared::digest::Digest::of(b"image").into(),
            hosts: h,
            registry_hosts: vec![],
            has_launch: false,
        }
    }

    #[test]
    fn phases_follow_sealers_order() {
        let p = plan(&input(hosts(
            &["10.0.0.1", "10.0.0.2", "10.0.0.3"],
            &["10.0.0.4", "10.0.0.5"],
        )))
        .unwrap();
        let names: Vec<String> = p.phases.iter().map(|p| p.phase.to_string()).collect();
        assert_eq!(
            names,
            [
                "rootfs",
                "runtime",
                "registry",
                "registry-access",
                "init-master0",
                "join-master-1",
                "join-master-2",
                "join-nodes"
            ]
        );
        assert_eq!(p.phases[0].tasks.len(), 5);
        assert_eq!(p.phases[2].tasks.len(), 1);
        assert_eq!(p.phases[2].tasks[0].host, "10.0.0.1");
        let joins: Vec<&str> = p.phases[7].tasks.iter().map(|t| t.host.as_str()).collect();
        assert_eq!(joins, ["10.0.0.4", "10.0.0.5"]);
        assert_eq!(p.phases[5].tasks[0].role, Role::Master);
        assert_eq!(
            p,
            plan(&input(hosts(
                &["10.0.0.1", "10.0.0.2", "10.0.0.3"],
                &["10.0.0.4", "10.0.0.5"]
            )))
            .unwrap()
        );
    }

    #[test]
    fn each_host_gets_exactly_the_agents_steps_for_its_role() {
        let mut i = input(hosts(&["10.0.0.1", "10.0.0.2"], &["10.0.0.3"]));
        use seaport_shared::cluster::steps_for;
        // The first master's last step launches the image's apps, when it
        // has any.
        let master0 = steps_for(Role::Master0, true, true);
        let p = plan(&i).unwrap();
        assert_eq!(p.steps_of("10.0.0.1"), master0[..master0.len() - 1]);
        assert_eq!(p.steps_of("10.0.0.2"), steps_for(Role::Master, false, true));
        assert_eq!(p.steps_of("10.0.0.3"), steps_for(Role::Node, false, true));
        i.has_launch = true;
        assert_eq!(plan(&i).unwrap().steps_of("10.0.0.1"), master0);
    }

    #[test]
    fn registry_hosts_launch_and_bad_input() {
        let mut i = input(hosts(&["10.0.0.1"], &["10.0.0.2"]));
        i.registry_hosts = vec!["10.0.0.2".into()];
        i.has_launch = true;
        let p = plan(&i).unwrap();
        assert_eq!(p.phases[2].tasks[0].host, "10.0.0.2");
        assert_eq!(p.phases.last().unwrap().phase, Phase::Launch);
        assert_eq!(
            plan(&input(hosts(&[], &["10.0.0.2"]))),
            Err(PlanError::NoMaster)
        );
        assert_eq!(
            plan(&input(hosts(&["10.0.0.1"], &["10.0.0.1"]))),
            Err(PlanError::Duplicate("10.0.0.1".into()))
        );
        assert_eq!(
            plan(&input(hosts(&["host-a"], &[]))),
            Err(PlanError::BadIp("host-a".into()))
        );
        i.registry_hosts = vec!["10.9.9.9".into()];
        assert!(matches!(plan(&i), Err(PlanError::UnknownRegistryHost(_))));
    }

    fn node(id: &str, claims: &[&str], from: Option<&str>) -> NodeRecord {
        NodeRecord {
            node_id: id.into(),
            ips: claims.iter().map(|s| s.to_string()).collect(),
            observed_ip: from.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn hosts_without_an_agent_are_named_with_how_to_bootstrap_them() {
        let h = hosts(&["10.0.0.1"], &["10.0.0.2", "10.0.0.3"]);
        let enrolled = vec![node("n1", &["10.0.0.1", "192.168.1.1"], Some("10.0.0.1"))];
        let err = match_nodes(&h, &enrolled).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("10.0.0.2, 10.0.0.3") && msg.contains("seaport bootstrap"),
            "{msg}"
        );
        let enrolled = vec![
            node("n1", &["10.0.0.1"], Some("10.0.0.1")),
            node("n2", &["10.0.0.2"], Some("10.0.0.2")),
            node("n3", &["10.0.0.3"], Some("10.0.0.3")),
        ];
        let m = match_nodes(&h, &enrolled).unwrap();
        assert_eq!(m["10.0.0.3"], "n3");
    }

    pub(crate) fn platform_image(
        arch: &str,
        layer_type: &str,
    ) -> seaport_rootfs::store::PlatformImage {
        use seaport_rootfs::oci::{Descriptor, ImageConfig, Manifest, Platform};
        use seaport_shared::digest::Digest;
        let desc = |media_type: &str, bytes: &[u8]| Descriptor {
            media_type: media_type.into(),
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            annotations: Default::default(),
            platform: None,
        };
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(seaport_rootfs::oci::MEDIA_TYPE_MANIFEST.into()),
            config: desc(seaport_rootfs::oci::MEDIA_TYPE_CONFIG, arch.as_bytes()),
            layers: vec![desc(layer_type, format!("{arch} layer").as_bytes())],
            annotations: Default::default(),
        };
        seaport_rootfs::store::PlatformImage {
            platform: Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: None,
            },
            image: seaport_rootfs::store::ResolvedImage {
                name: seaport_rootfs::reference::ImageRef::parse("k8s:v1").unwrap(),
                manifest_digest: Digest::of(format!("{arch} manifest").as_bytes()),
                manifest_size: 1,
                manifest,
                config: ImageConfig {
                    architecture: arch.into(),
                    os: "linux".into(),
                    ..ImageConfig::default()
                },
            },
        }
    }

    fn stored(
        manifests: Vec<seaport_rootfs::store::PlatformImage>,
    ) -> seaport_rootfs::store::StoredImage {
        use seaport_rootfs::oci::{Descriptor, Index};
        use seaport_shared::digest::Digest;
        seaport_rootfs::store::StoredImage {
            name: seaport_rootfs::reference::ImageRef::parse("k8s:v1").unwrap(),
            descriptor: Descriptor {
                media_type: seaport_rootfs::oci::MEDIA_TYPE_INDEX.into(),
                digest: Digest::of(b"index"),
                size: 5,
                annotations: Default::default(),
                platform: None,
            },
            index: Some(Index::new()),
            manifests,
        }
    }

    #[test]
    fn each_host_gets_its_platforms_manifest_and_missing_platforms_name_the_hosts() {
        use seaport_rootfs::oci::MEDIA_TYPE_LAYER_ZSTD;
        use seaport_shared::digest::Digest;
        let both = stored(vec![
            platform_image("amd64", MEDIA_TYPE_LAYER_ZSTD),
            platform_image("arm64", "application/vnd.docker.image.rootfs.diff.tar.gzip"),
        ]);
        let hosts = vec![
            ("10.0.0.1".to_string(), "x86_64".to_string()),
            ("10.0.0.2".to_string(), "aarch64".to_string()),
            // No architecture reported yet: left to its agent.
            ("10.0.0.3".to_string(), String::new()),
        ];
        let m = host_manifests(&both, &hosts).unwrap();
        assert_eq!(m["10.0.0.1"], Digest::of(b"amd64 manifest"));
        assert_eq!(m["10.0.0.2"], Digest::of(b"arm64 manifest"));
        assert!(!m.contains_key("10.0.0.3"));

        let arm_only = stored(vec![platform_image("arm64", MEDIA_TYPE_LAYER_ZSTD)]);
        let amd_hosts = vec![
            ("10.0.0.1".to_string(), "x86_64".to_string()),
            ("10.0.0.2".to_string(), "x86_64".to_string()),
            ("10.0.0.4".to_string(), "aarch64".to_string()),
        ];
        let msg = host_manifests(&arm_only, &amd_hosts)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("10.0.0.1 (linux/amd64), 10.0.0.2 (linux/amd64)")
                && !msg.contains("10.0.0.4")
                && msg.contains("the image has: linux/arm64")
                && msg.contains("k8s:v1"),
            "{msg}"
        );

        let odd = stored(vec![platform_image("amd64", "application/x-odd")]);
        let msg = host_manifests(&odd, &hosts[..1]).unwrap_err().to_string();
        assert!(
            msg.contains("application/x-odd") && msg.contains("linux/amd64"),
            "{msg}"
        );
    }

    #[test]
    fn a_claim_without_evidence_binds_nothing() {
        let h = hosts(&["10.0.0.1"], &[]);
        // The real host, and a node that also reports its IP but connects
        // from elsewhere: listed first, so "the first wins" would pick it.
        let real = node("b-real", &["10.0.0.1"], Some("10.0.0.1"));
        let liar = node("a-liar", &["10.0.0.1", "10.0.0.7"], Some("10.0.0.7"));
        let m = match_nodes(&h, &[liar.clone(), real.clone()]).unwrap();
        assert_eq!(m["10.0.0.1"], "b-real");
        // Without the real host, the claim is named, not obeyed.
        let err = match_nodes(&h, std::slice::from_ref(&liar)).unwrap_err();
        assert!(
            matches!(&err, PlanError::Unbound { claims, .. } if claims[0].0 == "a-liar"),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("connects from 10.0.0.7") && msg.contains("seaport nodes approve"),
            "{msg}"
        );
        // An admin's approval is evidence.
        let mut approved = liar.clone();
        approved.approved_ips = vec!["10.0.0.1".into()];
        assert_eq!(
            match_nodes(&h, std::slice::from_ref(&approved)).unwrap()["10.0.0.1"],
            "a-liar"
        );
    }

    #[test]
    fn two_bound_nodes_are_an_error_naming_both() {
        let h = hosts(&["10.0.0.1"], &[]);
        let a = node("a", &["10.0.0.1"], Some("10.0.0.1"));
        let mut b = node("b", &["10.0.0.2"], Some("10.0.0.2"));
        b.approved_ips = vec!["10.0.0.1".into()];
        let err = match_nodes(&h, &[a, b]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("a (by connection)") && msg.contains("b (by approved)"),
            "{msg}"
        );
    }

    #[test]
    fn a_removed_nodes_ip_needs_an_approval_for_a_new_node() {
        let h = hosts(&["10.0.0.1"], &[]);
        let mut old = node("old", &["10.0.0.1"], Some("10.0.0.1"));
        old.revoked = true;
        let new = node("new", &["10.0.0.1"], Some("10.0.0.1"));
        let err = match_nodes(&h, &[old.clone(), new.clone()]).unwrap_err();
        assert_eq!(
            err,
            PlanError::Held {
                ip: "10.0.0.1".into(),
                node: "new".into(),
                removed: "old".into()
            }
        );
        let mut approved = new;
        approved.approved_ips = vec!["10.0.0.1".into()];
        assert_eq!(
            match_nodes(&h, &[old, approved]).unwrap()["10.0.0.1"],
            "new"
        );
    }

    #[test]
    fn one_node_serves_one_host() {
        let h = hosts(&["10.0.0.1"], &["10.0.0.2"]);
        let mut a = node("a", &["10.0.0.1"], Some("10.0.0.1"));
        a.approved_ips = vec!["10.0.0.2".into()];
        assert!(matches!(
            match_nodes(&h, &[a]),
            Err(PlanError::SameNode { .. })
        ));
    }

    #[test]
    fn hostnames_are_unique_in_a_cluster() {
        let ok = vec![
            ("10.0.0.1".into(), "a".into(), "master".into()),
            ("10.0.0.2".into(), "b".into(), "worker".into()),
            ("10.0.0.3".into(), "c".into(), String::new()),
            ("10.0.0.4".into(), "d".into(), String::new()),
        ];
        check_hostnames(&ok).unwrap();
        let mut bad = ok;
        bad.push(("10.0.0.5".into(), "e".into(), "MASTER".into()));
        let err = check_hostnames(&bad).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("hostname master")
                && msg.contains("10.0.0.1 (node a)")
                && msg.contains("10.0.0.5 (node e)"),
            "{msg}"
        );
    }
}
