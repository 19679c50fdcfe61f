//! Installing and deleting clusters: the coordinator drives every host's
//! agent through the plan ([`crate::plan`]), phase by phase.
//!
//! A run is a [`Cluster`] record in the state database, written after every
//! step event in one committed transaction. It holds the plan, how many
//! phases are finished, every host's steps and the first master's join
//! data. A run goes:
//!
//! 1. `fetch`: the image is assigned to the cluster's nodes
//!    ([`crate::distribution`]) and the run waits until each holds every
//!    blob;
//! 2. the plan's phases in order; the tasks of a phase run on their hosts
//!    at once, each sent on a `Task` stream of the host's session;
//! 3. `succeeded`, or `failed` with the failing host, step and output tail.
//!
//! The coordinator restarted in the middle resumes every running record at
//! its first unfinished phase; agents skip the steps their journals say are
//! done. A task whose session drops is sent again when the node is back.
//! Deleting sends a reset task to every host, then drops the image's
//! assignment so agents collect its blobs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tracing::{info, info_span, warn, Instrument};

use seaport_shared::codec;
use seaport_shared::wire::{
    self, ApplyTask, ClusterView, HostView, ResetTask, RunRequest, RunState, StepState, StepView,
    StreamKind, TaskEvent, TaskRequest, TASK_FRAME_LIMIT,
};

use crate::daemon::{now_unix, Shared};
use crate::plan::{self, HostRole, HostSpec, NodeRole, Plan, PlanInput};

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

/// A cluster and its latest run, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cluster {
    pub name: String,
    pub image: String,
    pub manifest_digest: String,
    pub generation: u64,
    pub state: RunState,
    pub request: RunRequest,
    pub plan: Plan,
    pub hosts: Vec<HostRecord>,
    /// Whether every node holds the image.
    pub fetched: bool,
    /// Phases of the plan finished.
    pub phases_done: usize,
    /// The first master's join data (JSON). Secret: never shown.
    pub join_data: Option<String>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
    /// For a delete: also remove the hosts' data directories.
    pub prune: bool,
}

impl Cluster {
    fn host_mut(&mut self, ip: &str) -> Option<&mut HostRecord> {
        self.hosts.iter_mut().find(|h| h.ip == ip)
    }

    fn current_phase(&self) -> String {
        match self.state {
            RunState::Deleting | RunState::Deleted => "reset".into(),
            _ if !self.fetched => "fetch".into(),
            _ => self
                .plan
                .phases
                .get(self.phases_done)
                .map_or_else(|| "done".into(), |p| p.name.clone()),
        }
    }

    /// What `seaport status` shows (no secrets).
    pub fn view(&self, online: impl Fn(&str) -> bool) -> ClusterView {
        let mut phases = vec!["fetch".to_string()];
        phases.extend(self.plan.phases.iter().map(|p| p.name.clone()));
        ClusterView {
            cluster: self.name.clone(),
            image: self.image.clone(),
            manifest_digest: self.manifest_digest.clone(),
            state: self.state,
            generation: self.generation,
            phase: self.current_phase(),
            phases,
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

/// Accepts `seaport run`: plans, records and starts the run.
pub(crate) async fn start_run(
    shared: &Arc<Shared>,
    who: &str,
    req: RunRequest,
) -> Result<u64, String> {
    let what = format!(
        "run {} on cluster {} (masters {}, nodes {})",
        req.image,
        req.cluster,
        req.masters.join(","),
        req.nodes.join(",")
    );
    let result = {
        let shared2 = shared.clone();
        let req = req.clone();
        blocking(move || new_run(&shared2, req)).await
    };
    audit(
        shared,
        who,
        what,
        &result.as_ref().map(|c| c.generation).map_err(Clone::clone),
    );
    let cluster = result?;
    let generation = cluster.generation;
    info!(cluster = %cluster.name, generation, "run accepted");
    activate(shared, cluster);
    Ok(generation)
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

fn new_run(shared: &Shared, req: RunRequest) -> Result<Cluster, String> {
    check_cluster_name(&req.cluster)?;
    let store = seaport_rootfs::store::Store::open(&shared.image_root)
        .map_err(|e| format!("the image store: {e}"))?;
    let resolved = store.resolve(&req.image).map_err(|e| e.to_string())?;
    let has_launch = resolved
        .manifest
        .annotations
        .get(seaport_rootfs::oci::ANNOTATION_SEALER_EXTENSION)
        .and_then(|t| serde_json::from_str::<seaport_rootfs::oci::ImageExtension>(t).ok())
        .is_some_and(|e| !e.launch.cmds.is_empty() || !e.launch.app_names.is_empty());
    let hosts: Vec<HostSpec> = req
        .masters
        .iter()
        .map(|ip| HostSpec {
            ip: ip.clone(),
            role: HostRole::Master,
        })
        .chain(req.nodes.iter().map(|ip| HostSpec {
            ip: ip.clone(),
            role: HostRole::Node,
        }))
        .collect();
    let plan = plan::plan(&PlanInput {
        cluster: req.cluster.clone(),
        image: resolved.manifest_digest.to_string(),
        hosts: hosts.clone(),
        registry_hosts: vec![],
        has_launch,
    })
    .map_err(|e| e.to_string())?;
    let records = shared.store.nodes().map_err(|e| e.to_string())?;
    let enrolled: Vec<(String, Vec<String>)> = records
        .iter()
        .filter(|r| !r.revoked)
        .map(|r| (r.node_id.clone(), r.ips.clone()))
        .collect();
    let matched = plan::match_nodes(&hosts, &enrolled).map_err(|e| e.to_string())?;
    let prev = previous(shared, &req.cluster)?;
    if let Some(p) = &prev {
        if p.state == RunState::Deleting {
            return Err(format!(
                "cluster {} is being deleted; wait for it (`seaport status`)",
                p.name
            ));
        }
    }
    let role_of = |ip: &str| {
        plan.phases
            .iter()
            .flat_map(|p| &p.tasks)
            .find(|t| t.host == ip)
            .map_or(NodeRole::Node, |t| t.role)
    };
    let host_records = hosts
        .iter()
        .map(|h| {
            let node_id = matched[&h.ip].clone();
            let hostname = records
                .iter()
                .find(|r| r.node_id == node_id)
                .map(|r| r.hostname.clone())
                .unwrap_or_default();
            HostRecord {
                ip: h.ip.clone(),
                node_id,
                hostname,
                role: role_of(&h.ip),
                phase: "fetch".into(),
                fetched_bytes: 0,
                total_bytes: 0,
                steps: vec![],
                error: None,
            }
        })
        .collect();
    let cluster = Cluster {
        name: req.cluster.clone(),
        image: req.image.clone(),
        manifest_digest: resolved.manifest_digest.to_string(),
        generation: prev.as_ref().map_or(1, |p| p.generation + 1),
        state: RunState::Running,
        request: req,
        plan,
        hosts: host_records,
        fetched: false,
        phases_done: 0,
        join_data: prev.and_then(|p| p.join_data),
        started_at: now_unix(),
        finished_at: None,
        error: None,
        prune: false,
    };
    shared
        .store
        .put_cluster(&cluster.name, &cluster)
        .map_err(|e| e.to_string())?;
    Ok(cluster)
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
        let shared2 = shared.clone();
        blocking(move || mark_deleting(&shared2, name, prune)).await
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
        c.prune = prune;
        c.error = None;
        c.join_data = None;
        c.started_at = now_unix();
        c.finished_at = None;
        for h in &mut c.hosts {
            h.phase = "reset".into();
            h.error = None;
            h.steps = vec![StepView {
                step: "reset".into(),
                state: StepState::Pending,
                log_tail: String::new(),
            }];
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
    let outcome = if deleting {
        delete(&shared, &record).await
    } else {
        install(&shared, &record).await
    };
    let remove = {
        let mut c = lock(&record);
        c.finished_at = Some(now_unix());
        match outcome {
            Ok(()) if deleting => {
                c.state = RunState::Deleted;
                true
            }
            Ok(()) => {
                c.state = RunState::Succeeded;
                false
            }
            Err(e) => {
                warn!(error = %e, "run failed");
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
    info!(state = lock(&record).state.as_str(), "run ended");
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

async fn install(shared: &Arc<Shared>, record: &Record) -> Result<(), String> {
    if !lock(record).fetched {
        fetch(shared, record).await?;
    }
    loop {
        let (phase, done) = {
            let c = lock(record);
            (c.plan.phases.get(c.phases_done).cloned(), c.phases_done)
        };
        let Some(phase) = phase else { return Ok(()) };
        info!(phase = %phase.name, "phase starts");
        let mut set = JoinSet::new();
        for t in &phase.tasks {
            let task = apply_task(&lock(record), t);
            let (shared, record, ip) = (shared.clone(), record.clone(), t.host.clone());
            let phase_name = phase.name.clone();
            set.spawn(async move {
                let r = run_host_task(&shared, &record, &ip, &phase_name, TaskRequest::Apply(task))
                    .await;
                (ip, r)
            });
        }
        let mut failures = Vec::new();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((
                    ip,
                    Ok(TaskEvent::Finished {
                        ok: true,
                        join_data,
                        ..
                    }),
                )) => {
                    if let Some(j) = join_data {
                        lock(record).join_data = Some(j);
                    }
                    let _ = ip;
                }
                Ok((ip, Ok(TaskEvent::Finished { error, .. }))) => {
                    failures.push(format!("{ip}: {}", error.unwrap_or_default()))
                }
                Ok((ip, Ok(other))) => failures.push(format!("{ip}: unexpected answer {other:?}")),
                Ok((ip, Err(e))) => failures.push(format!("{ip}: {e}")),
                Err(e) => failures.push(format!("internal error: {e}")),
            }
        }
        if !failures.is_empty() {
            return Err(format!(
                "phase {} failed on {}",
                phase.name,
                failures.join("; ")
            ));
        }
        lock(record).phases_done = done + 1;
        save(shared, record).await;
    }
}

fn apply_task(c: &Cluster, t: &plan::Task) -> ApplyTask {
    let master_ips: Vec<String> = c
        .hosts
        .iter()
        .filter(|h| h.role != NodeRole::Node)
        .map(|h| h.ip.clone())
        .collect();
    let master0 = c
        .hosts
        .iter()
        .find(|h| h.role == NodeRole::Master0)
        .map(|h| h.ip.clone())
        .unwrap_or_default();
    let registry = c
        .plan
        .phases
        .iter()
        .find(|p| p.name == "registry")
        .and_then(|p| p.tasks.first())
        .map_or_else(|| master0.clone(), |t| t.host.clone());
    ApplyTask {
        cluster: c.name.clone(),
        image: c.image.clone(),
        manifest_digest: c.manifest_digest.parse().expect("a stored digest parses"),
        role: role_name(t.role).into(),
        steps: t.steps.clone(),
        host_ip: t.host.clone(),
        master0_ip: master0,
        registry_ip: registry,
        master_ips,
        env: c.request.env.clone(),
        host_env: vec![],
        kubeadm_config: None,
        join_data: if t.role == NodeRole::Master0 {
            None
        } else {
            c.join_data.clone()
        },
        upgrade: false,
    }
}

async fn fetch(shared: &Arc<Shared>, record: &Record) -> Result<(), String> {
    let (image, nodes, digest) = {
        let c = lock(record);
        (
            c.image.clone(),
            c.hosts
                .iter()
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
            for n in &img.nodes {
                if let Some(h) = c.hosts.iter_mut().find(|h| h.node_id == n.node_id) {
                    h.fetched_bytes = n.done_bytes;
                    h.total_bytes = n.total_bytes;
                    h.phase = if n.complete { "fetched" } else { "fetch" }.into();
                    sum += n.done_bytes;
                    all &= n.complete;
                }
            }
            if all {
                c.fetched = true;
            }
        }
        if all {
            save(shared, record).await;
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

async fn delete(shared: &Arc<Shared>, record: &Record) -> Result<(), String> {
    let (name, prune, hosts, image) = {
        let c = lock(record);
        (
            c.name.clone(),
            c.prune,
            c.hosts.iter().map(|h| h.ip.clone()).collect::<Vec<_>>(),
            c.image.clone(),
        )
    };
    let mut set = JoinSet::new();
    for ip in hosts {
        let (shared, record) = (shared.clone(), record.clone());
        let task = TaskRequest::Reset(ResetTask {
            cluster: name.clone(),
            prune,
        });
        set.spawn(async move {
            let r = run_host_task(&shared, &record, &ip, "reset", task).await;
            (ip, r)
        });
    }
    let mut failures = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((_, Ok(TaskEvent::ResetDone { error: None, .. }))) => {}
            Ok((ip, Ok(TaskEvent::ResetDone { error: Some(e), .. }))) => {
                failures.push(format!("{ip}: {e}"))
            }
            Ok((ip, Ok(other))) => failures.push(format!("{ip}: unexpected answer {other:?}")),
            Ok((ip, Err(e))) => failures.push(format!("{ip}: {e}")),
            Err(e) => failures.push(format!("internal error: {e}")),
        }
    }
    if !failures.is_empty() {
        return Err(format!("reset failed on {}", failures.join("; ")));
    }
    let shared2 = shared.clone();
    let _ = tokio::task::spawn_blocking(move || shared2.dist.cancel(&shared2.store, &image)).await;
    Ok(())
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
