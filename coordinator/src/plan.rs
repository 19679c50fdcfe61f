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
//! compared as is. [`match_nodes`] maps host IPs to enrolled nodes and says
//! how to bootstrap a host that has no agent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

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
    pub cluster: String,
    /// The image's manifest digest.
    pub image: String,
    /// The hosts, masters first in the order given (the first is master0).
    pub hosts: Vec<HostSpec>,
    /// Registry hosts; empty means the first master.
    pub registry_hosts: Vec<String>,
    /// Whether the image has apps to launch after the cluster is up.
    pub has_launch: bool,
}

/// The role a node plays in the plan (the agent's `--role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// The first master.
    Master0,
    /// Another master.
    Master,
    /// A worker.
    Node,
}

/// Work for one host in one phase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// The host.
    pub host: String,
    /// Its role.
    pub role: NodeRole,
    /// The agent steps, in order.
    pub steps: Vec<String>,
}

/// A phase: its tasks run in parallel; phases run one after another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase {
    /// e.g. `runtime`, `join-master-1`.
    pub name: String,
    /// The tasks.
    pub tasks: Vec<Task>,
}

/// The plan of an install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The cluster.
    pub cluster: String,
    /// The image.
    pub image: String,
    /// The phases, in order.
    pub phases: Vec<Phase>,
}

impl Plan {
    /// Every step of `host`, in the order it runs.
    pub fn steps_of(&self, host: &str) -> Vec<String> {
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
        HostRole::Master if h.ip == master0.ip => NodeRole::Master0,
        HostRole::Master => NodeRole::Master,
        HostRole::Node => NodeRole::Node,
    };
    let ordered: Vec<&HostSpec> = masters.iter().chain(nodes.iter()).copied().collect();
    let all = |steps: &[&str]| -> Vec<Task> {
        ordered
            .iter()
            .map(|h| Task {
                host: h.ip.clone(),
                role: role_of(h),
                steps: steps.iter().map(|s| s.to_string()).collect(),
            })
            .collect()
    };
    let mut phases = vec![
        Phase {
            name: "rootfs".into(),
            tasks: all(&["rootfs", "render"]),
        },
        Phase {
            name: "runtime".into(),
            tasks: all(&["runtime"]),
        },
        Phase {
            name: "registry".into(),
            tasks: ordered
                .iter()
                .filter(|h| registry_hosts.contains(&h.ip))
                .map(|h| Task {
                    host: h.ip.clone(),
                    role: role_of(h),
                    steps: vec!["registry".into()],
                })
                .collect(),
        },
        Phase {
            name: "registry-access".into(),
            tasks: all(&[
                "registry-access",
                "kube-binaries",
                "hook-init",
                "hook-init-kube",
            ]),
        },
        Phase {
            name: "init-master0".into(),
            tasks: vec![Task {
                host: master0.ip.clone(),
                role: NodeRole::Master0,
                steps: vec!["kubeadm".into()],
            }],
        },
    ];
    for (i, m) in masters.iter().enumerate().skip(1) {
        phases.push(Phase {
            name: format!("join-master-{i}"),
            tasks: vec![Task {
                host: m.ip.clone(),
                role: NodeRole::Master,
                steps: vec!["kubeadm".into()],
            }],
        });
    }
    if !nodes.is_empty() {
        phases.push(Phase {
            name: "join-nodes".into(),
            tasks: nodes
                .iter()
                .map(|n| Task {
                    host: n.ip.clone(),
                    role: NodeRole::Node,
                    steps: vec!["kubeadm".into()],
                })
                .collect(),
        });
    }
    if input.has_launch {
        phases.push(Phase {
            name: "launch".into(),
            tasks: vec![Task {
                host: master0.ip.clone(),
                role: NodeRole::Master0,
                steps: vec!["launch".into()],
            }],
        });
    }
    Ok(Plan {
        cluster: input.cluster.clone(),
        image: input.image.clone(),
        phases,
    })
}

/// Maps each host IP to the enrolled node that reports it. `enrolled` is
/// (node id, its IPs). Every host without one is named in the error.
pub fn match_nodes(
    hosts: &[HostSpec],
    enrolled: &[(String, Vec<String>)],
) -> Result<BTreeMap<String, String>, PlanError> {
    let mut out = BTreeMap::new();
    let mut missing = Vec::new();
    for h in hosts {
        match enrolled.iter().find(|(_, ips)| ips.contains(&h.ip)) {
            Some((id, _)) => {
                out.insert(h.ip.clone(), id.clone());
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

#[cfg(test)]
mod tests {
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
            cluster: "c".into(),
            image: "sha256:00".into(),
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
        let names: Vec<&str> = p.phases.iter().map(|p| p.name.as_str()).collect();
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
        assert_eq!(p.phases[5].tasks[0].role, NodeRole::Master);
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
        use seaport_agent::apply::{steps_for, Role};
        // The first master's last step launches the image's apps, when it
        // has any.
        let master0 = steps_for(Role::Master0, true);
        let p = plan(&i).unwrap();
        assert_eq!(p.steps_of("10.0.0.1"), master0[..master0.len() - 1]);
        assert_eq!(p.steps_of("10.0.0.2"), steps_for(Role::Master, false));
        assert_eq!(p.steps_of("10.0.0.3"), steps_for(Role::Node, false));
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
        assert_eq!(p.phases.last().unwrap().name, "launch");
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

    #[test]
    fn hosts_without_an_agent_are_named_with_how_to_bootstrap_them() {
        let h = hosts(&["10.0.0.1"], &["10.0.0.2", "10.0.0.3"]);
        let enrolled = vec![(
            "n1".to_string(),
            vec!["10.0.0.1".to_string(), "192.168.1.1".to_string()],
        )];
        let err = match_nodes(&h, &enrolled).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("10.0.0.2, 10.0.0.3") && msg.contains("seaport bootstrap"),
            "{msg}"
        );
        let enrolled = vec![
            ("n1".to_string(), vec!["10.0.0.1".to_string()]),
            ("n2".to_string(), vec!["10.0.0.2".to_string()]),
            ("n3".to_string(), vec!["10.0.0.3".to_string()]),
        ];
        let m = match_nodes(&h, &enrolled).unwrap();
        assert_eq!(m["10.0.0.3"], "n3");
    }

    fn platform_image(arch: &str, layer_type: &str) -> seaport_rootfs::store::PlatformImage {
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
}
