//! What a stage works with ([`Driver`]): each host's part sent to its
//! agent, every step event written to the record (one transaction each), a
//! task whose session drops sent again when the node is back.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tracing::{info, warn};

use seaport_shared::wire::{RunState, ShellTask, StepState, TaskEvent, TaskRequest};

use super::agents::{Agents, AgentsError, TaskEvents};
use super::error::{HostTaskError, StageError};
use super::record::{Cluster, LiveRecord, LEFT_OUT};
use super::store::ClusterStore;
use crate::clusterfile::{Clusterfile, Plugin};

/// How long a run waits for an offline node before it fails.
const OFFLINE_LIMIT: Duration = Duration::from_secs(30 * 60);

/// What a stage works with: the agents, the store, the coordinator's image
/// store, and the record being driven.
#[derive(Clone)]
pub(crate) struct Driver {
    pub(crate) agents: Arc<dyn Agents>,
    pub(crate) store: Arc<dyn ClusterStore>,
    pub(crate) image_root: PathBuf,
    pub(crate) record: LiveRecord,
}

impl Driver {
    /// Writes the record (one transaction).
    pub(crate) async fn save(&self) {
        let snapshot = self.record.snapshot();
        let store = self.store.clone();
        let res = tokio::task::spawn_blocking(move || store.save_cluster(&snapshot)).await;
        if !matches!(res, Ok(Ok(()))) {
            warn!("could not record the run's progress");
        }
    }

    /// Sends each host its task at once and waits for all.
    pub(crate) async fn on_hosts(
        &self,
        stage: &str,
        reqs: Vec<(String, TaskRequest)>,
    ) -> Vec<(String, Result<TaskEvent, HostTaskError>)> {
        let mut set = JoinSet::new();
        for (ip, req) in reqs {
            let (me, stage) = (self.clone(), stage.to_string());
            set.spawn(async move {
                let r = me.run_host_task(&ip, &stage, req).await;
                (ip, r)
            });
        }
        let mut out = Vec::new();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(r) => out.push(r),
                Err(e) => out.push((String::new(), Err(HostTaskError::Internal(e.to_string())))),
            }
        }
        out
    }

    /// Sends one task to a host and follows it to its last event, sending
    /// it again when the session drops. Step events update the record.
    async fn run_host_task(
        &self,
        ip: &str,
        phase: &str,
        task: TaskRequest,
    ) -> Result<TaskEvent, HostTaskError> {
        let node_id = self
            .record
            .host(ip, |h| {
                h.phase = phase.to_string();
                h.error = None;
                h.node_id.clone()
            })
            .ok_or_else(|| HostTaskError::NotAHost(ip.to_string()))?;
        let mut offline_since: Option<Instant> = None;
        loop {
            let attempt = match self.agents.run_task(&node_id, task.clone()) {
                Ok(events) => self.follow(ip, events).await,
                Err(AgentsError::NotConnected(_)) => {
                    let (force, deleting) = self
                        .record
                        .read(|c| (c.force, c.state == RunState::Deleting));
                    if force {
                        self.record
                            .host(ip, |h| h.error = Some(LEFT_OUT.to_string()));
                        self.save().await;
                        return Err(HostTaskError::LeftOut { node: node_id });
                    }
                    let first = offline_since.is_none();
                    let since = *offline_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > OFFLINE_LIMIT {
                        return Err(HostTaskError::Offline {
                            node: node_id,
                            minutes: OFFLINE_LIMIT.as_secs() / 60,
                        });
                    }
                    if first {
                        self.record
                            .host(ip, |h| h.error = Some(waiting_note(&node_id, deleting)));
                        self.save().await;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => Err(e),
            };
            offline_since = None;
            match attempt {
                Ok(last) => {
                    self.record.host(ip, |h| {
                        h.error = answer_error(&last);
                        if let TaskEvent::ResetDone {
                            warnings, actions, ..
                        } = &last
                        {
                            let tail = actions
                                .iter()
                                .chain(warnings.iter())
                                .cloned()
                                .collect::<Vec<_>>()
                                .join("\n");
                            let summary = if warnings.is_empty() {
                                format!("{} actions", actions.len())
                            } else {
                                format!("{} actions, {} warnings", actions.len(), warnings.len())
                            };
                            h.set_step(
                                "reset",
                                StepState::Done {
                                    summary,
                                    elapsed_ms: 0,
                                },
                                &tail,
                            );
                        }
                    });
                    self.save().await;
                    return Ok(last);
                }
                Err(e) => {
                    info!(host = %ip, error = %e, "task interrupted; sending it again");
                    self.record.host(ip, |h| {
                        h.error = Some(format!("interrupted ({e}); retrying"));
                    });
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Follows one attempt of a task: step events go to the record, the
    /// last event is returned.
    async fn follow(&self, ip: &str, mut events: TaskEvents) -> Result<TaskEvent, AgentsError> {
        loop {
            match events.next().await? {
                TaskEvent::Step { step, state } => {
                    if let StepState::Done { elapsed_ms, .. } = &state {
                        crate::metrics::global()
                            .step_took(&step, Duration::from_millis(*elapsed_ms));
                    }
                    let log = match &state {
                        StepState::Failed { error } => error.clone(),
                        _ => String::new(),
                    };
                    self.record.host(ip, |h| h.set_step(&step, state, &log));
                    self.save().await;
                }
                last => return Ok(last),
            }
        }
    }

    /// A shell script on master0, run every time (kubectl against the
    /// cluster).
    pub(crate) async fn master0_shell(
        &self,
        stage: &str,
        script: String,
    ) -> Result<(), StageError> {
        let (m0, cluster, env) = self
            .record
            .read(|c| (c.master0(), c.name.clone(), c.spec.env.clone()));
        let req = TaskRequest::Shell(ShellTask {
            cluster,
            step: stage.to_string(),
            script,
            env,
            host_ip: m0.clone(),
            timeout_secs: 300,
            always: true,
        });
        check(self.on_hosts(stage, vec![(m0, req)]).await)
    }
}

/// A host's note while the operation waits for its agent.
fn waiting_note(node_id: &str, deleting: bool) -> String {
    let minutes = OFFLINE_LIMIT.as_secs() / 60;
    let hint = if deleting {
        "; `seaport delete --force` goes on without it"
    } else {
        ""
    };
    format!("offline (node {node_id}): the operation waits for it, up to {minutes} minutes{hint}")
}

/// The error a task's last event carries, if any.
fn answer_error(last: &TaskEvent) -> Option<String> {
    match last {
        TaskEvent::Finished { error, .. }
        | TaskEvent::ResetDone { error, .. }
        | TaskEvent::Files { error, .. }
        | TaskEvent::Written { error }
        | TaskEvent::Drift { error, .. }
        | TaskEvent::Balancer { error, .. } => error.clone(),
        TaskEvent::Step { .. } | TaskEvent::Preflight { .. } => None,
    }
}

/// Every host's failure, or Ok.
pub(crate) fn check(
    results: Vec<(String, Result<TaskEvent, HostTaskError>)>,
) -> Result<(), StageError> {
    let mut failures = Vec::new();
    for (ip, r) in results {
        match r {
            Ok(TaskEvent::Finished { ok: true, .. })
            | Ok(TaskEvent::ResetDone { error: None, .. })
            | Ok(TaskEvent::Written { error: None })
            | Ok(TaskEvent::Files { error: None, .. })
            | Ok(TaskEvent::Drift { error: None, .. })
            | Ok(TaskEvent::Balancer { error: None, .. }) => {}
            Ok(TaskEvent::Finished { error, .. }) => failures.push((ip, error.unwrap_or_default())),
            Ok(
                TaskEvent::ResetDone { error: Some(e), .. }
                | TaskEvent::Written { error: Some(e) }
                | TaskEvent::Files { error: Some(e), .. }
                | TaskEvent::Drift { error: Some(e), .. }
                | TaskEvent::Balancer { error: Some(e), .. },
            ) => failures.push((ip, e)),
            Ok(other) => failures.push((ip, format!("unexpected answer {other:?}"))),
            // Left out on purpose; its note says so.
            Err(HostTaskError::LeftOut { .. }) => {}
            Err(e) => failures.push((ip, e.to_string())),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(StageError::Hosts(failures))
    }
}

/// The cluster's Clusterfile, parsed (none for `seaport run`).
pub(crate) fn clusterfile(c: &Cluster) -> Result<Option<Clusterfile>, StageError> {
    c.spec
        .clusterfile
        .as_deref()
        .map(|t| Clusterfile::parse(t).map_err(StageError::Clusterfile))
        .transpose()
}

/// The plugins of the image and the Clusterfile.
pub(crate) fn all_plugins(c: &Cluster) -> Result<Vec<Plugin>, StageError> {
    let mut out = Vec::new();
    for t in &c.image_plugins {
        out.extend(
            Clusterfile::parse(t)
                .map_err(StageError::ImagePlugins)?
                .plugins,
        );
    }
    if let Some(f) = clusterfile(c)? {
        out.extend(f.plugins);
    }
    Ok(out)
}
