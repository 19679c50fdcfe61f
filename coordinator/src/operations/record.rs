//! The record of a cluster and its latest operation, as stored: the desired
//! spec, the stages and how many are done, every host's steps, the first
//! master's join data. It is saved (one transaction) after every step event,
//! so a restarted coordinator resumes at the first unfinished stage.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use seaport_shared::cluster::{ClusterName, ImageDigest, OperationKind, Role};
use seaport_shared::wire::{ClusterView, HostView, RunState, StepState, StepView};

use crate::converge::{Spec, StageSpec};

/// A host's note when `delete --force` went on without it.
pub const LEFT_OUT: &str =
    "offline: left out (--force); nothing was done on this host, its install is as it was";

/// Output kept per step.
const LOG_TAIL: usize = 4000;

/// A host of a cluster, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostRecord {
    pub ip: String,
    pub node_id: String,
    pub hostname: String,
    pub role: Role,
    pub phase: String,
    pub fetched_bytes: u64,
    pub total_bytes: u64,
    pub steps: Vec<StepView>,
    pub error: Option<String>,
}

impl HostRecord {
    /// Records a step's state and the tail of its output.
    pub fn set_step(&mut self, step: &str, state: StepState, log: &str) {
        let view = StepView {
            step: step.to_string(),
            state,
            log_tail: tail(log),
        };
        match self.steps.iter_mut().find(|s| s.step == step) {
            Some(s) => *s = view,
            None => self.steps.push(view),
        }
    }
}

/// A cluster and its latest operation, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cluster {
    pub name: ClusterName,
    pub image: String,
    /// What `image` resolved to when the operation was planned.
    pub manifest_digest: ImageDigest,
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
    pub installed_digest: Option<ImageDigest>,
    /// The Kubernetes version `image` names, when it names one.
    #[serde(default)]
    pub kube_version: Option<String>,
    /// The Kubernetes version of the last operation that succeeded (what
    /// the control plane runs).
    #[serde(default)]
    pub installed_kube_version: Option<String>,
    /// Who asked for the operation, and what it is (for the audit log).
    #[serde(default)]
    pub started_by: String,
    #[serde(default, with = "kind_or_empty")]
    pub operation: Option<OperationKind>,
    /// `delete --force`: hosts whose agents are offline are left out of
    /// the operation (named in their notes) instead of waited for.
    #[serde(default)]
    pub force: bool,
    /// Hosts this operation forgot without reaching them, each with what
    /// was not done there (shown after `delete -m/-n --force`).
    #[serde(default)]
    pub left_out: Vec<String>,
}

/// An operation's kind as stored: its name, or empty text for none.
mod kind_or_empty {
    use super::*;

    pub(super) fn serialize<S: Serializer>(
        kind: &Option<OperationKind>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(kind.map_or("", OperationKind::as_str))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OperationKind>, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

impl Cluster {
    pub fn host_mut(&mut self, ip: &str) -> Option<&mut HostRecord> {
        self.hosts.iter_mut().find(|h| h.ip == ip)
    }

    pub fn host(&self, ip: &str) -> Option<&HostRecord> {
        self.hosts.iter().find(|h| h.ip == ip)
    }

    /// The first master's IP.
    pub fn master0(&self) -> String {
        self.hosts
            .iter()
            .find(|h| h.role == Role::Master0)
            .map(|h| h.ip.clone())
            .unwrap_or_default()
    }

    /// The stage running now, or `done`.
    pub fn current_phase(&self) -> String {
        self.stages
            .get(self.stages_done)
            .map_or_else(|| "done".into(), |s| s.name.clone())
    }

    /// What `seaport status` shows (no secrets).
    pub fn view(&self, online: impl Fn(&str) -> bool) -> ClusterView {
        ClusterView {
            cluster: self.name.clone(),
            image: self.image.clone(),
            manifest_digest: self.manifest_digest,
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
                    role: h.role,
                    phase: h.phase.clone(),
                    fetched_bytes: h.fetched_bytes,
                    total_bytes: h.total_bytes,
                    steps: h.steps.clone(),
                    error: h.error.clone(),
                    online: online(&h.node_id),
                    balancer: None,
                })
                .collect(),
            started_at: self.started_at,
            finished_at: self.finished_at,
            error: self.error.clone(),
            left_out: self.left_out.clone(),
        }
    }

    /// The audit entry of the operation's end.
    pub fn ended_entry(&self, at: i64) -> AuditEntry {
        AuditEntry {
            at,
            who: self.started_by.clone(),
            what: format!(
                "{} of cluster {} (operation {}) ended",
                self.operation.map_or("operation", OperationKind::as_str),
                self.name,
                self.generation
            ),
            result: match (&self.state, &self.error) {
                (_, Some(e)) => format!("{}: {e}", self.state.as_str()),
                (s, None) => s.as_str().to_string(),
            },
        }
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

/// The record of an operation being driven, shared by its stage tasks and
/// `seaport status`: every read and change goes through [`LiveRecord::read`]
/// and [`LiveRecord::write`].
#[derive(Clone)]
pub(crate) struct LiveRecord(Arc<Mutex<Cluster>>);

impl LiveRecord {
    pub(crate) fn new(c: Cluster) -> Self {
        LiveRecord(Arc::new(Mutex::new(c)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cluster> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn read<T>(&self, f: impl FnOnce(&Cluster) -> T) -> T {
        f(&self.lock())
    }

    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut Cluster) -> T) -> T {
        f(&mut self.lock())
    }

    /// Changes the host `ip`, if it is one.
    pub(crate) fn host<T>(&self, ip: &str, f: impl FnOnce(&mut HostRecord) -> T) -> Option<T> {
        self.lock().host_mut(ip).map(f)
    }

    pub(crate) fn snapshot(&self) -> Cluster {
        self.lock().clone()
    }
}
