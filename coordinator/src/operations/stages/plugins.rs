//! Plugin points: the Clusterfile's and the image's plugins that fire at
//! this point of the operation, on the hosts they select. SHELL plugins run
//! on their hosts (journaled there); LABEL and TAINT run kubectl from the
//! first master; HOSTNAME runs `hostnamectl` on each host.

use std::collections::BTreeMap;
use std::net::IpAddr;

use seaport_shared::cluster::{OperationKind, Role};
use seaport_shared::shell::quote;
use seaport_shared::wire::{ShellTask, TaskRequest};

use super::super::drive::{all_plugins, check, Driver};
use super::super::error::StageError;
use super::super::record::Cluster;
use crate::clusterfile::{plugin_runs, HostFacts, Operation, PluginData, Stage};
use crate::converge::{PluginPoint, Spec};

pub(super) async fn run(
    driver: &Driver,
    stage: &str,
    op: OperationKind,
    point: PluginPoint,
    targets: &[String],
) -> Result<(), StageError> {
    let (plugins, spec, cluster) = driver.record.read(|c| -> Result<_, StageError> {
        Ok((all_plugins(c)?, c.spec.clone(), c.name.clone()))
    })?;
    if plugins.is_empty() {
        return Ok(());
    }
    let operation = match op {
        OperationKind::Install | OperationKind::Converge => Operation::Install,
        OperationKind::ScaleUp => Operation::ScaleUp,
        OperationKind::ScaleDown => Operation::ScaleDown,
        OperationKind::Uninstall => Operation::Uninstall,
        OperationKind::Upgrade => Operation::Upgrade,
    };
    let at = match point {
        PluginPoint::Start => Stage::Start,
        PluginPoint::HostsReady => Stage::HostsReady,
        PluginPoint::ClusterReady => Stage::ClusterReady,
        PluginPoint::Done => Stage::Done,
    };
    // Hosts as plugins select them: the spec's, and hosts leaving it.
    type Owned = (IpAddr, Vec<String>, BTreeMap<String, String>, bool);
    let (facts_src, master0): (Vec<Owned>, String) = driver.record.read(|c| {
        let master0 = c.master0();
        let mut out = Vec::new();
        for h in &c.hosts {
            let Ok(ip) = h.ip.parse::<IpAddr>() else {
                continue;
            };
            let want = spec.hosts.iter().find(|d| d.ip == h.ip);
            let roles = want.map(|d| d.roles.clone()).unwrap_or_else(|| {
                vec![if h.role == Role::Node {
                    "node"
                } else {
                    "master"
                }
                .to_string()]
            });
            let labels = want.map(|d| d.labels.clone()).unwrap_or_default();
            out.push((ip, roles, labels, h.ip == master0));
        }
        (out, master0)
    });
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
    for run in runs {
        let step = format!("plugin:{}@{}", run.plugin.name, run.phase.name());
        let shell = |ip: String, script: String, env, timeout_secs, always| {
            (
                ip.clone(),
                TaskRequest::Shell(ShellTask {
                    cluster: cluster.clone(),
                    step: step.clone(),
                    script,
                    env,
                    host_ip: ip,
                    timeout_secs,
                    always,
                }),
            )
        };
        let reqs: Vec<(String, TaskRequest)> = match &run.plugin.data {
            PluginData::Shell(script) => run
                .hosts
                .iter()
                .map(|ip| {
                    let ip = ip.to_string();
                    let env = host_env(&spec, &ip);
                    shell(ip, script.clone(), env, 600, false)
                })
                .collect(),
            PluginData::Hostnames(names) if !names.is_empty() => {
                // Each host sets its own name.
                run.hosts
                    .iter()
                    .map(|ip| {
                        let script = names
                            .iter()
                            .filter(|(i, _)| i == ip)
                            .map(|(_, n)| format!("hostnamectl set-hostname {}", quote(n)))
                            .collect::<Vec<_>>()
                            .join("\n");
                        shell(ip.to_string(), script, spec.env.clone(), 300, true)
                    })
                    .collect()
            }
            data => {
                let script = driver.record.read(|c| kubectl_script(c, data));
                if script.is_empty() {
                    continue;
                }
                vec![shell(master0.clone(), script, spec.env.clone(), 300, true)]
            }
        };
        check(driver.on_hosts(stage, reqs).await).map_err(|e| StageError::Plugin {
            name: run.plugin.name.clone(),
            phase: run.phase.name().to_string(),
            source: Box::new(e),
        })?;
    }
    Ok(())
}

/// The kubectl commands of a LABEL or TAINT plugin.
fn kubectl_script(c: &Cluster, data: &PluginData) -> String {
    let node = |ip: &IpAddr| {
        c.host(&ip.to_string())
            .map(|h| quote(&h.hostname))
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
                        .map(|(k, v)| quote(&format!("{k}={v}")))
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
                        quote(&t.taint.to_string())
                    ));
                }
            }
        }
        PluginData::Hostnames(_) | PluginData::Shell(_) => {}
    }
    lines.join("\n")
}

/// The cluster env and the host's own env.
fn host_env(spec: &Spec, ip: &str) -> Vec<(String, String)> {
    let mut env = spec.env.clone();
    if let Some(h) = spec.hosts.iter().find(|h| h.ip == ip) {
        env.extend(h.env.iter().cloned());
    }
    env
}
