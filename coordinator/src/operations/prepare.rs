//! From a request to an operation, without I/O: what the cluster should
//! be ([`desired`]), then the operation that gets it there ([`prepare`]):
//! its kind, stages, every host's role and node, and the record that
//! drives it. The caller reads the previous record, the nodes and the
//! image; everything here is a function of them, so it is unit-tested
//! without a coordinator.

use std::collections::BTreeMap;

use seaport_rootfs::store::StoredImage;
use seaport_shared::cluster::{ClusterName, ImageDigest, OperationKind, Role};
use seaport_shared::wire::{PlannedApply, PlannedHost, RunRequest, RunState};

use super::error::OperationError;
use super::record::{Cluster, HostRecord};
use crate::clusterfile::Clusterfile;
use crate::converge::{self, Current, DesiredHost, RegistryTlsSpec, Spec, StageSpec};
use crate::plan::{self, HostRole, HostSpec};
use crate::records::NodeRecord;

/// What a request wants the cluster to become.
#[derive(Clone, Debug)]
pub enum Want {
    /// `seaport run IMAGE -m -n -e`.
    Run(RunRequest),
    /// `seaport apply -f Clusterfile`.
    Clusterfile(String),
    /// `seaport join`.
    Join {
        cluster: ClusterName,
        masters: Vec<String>,
        nodes: Vec<String>,
    },
    /// `seaport delete -m/-n`.
    Remove {
        cluster: ClusterName,
        ips: Vec<String>,
        /// Leave out hosts whose agents are offline (`--force`).
        force: bool,
    },
}

impl Want {
    /// The request, for the audit log.
    pub fn describe(&self) -> String {
        match self {
            Want::Run(r) => format!(
                "run {} on cluster {} (masters {}, nodes {})",
                r.image,
                r.cluster,
                r.masters.join(","),
                r.nodes.join(",")
            ),
            Want::Clusterfile(text) => format!(
                "apply a Clusterfile ({} bytes, sha256 {})",
                text.len(),
                seaport_shared::digest::Digest::of(text.as_bytes()).hex()
            ),
            Want::Join {
                cluster,
                masters,
                nodes,
            } => format!(
                "join masters [{}] nodes [{}] to cluster {cluster}",
                masters.join(","),
                nodes.join(",")
            ),
            Want::Remove {
                cluster,
                ips,
                force,
            } => format!(
                "remove [{}] from cluster {cluster}{}",
                ips.join(","),
                if *force { " --force" } else { "" }
            ),
        }
    }

    /// The cluster it names, when it names an existing one (join, remove).
    pub fn existing_cluster(&self) -> Option<&ClusterName> {
        match self {
            Want::Join { cluster, .. } | Want::Remove { cluster, .. } => Some(cluster),
            Want::Run(_) | Want::Clusterfile(_) => None,
        }
    }
}

/// What a request wants: the cluster's name, its spec, and what the
/// Clusterfile holds that is accepted but ignored.
#[derive(Clone, Debug)]
pub struct Desired {
    pub name: ClusterName,
    pub spec: Spec,
    pub warnings: Vec<String>,
}

/// The image of an operation, resolved once from its name.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The name as asked.
    pub name: String,
    /// What it resolved to.
    pub digest: ImageDigest,
    /// Whether it has something to launch (CMDS, LAUNCH) on any platform.
    pub has_launch: bool,
    /// The stored image (each host's platform is checked against it).
    pub stored: StoredImage,
    /// The Kubernetes version it names (its first platform's).
    pub kube_version: Option<String>,
}

impl ResolvedImage {
    /// The image `name` as `stored`.
    pub fn new(name: &str, stored: StoredImage) -> ResolvedImage {
        let has_launch = stored.manifests.iter().any(|m| {
            m.image
                .manifest
                .annotations
                .get(seaport_rootfs::oci::ANNOTATION_SEALER_EXTENSION)
                .and_then(|t| serde_json::from_str::<seaport_rootfs::oci::ImageExtension>(t).ok())
                .is_some_and(|e| !e.launch.cmds.is_empty() || !e.launch.app_names.is_empty())
        });
        let kube_version = stored
            .manifests
            .iter()
            .find_map(|m| converge::image_kube_version(&m.image));
        ResolvedImage {
            name: name.to_string(),
            digest: stored.digest().into(),
            has_launch,
            kube_version,
            stored,
        }
    }
}

/// One operation, computed once.
#[derive(Clone, Debug)]
pub struct Operation {
    pub kind: OperationKind,
    pub stages: Vec<StageSpec>,
    /// Every host it touches with its role (hosts leaving included).
    pub roles: Vec<(String, Role)>,
    pub image: ResolvedImage,
}

/// An operation ready to start (or to show, for a dry run).
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The record that drives it.
    pub cluster: Cluster,
    pub operation: Operation,
    pub warnings: Vec<String>,
    /// IP to node id of the hosts that have an agent.
    pub matched: BTreeMap<String, String>,
}

impl Prepared {
    /// What a dry run shows.
    pub fn planned(&self) -> PlannedApply {
        let c = &self.cluster;
        let master0 = c.master0();
        PlannedApply {
            cluster: c.name.clone(),
            image: c.image.clone(),
            operation: self.operation.kind,
            stages: c.stages.iter().map(|s| s.name.clone()).collect(),
            hosts: c
                .hosts
                .iter()
                .map(|h| PlannedHost {
                    ip: h.ip.clone(),
                    role: h.role,
                    node: self.matched.get(&h.ip).cloned(),
                    stages: c
                        .stages
                        .iter()
                        .filter(|s| s.hosts(&master0).contains(&h.ip))
                        .map(|s| s.name.clone())
                        .collect(),
                })
                .collect(),
            warnings: self.warnings.clone(),
        }
    }
}

fn host(ip: &str, role: HostRole) -> DesiredHost {
    DesiredHost {
        ip: ip.to_string(),
        role,
        roles: vec![match role {
            HostRole::Master => "master".into(),
            HostRole::Node => "node".into(),
        }],
        env: vec![],
        labels: BTreeMap::new(),
        taints: vec![],
    }
}

/// The spec a Clusterfile asks for, its cluster name and warnings.
pub fn spec_of_clusterfile(text: &str) -> Result<Desired, OperationError> {
    let file = Clusterfile::parse(text)?;
    let resolved = file.resolve()?;
    let hosts = resolved
        .masters()
        .chain(resolved.nodes())
        .map(|h| DesiredHost {
            ip: h.ip.to_string(),
            role: h.role,
            roles: h.roles.clone(),
            env: h.own_env.clone(),
            labels: h.labels.clone(),
            taints: h.taints.iter().map(|t| t.to_string()).collect(),
        })
        .collect();
    let spec = Spec {
        image: resolved.image.clone(),
        hosts,
        env: resolved.env.clone(),
        clusterfile: Some(text.to_string()),
        registry_master0_only: resolved.registry.local.as_ref().is_some_and(|l| !l.ha),
        registry_auth: resolved.registry.local.as_ref().and_then(|l| {
            Some(seaport_shared::wire::RegistryCredentials {
                username: l.username.clone()?,
                password: l.password.clone()?,
            })
        }),
        registry_tls: registry_tls(resolved.registry.local.as_ref())?,
    };
    Ok(Desired {
        name: resolved.name.clone(),
        spec,
        warnings: file.warnings.iter().map(|w| w.to_string()).collect(),
    })
}

/// The local registry's certificate: the one the Clusterfile gives, or a
/// new CA and certificate for the domain and `cert.subjectAltName` (kept
/// from the cluster's record by [`prepare`] when made for the same
/// names); none when it serves plain HTTP.
fn registry_tls(
    local: Option<&crate::clusterfile::ResolvedLocalRegistry>,
) -> Result<Option<RegistryTlsSpec>, OperationError> {
    let Some(l) = local.filter(|l| !l.insecure) else {
        return Ok(None);
    };
    if let Some(given) = &l.cert_given {
        return Ok(Some(RegistryTlsSpec {
            domain: l.domain.clone(),
            generated_for: None,
            cert: given.clone(),
        }));
    }
    let mut names = vec![l.domain.clone()];
    names.extend(l.cert_dns_names.iter().cloned());
    names.extend(l.cert_ips.iter().map(|ip| ip.to_string()));
    let cert = seaport_shared::registry_cert::generate(&l.domain, &l.cert_dns_names, &l.cert_ips)
        .map_err(OperationError::RegistryCert)?;
    Ok(Some(RegistryTlsSpec {
        domain: l.domain.clone(),
        generated_for: Some(names),
        cert,
    }))
}

/// The local registry of a cluster without a Clusterfile: sealer's
/// defaults, the domain the env names (`RegistryDomain`, else
/// `registry_domain`, as the agents read it) or `sea.hub`.
fn default_local_registry(env: &[(String, String)]) -> crate::clusterfile::ResolvedLocalRegistry {
    let named = |key: &str| {
        env.iter()
            .rev()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    crate::clusterfile::ResolvedLocalRegistry {
        domain: named("registry_domain")
            .or_else(|| named("RegistryDomain"))
            .unwrap_or_else(|| crate::clusterfile::DEFAULT_REGISTRY_DOMAIN.to_string()),
        port: crate::clusterfile::DEFAULT_REGISTRY_PORT,
        username: None,
        password: None,
        ha: true,
        insecure: false,
        cert_dns_names: vec![],
        cert_ips: vec![],
        cert_given: None,
    }
}

/// What `want` asks the cluster to become. `previous` is the cluster's
/// record, for requests that change an existing cluster.
pub fn desired(want: Want, previous: Option<&Cluster>) -> Result<Desired, OperationError> {
    let live = |cluster: &ClusterName| {
        previous.filter(|c| c.state != RunState::Deleted && c.name == *cluster)
    };
    Ok(match want {
        Want::Run(r) => Desired {
            spec: Spec {
                image: r.image.clone(),
                hosts: r
                    .masters
                    .iter()
                    .map(|ip| host(ip, HostRole::Master))
                    .chain(r.nodes.iter().map(|ip| host(ip, HostRole::Node)))
                    .collect(),
                env: r.env.clone(),
                clusterfile: None,
                registry_master0_only: false,
                registry_auth: None,
                // sealer's default local registry: TLS for its domain.
                registry_tls: registry_tls(Some(&default_local_registry(&r.env)))?,
            },
            name: r.cluster,
            warnings: vec![],
        },
        Want::Clusterfile(text) => spec_of_clusterfile(&text)?,
        Want::Join {
            cluster,
            masters,
            nodes,
        } => {
            let prev =
                live(&cluster).ok_or_else(|| OperationError::NotInstalled(cluster.clone()))?;
            let mut spec = prev.spec.clone();
            for (ips, role) in [(&masters, HostRole::Master), (&nodes, HostRole::Node)] {
                for ip in ips {
                    if spec.hosts.iter().any(|h| &h.ip == ip) {
                        return Err(OperationError::AlreadyAHost {
                            ip: ip.clone(),
                            cluster,
                        });
                    }
                    spec.hosts.push(host(ip, role));
                }
            }
            // Masters stay first.
            spec.hosts.sort_by_key(|h| h.role);
            Desired {
                name: cluster,
                spec,
                warnings: vec![],
            }
        }
        Want::Remove { cluster, ips, .. } => {
            let prev =
                live(&cluster).ok_or_else(|| OperationError::NoSuchCluster(cluster.clone()))?;
            let mut spec = prev.spec.clone();
            for ip in &ips {
                if !spec.hosts.iter().any(|h| &h.ip == ip) {
                    return Err(OperationError::NotAHost {
                        ip: ip.clone(),
                        cluster,
                    });
                }
            }
            spec.hosts.retain(|h| !ips.contains(&h.ip));
            Desired {
                name: cluster,
                spec,
                warnings: vec![],
            }
        }
    })
}

/// Everything [`prepare`] needs, read by its caller.
pub struct PrepareInput<'a> {
    pub desired: Desired,
    /// The cluster's record, if it has one.
    pub previous: Option<&'a Cluster>,
    /// Every enrolled node.
    pub nodes: &'a [NodeRecord],
    /// The spec's image, resolved.
    pub image: ResolvedImage,
    /// Show what it can (hosts without an agent become warnings) rather
    /// than refuse.
    pub dry_run: bool,
    /// Now, in Unix seconds.
    pub now: i64,
}

/// The operation that takes the cluster to `desired`, and its record.
pub fn prepare(input: PrepareInput<'_>) -> Result<Prepared, OperationError> {
    let PrepareInput {
        desired,
        previous: prev,
        nodes: records,
        image,
        dry_run,
        now,
    } = input;
    let Desired {
        name,
        mut spec,
        mut warnings,
    } = desired;
    if let Some(p) = prev {
        if p.state == RunState::Deleting {
            return Err(OperationError::BeingDeleted(p.name.clone()));
        }
        // One generated registry certificate per cluster: kept while the
        // Clusterfile asks for the same names, so every registry host
        // serves the same chain and the hosts' trust stays valid.
        if let (Some(new), Some(old)) = (&mut spec.registry_tls, &p.spec.registry_tls) {
            if new.generated_for.is_some() && new.generated_for == old.generated_for {
                new.cert = old.cert.clone();
            }
        }
    }
    // What the hosts run: only a cluster whose last operation succeeded is
    // planned against; after a failure every step runs again (agents skip
    // what is done). A failed upgrade is planned as the upgrade again, so
    // applying the image once more finishes it (the control plane included).
    let installed = prev
        .filter(|p| {
            p.state == RunState::Succeeded
                || (p.state == RunState::Failed && p.operation == Some(OperationKind::Upgrade))
        })
        .and_then(|p| p.installed_digest.map(|d| (p, d)));
    let current = installed.map(|(p, d)| Current {
        image_digest: d,
        hosts: p.hosts.iter().map(|h| (h.ip.clone(), h.role)).collect(),
        kube_version: p.installed_kube_version.clone(),
    });
    let converged = converge::stages(
        &name,
        current.as_ref(),
        &spec,
        image.digest,
        image.has_launch,
        image.kube_version.as_deref(),
    )?;
    // Hosts leaving stay in the record until the operation forgets them.
    let mut roles = converged.roles.clone();
    if let Some((p, _)) = installed {
        for h in &p.hosts {
            if !roles.iter().any(|(ip, _)| *ip == h.ip) {
                roles.push((h.ip.clone(), h.role));
            }
        }
    }
    let specs: Vec<HostSpec> = roles
        .iter()
        .map(|(ip, r)| HostSpec {
            ip: ip.clone(),
            role: if *r == Role::Node {
                HostRole::Node
            } else {
                HostRole::Master
            },
        })
        .collect();
    // Hosts go to the nodes bound to their IPs by evidence; a dry run shows
    // what it can and names the rest among its warnings.
    let matched: BTreeMap<String, String> = if dry_run {
        let mut m = BTreeMap::new();
        for h in &specs {
            match plan::bind_host(&h.ip, records) {
                Ok(Some(id)) => {
                    m.insert(h.ip.clone(), id);
                }
                Ok(None) => {}
                Err(e) => warnings.push(e.to_string()),
            }
        }
        m
    } else {
        plan::match_nodes(&specs, records)?
    };
    // Every host of the spec must have a manifest of its own platform.
    let platforms: Vec<(String, String)> = spec
        .hosts
        .iter()
        .filter_map(|h| {
            let id = matched.get(&h.ip)?;
            let rec = records.iter().find(|r| &r.node_id == id)?;
            Some((h.ip.clone(), rec.arch.clone()))
        })
        .collect();
    plan::host_manifests(&image.stored, &platforms)?;
    let hostname_of = |node_id: &str| {
        records
            .iter()
            .find(|r| r.node_id == node_id)
            .map(|r| r.hostname.clone())
            .unwrap_or_default()
    };
    // Kubernetes names nodes by hostname, and removing a host deletes the
    // node of its name: two hosts of one cluster must not share one.
    let named: Vec<(String, String, String)> = matched
        .iter()
        .map(|(ip, id)| (ip.clone(), id.clone(), hostname_of(id)))
        .collect();
    if let Err(e) = plan::check_hostnames(&named) {
        if dry_run {
            warnings.push(e.to_string());
        } else {
            return Err(e.into());
        }
    }
    let hosts = roles
        .iter()
        .map(|(ip, role)| {
            let node_id = matched.get(ip).cloned().unwrap_or_default();
            let hostname = hostname_of(&node_id);
            HostRecord {
                ip: ip.clone(),
                node_id,
                hostname,
                role: *role,
                phase: "pending".into(),
                fetched_bytes: 0,
                total_bytes: 0,
                steps: vec![],
                error: None,
            }
        })
        .collect();
    let cluster = Cluster {
        name,
        image: spec.image.clone(),
        manifest_digest: image.digest,
        generation: prev.map_or(1, |p| p.generation + 1),
        state: RunState::Running,
        spec,
        stages: converged.stages.clone(),
        stages_done: 0,
        hosts,
        image_plugins: prev.map(|p| p.image_plugins.clone()).unwrap_or_default(),
        join_data: prev.and_then(|p| p.join_data.clone()),
        started_at: now,
        finished_at: None,
        error: None,
        installed_digest: prev.and_then(|p| p.installed_digest),
        kube_version: image.kube_version.clone(),
        installed_kube_version: prev.and_then(|p| p.installed_kube_version.clone()),
        force: false,
        left_out: vec![],
        started_by: String::new(),
        operation: Some(converged.kind),
    };
    Ok(Prepared {
        cluster,
        operation: Operation {
            kind: converged.kind,
            stages: converged.stages,
            roles,
            image,
        },
        warnings,
        matched,
    })
}

/// Marks `c` for deletion: a new generation whose stages reset every host.
pub(super) fn deleting(mut c: Cluster, prune: bool, force: bool, who: &str, now: i64) -> Cluster {
    c.generation += 1;
    c.force = force;
    c.left_out.clear();
    c.state = RunState::Deleting;
    c.error = None;
    c.started_at = now;
    c.finished_at = None;
    let ips: Vec<String> = c.hosts.iter().map(|h| h.ip.clone()).collect();
    c.stages = converge::uninstall(&ips, prune);
    c.operation = Some(OperationKind::Uninstall);
    c.started_by = who.to_string();
    c.stages_done = 0;
    for h in &mut c.hosts {
        h.phase = "pending".into();
        h.error = None;
        h.steps = vec![];
    }
    c
}
