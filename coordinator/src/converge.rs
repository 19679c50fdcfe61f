//! From what a cluster is to what it should be: the stages of one
//! operation (install, scale up, scale down, upgrade), in order.
//!
//! The desired state is a [`Spec`]: the image, the hosts with their roles,
//! env, labels and taints, the cluster env, and the Clusterfile it came
//! from (its plugins, configs and kubeadm documents). [`stages`] compares it
//! with the cluster's current hosts and image and returns the stages; the
//! coordinator (`crate::operations`) stores them with the cluster and runs them
//! one after another. Pure: no I/O.
//!
//! | operation | when | stages |
//! | --- | --- | --- |
//! | install | no cluster yet | fetch, rootfs, image plugins, install/start plugins, configs, runtime, registry, registry access, install/hosts-ready plugins, init, master joins, workers' API balancers, worker joins, cluster-ready plugins, labels and taints, launch, install/done plugins |
//! | scale up | new hosts | the same for the new hosts, without init (a new master runs its own registry unless `localRegistry.ha` is false; the balancers get new masters once they joined) |
//! | scale down | hosts left the spec | workers' API balancers without the leaving masters, clean plugins, `kubectl delete node`, reset, post-clean plugins, forget |
//! | upgrade | a new image | fetch, upgrade-host plugins, the host steps again on the new image (not kubeadm), configs, the control-plane upgrade when the Kubernetes version rises (drain, `kubeadm upgrade`, uncordon: master0, then each other master, then each worker), upgrade plugins |
//!
//! Labels and taints are applied at the end of every operation (they are
//! idempotent), so changing them in the Clusterfile and applying is enough.
//! An apply that both changes the image and the hosts is refused: one
//! operation at a time keeps each one resumable and its failure clear.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use seaport_shared::cluster::{ClusterName, ImageDigest, OperationKind, Phase, Role};

use crate::plan::{self, HostRole, HostSpec, PlanInput};

/// A host as the spec wants it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredHost {
    pub ip: String,
    pub role: HostRole,
    /// Roles as written (plugins select on custom ones).
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `kubectl taint` arguments (`key=value:Effect`, `key-`).
    #[serde(default)]
    pub taints: Vec<String>,
}

/// What a cluster should be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub image: String,
    /// Masters first, in order (the first is master0), then workers.
    pub hosts: Vec<DesiredHost>,
    pub env: Vec<(String, String)>,
    /// The Clusterfile text it came from, for plugins, configs and kubeadm
    /// documents.
    #[serde(default)]
    pub clusterfile: Option<String>,
    /// The Clusterfile's `localRegistry.ha: false`: the local registry on
    /// master0 only (by default every master runs one).
    #[serde(default)]
    pub registry_master0_only: bool,
    /// The Clusterfile's `localRegistry.username`/`password` (both set).
    #[serde(default)]
    pub registry_auth: Option<seaport_shared::wire::RegistryCredentials>,
    /// The local registry's TLS (`localRegistry.insecure: false` or a
    /// `cert`); none: plain HTTP.
    #[serde(default)]
    pub registry_tls: Option<RegistryTlsSpec>,
}

/// The certificate the local registry serves and every host trusts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryTlsSpec {
    /// The registry's domain (the certificate's name).
    pub domain: String,
    /// The names a generated certificate was made for (the domain, then
    /// `cert.subjectAltName`'s); none for a certificate the Clusterfile
    /// gives. The same names on a later apply keep the certificate.
    pub generated_for: Option<Vec<String>>,
    /// CA, certificate and key (the key never shows in `Debug` output).
    pub cert: seaport_shared::registry_cert::RegistryCert,
}

impl RegistryTlsSpec {
    /// What one host is sent: the CA, and on a registry host the
    /// certificate and key.
    pub fn for_host(&self, registry_host: bool) -> seaport_shared::wire::RegistryTls {
        seaport_shared::wire::RegistryTls {
            ca: self.cert.ca.clone(),
            certificate: registry_host.then(|| self.cert.certificate.clone()),
            key: registry_host.then(|| self.cert.key.clone()),
        }
    }
}

impl Spec {
    pub fn ips(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.ip.clone()).collect()
    }

    pub fn master0(&self) -> Option<&DesiredHost> {
        self.hosts.iter().find(|h| h.role == HostRole::Master)
    }

    /// The hosts that run the local registry: every master, as sealer's
    /// `localRegistry.ha` (default true) has it, or master0 alone.
    pub fn registry_hosts(&self) -> Vec<String> {
        let masters = self.hosts.iter().filter(|h| h.role == HostRole::Master);
        if self.registry_master0_only {
            masters.take(1).map(|h| h.ip.clone()).collect()
        } else {
            masters.map(|h| h.ip.clone()).collect()
        }
    }
}

/// Where an operation's plugins run (names of
/// `crate::clusterfile::Operation` and `Stage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginPoint {
    Start,
    HostsReady,
    ClusterReady,
    Done,
}

/// What one stage does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Work {
    /// Preflight checks of these hosts, before anything changes them;
    /// errors of the checks in `ignore` do not stop the operation.
    Preflight {
        hosts: Vec<String>,
        #[serde(default)]
        ignore: Vec<String>,
    },
    /// The image to these hosts (layer distribution).
    Fetch { hosts: Vec<String> },
    /// Apply steps; `upgrade` moves hosts to a new image.
    Apply {
        tasks: Vec<plan::Task>,
        #[serde(default)]
        upgrade: bool,
    },
    /// The plugins of the Clusterfile and the image that fire here.
    Plugins {
        op: OperationKind,
        point: PluginPoint,
        targets: Vec<String>,
    },
    /// Read the image's `plugins/*.yaml` from the coordinator's copy.
    ImagePlugins,
    /// The Clusterfile's Config files into these hosts' rootfs.
    Configs { hosts: Vec<String> },
    /// Node labels and taints of these hosts, from master0.
    LabelsTaints { hosts: Vec<String> },
    /// `kubectl delete node` of these hosts, from master0.
    DeleteNodes { hosts: Vec<String> },
    /// Undo the install on these hosts.
    Reset { hosts: Vec<String>, prune: bool },
    /// Drop these hosts from the cluster.
    Forget { hosts: Vec<String> },
    /// The etcd members of these leaving masters, when their reset was
    /// left out (offline, `--force`), removed from master0.
    EtcdMembers { hosts: Vec<String> },
    /// The node-local API balancers of these hosts (workers) forward to
    /// these masters' API servers, and to no other; and to these registry
    /// hosts' local registries.
    Balancers {
        hosts: Vec<String>,
        masters: Vec<String>,
        #[serde(default)]
        registries: Vec<String>,
    },
    /// The control plane and kubelets to Kubernetes `version`, one host at
    /// a time in this order (master0 first: `kubeadm upgrade apply`; the
    /// others `kubeadm upgrade node`), each drained before and uncordoned
    /// after.
    ControlPlaneUpgrade { version: String, hosts: Vec<String> },
}

/// A stage: a name for status, and its work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSpec {
    pub name: String,
    pub work: Work,
}

impl StageSpec {
    /// The hosts a stage touches (for a dry run's per-host view); master0
    /// for the stages that act from it.
    pub fn hosts(&self, master0: &str) -> Vec<String> {
        match &self.work {
            Work::Fetch { hosts }
            | Work::Preflight { hosts, .. }
            | Work::Configs { hosts }
            | Work::Reset { hosts, .. }
            | Work::Forget { hosts }
            | Work::Balancers { hosts, .. }
            | Work::ControlPlaneUpgrade { hosts, .. } => hosts.clone(),
            Work::Apply { tasks, .. } => tasks.iter().map(|t| t.host.clone()).collect(),
            Work::Plugins { targets, .. } => targets.clone(),
            Work::ImagePlugins
            | Work::LabelsTaints { .. }
            | Work::DeleteNodes { .. }
            | Work::EtcdMembers { .. } => {
                vec![master0.to_string()]
            }
        }
    }
}

/// The cluster as it is, for planning.
#[derive(Clone, Debug)]
pub struct Current {
    /// The image its hosts run.
    pub image_digest: ImageDigest,
    pub hosts: Vec<(String, Role)>,
    /// The Kubernetes version of that image, when it names one.
    pub kube_version: Option<String>,
}

/// A Kubernetes release `vMAJOR.MINOR.PATCH` (a pre-release or build
/// suffix is ignored), compared by its numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KubeVersion {
    /// `v1.20.4` or `1.20.4`; None for anything else.
    pub fn parse(text: &str) -> Option<KubeVersion> {
        let t = text.trim();
        let t = t.strip_prefix('v').unwrap_or(t);
        let t = t.split(['-', '+']).next()?;
        let mut parts = t.split('.').map(|p| p.parse::<u32>().ok());
        let v = KubeVersion {
            major: parts.next()??,
            minor: parts.next()??,
            patch: parts.next()??,
        };
        parts.next().is_none().then_some(v)
    }
}

/// The Kubernetes version an image names: the `KUBEVERSION` label, else
/// the `version` of its `Metadata` file (sealer 0.8 images).
pub fn image_kube_version(image: &seaport_rootfs::store::ResolvedImage) -> Option<String> {
    if let Some(v) = image
        .config
        .config
        .labels
        .get(seaport_rootfs::oci::LABEL_KUBE_VERSION)
    {
        return Some(v.clone());
    }
    let text = image
        .manifest
        .annotations
        .get(seaport_rootfs::oci::ANNOTATION_METADATA)?;
    let meta: serde_json::Value = serde_json::from_str(text).ok()?;
    meta.get("version")
        .or_else(|| meta.get("kubeVersion"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

/// One operation, planned once: what it is, its stages, and every host of
/// the spec with the role the plan gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Converged {
    pub kind: OperationKind,
    pub stages: Vec<StageSpec>,
    pub roles: Vec<(String, Role)>,
}

/// Errors of planning an operation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvergeError {
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error("the first master is {current}; it cannot change to {wanted} (it holds the cluster's CA and registry): delete the cluster to start over")]
    Master0Changed { current: String, wanted: String },
    #[error("this apply changes the image and the hosts at once: apply the new image with the same hosts first, then change the hosts")]
    ImageAndHosts,
    #[error(
        "removing every host: use `seaport delete --all` (or --cluster) to delete the cluster"
    )]
    RemovesAll,
    #[error("the workers' API balancer: {0}")]
    ApiBalancer(#[from] seaport_rootfs::kubeadm::BalancerAddrError),
    #[error("the new image's Kubernetes version {to} is older than the cluster's {from}: kubeadm does not downgrade a control plane; apply an image of {from} or newer")]
    Downgrade { from: String, to: String },
    #[error("the new image's Kubernetes version {to} is more than one minor release above the cluster's {from}: kubeadm upgrades one minor release at a time; apply an image of each release in between first")]
    SkipsMinor { from: String, to: String },
}

/// The planner's input for a spec.
pub fn plan_input(
    cluster: &ClusterName,
    spec: &Spec,
    digest: ImageDigest,
    has_launch: bool,
) -> PlanInput {
    PlanInput {
        cluster: cluster.clone(),
        image: digest,
        hosts: spec
            .hosts
            .iter()
            .map(|h| HostSpec {
                ip: h.ip.clone(),
                role: h.role,
            })
            .collect(),
        registry_hosts: spec.registry_hosts(),
        has_launch,
    }
}

fn plugins(op: OperationKind, point: PluginPoint, targets: &[String]) -> StageSpec {
    let point_name = match point {
        PluginPoint::Start => "start",
        PluginPoint::HostsReady => "hosts-ready",
        PluginPoint::ClusterReady => "cluster-ready",
        PluginPoint::Done => "done",
    };
    StageSpec {
        name: format!("plugins:{}:{point_name}", op.slug()),
        work: Work::Plugins {
            op,
            point,
            targets: targets.to_vec(),
        },
    }
}

/// The operation that takes the cluster from `current` (none: not
/// installed) to `spec`, whose image resolved to `digest`.
pub fn stages(
    cluster: &ClusterName,
    current: Option<&Current>,
    spec: &Spec,
    digest: ImageDigest,
    has_launch: bool,
    kube_version: Option<&str>,
) -> Result<Converged, ConvergeError> {
    let plan = plan::plan(&plan_input(cluster, spec, digest, has_launch))?;
    seaport_rootfs::kubeadm::api_balancer_addr(&spec.env)?;
    let roles: Vec<(String, Role)> = spec
        .hosts
        .iter()
        .map(|h| {
            let role = plan
                .phases
                .iter()
                .flat_map(|p| &p.tasks)
                .find(|t| t.host == h.ip)
                .map_or(Role::Node, |t| t.role);
            (h.ip.clone(), role)
        })
        .collect();
    let (kind, stages) = operation(plan, current, spec, digest, kube_version)?;
    Ok(Converged {
        kind,
        stages,
        roles,
    })
}

fn operation(
    plan: plan::Plan,
    current: Option<&Current>,
    spec: &Spec,
    digest: ImageDigest,
    kube_version: Option<&str>,
) -> Result<(OperationKind, Vec<StageSpec>), ConvergeError> {
    let all = spec.ips();
    let Some(current) = current.filter(|c| !c.hosts.is_empty()) else {
        return Ok((
            OperationKind::Install,
            install(
                plan,
                &all,
                OperationKind::Install,
                &all,
                balancers(spec, &[]),
            ),
        ));
    };
    let master0 = spec.master0().map(|h| h.ip.clone()).unwrap_or_default();
    let current_master0 = current
        .hosts
        .iter()
        .find(|(_, r)| *r == Role::Master0)
        .map(|(ip, _)| ip.clone())
        .unwrap_or_default();
    if master0 != current_master0 {
        return Err(ConvergeError::Master0Changed {
            current: current_master0,
            wanted: master0,
        });
    }
    let added: Vec<String> = all
        .iter()
        .filter(|ip| !current.hosts.iter().any(|(c, _)| c == *ip))
        .cloned()
        .collect();
    let removed: Vec<String> = current
        .hosts
        .iter()
        .map(|(ip, _)| ip.clone())
        .filter(|ip| !all.contains(ip))
        .collect();
    let image_changed = current.image_digest != digest;
    if image_changed && (!added.is_empty() || !removed.is_empty()) {
        return Err(ConvergeError::ImageAndHosts);
    }
    let labels = StageSpec {
        name: "labels-taints".into(),
        work: Work::LabelsTaints { hosts: all.clone() },
    };
    if image_changed {
        let control_plane = control_plane_upgrade(current, spec, kube_version)?;
        let mut out = vec![
            StageSpec {
                name: "fetch".into(),
                work: Work::Fetch { hosts: all.clone() },
            },
            plugins(OperationKind::Upgrade, PluginPoint::Start, &all),
        ];
        for p in plan.phases {
            if matches!(
                p.phase,
                Phase::Rootfs | Phase::Runtime | Phase::Registry | Phase::RegistryAccess
            ) {
                let phase = p.phase;
                out.push(StageSpec {
                    name: format!("upgrade-{phase}"),
                    work: Work::Apply {
                        tasks: p.tasks,
                        upgrade: true,
                    },
                });
                if phase == Phase::Rootfs {
                    out.push(image_plugins());
                    out.push(configs(&all));
                }
            }
        }
        // Every host has the new binaries now (registry-access installs
        // them); the control plane moves after them.
        out.extend(control_plane);
        out.push(labels);
        out.push(plugins(OperationKind::Upgrade, PluginPoint::Done, &all));
        return Ok((OperationKind::Upgrade, out));
    }
    let mut out = Vec::new();
    let kind = if !removed.is_empty() {
        OperationKind::ScaleDown
    } else if !added.is_empty() {
        OperationKind::ScaleUp
    } else {
        OperationKind::Converge
    };
    if !removed.is_empty() {
        if removed.len() == current.hosts.len() {
            return Err(ConvergeError::RemovesAll);
        }
        out.extend(balancers(spec, &removed));
        let masters: Vec<String> = current
            .hosts
            .iter()
            .filter(|(ip, role)| removed.contains(ip) && role.is_master())
            .map(|(ip, _)| ip.clone())
            .collect();
        out.extend(scale_down(&removed, &masters));
    }
    if !added.is_empty() {
        let mut plan = plan;
        for p in &mut plan.phases {
            p.tasks.retain(|t| added.contains(&t.host));
        }
        // A new master that is a registry host gets its own registry.
        plan.phases
            .retain(|p| !p.tasks.is_empty() && p.phase != Phase::Launch);
        out.extend(install(
            plan,
            &added,
            OperationKind::ScaleUp,
            &all,
            balancers(spec, &[]),
        ));
    } else if removed.is_empty() {
        // Same hosts and image: every step again; agents skip what is done,
        // so this checks every host and repairs what is missing.
        return Ok((
            kind,
            install(
                plan,
                &all,
                OperationKind::Install,
                &all,
                balancers(spec, &[]),
            ),
        ));
    } else {
        out.push(labels);
    }
    Ok((kind, out))
}

/// The control-plane upgrade stage, when the Kubernetes version rises:
/// master0, then the other masters, then the workers, in the spec's order.
/// A lower version is refused, as is a jump of more than one minor release
/// (kubeadm refuses both); an image that names no version, or a cluster
/// whose version is not known, changes no control plane.
fn control_plane_upgrade(
    current: &Current,
    spec: &Spec,
    kube_version: Option<&str>,
) -> Result<Option<StageSpec>, ConvergeError> {
    let (Some(from_text), Some(to_text)) = (current.kube_version.as_deref(), kube_version) else {
        return Ok(None);
    };
    let (Some(from), Some(to)) = (KubeVersion::parse(from_text), KubeVersion::parse(to_text))
    else {
        return Ok(None);
    };
    let versions = || (from_text.to_string(), to_text.to_string());
    if to < from {
        let (from, to) = versions();
        return Err(ConvergeError::Downgrade { from, to });
    }
    if to.major != from.major || to.minor > from.minor + 1 {
        let (from, to) = versions();
        return Err(ConvergeError::SkipsMinor { from, to });
    }
    if to == from {
        return Ok(None);
    }
    let masters = spec.hosts.iter().filter(|h| h.role == HostRole::Master);
    let workers = spec.hosts.iter().filter(|h| h.role == HostRole::Node);
    Ok(Some(StageSpec {
        name: "control-plane-upgrade".into(),
        work: Work::ControlPlaneUpgrade {
            version: to_text.to_string(),
            hosts: masters.chain(workers).map(|h| h.ip.clone()).collect(),
        },
    }))
}

fn image_plugins() -> StageSpec {
    StageSpec {
        name: "image-plugins".into(),
        work: Work::ImagePlugins,
    }
}

fn configs(hosts: &[String]) -> StageSpec {
    StageSpec {
        name: "configs".into(),
        work: Work::Configs {
            hosts: hosts.to_vec(),
        },
    }
}

/// The stage that gives every worker of `spec` (but those `leaving`) the
/// masters of `spec` (but those `leaving`) as its API balancer's backends,
/// and the registry hosts as its registry balancer's; none when no worker
/// stays.
fn balancers(spec: &Spec, leaving: &[String]) -> Option<StageSpec> {
    let stays = |h: &&DesiredHost| !leaving.contains(&h.ip);
    let of = |role| -> Vec<String> {
        spec.hosts
            .iter()
            .filter(stays)
            .filter(|h| h.role == role)
            .map(|h| h.ip.clone())
            .collect()
    };
    let hosts = of(HostRole::Node);
    let registries = spec
        .registry_hosts()
        .into_iter()
        .filter(|ip| !leaving.contains(ip))
        .collect();
    (!hosts.is_empty()).then(|| StageSpec {
        name: "balancers".into(),
        work: Work::Balancers {
            hosts,
            masters: of(HostRole::Master),
            registries,
        },
    })
}

/// Install (or scale-up) stages for `targets` from the plan's phases. The
/// workers' balancers get the masters once every master of the plan
/// joined, before any worker joins.
fn install(
    plan: plan::Plan,
    targets: &[String],
    op: OperationKind,
    all: &[String],
    mut balancers: Option<StageSpec>,
) -> Vec<StageSpec> {
    let mut out = vec![StageSpec {
        name: "fetch".into(),
        work: Work::Fetch {
            hosts: targets.to_vec(),
        },
    }];
    let mut cluster_ready_done = false;
    let last_join = plan.phases.iter().rposition(|p| p.phase.is_kubeadm());
    let balancers_at = plan
        .phases
        .iter()
        .position(|p| p.phase == Phase::JoinNodes)
        .or_else(|| {
            plan.phases
                .iter()
                .rposition(|p| matches!(p.phase, Phase::InitMaster0 | Phase::JoinMaster(_)))
                .map(|i| i + 1)
        });
    for (i, p) in plan.phases.into_iter().enumerate() {
        let phase = p.phase;
        if Some(i) == balancers_at {
            out.extend(balancers.take());
        }
        let name = phase.to_string();
        let hosts_ready_done = out.iter().any(|s| {
            matches!(
                &s.work,
                Work::Plugins {
                    point: PluginPoint::HostsReady,
                    ..
                }
            )
        });
        if phase.is_kubeadm() && !hosts_ready_done {
            out.push(plugins(op, PluginPoint::HostsReady, targets));
        }
        if phase == Phase::Launch && !cluster_ready_done {
            out.push(plugins(op, PluginPoint::ClusterReady, targets));
            out.push(labels_for(all));
            cluster_ready_done = true;
        }
        out.push(StageSpec {
            name: name.clone(),
            work: Work::Apply {
                tasks: p.tasks,
                upgrade: false,
            },
        });
        if phase == Phase::Rootfs {
            // The start plugins run once the rootfs is on the hosts: they
            // start in it and are journaled with the install.
            out.push(image_plugins());
            out.push(plugins(op, PluginPoint::Start, targets));
            out.push(configs(targets));
        }
        if Some(i) == last_join && !cluster_ready_done {
            out.push(plugins(op, PluginPoint::ClusterReady, targets));
            out.push(labels_for(all));
            cluster_ready_done = true;
        }
    }
    if balancers_at.is_some() {
        out.extend(balancers.take());
    }
    out.push(plugins(op, PluginPoint::Done, targets));
    out
}

fn labels_for(hosts: &[String]) -> StageSpec {
    StageSpec {
        name: "labels-taints".into(),
        work: Work::LabelsTaints {
            hosts: hosts.to_vec(),
        },
    }
}

/// Stages that remove `hosts` from a running cluster; `masters` are the
/// masters among them (their etcd members go too: by their reset, or from
/// master0 when the reset was left out).
pub fn scale_down(hosts: &[String], masters: &[String]) -> Vec<StageSpec> {
    let mut out = vec![
        plugins(OperationKind::ScaleDown, PluginPoint::Start, hosts),
        StageSpec {
            name: "delete-nodes".into(),
            work: Work::DeleteNodes {
                hosts: hosts.to_vec(),
            },
        },
        StageSpec {
            name: "reset".into(),
            work: Work::Reset {
                hosts: hosts.to_vec(),
                prune: true,
            },
        },
    ];
    if !masters.is_empty() {
        out.push(StageSpec {
            name: "etcd-members".into(),
            work: Work::EtcdMembers {
                hosts: masters.to_vec(),
            },
        });
    }
    out.extend([
        plugins(OperationKind::ScaleDown, PluginPoint::Done, hosts),
        StageSpec {
            name: "forget".into(),
            work: Work::Forget {
                hosts: hosts.to_vec(),
            },
        },
    ]);
    out
}

/// Stages that delete the whole cluster.
pub fn uninstall(hosts: &[String], prune: bool) -> Vec<StageSpec> {
    vec![
        plugins(OperationKind::Uninstall, PluginPoint::Start, hosts),
        StageSpec {
            name: "reset".into(),
            work: Work::Reset {
                hosts: hosts.to_vec(),
                prune,
            },
        },
        plugins(OperationKind::Uninstall, PluginPoint::Done, hosts),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use seaport_shared::cluster::Step;

    fn c() -> ClusterName {
        ClusterName::parse("c").unwrap()
    }

    fn d(s: &str) -> ImageDigest {
        seaport_shared::digest::Digest::of(s.as_bytes()).into()
    }

    fn spec(masters: &[&str], nodes: &[&str], image: &str) -> Spec {
        let host = |ip: &&str, role| DesiredHost {
            ip: ip.to_string(),
            role,
            roles: vec![],
            env: vec![],
            labels: BTreeMap::new(),
            taints: vec![],
        };
        Spec {
            image: image.into(),
            hosts: masters
                .iter()
                .map(|ip| host(ip, HostRole::Master))
                .chain(nodes.iter().map(|ip| host(ip, HostRole::Node)))
                .collect(),
            env: vec![],
            clusterfile: None,
            registry_master0_only: false,
            registry_auth: None,
            registry_tls: None,
        }
    }

    fn names(s: &[StageSpec]) -> Vec<&str> {
        s.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn an_install_runs_sealers_order_with_plugins_between() {
        let s = stages(
            &c(),
            None,
            &spec(&["10.0.0.1"], &["10.0.0.2"], "i"),
            d("d1"),
            false,
            None,
        )
        .unwrap()
        .stages;
        assert_eq!(
            names(&s),
            [
                "fetch",
                "rootfs",
                "image-plugins",
                "plugins:install:start",
                "configs",
                "runtime",
                "registry",
                "registry-access",
                "plugins:install:hosts-ready",
                "init-master0",
                "balancers",
                "join-nodes",
                "plugins:install:cluster-ready",
                "labels-taints",
                "plugins:install:done",
            ]
        );
    }

    #[test]
    fn new_hosts_scale_up_leaving_hosts_scale_down_and_a_new_image_upgrades() {
        let current = Current {
            image_digest: d("d1"),
            hosts: vec![
                ("10.0.0.1".into(), Role::Master0),
                ("10.0.0.2".into(), Role::Node),
            ],
            kube_version: None,
        };
        let up = stages(
            &c(),
            Some(&current),
            &spec(&["10.0.0.1"], &["10.0.0.2", "10.0.0.3"], "i"),
            d("d1"),
            false,
            None,
        )
        .unwrap()
        .stages;
        assert!(!names(&up).contains(&"init-master0") && !names(&up).contains(&"registry"));
        for s in &up {
            if let Work::Apply { tasks, .. } = &s.work {
                assert!(tasks.iter().all(|t| t.host == "10.0.0.3"), "{s:?}");
            }
        }
        assert!(names(&up).contains(&"join-nodes"));

        let down = stages(
            &c(),
            Some(&current),
            &spec(&["10.0.0.1"], &[], "i"),
            d("d1"),
            false,
            None,
        )
        .unwrap()
        .stages;
        assert_eq!(
            names(&down),
            [
                "plugins:scale-down:start",
                "delete-nodes",
                "reset",
                "plugins:scale-down:done",
                "forget",
                "labels-taints"
            ]
        );

        let upgrade = stages(
            &c(),
            Some(&current),
            &spec(&["10.0.0.1"], &["10.0.0.2"], "i2"),
            d("d2"),
            false,
            None,
        )
        .unwrap()
        .stages;
        assert!(upgrade.iter().all(|s| !matches!(
            &s.work,
            Work::Apply { tasks, .. } if tasks.iter().any(|t| t.steps.contains(&Step::Kubeadm))
        )));
        assert!(upgrade
            .iter()
            .any(|s| matches!(&s.work, Work::Apply { upgrade: true, .. })));

        assert_eq!(
            stages(
                &c(),
                Some(&current),
                &spec(&["10.0.0.1"], &["10.0.0.3"], "i2"),
                d("d2"),
                false,
                None
            )
            .unwrap_err(),
            ConvergeError::ImageAndHosts
        );
        assert!(matches!(
            stages(
                &c(),
                Some(&current),
                &spec(&["10.0.0.9"], &["10.0.0.2"], "i"),
                d("d1"),
                false,
                None
            ),
            Err(ConvergeError::Master0Changed { .. })
        ));
    }

    #[test]
    fn a_newer_kubernetes_version_upgrades_the_control_plane_after_the_hosts_binaries() {
        let current = Current {
            image_digest: d("d1"),
            hosts: vec![
                ("10.0.0.1".into(), Role::Master0),
                ("10.0.0.2".into(), Role::Master),
                ("10.0.0.3".into(), Role::Node),
            ],
            kube_version: Some("v1.19.8".into()),
        };
        let s = stages(
            &c(),
            Some(&current),
            &spec(&["10.0.0.1", "10.0.0.2"], &["10.0.0.3"], "i2"),
            d("d2"),
            false,
            Some("v1.20.4"),
        )
        .unwrap()
        .stages;
        let n = names(&s);
        let at = |name: &str| n.iter().position(|x| *x == name).unwrap();
        assert_eq!(
            at("control-plane-upgrade"),
            at("upgrade-registry-access") + 1
        );
        assert!(at("control-plane-upgrade") < at("plugins:upgrade:done"));
        assert_eq!(
            s[at("control-plane-upgrade")].work,
            Work::ControlPlaneUpgrade {
                version: "v1.20.4".into(),
                hosts: vec!["10.0.0.1".into(), "10.0.0.2".into(), "10.0.0.3".into()],
            }
        );
        assert_eq!(
            KubeVersion::parse("v1.20.4-rc.1").map(|v| v.minor),
            Some(20)
        );
        assert_eq!(KubeVersion::parse("latest"), None);
    }
}
