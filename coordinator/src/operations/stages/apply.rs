//! Apply phases: each host's steps of the phase sent to its agent as one
//! task. Join data is taken only from the task that produces it: the first
//! master's kubeadm init; from any other host it is a forgery, ignored.

use seaport_shared::cluster::{Role, Step};
use seaport_shared::wire::{ApplyTask, TaskEvent, TaskRequest};
use tracing::warn;

use super::super::drive::{check, clusterfile, Driver};
use super::super::error::{JoinDataRefusal, StageError};
use super::super::record::Cluster;
use crate::plan::Task;

pub(super) async fn run(
    driver: &Driver,
    stage: &str,
    tasks: &[Task],
    upgrade: bool,
) -> Result<(), StageError> {
    // The image's signatures and the cluster's part of the policy go with
    // every task: each agent checks them for itself.
    let (digest, text) = driver
        .record
        .read(|c| (c.manifest_digest, c.spec.clusterfile.clone()));
    let root = driver.image_root.clone();
    let signatures =
        tokio::task::spawn_blocking(move || crate::trust::task_signatures(&root, &digest.digest()))
            .await
            .map_err(|e| StageError::Internal(e.to_string()))??;
    let cluster_trust = crate::trust::to_wire(&crate::trust::cluster_policy(text.as_deref())?);
    let reqs = driver.record.read(|c| -> Result<_, StageError> {
        let kubeadm = clusterfile(c)?.and_then(|f| f.kubeadm_yaml());
        Ok(tasks
            .iter()
            .map(|t| {
                let mut task = apply_task(c, t, upgrade, kubeadm.clone());
                task.signatures = signatures.clone();
                task.cluster_trust = cluster_trust.clone();
                (t.host.clone(), TaskRequest::Apply(task))
            })
            .collect())
    })?;
    let init_host = tasks
        .iter()
        .find(|t| t.role == Role::Master0 && t.steps.contains(&Step::Kubeadm))
        .map(|t| t.host.clone());
    let results = driver.on_hosts(stage, reqs).await;
    for (ip, r) in &results {
        let Ok(TaskEvent::Finished {
            ok: true,
            join_data: Some(j),
            ..
        }) = r
        else {
            continue;
        };
        driver.record.write(|c| -> Result<(), StageError> {
            if init_host.as_ref() != Some(ip) {
                // The first master repeats its join data after every task;
                // from any other host it is a forgery.
                if *ip == c.master0() {
                    return Ok(());
                }
                warn!(host = %ip, "join data from a host that did not run kubeadm init: ignored");
                if let Some(h) = c.host_mut(ip) {
                    h.error = Some(
                        "reported join data although it did not run kubeadm init; ignored".into(),
                    );
                }
                return Ok(());
            }
            let master0 = c.master0();
            c.join_data =
                Some(
                    checked_join_data(j, &master0).map_err(|source| StageError::JoinData {
                        ip: ip.clone(),
                        source,
                    })?,
                );
            Ok(())
        })?;
    }
    check(results)
}

/// Join data as the first master reported it, checked and re-encoded.
fn checked_join_data(text: &str, master0: &str) -> Result<String, JoinDataRefusal> {
    let j: seaport_rootfs::kubeadm::JoinData =
        serde_json::from_str(text).map_err(JoinDataRefusal::NotJoinData)?;
    j.check(master0)?;
    Ok(serde_json::to_string(&j).expect("join data serializes"))
}

/// Where a host reaches the local registry (`sea.hub` in its
/// `/etc/hosts`): a registry host its own, a worker its node-local
/// balancer's address (the registry port there forwards to every registry
/// host), another master master0 (`localRegistry.ha: false`).
fn registry_ip(c: &Cluster, t: &Task, master0: &str) -> String {
    if c.spec.registry_hosts().contains(&t.host) {
        return t.host.clone();
    }
    match t.role {
        Role::Node => seaport_rootfs::kubeadm::api_balancer_addr(&c.spec.env)
            .map_or_else(|_| master0.to_string(), |a| a.ip().to_string()),
        Role::Master0 | Role::Master => master0.to_string(),
    }
}

fn apply_task(c: &Cluster, t: &Task, upgrade: bool, kubeadm_config: Option<String>) -> ApplyTask {
    let master_ips: Vec<String> = c
        .hosts
        .iter()
        .filter(|h| h.role.is_master())
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
        manifest_digest: c.manifest_digest,
        role: t.role,
        steps: t.steps.clone(),
        host_ip: t.host.clone(),
        registry_ip: registry_ip(c, t, &master0),
        master0_ip: master0,
        master_ips,
        env: c.spec.env.clone(),
        host_env,
        kubeadm_config,
        join_data: if t.role == Role::Master0 {
            None
        } else {
            c.join_data.clone()
        },
        upgrade,
        signatures: None,
        cluster_trust: Default::default(),
        registry_auth: c.spec.registry_auth.clone(),
        // The key only to the hosts that serve the registry.
        registry_tls: c
            .spec
            .registry_tls
            .as_ref()
            .map(|tls| tls.for_host(c.spec.registry_hosts().contains(&t.host))),
    }
}
