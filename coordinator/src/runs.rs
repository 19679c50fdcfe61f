//! Operations on clusters: the coordinator drives every host's agent
//! through the stages of an install, scale up or down, upgrade or delete
//! ([`crate::converge`]), one stage after another.
//!
//! An operation is a [`Cluster`] record in the state database, written after
//! every step event in one committed transaction. It holds the desired
//! [`Spec`], the stages and how many are finished, every host's steps and
//! the first master's join data. Stages: `fetch` (the image to the hosts
//! through [`crate::distribution`]), apply phases (each host's part sent on
//! a `Task` stream of its session), plugins (the Clusterfile's and the
//! image's, at the phases sealer runs them; the image's read from the
//! coordinator's own copy of it), Config files into the rootfs,
//! labels and taints, node deletion, resets. The record ends `succeeded`,
//! or `failed` with the failing stage, host, step and output tail.
//!
//! The coordinator restarted in the middle resumes every running record at
//! its first unfinished stage; agents skip the steps their journals say are
//! done. A task whose session drops is sent again when the node is back.
//! Deleting resets every host, then drops the image's assignment so agents
//! collect its blobs.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tracing::{info, info_span, warn, Instrument};

use seaport_shared::codec;

use seaport_shared::wire::{
    self, ApplyTask, AuditView, ClusterView, DriftTask, HostDrift, HostView, PlannedApply,
    PlannedHost, ReadFilesTask, ResetTask, RunRequest, RunState, ShellTask, StepState, StepView,
    StreamKind, TaskEvent, TaskRequest, WriteFilesTask, TASK_FRAME_LIMIT,
};

use crate::clusterfile::{plugin_runs, Clusterfile, HostFacts, Plugin};
use crate::converge::{self, Current, DesiredHost, Op, PluginPoint, Spec, StageSpec, Work};
use crate::daemon::{now_unix, Shared};
use crate::plan::{self, HostRole, HostSpec, NodeRole};

/// How long a run waits for an offline node before it fails.
const OFFLINE_LIMIT: Duration = Duration::from_secs(30 * 60);
/// How long the fetch phase may go without progress before it fails.
const FETCH_STALL_LIMIT: Duration = Duration::from_secs(15 * 60);
/// Output kept per step.
const LOG_TAIL: usize = 4000;

/// A host of a cluster, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostRecord {
    pub ip: String,
    pub node_id: String,
    pub hostname: String,
    pub role: NodeRole,
    pub phase: String,
    pub fetched_bytes: u64,
    pub total_bytes: u64,
    pub steps: Vec<StepView>,
    pub error: Option<String>,
}

/// A cluster and its latest operation, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cluster {
    pub name: String,
    pub image: String,
    pub manifest_digest: String,
    pub generation: u64,
    pub state: RunState,
    /// What the cluster should be.
    pub spec: Spec,
    /// The operation's stages, and how many are finished.
    pub stages: Vec<StageSpec>,
    pub stages_done: usize,
    pub hosts: Vec<HostRecord>,
    /// The image's `plugins/*.yaml` (read from the coordinator's copy).
    #[serde(default)]
    pub image_plugins: Vec<String>,
    /// The first master's join data (JSON). Secret: never shown.
    pub join_data: Option<String>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
    /// The image of the last operation that succeeded (what the hosts run).
    #[serde(default)]
    pub installed_digest: Option<String>,
    /// Who asked for the operation, and what it is (for the audit log).
    #[serde(default)]
    pub started_by: String,
    #[serde(default)]
    pub operation: String,
}

impl Cluster {
    fn host_mut(&mut self, ip: &str) -> Option<&mut HostRecord> {
        self.hosts.iter_mut().find(|h| h.ip == ip)
    }

    fn host(&self, ip: &str) -> Option<&HostRecord> {
        self.hosts.iter().find(|h| h.ip == ip)
    }

    fn master0(&self) -> String {
        self.hosts
            .iter()
            .find(|h| h.role == NodeRole::Master0)
            .map(|h| h.ip.clone())
            .unwrap_or_default()
    }

    fn current_phase(&self) -> String {
        self.stages
            .get(self.stages_done)
            .map_or_else(|| "done".into(), |s| s.name.clone())
    }

    /// What `seaport status` shows (no secrets).
    pub fn view(&self, online: impl Fn(&str) -> bool) -> ClusterView {
        ClusterView {
            cluster: self.name.clone(),
            image: self.image.clone(),
            manifest_digest: self.manifest_digest.clone(),
            state: self.state,
            generation: self.generation,
            phase: self.current_phase(),
            phases: self.stages.iter().map(|s| s.name.clone()).collect(),
            hosts: self
                .hosts
                .iter()
                .map(|h| HostView {
                    ip: h.ip.clone(),
                    node_id: h.node_id.clone(),
                    hostname: h.hostname.clone(),
                    role: role_name(h.role).into(),
                    phase: h.phase.clone(),
                    fetched_bytes: h.fetched_bytes,
                    total_bytes: h.total_bytes,
                    steps: h.steps.clone(),
                    error: h.error.clone(),
                    online: online(&h.node_id),
                })
                .collect(),
            started_at: self.started_at,
            finished_at: self.finished_at,
            error: self.error.clone(),
        }
    }
}

fn role_name(r: NodeRole) -> &'static str {
    match r {
        NodeRole::Master0 => "master0",
        NodeRole::Master => "master",
        NodeRole::Node => "node",
    }
}

type Record = Arc<Mutex<Cluster>>;

struct Active {
    generation: u64,
    record: Record,
    handle: tokio::task::AbortHandle,
}

/// The runs this coordinator is driving now.
#[derive(Default)]
pub struct Runs {
    active: Mutex<HashMap<String, Active>>,
}

impl Runs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Active>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn lock(r: &Record) -> std::sync::MutexGuard<'_, Cluster> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks a cluster name: it names a directory on every host.
pub fn check_cluster_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "cluster name {name:?} must be 1 to 63 letters, digits, '-', '_' or '.', not starting with '.'"
        ))
    }
}

/// An entry of the audit log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: i64,
    /// Who asked: the admin certificate's name.
    pub who: String,
    pub what: String,
    pub result: String,
}

fn audit(shared: &Shared, who: &str, what: String, result: &Result<impl std::fmt::Debug, String>) {
    let entry = AuditEntry {
        at: now_unix(),
        who: who.to_string(),
        what,
        result: match result {
            Ok(v) => format!("accepted: {v:?}"),
            Err(e) => format!("refused: {e}"),
        },
    };
    if let Err(e) = shared.store.audit(&entry) {
        warn!(error = %e, "could not write the audit log");
    }
}

/// What a request wants the cluster to become.
#[derive(Clone, Debug)]
pub(crate) enum Want {
    /// `seaport run IMAGE -m -n -e`.
    Run(RunRequest),
    /// `seaport apply -f Clusterfile`.
    Clusterfile(String),
    /// `seaport join`.
    Join {
        cluster: String,
        masters: Vec<String>,
        nodes: Vec<String>,
    },
    /// `seaport delete -m/-n`.
    Remove { cluster: String, ips: Vec<String> },
}

impl Want {
    fn describe(&self) -> String {
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
            Want::Remove { cluster, ips } => {
                format!("remove [{}] from cluster {cluster}", ips.join(","))
            }
        }
    }
}

/// An operation ready to start (or to show, for a dry run).
struct Prepared {
    cluster: Cluster,
    op: &'static str,
    warnings: Vec<String>,
    /// IP to node id of the hosts that have an agent.
    matched: BTreeMap<String, String>,
}

/// Accepts a request that changes a cluster: plans, records and starts it.
pub(crate) async fn start(
    shared: &Arc<Shared>,
    who: &str,
    want: Want,
) -> Result<(String, u64), String> {
    let what = want.describe();
    let result = {
        let shared2 = shared.clone();
        blocking(move || prepare(&shared2, want, false)).await
    };
    audit(
        shared,
        who,
        what,
        &result
            .as_ref()
            .map(|p| (p.cluster.name.clone(), p.cluster.generation, p.op))
            .map_err(Clone::clone),
    );
    let prepared = result?;
    let mut cluster = prepared.cluster;
    cluster.started_by = who.to_string();
    cluster.operation = prepared.op.to_string();
    shared
        .store
        .put_cluster(&cluster.name, &cluster)
        .map_err(|e| e.to_string())?;
    let out = (cluster.name.clone(), cluster.generation);
    info!(cluster = %out.0, generation = out.1, op = prepared.op, "operation accepted");
    activate(shared, cluster);
    Ok(out)
}

/// What a Clusterfile would do, changing nothing.
pub(crate) async fn dry_run(shared: &Arc<Shared>, text: String) -> Result<PlannedApply, String> {
    let shared2 = shared.clone();
    let p = blocking(move || prepare(&shared2, Want::Clusterfile(text), true)).await?;
    let c = &p.cluster;
    let master0 = c.master0();
    Ok(PlannedApply {
        cluster: c.name.clone(),
        image: c.image.clone(),
        operation: p.op.into(),
        stages: c.stages.iter().map(|s| s.name.clone()).collect(),
        hosts: c
            .hosts
            .iter()
            .map(|h| PlannedHost {
                ip: h.ip.clone(),
                role: role_name(h.role).into(),
                node: p.matched.get(&h.ip).cloned(),
                stages: c
                    .stages
                    .iter()
                    .filter(|s| s.hosts(&master0).contains(&h.ip))
                    .map(|s| s.name.clone())
                    .collect(),
            })
            .collect(),
        warnings: p.warnings,
    })
}

/// Runs blocking state work off the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("internal error: {e}"))
        .and_then(|r| r)
}

fn previous(shared: &Shared, name: &str) -> Result<Option<Cluster>, String> {
    if let Some(a) = shared.runs.lock().get(name) {
        return Ok(Some(lock(&a.record).clone()));
    }
    let all: Vec<Cluster> = shared.store.clusters().map_err(|e| e.to_string())?;
    Ok(all.into_iter().find(|c| c.name == name))
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
pub fn spec_of_clusterfile(text: &str) -> Result<(String, Spec, Vec<String>), String> {
    let file = Clusterfile::parse(text).map_err(|e| format!("Clusterfile: {e}"))?;
    let resolved = file.resolve().map_err(|e| format!("Clusterfile: {e}"))?;
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
    };
    let warnings = file.warnings.iter().map(|w| w.to_string()).collect();
    Ok((resolved.name.clone(), spec, warnings))
}

fn prepare(shared: &Shared, want: Want, dry_run: bool) -> Result<Prepared, String> {
    let mut warnings = Vec::new();
    // Removing hosts installs nothing: no image to check.
    let installs = !matches!(want, Want::Remove { .. });
    let (name, spec) = match want {
        Want::Run(r) => {
            let spec = Spec {
                image: r.image.clone(),
                hosts: r
                    .masters
                    .iter()
                    .map(|ip| host(ip, HostRole::Master))
                    .chain(r.nodes.iter().map(|ip| host(ip, HostRole::Node)))
                    .collect(),
                env: r.env.clone(),
                clusterfile: None,
            };
            (r.cluster, spec)
        }
        Want::Clusterfile(text) => {
            let (name, spec, w) = spec_of_clusterfile(&text)?;
            warnings = w;
            (name, spec)
        }
        Want::Join {
            cluster,
            masters,
            nodes,
        } => {
            let prev = previous(shared, &cluster)?
                .filter(|c| c.state != RunState::Deleted)
                .ok_or_else(|| format!("no cluster named {cluster}: install it with `seaport run` or `seaport apply` first"))?;
            let mut spec = prev.spec.clone();
            for (ips, role) in [(&masters, HostRole::Master), (&nodes, HostRole::Node)] {
                for ip in ips {
                    if spec.hosts.iter().any(|h| &h.ip == ip) {
                        return Err(format!("{ip} is already a host of cluster {cluster}"));
                    }
                    spec.hosts.push(host(ip, role));
                }
            }
            // Masters stay first.
            spec.hosts.sort_by_key(|h| h.role);
            (cluster, spec)
        }
        Want::Remove { cluster, ips } => {
            let prev = previous(shared, &cluster)?
                .filter(|c| c.state != RunState::Deleted)
                .ok_or_else(|| format!("no cluster named {cluster}"))?;
            let mut spec = prev.spec.clone();
            for ip in &ips {
                if !spec.hosts.iter().any(|h| &h.ip == ip) {
                    return Err(format!("{ip} is not a host of cluster {cluster}"));
                }
            }
            spec.hosts.retain(|h| !ips.contains(&h.ip));
            (cluster, spec)
        }
    };
    check_cluster_name(&name)?;
    let store = seaport_rootfs::store::Store::open(&shared.image_root)
        .map_err(|e| format!("the image store: {e}"))?;
    let image = store.image(&spec.image).map_err(|e| e.to_string())?;
    let digest = image.digest().to_string();
    if installs {
        // The image signature policy, before anything is recorded.
        let policy = shared
            .trust
            .union(&crate::trust::cluster_policy(spec.clusterfile.as_deref())?);
        match crate::trust::check(&shared.image_root, &policy, &spec.image, &image.digest()) {
            Ok(accepted) => info!(image = %spec.image, "{accepted}"),
            Err(e) if dry_run => warnings.push(e),
            Err(e) => return Err(e),
        }
    }
    let has_launch = image.manifests.iter().any(|m| {
        m.image
            .manifest
            .annotations
            .get(seaport_rootfs::oci::ANNOTATION_SEALER_EXTENSION)
            .and_then(|t| serde_json::from_str::<seaport_rootfs::oci::ImageExtension>(t).ok())
            .is_some_and(|e| !e.launch.cmds.is_empty() || !e.launch.app_names.is_empty())
    });
    let prev = previous(shared, &name)?;
    if let Some(p) = &prev {
        if p.state == RunState::Deleting {
            return Err(format!(
                "cluster {} is being deleted; wait for it (`seaport status`)",
                p.name
            ));
        }
    }
    // What the hosts run: only a cluster whose last operation succeeded is
    // planned against; after a failure every step runs again (agents skip
    // what is done).
    let installed = prev
        .as_ref()
        .filter(|p| p.state == RunState::Succeeded)
        .and_then(|p| p.installed_digest.clone().map(|d| (p, d)));
    let current = installed.as_ref().map(|(p, d)| Current {
        image_digest: d.as_str(),
        hosts: p.hosts.iter().map(|h| (h.ip.clone(), h.role)).collect(),
    });
    let stages = converge::stages(&name, current.as_ref(), &spec, &digest, has_launch)
        .map_err(|e| e.to_string())?;
    let op = match &current {
        None => "install",
        Some(c) if c.image_digest != digest => "upgrade",
        Some(c) if c.hosts.iter().any(|(ip, _)| !spec.ips().contains(ip)) => "scale down",
        Some(c)
            if spec
                .ips()
                .iter()
                .any(|ip| !c.hosts.iter().any(|(h, _)| h == ip)) =>
        {
            "scale up"
        }
        Some(_) => "converge",
    };
    let records = shared.store.nodes().map_err(|e| e.to_string())?;
    // Hosts leaving stay in the record until the operation forgets them.
    let mut all_hosts: Vec<(String, NodeRole)> = Vec::new();
    let plan_roles = plan::plan(&converge::plan_input(&name, &spec, &digest, has_launch))
        .map_err(|e| e.to_string())?;
    for h in &spec.hosts {
        let role = plan_roles
            .phases
            .iter()
            .flat_map(|p| &p.tasks)
            .find(|t| t.host == h.ip)
            .map_or(NodeRole::Node, |t| t.role);
        all_hosts.push((h.ip.clone(), role));
    }
    if let Some((p, _)) = &installed {
        for h in &p.hosts {
            if !all_hosts.iter().any(|(ip, _)| *ip == h.ip) {
                all_hosts.push((h.ip.clone(), h.role));
            }
        }
    }
    let specs: Vec<HostSpec> = all_hosts
        .iter()
        .map(|(ip, r)| HostSpec {
            ip: ip.clone(),
            role: if *r == NodeRole::Node {
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
            match plan::bind_host(&h.ip, &records) {
                Ok(Some(id)) => {
                    m.insert(h.ip.clone(), id);
                }
                Ok(None) => {}
                Err(e) => warnings.push(e.to_string()),
            }
        }
        m
    } else {
        plan::match_nodes(&specs, &records).map_err(|e| e.to_string())?
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
    plan::host_manifests(&image, &platforms).map_err(|e| e.to_string())?;
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
            return Err(e.to_string());
        }
    }
    let hosts = all_hosts
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
        name: name.clone(),
        image: spec.image.clone(),
        manifest_digest: digest,
        generation: prev.as_ref().map_or(1, |p| p.generation + 1),
        state: RunState::Running,
        spec,
        stages,
        stages_done: 0,
        hosts,
        image_plugins: prev
            .as_ref()
            .map(|p| p.image_plugins.clone())
            .unwrap_or_default(),
        join_data: prev.as_ref().and_then(|p| p.join_data.clone()),
        started_at: now_unix(),
        finished_at: None,
        error: None,
        installed_digest: prev.and_then(|p| p.installed_digest),
        started_by: String::new(),
        operation: String::new(),
    };
    Ok(Prepared {
        cluster,
        op,
        warnings,
        matched,
    })
}

/// Accepts `seaport delete`: every named cluster (all when `None`) is reset
/// on its hosts.
pub(crate) async fn start_delete(
    shared: &Arc<Shared>,
    who: &str,
    name: Option<String>,
    prune: bool,
) -> Result<Vec<(String, u64)>, String> {
    let what = format!(
        "delete {}{}",
        name.as_deref().unwrap_or("all clusters"),
        if prune { " --prune" } else { "" }
    );
    let result = {
        let (shared2, who) = (shared.clone(), who.to_string());
        blocking(move || mark_deleting(&shared2, name, prune, &who)).await
    };
    audit(
        shared,
        who,
        what,
        &result
            .as_ref()
            .map(|cs| cs.iter().map(|c| c.name.clone()).collect::<Vec<_>>())
            .map_err(Clone::clone),
    );
    let clusters = result?;
    let out = clusters
        .iter()
        .map(|c| (c.name.clone(), c.generation))
        .collect();
    for c in clusters {
        activate(shared, c);
    }
    Ok(out)
}

fn mark_deleting(
    shared: &Shared,
    name: Option<String>,
    prune: bool,
    who: &str,
) -> Result<Vec<Cluster>, String> {
    let stored: Vec<Cluster> = shared.store.clusters().map_err(|e| e.to_string())?;
    let mut chosen = Vec::new();
    for c in stored {
        if name.as_ref().is_none_or(|n| *n == c.name) {
            // The freshest state is the active run's.
            let c = previous(shared, &c.name)?.unwrap_or(c);
            chosen.push(c);
        }
    }
    if let (Some(n), true) = (&name, chosen.is_empty()) {
        return Err(format!("no cluster named {n} (see `seaport status`)"));
    }
    let mut out = Vec::new();
    for mut c in chosen {
        c.generation += 1;
        c.state = RunState::Deleting;
        c.error = None;
        c.started_at = now_unix();
        c.finished_at = None;
        let ips: Vec<String> = c.hosts.iter().map(|h| h.ip.clone()).collect();
        c.stages = converge::uninstall(&ips, prune);
        c.operation = "uninstall".into();
        c.started_by = who.to_string();
        c.stages_done = 0;
        for h in &mut c.hosts {
            h.phase = "pending".into();
            h.error = None;
            h.steps = vec![];
        }
        shared
            .store
            .put_cluster(&c.name, &c)
            .map_err(|e| e.to_string())?;
        out.push(c);
    }
    Ok(out)
}

/// Every cluster, the active runs' records fresher than the stored ones.
pub(crate) fn views(shared: &Shared) -> Result<Vec<ClusterView>, String> {
    let stored: Vec<Cluster> = shared.store.clusters().map_err(|e| e.to_string())?;
    let active = shared.runs.lock();
    let mut out: Vec<ClusterView> = stored
        .into_iter()
        .map(|c| {
            let c = active.get(&c.name).map_or(c, |a| lock(&a.record).clone());
            c.view(|node| {
                shared
                    .live
                    .get(node)
                    .and_then(|v| v.last_seen)
                    .is_some_and(|t| now_unix() - t <= wire::OFFLINE_AFTER.as_secs() as i64)
            })
        })
        .collect();
    out.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    Ok(out)
}

/// Starts driving every stored run that had not finished (after a restart).
pub(crate) fn resume_all(shared: &Arc<Shared>) {
    let stored: Vec<Cluster> = match shared.store.clusters() {
        Ok(c) => c,
        Err(e) => return warn!(error = %e, "could not read clusters to resume"),
    };
    for c in stored {
        if !c.state.is_final() {
            info!(cluster = %c.name, state = c.state.as_str(), phase = %c.current_phase(), "resuming");
            activate(shared, c);
        }
    }
}

/// Makes `cluster` the active run of its name (stopping an older one) and
/// drives it.
fn activate(shared: &Arc<Shared>, cluster: Cluster) {
    let name = cluster.name.clone();
    let generation = cluster.generation;
    let record: Record = Arc::new(Mutex::new(cluster));
    let mut active = shared.runs.lock();
    if let Some(old) = active.remove(&name) {
        old.handle.abort();
    }
    let task = tokio::spawn(
        drive(shared.clone(), record.clone())
            .instrument(info_span!("run", cluster = %name, generation)),
    );
    active.insert(
        name,
        Active {
            generation,
            record,
            handle: task.abort_handle(),
        },
    );
}

async fn save(shared: &Arc<Shared>, record: &Record) {
    let snapshot = lock(record).clone();
    let shared2 = shared.clone();
    let res =
        tokio::task::spawn_blocking(move || shared2.store.put_cluster(&snapshot.name, &snapshot))
            .await;
    if !matches!(res, Ok(Ok(()))) {
        warn!("could not record the run's progress");
    }
}

async fn drive(shared: Arc<Shared>, record: Record) {
    let deleting = lock(&record).state == RunState::Deleting;
    let outcome = run_stages(&shared, &record).await;
    if deleting && outcome.is_ok() {
        let image = lock(&record).image.clone();
        let shared2 = shared.clone();
        let _ =
            tokio::task::spawn_blocking(move || shared2.dist.cancel(&shared2.store, &image)).await;
    }
    let remove = {
        let mut c = lock(&record);
        c.finished_at = Some(now_unix());
        match outcome {
            Ok(()) if deleting => {
                c.state = RunState::Deleted;
                c.join_data = None;
                c.installed_digest = None;
                true
            }
            Ok(()) => {
                c.state = RunState::Succeeded;
                c.installed_digest = Some(c.manifest_digest.clone());
                false
            }
            Err(e) => {
                warn!(error = %e, "operation failed");
                c.state = RunState::Failed;
                c.error = Some(e);
                false
            }
        }
    };
    save(&shared, &record).await;
    let (name, generation) = {
        let c = lock(&record);
        (c.name.clone(), c.generation)
    };
    {
        let c = lock(&record).clone();
        let entry = AuditEntry {
            at: now_unix(),
            who: c.started_by.clone(),
            what: format!(
                "{} of cluster {} (operation {}) ended",
                if c.operation.is_empty() {
                    "operation"
                } else {
                    &c.operation
                },
                c.name,
                c.generation
            ),
            result: match (&c.state, &c.error) {
                (_, Some(e)) => format!("{}: {e}", c.state.as_str()),
                (s, None) => s.as_str().to_string(),
            },
        };
        if let Err(e) = shared.store.audit(&entry) {
            warn!(error = %e, "could not write the audit log");
        }
    }
    info!(state = lock(&record).state.as_str(), "operation ended");
    if remove {
        // Keep the record a while so `seaport delete` sees it finish.
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    let mut active = shared.runs.lock();
    if active
        .get(&name)
        .is_some_and(|a| a.generation == generation)
    {
        active.remove(&name);
        if remove {
            let _ = shared.store.remove_cluster(&name);
        }
    }
}

/// Runs the record's stages from the first unfinished one.
async fn run_stages(shared: &Arc<Shared>, record: &Record) -> Result<(), String> {
    loop {
        let (stage, done) = {
            let c = lock(record);
            (c.stages.get(c.stages_done).cloned(), c.stages_done)
        };
        let Some(stage) = stage else { return Ok(()) };
        info!(stage = %stage.name, "stage starts");
        run_stage(shared, record, &stage)
            .await
            .map_err(|e| format!("{} failed: {e}", stage.name))?;
        lock(record).stages_done = done + 1;
        save(shared, record).await;
    }
}

async fn run_stage(shared: &Arc<Shared>, record: &Record, stage: &StageSpec) -> Result<(), String> {
    match &stage.work {
        Work::Fetch { hosts } => fetch(shared, record, hosts).await,
        Work::Apply { tasks, upgrade } => {
            // The image's signatures and the cluster's part of the policy go
            // with every task: each agent checks them for itself.
            let (digest, text) = {
                let c = lock(record);
                (c.manifest_digest.clone(), c.spec.clusterfile.clone())
            };
            let subject = digest
                .parse()
                .map_err(|e| format!("the recorded digest {digest}: {e}"))?;
            let root = shared.image_root.clone();
            let signatures =
                blocking(move || crate::trust::task_signatures(&root, &subject)).await?;
            let cluster_trust =
                crate::trust::to_wire(&crate::trust::cluster_policy(text.as_deref())?);
            let reqs = {
                let c = lock(record);
                let kubeadm = clusterfile(&c)?.and_then(|f| f.kubeadm_yaml());
                tasks
                    .iter()
                    .map(|t| {
                        let mut task = apply_task(&c, t, *upgrade, kubeadm.clone());
                        task.signatures = signatures.clone();
                        task.cluster_trust = cluster_trust.clone();
                        (t.host.clone(), TaskRequest::Apply(task))
                    })
                    .collect()
            };
            // Join data is taken from the one task that produces it: the
            // first master's kubeadm init. Anything else is a claim.
            let init_host = tasks
                .iter()
                .find(|t| t.role == NodeRole::Master0 && t.steps.iter().any(|s| s == "kubeadm"))
                .map(|t| t.host.clone());
            let results = on_hosts(shared, record, &stage.name, reqs).await;
            for (ip, r) in &results {
                if let Ok(TaskEvent::Finished {
                    ok: true,
                    join_data: Some(j),
                    ..
                }) = r
                {
                    let mut c = lock(record);
                    if init_host.as_ref() != Some(ip) {
                        // The first master repeats its join data after
                        // every task; from any other host it is a forgery.
                        if *ip == c.master0() {
                            continue;
                        }
                        warn!(host = %ip, "join data from a host that did not run kubeadm init: ignored");
                        if let Some(h) = c.host_mut(ip) {
                            h.error = Some(
                                "reported join data although it did not run kubeadm init; ignored"
                                    .into(),
                            );
                        }
                        continue;
                    }
                    let master0 = c.master0();
                    c.join_data = Some(checked_join_data(j, &master0).map_err(|e| {
                        format!("{ip}: the join data kubeadm init reported is refused: {e}")
                    })?);
                }
            }
            check(results)
        }
        Work::Plugins { op, point, targets } => {
            plugins_stage(shared, record, &stage.name, *op, *point, targets).await
        }
        Work::ImagePlugins => {
            // From the coordinator's own copy of the image, never from what
            // a host reports: these run as root on every host.
            // A multi-platform image's plugins are those of master0's platform.
            let (digest, master0_node) = {
                let c = lock(record);
                let node = c
                    .hosts
                    .iter()
                    .find(|h| h.role == NodeRole::Master0)
                    .map(|h| h.node_id.clone());
                (c.manifest_digest.clone(), node)
            };
            let platform = match master0_node {
                Some(id) => shared
                    .store
                    .node(&id)
                    .map_err(|e| e.to_string())?
                    .filter(|n| !n.arch.is_empty())
                    .map(|n| seaport_rootfs::registry::platform::machine_platform(&n.arch)),
                None => None,
            };
            let root = shared.image_root.clone();
            let texts = tokio::task::spawn_blocking(move || {
                image_plugins(&root, &digest, platform.as_ref())
            })
            .await
            .map_err(|e| format!("internal error: {e}"))??;
            // Checked now, so a broken plugin fails here, named.
            for t in &texts {
                Clusterfile::parse(t).map_err(|e| format!("the image's plugins/: {e}"))?;
            }
            lock(record).image_plugins = texts;
            Ok(())
        }
        Work::Configs { hosts } => configs_stage(shared, record, &stage.name, hosts).await,
        Work::LabelsTaints { hosts } => {
            let script = {
                let c = lock(record);
                let mut lines = Vec::new();
                for ip in hosts {
                    let (Some(want), Some(h)) =
                        (c.spec.hosts.iter().find(|h| &h.ip == ip), c.host(ip))
                    else {
                        continue;
                    };
                    let node = shell_quote(&h.hostname);
                    if !want.labels.is_empty() {
                        let labels: Vec<String> = want
                            .labels
                            .iter()
                            .map(|(k, v)| shell_quote(&format!("{k}={v}")))
                            .collect();
                        lines.push(format!(
                            "kubectl label node {node} {} --overwrite",
                            labels.join(" ")
                        ));
                    }
                    for t in &want.taints {
                        lines.push(format!(
                            "kubectl taint node {node} {} --overwrite",
                            shell_quote(t)
                        ));
                    }
                }
                lines
            };
            if script.is_empty() {
                return Ok(());
            }
            master0_shell(shared, record, &stage.name, script.join("\n")).await
        }
        Work::DeleteNodes { hosts } => {
            let script = {
                let c = lock(record);
                hosts
                    .iter()
                    .filter_map(|ip| c.host(ip))
                    .map(|h| {
                        format!(
                            "kubectl delete node {} --ignore-not-found",
                            shell_quote(&h.hostname)
                        )
                    })
                    .collect::<Vec<_>>()
            };
            master0_shell(shared, record, &stage.name, script.join("\n")).await
        }
        Work::Reset { hosts, prune } => {
            let cluster = lock(record).name.clone();
            let reqs = hosts
                .iter()
                .map(|ip| {
                    (
                        ip.clone(),
                        TaskRequest::Reset(ResetTask {
                            cluster: cluster.clone(),
                            prune: *prune,
                        }),
                    )
                })
                .collect();
            check(on_hosts(shared, record, &stage.name, reqs).await)
        }
        Work::Forget { hosts } => {
            lock(record).hosts.retain(|h| !hosts.contains(&h.ip));
            Ok(())
        }
    }
}

/// The image's `plugins/*.yaml` and `*.yml` (text), read from the layers in
/// the coordinator's store.
fn image_plugins(
    image_root: &std::path::Path,
    digest: &str,
    platform: Option<&seaport_rootfs::oci::Platform>,
) -> Result<Vec<String>, String> {
    let store = seaport_rootfs::store::Store::open(image_root)
        .map_err(|e| format!("the image store: {e}"))?;
    let digest: seaport_shared::digest::Digest = digest
        .parse()
        .map_err(|e| format!("the image digest: {e}"))?;
    let files = seaport_rootfs::contents::files_in_dir(&store, &digest, platform, "plugins", |n| {
        n.ends_with(".yaml") || n.ends_with(".yml")
    })
    .map_err(|e| format!("reading the image's plugins/: {e}"))?;
    Ok(files
        .into_iter()
        .filter_map(|(_, b)| String::from_utf8(b).ok())
        .collect())
}

/// Join data as the first master reported it, checked and re-encoded.
fn checked_join_data(text: &str, master0: &str) -> Result<String, String> {
    let j: seaport_rootfs::kubeadm::JoinData =
        serde_json::from_str(text).map_err(|e| format!("it is not join data: {e}"))?;
    j.check(master0)?;
    Ok(serde_json::to_string(&j).expect("join data serializes"))
}

/// Every host's failure, or Ok.
fn check(results: Vec<(String, Result<TaskEvent, String>)>) -> Result<(), String> {
    let mut failures = Vec::new();
    for (ip, r) in results {
        match r {
            Ok(TaskEvent::Finished { ok: true, .. })
            | Ok(TaskEvent::ResetDone { error: None, .. })
            | Ok(TaskEvent::Written { error: None })
            | Ok(TaskEvent::Files { error: None, .. })
            | Ok(TaskEvent::Drift { error: None, .. }) => {}
            Ok(TaskEvent::Finished { error, .. }) => {
                failures.push(format!("{ip}: {}", error.unwrap_or_default()))
            }
            Ok(
                TaskEvent::ResetDone { error: Some(e), .. }
                | TaskEvent::Written { error: Some(e) }
                | TaskEvent::Files { error: Some(e), .. }
                | TaskEvent::Drift { error: Some(e), .. },
            ) => failures.push(format!("{ip}: {e}")),
            Ok(other) => failures.push(format!("{ip}: unexpected answer {other:?}")),
            Err(e) => failures.push(format!("{ip}: {e}")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// Sends each host its task at once and waits for all.
async fn on_hosts(
    shared: &Arc<Shared>,
    record: &Record,
    stage: &str,
    reqs: Vec<(String, TaskRequest)>,
) -> Vec<(String, Result<TaskEvent, String>)> {
    let mut set = JoinSet::new();
    for (ip, req) in reqs {
        let (shared, record, stage) = (shared.clone(), record.clone(), stage.to_string());
        set.spawn(async move {
            let r = run_host_task(&shared, &record, &ip, &stage, req).await;
            (ip, r)
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(r) => out.push(r),
            Err(e) => out.push((String::new(), Err(format!("internal error: {e}")))),
        }
    }
    out
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A shell script on master0, run every time (kubectl against the cluster).
async fn master0_shell(
    shared: &Arc<Shared>,
    record: &Record,
    stage: &str,
    script: String,
) -> Result<(), String> {
    let (m0, cluster, env) = {
        let c = lock(record);
        (c.master0(), c.name.clone(), c.spec.env.clone())
    };
    let req = TaskRequest::Shell(ShellTask {
        cluster,
        step: stage.to_string(),
        script,
        env,
        host_ip: m0.clone(),
        timeout_secs: 300,
        always: true,
    });
    check(on_hosts(shared, record, stage, vec![(m0, req)]).await)
}

/// The cluster's Clusterfile, parsed (none for `seaport run`).
fn clusterfile(c: &Cluster) -> Result<Option<Clusterfile>, String> {
    c.spec
        .clusterfile
        .as_deref()
        .map(|t| Clusterfile::parse(t).map_err(|e| format!("Clusterfile: {e}")))
        .transpose()
}

/// The plugins of the Clusterfile and the image.
fn all_plugins(c: &Cluster) -> Result<Vec<Plugin>, String> {
    let mut out = Vec::new();
    for t in &c.image_plugins {
        out.extend(
            Clusterfile::parse(t)
                .map_err(|e| format!("the image's plugins/: {e}"))?
                .plugins,
        );
    }
    if let Some(t) = &c.spec.clusterfile {
        out.extend(
            Clusterfile::parse(t)
                .map_err(|e| format!("Clusterfile: {e}"))?
                .plugins,
        );
    }
    Ok(out)
}

async fn plugins_stage(
    shared: &Arc<Shared>,
    record: &Record,
    stage: &str,
    op: Op,
    point: PluginPoint,
    targets: &[String],
) -> Result<(), String> {
    use crate::clusterfile::{Operation, PluginData, Stage};
    let (plugins, spec, cluster) = {
        let c = lock(record);
        (all_plugins(&c)?, c.spec.clone(), c.name.clone())
    };
    if plugins.is_empty() {
        return Ok(());
    }
    let operation = match op {
        Op::Install => Operation::Install,
        Op::ScaleUp => Operation::ScaleUp,
        Op::ScaleDown => Operation::ScaleDown,
        Op::Uninstall => Operation::Uninstall,
        Op::Upgrade => Operation::Upgrade,
    };
    let at = match point {
        PluginPoint::Start => Stage::Start,
        PluginPoint::HostsReady => Stage::HostsReady,
        PluginPoint::ClusterReady => Stage::ClusterReady,
        PluginPoint::Done => Stage::Done,
    };
    // Hosts as plugins select them: the spec's, and hosts leaving it.
    type Owned = (IpAddr, Vec<String>, BTreeMap<String, String>, bool);
    let mut facts_src: Vec<Owned> = Vec::new();
    {
        let c = lock(record);
        let master0 = c.master0();
        for h in &c.hosts {
            let Ok(ip) = h.ip.parse::<IpAddr>() else {
                continue;
            };
            let want = spec.hosts.iter().find(|d| d.ip == h.ip);
            let roles = want.map(|d| d.roles.clone()).unwrap_or_else(|| {
                vec![if h.role == NodeRole::Node {
                    "node"
                } else {
                    "master"
                }
                .to_string()]
            });
            let labels = want.map(|d| d.labels.clone()).unwrap_or_default();
            facts_src.push((ip, roles, labels, h.ip == master0));
        }
    }
    let facts: Vec<HostFacts<'_>> = facts_src
        .iter()
        .map(|(ip, roles, labels, m0)| HostFacts {
            ip: *ip,
            roles,
            labels,
            master0: *m0,
        })
        .collect();
    let targets: Vec<IpAddr> = targets.iter().filter_map(|t| t.parse().ok()).collect();
    let runs = plugin_runs(&plugins, operation, at, &facts, &targets);
    let master0 = lock(record).master0();
    for run in runs {
        let step = format!("plugin:{}@{}", run.plugin.name, run.phase.name());
        let script = match &run.plugin.data {
            PluginData::Shell(script) => Some(script.clone()),
            _ => None,
        };
        let reqs: Vec<(String, TaskRequest)> = match script {
            Some(script) => run
                .hosts
                .iter()
                .map(|ip| {
                    let ip = ip.to_string();
                    let env = host_env(&spec, &ip);
                    (
                        ip.clone(),
                        TaskRequest::Shell(ShellTask {
                            cluster: cluster.clone(),
                            step: step.clone(),
                            script: script.clone(),
                            env,
                            host_ip: ip,
                            timeout_secs: 600,
                            always: false,
                        }),
                    )
                })
                .collect(),
            None => {
                let script = kube_plugin_script(record, &run.plugin.data);
                if script.is_empty() {
                    continue;
                }
                let (on, script) = match &run.plugin.data {
                    PluginData::Hostnames(_) => (
                        run.hosts.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                        script,
                    ),
                    _ => (vec![master0.clone()], script),
                };
                on.into_iter()
                    .map(|ip| {
                        let script = if matches!(run.plugin.data, PluginData::Hostnames(_)) {
                            // Each host sets its own name.
                            script
                                .lines()
                                .filter(|l| l.starts_with(&format!("#{ip} ")))
                                .map(|l| l.split_once(' ').map_or("", |x| x.1).to_string())
                                .collect::<Vec<_>>()
                                .join("\n")
                        } else {
                            script.clone()
                        };
                        (
                            ip.clone(),
                            TaskRequest::Shell(ShellTask {
                                cluster: cluster.clone(),
                                step: step.clone(),
                                script,
                                env: spec.env.clone(),
                                host_ip: ip,
                                timeout_secs: 300,
                                always: true,
                            }),
                        )
                    })
                    .collect()
            }
        };
        check(on_hosts(shared, record, stage, reqs).await)
            .map_err(|e| format!("plugin {} at {}: {e}", run.plugin.name, run.phase.name()))?;
    }
    Ok(())
}

/// kubectl (LABEL, TAINT) or hostnamectl (HOSTNAME, one `#IP cmd` line per
/// host) commands of a non-shell plugin.
fn kube_plugin_script(record: &Record, data: &crate::clusterfile::PluginData) -> String {
    use crate::clusterfile::PluginData;
    let c = lock(record);
    let node = |ip: &IpAddr| {
        c.host(&ip.to_string())
            .map(|h| shell_quote(&h.hostname))
            .unwrap_or_default()
    };
    let mut lines = Vec::new();
    match data {
        PluginData::Labels(ls) => {
            for l in ls {
                for ip in &l.ips {
                    let kv: Vec<String> = l
                        .labels
                        .iter()
                        .map(|(k, v)| shell_quote(&format!("{k}={v}")))
                        .collect();
                    lines.push(format!(
                        "kubectl label node {} {} --overwrite",
                        node(ip),
                        kv.join(" ")
                    ));
                }
            }
        }
        PluginData::Taints(ts) => {
            for t in ts {
                for ip in &t.ips {
                    lines.push(format!(
                        "kubectl taint node {} {} --overwrite",
                        node(ip),
                        shell_quote(&t.taint.to_string())
                    ));
                }
            }
        }
        PluginData::Hostnames(hs) => {
            for (ip, name) in hs {
                lines.push(format!(
                    "#{ip} hostnamectl set-hostname {}",
                    shell_quote(name)
                ));
            }
        }
        PluginData::Shell(_) => {}
    }
    lines.join("\n")
}

fn host_env(spec: &Spec, ip: &str) -> Vec<(String, String)> {
    let mut env = spec.env.clone();
    if let Some(h) = spec.hosts.iter().find(|h| h.ip == ip) {
        env.extend(h.env.iter().cloned());
    }
    env
}

async fn configs_stage(
    shared: &Arc<Shared>,
    record: &Record,
    stage: &str,
    hosts: &[String],
) -> Result<(), String> {
    let (configs, cluster) = {
        let c = lock(record);
        let configs = clusterfile(&c)?.map(|f| f.configs).unwrap_or_default();
        (configs, c.name.clone())
    };
    if configs.is_empty() {
        return Ok(());
    }
    let paths: Vec<String> = configs
        .iter()
        .map(|c| c.target_path().to_string_lossy().into_owned())
        .collect();
    for ip in hosts {
        let read = TaskRequest::ReadFiles(ReadFilesTask {
            cluster: cluster.clone(),
            paths: paths.clone(),
            dirs: vec![],
        });
        let mut r = on_hosts(shared, record, stage, vec![(ip.clone(), read)]).await;
        let files = match r.pop() {
            Some((_, Ok(TaskEvent::Files { files, error: None }))) => files,
            Some((ip, other)) => return check(vec![(ip, other)]),
            None => continue,
        };
        let mut current: BTreeMap<String, Option<Vec<u8>>> = files.into_iter().collect();
        let mut out = Vec::new();
        for (cfg, path) in configs.iter().zip(&paths) {
            let existing = current.get(path).cloned().flatten();
            let bytes = cfg.render(existing.as_deref()).map_err(|e| e.to_string())?;
            current.insert(path.clone(), Some(bytes.clone()));
            out.push((path.clone(), bytes));
        }
        let write = TaskRequest::WriteFiles(WriteFilesTask {
            cluster: cluster.clone(),
            files: out,
        });
        check(on_hosts(shared, record, stage, vec![(ip.clone(), write)]).await)?;
    }
    Ok(())
}

fn apply_task(
    c: &Cluster,
    t: &plan::Task,
    upgrade: bool,
    kubeadm_config: Option<String>,
) -> ApplyTask {
    let master_ips: Vec<String> = c
        .hosts
        .iter()
        .filter(|h| h.role != NodeRole::Node)
        .map(|h| h.ip.clone())
        .collect();
    let master0 = c.master0();
    let host_env = c
        .spec
        .hosts
        .iter()
        .find(|h| h.ip == t.host)
        .map(|h| h.env.clone())
        .unwrap_or_default();
    ApplyTask {
        cluster: c.name.clone(),
        image: c.image.clone(),
        manifest_digest: c.manifest_digest.parse().expect("a stored digest parses"),
        role: role_name(t.role).into(),
        steps: t.steps.clone(),
        host_ip: t.host.clone(),
        master0_ip: master0.clone(),
        // The registry is on master0 (one registry host).
        registry_ip: master0,
        master_ips,
        env: c.spec.env.clone(),
        host_env,
        kubeadm_config,
        join_data: if t.role == NodeRole::Master0 {
            None
        } else {
            c.join_data.clone()
        },
        upgrade,
        signatures: None,
        cluster_trust: Default::default(),
    }
}

async fn fetch(shared: &Arc<Shared>, record: &Record, hosts: &[String]) -> Result<(), String> {
    let (image, nodes, digest) = {
        let c = lock(record);
        (
            c.image.clone(),
            c.hosts
                .iter()
                .filter(|h| hosts.contains(&h.ip))
                .map(|h| h.node_id.clone())
                .collect::<Vec<_>>(),
            c.manifest_digest.clone(),
        )
    };
    {
        let shared2 = shared.clone();
        let (image2, nodes) = (image.clone(), nodes.clone());
        tokio::task::spawn_blocking(move || {
            shared2
                .dist
                .assign(&shared2.store, &image2, &nodes, now_unix())
        })
        .await
        .map_err(|e| format!("internal error: {e}"))?
        .map_err(|e| format!("distributing {image}: {e}"))?;
    }
    let mut last_progress = (0u64, Instant::now());
    let mut last_save = Instant::now();
    loop {
        let shared2 = shared.clone();
        let status = tokio::task::spawn_blocking(move || shared2.dist.status(&shared2.store))
            .await
            .map_err(|e| format!("internal error: {e}"))?
            .map_err(|e| e.to_string())?;
        let Some(img) = status
            .images
            .iter()
            .find(|i| i.image == image && i.manifest_digest.to_string() == digest)
        else {
            return Err(format!(
                "the assignment of {image} disappeared (cancelled?)"
            ));
        };
        let mut all = true;
        let mut sum = 0;
        {
            let mut c = lock(record);
            for n in img.nodes.iter().filter(|n| nodes.contains(&n.node_id)) {
                if let Some(h) = c.hosts.iter_mut().find(|h| h.node_id == n.node_id) {
                    h.fetched_bytes = n.done_bytes;
                    h.total_bytes = n.total_bytes;
                    h.phase = if n.complete { "fetched" } else { "fetch" }.into();
                    sum += n.done_bytes;
                    all &= n.complete;
                }
            }
        }
        if all {
            return Ok(());
        }
        if sum > last_progress.0 {
            last_progress = (sum, Instant::now());
        } else if last_progress.1.elapsed() > FETCH_STALL_LIMIT {
            return Err(format!(
                "fetching {image}: no progress for {} minutes",
                FETCH_STALL_LIMIT.as_secs() / 60
            ));
        }
        if last_save.elapsed() > Duration::from_secs(5) {
            save(shared, record).await;
            last_save = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Asks every host of a cluster for drift.
pub(crate) async fn drift(shared: &Arc<Shared>, cluster: &str) -> Result<Vec<HostDrift>, String> {
    let c = previous(shared, cluster)?.ok_or_else(|| format!("no cluster named {cluster}"))?;
    let record: Record = Arc::new(Mutex::new(c.clone()));
    let reqs = c
        .hosts
        .iter()
        .map(|h| {
            (
                h.ip.clone(),
                TaskRequest::Drift(DriftTask {
                    cluster: c.name.clone(),
                }),
            )
        })
        .collect();
    let mut out: Vec<HostDrift> = on_hosts(shared, &record, "drift", reqs)
        .await
        .into_iter()
        .map(|(ip, r)| match r {
            Ok(TaskEvent::Drift {
                modified,
                missing,
                checked,
                error,
            }) => HostDrift {
                ip,
                modified,
                missing,
                checked,
                error,
            },
            Ok(other) => HostDrift {
                ip,
                modified: vec![],
                missing: vec![],
                checked: 0,
                error: Some(format!("unexpected answer {other:?}")),
            },
            Err(e) => HostDrift {
                ip,
                modified: vec![],
                missing: vec![],
                checked: 0,
                error: Some(e),
            },
        })
        .collect();
    out.sort_by(|a, b| a.ip.cmp(&b.ip));
    Ok(out)
}

/// The audit log, newest last.
pub(crate) fn audit_views(shared: &Shared, limit: u32) -> Result<Vec<AuditView>, String> {
    let rows: Vec<(u64, AuditEntry)> = shared
        .store
        .audit_log(limit as usize)
        .map_err(|e| e.to_string())?;
    Ok(rows
        .into_iter()
        .map(|(seq, e)| AuditView {
            seq,
            at: e.at,
            who: e.who,
            what: e.what,
            result: e.result,
        })
        .collect())
}

/// Sends one task to a host and follows it to its last event, sending it
/// again when the session drops. Step events update the record.
async fn run_host_task(
    shared: &Arc<Shared>,
    record: &Record,
    ip: &str,
    phase: &str,
    task: TaskRequest,
) -> Result<TaskEvent, String> {
    let node_id = {
        let mut c = lock(record);
        let h = c
            .host_mut(ip)
            .ok_or_else(|| format!("{ip} is not a host of the cluster"))?;
        h.phase = phase.to_string();
        h.error = None;
        h.node_id.clone()
    };
    let mut offline_since: Option<Instant> = None;
    loop {
        let Some(conn) = shared.live.connection(&node_id) else {
            let since = *offline_since.get_or_insert_with(Instant::now);
            if since.elapsed() > OFFLINE_LIMIT {
                return Err(format!(
                    "node {node_id} has been offline for {} minutes",
                    OFFLINE_LIMIT.as_secs() / 60
                ));
            }
            if let Some(h) = lock(record).host_mut(ip) {
                h.error = Some(format!("waiting for node {node_id} to come online"));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        offline_since = None;
        match one_attempt(shared, record, ip, &conn, &task).await {
            Ok(last) => {
                let error = match &last {
                    TaskEvent::Finished { error, .. }
                    | TaskEvent::ResetDone { error, .. }
                    | TaskEvent::Files { error, .. }
                    | TaskEvent::Written { error }
                    | TaskEvent::Drift { error, .. } => error.clone(),
                    TaskEvent::Step { .. } => None,
                };
                if let Some(h) = lock(record).host_mut(ip) {
                    h.error = error;
                    if let TaskEvent::ResetDone {
                        warnings, actions, ..
                    } = &last
                    {
                        let tail = actions
                            .iter()
                            .chain(warnings.iter().map(|w| w as &String))
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("\n");
                        let state = if warnings.is_empty() {
                            StepState::Done {
                                summary: format!("{} actions", actions.len()),
                                elapsed_ms: 0,
                            }
                        } else {
                            StepState::Done {
                                summary: format!(
                                    "{} actions, {} warnings",
                                    actions.len(),
                                    warnings.len()
                                ),
                                elapsed_ms: 0,
                            }
                        };
                        set_step(h, "reset", state, tail);
                    }
                }
                save(shared, record).await;
                return Ok(last);
            }
            Err(e) => {
                info!(host = %ip, error = %e, "task interrupted; sending it again");
                if let Some(h) = lock(record).host_mut(ip) {
                    h.error = Some(format!("interrupted ({e}); retrying"));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn tail(s: &str) -> String {
    if s.len() <= LOG_TAIL {
        return s.to_string();
    }
    let mut start = s.len() - LOG_TAIL;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}

fn set_step(h: &mut HostRecord, step: &str, state: StepState, log: String) {
    let view = StepView {
        step: step.to_string(),
        state,
        log_tail: tail(&log),
    };
    match h.steps.iter_mut().find(|s| s.step == step) {
        Some(s) => *s = view,
        None => h.steps.push(view),
    }
}

async fn one_attempt(
    shared: &Arc<Shared>,
    record: &Record,
    ip: &str,
    conn: &quinn::Connection,
    task: &TaskRequest,
) -> Result<TaskEvent, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    wire::client_handshake(&mut recv, &mut send, StreamKind::Task)
        .await
        .map_err(|e| e.to_string())?;
    codec::write_msg(&mut send, task)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let event: TaskEvent = match codec::read_msg(&mut recv, TASK_FRAME_LIMIT).await {
            Ok(Some(e)) => e,
            Ok(None) => return Err("the task stream ended early".into()),
            Err(e) => return Err(e.to_string()),
        };
        match event {
            TaskEvent::Step { step, state } => {
                let log = match &state {
                    StepState::Failed { error } => error.clone(),
                    _ => String::new(),
                };
                if let Some(h) = lock(record).host_mut(ip) {
                    set_step(h, &step, state, log);
                }
                save(shared, record).await;
            }
            last => return Ok(last),
        }
    }
}
