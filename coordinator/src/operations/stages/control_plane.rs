//! `control-plane-upgrade`: the cluster's Kubernetes to a new version, one
//! host at a time: master0 first (`kubeadm upgrade apply VERSION -y`), then
//! every other master and then every worker (`kubeadm upgrade node`). Each
//! host is drained from master0 before its upgrade, its kubelet restarted
//! after it, and it is uncordoned from master0.
//!
//! Journaled twice: each command is a shell step named with the host and
//! the version, so an agent skips what it already did; and once a host is
//! uncordoned, its record gets the step `control-plane@VERSION`, so a
//! resumed operation (a restarted coordinator) sends that host nothing
//! again and goes on at the first host not done.

use seaport_shared::cluster::Role;
use seaport_shared::shell::quote;
use seaport_shared::wire::{ShellTask, StepState, TaskRequest};

use super::super::drive::{check, Driver};
use super::super::error::StageError;
use crate::converge::KubeVersion;

/// The step a host's record gets once it is upgraded and uncordoned.
pub(crate) fn done_step(version: &str) -> String {
    format!("control-plane@{version}")
}

/// kubeadm's upgrade command for a host of `role`.
pub(crate) fn kubeadm_command(role: Role, version: &str) -> String {
    if role == Role::Master0 {
        format!("kubeadm upgrade apply {} -y", quote(version))
    } else {
        "kubeadm upgrade node".to_string()
    }
}

/// `kubectl drain` of `node`, with the flag for pods' local data of the
/// target release (renamed in 1.20).
fn drain_command(node: &str, version: &str) -> String {
    let renamed = KubeVersion::parse(version).is_some_and(|v| (v.major, v.minor) >= (1, 20));
    let local_data = if renamed {
        "--delete-emptydir-data"
    } else {
        "--delete-local-data"
    };
    format!(
        "kubectl drain {} --ignore-daemonsets {local_data}",
        quote(node)
    )
}

pub(super) async fn run(
    driver: &Driver,
    stage: &str,
    version: &str,
    hosts: &[String],
) -> Result<(), StageError> {
    let done = done_step(version);
    for ip in hosts {
        let found = driver.record.read(|c| {
            let h = c.host(ip)?;
            let finished = h
                .steps
                .iter()
                .any(|s| s.step == done && matches!(s.state, StepState::Done { .. }));
            Some((
                finished,
                h.role,
                h.hostname.clone(),
                c.master0(),
                c.name.clone(),
                c.spec.env.clone(),
            ))
        });
        let Some((finished, role, node, master0, cluster, env)) = found else {
            continue;
        };
        if finished {
            continue;
        }
        let shell = |on: &str, step: String, script: String| {
            (
                on.to_string(),
                TaskRequest::Shell(ShellTask {
                    cluster: cluster.clone(),
                    step,
                    script,
                    env: env.clone(),
                    host_ip: on.to_string(),
                    timeout_secs: 900,
                    always: false,
                }),
            )
        };
        check(
            driver
                .on_hosts(
                    stage,
                    vec![shell(
                        &master0,
                        format!("drain:{node}@{version}"),
                        drain_command(&node, version),
                    )],
                )
                .await,
        )?;
        let upgrade = format!(
            "{}\nsystemctl daemon-reload\nsystemctl try-restart kubelet.service",
            kubeadm_command(role, version)
        );
        check(
            driver
                .on_hosts(
                    stage,
                    vec![shell(ip, format!("kubeadm-upgrade@{version}"), upgrade)],
                )
                .await,
        )?;
        check(
            driver
                .on_hosts(
                    stage,
                    vec![shell(
                        &master0,
                        format!("uncordon:{node}@{version}"),
                        format!("kubectl uncordon {}", quote(&node)),
                    )],
                )
                .await,
        )?;
        driver.record.host(ip, |h| {
            h.set_step(
                &done,
                StepState::Done {
                    summary: format!("upgraded to {version} and uncordoned"),
                    elapsed_ms: 0,
                },
                "",
            )
        });
        driver.save().await;
    }
    Ok(())
}
