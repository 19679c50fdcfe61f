//! `preflight`: every host's agent checks its host before the operation
//! changes anything (the first stage of an install, a scale up and an
//! upgrade, on the hosts the operation fetches to), and the coordinator
//! compares what needs all hosts at once: hostnames and node names. Any
//! error not ignored (`--ignore-preflight`) fails the stage, so nothing
//! after it runs. `seaport check` runs the same checks alone
//! ([`check_hosts`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use seaport_shared::cluster::{ClusterName, Role};
use seaport_shared::preflight::{
    ports_for, CheckResult, HostChecks, Ignore, Level, PreflightTask, DEFAULT_REGISTRY_PORT,
};
use seaport_shared::wire::{StepState, TaskEvent, TaskRequest};

use seaport_shared::wire::CheckRequest;

use super::super::agents::{Agents, AgentsError};
use super::super::drive::Driver;
use super::super::error::OperationError;
use super::super::error::StageError;
use super::super::prepare::spec_of_clusterfile;
use super::super::record::Cluster;
use crate::converge::{StageSpec, Work};
use crate::plan::{HostRole, HostSpec};
use crate::records::NodeRecord;

/// The stage's name (and the step each host records).
pub(crate) const STAGE: &str = "preflight";

/// How long a check waits for a node that is not connected (a coordinator
/// that just restarted waits for its agents to come back).
const CONNECT_WAIT: Duration = Duration::from_secs(30);

/// Bytes an image needs on a host per byte of its (compressed) layers: the
/// blobs themselves, and the rootfs unpacked from them.
const DISK_FACTOR: u64 = 3;

/// Puts a preflight stage first when the operation fetches an image to
/// hosts (install, scale up, upgrade), on those hosts.
pub(crate) fn prepend(stages: &mut Vec<StageSpec>, ignore: &Ignore) {
    let hosts = stages.iter().find_map(|s| match &s.work {
        Work::Fetch { hosts } => Some(hosts.clone()),
        _ => None,
    });
    if let Some(hosts) = hosts {
        stages.insert(
            0,
            StageSpec {
                name: STAGE.to_string(),
                work: Work::Preflight {
                    hosts,
                    ignore: ignore.names().to_vec(),
                },
            },
        );
    }
}

/// A host to check.
#[derive(Debug)]
pub(crate) struct Target {
    pub ip: String,
    pub node_id: String,
    pub role: Role,
}

/// What every host of one check shares.
#[derive(Debug)]
pub(crate) struct CheckPlan {
    pub cluster: ClusterName,
    /// The cluster env (the registry port).
    pub env: Vec<(String, String)>,
    pub disk_needed: u64,
    /// `localRegistry.ha: false`: only master0 runs the registry (by
    /// default every master does, and needs its port).
    pub registry_master0_only: bool,
    /// Hosts of the cluster that are not checked now, with their hostnames:
    /// new hosts must not take their names.
    pub others: Vec<(String, String)>,
    pub ignore: Ignore,
}

/// The registry port the cluster env names (the keys the agent reads),
/// else the default.
pub(crate) fn registry_port(env: &[(String, String)]) -> u16 {
    ["registry_port", "RegistryPort"]
        .iter()
        .find_map(|k| env.iter().rev().find(|(ek, _)| ek == k))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(DEFAULT_REGISTRY_PORT)
}

/// Bytes the image `name` of the store under `image_root` needs on a host
/// (its largest platform); 0 when it cannot be read.
pub(crate) fn disk_needed(image_root: &Path, name: &str) -> u64 {
    let Ok(store) = seaport_rootfs::store::Store::open(image_root) else {
        return 0;
    };
    let Ok(img) = store.image(name) else { return 0 };
    img.manifests
        .iter()
        .map(|m| m.image.manifest.layers.iter().map(|l| l.size).sum::<u64>())
        .max()
        .unwrap_or(0)
        * DISK_FACTOR
}

/// Runs the checks on every target at once and compares their hostnames
/// with each other and with `plan.others`; errors `plan.ignore` covers
/// become `ignored`. Hosts in the order given.
pub(crate) async fn check_hosts(
    agents: Arc<dyn Agents>,
    targets: Vec<Target>,
    plan: &CheckPlan,
) -> Vec<HostChecks> {
    let registry = registry_port(&plan.env);
    let mut set = tokio::task::JoinSet::new();
    for (i, t) in targets.iter().enumerate() {
        let registry_host = match t.role {
            Role::Master0 => true,
            Role::Master => !plan.registry_master0_only,
            Role::Node => false,
        };
        let task = PreflightTask {
            cluster: plan.cluster.clone(),
            role: t.role,
            ports: ports_for(t.role, registry_host.then_some(registry)),
            registry_port: registry_host.then_some(registry),
            disk_needed: plan.disk_needed,
            coordinator_time_ms: now_ms(),
        };
        let (agents, node) = (agents.clone(), t.node_id.clone());
        set.spawn(async move { (i, ask(agents, &node, task).await) });
    }
    let mut answers: BTreeMap<usize, Result<(String, Vec<CheckResult>), String>> = BTreeMap::new();
    while let Some(joined) = set.join_next().await {
        if let Ok((i, r)) = joined {
            answers.insert(i, r);
        }
    }
    let mut out: Vec<HostChecks> = targets
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let (hostname, checks) = match answers.remove(&i) {
                Some(Ok(a)) => a,
                Some(Err(e)) => (
                    String::new(),
                    vec![CheckResult::new("agent", Level::Error, e)],
                ),
                None => (
                    String::new(),
                    vec![CheckResult::new(
                        "agent",
                        Level::Error,
                        "the check did not finish",
                    )],
                ),
            };
            HostChecks {
                ip: t.ip,
                role: t.role,
                node_id: t.node_id,
                hostname,
                checks,
            }
        })
        .collect();
    compare_hostnames(&mut out, &plan.others);
    for h in &mut out {
        plan.ignore.apply(&mut h.checks);
    }
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One host's checks from its agent.
async fn ask(
    agents: Arc<dyn Agents>,
    node: &str,
    task: PreflightTask,
) -> Result<(String, Vec<CheckResult>), String> {
    let started = Instant::now();
    let mut events = loop {
        match agents.run_task(node, TaskRequest::Preflight(task.clone())) {
            Ok(ev) => break ev,
            Err(AgentsError::NotConnected(_)) if started.elapsed() < CONNECT_WAIT => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(AgentsError::NotConnected(n)) => {
                return Err(format!(
                    "node {n} is not connected; start its agent (systemctl start seaport-agent) and check again"
                ))
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    loop {
        match events.next().await.map_err(|e| e.to_string())? {
            TaskEvent::Preflight { hostname, checks } => return Ok((hostname, checks)),
            TaskEvent::Step { .. } => continue,
            other => {
                return Err(format!(
                    "the agent answered {other:?}; upgrade it to this coordinator's version"
                ))
            }
        }
    }
}

/// Adds the `hostname` check to every host: its hostname and its node name
/// (the hostname in lowercase, as Kubernetes names nodes) must be unique
/// among the checked hosts and `others`.
pub(crate) fn compare_hostnames(hosts: &mut [HostChecks], others: &[(String, String)]) {
    let all: Vec<(String, String)> = hosts
        .iter()
        .map(|h| (h.ip.clone(), h.hostname.clone()))
        .chain(others.iter().cloned())
        .collect();
    for h in hosts.iter_mut() {
        if h.hostname.is_empty() {
            continue;
        }
        let same: Vec<&(String, String)> = all
            .iter()
            .filter(|(ip, name)| *ip != h.ip && name.eq_ignore_ascii_case(&h.hostname))
            .collect();
        let result = if same.is_empty() {
            CheckResult::new(
                "hostname",
                Level::Ok,
                format!("{} is unique in the cluster", h.hostname),
            )
        } else {
            let exact = same.iter().all(|(_, n)| *n == h.hostname);
            let whom = same
                .iter()
                .map(|(ip, n)| format!("{ip} ({n})"))
                .collect::<Vec<_>>()
                .join(", ");
            CheckResult::new(
                "hostname",
                Level::Error,
                if exact {
                    format!(
                        "hostname {} is also the hostname of {whom}; Kubernetes names nodes by hostname: give each host its own (hostnamectl set-hostname NAME)",
                        h.hostname
                    )
                } else {
                    format!(
                        "node name {} (hostname {}) is also the node name of {whom}; Kubernetes names nodes by lowercase hostname: give each host its own (hostnamectl set-hostname NAME)",
                        h.hostname.to_ascii_lowercase(),
                        h.hostname
                    )
                },
            )
        };
        h.checks.push(result);
    }
}

/// The hosts `req` names (from its Clusterfile, or its masters and nodes),
/// bound to the nodes of `nodes`, and what they share. A host of the
/// cluster `previous` keeps its role; the cluster keeps its first master
/// (and registry), else the first master named is it.
pub(crate) fn check_targets(
    req: CheckRequest,
    ignore: Ignore,
    previous: Option<&Cluster>,
    nodes: &[NodeRecord],
    image_root: &Path,
) -> Result<(Vec<Target>, CheckPlan), OperationError> {
    let (name, hosts, env, image, registry_master0_only) = match &req.clusterfile {
        Some(text) => {
            let d = spec_of_clusterfile(text)?;
            let master0_only = d.spec.registry_master0_only;
            let hosts: Vec<(String, bool)> = d
                .spec
                .hosts
                .iter()
                .map(|h| (h.ip.clone(), h.role == HostRole::Master))
                .collect();
            (d.name, hosts, d.spec.env, Some(d.spec.image), master0_only)
        }
        None => {
            let hosts = req
                .masters
                .iter()
                .map(|ip| (ip.clone(), true))
                .chain(req.nodes.iter().map(|ip| (ip.clone(), false)))
                .collect();
            (
                req.cluster.clone(),
                hosts,
                req.env.clone(),
                req.image.clone(),
                previous.is_some_and(|p| p.spec.registry_master0_only),
            )
        }
    };
    let recorded = |ip: &str| previous.and_then(|p| p.host(ip)).map(|h| h.role);
    let mut first = !previous.is_some_and(|p| p.hosts.iter().any(|h| h.role == Role::Master0));
    let roles: Vec<(String, Role)> = hosts
        .into_iter()
        .map(|(ip, master)| {
            let role = match (recorded(&ip), master, first) {
                (Some(r), _, _) => r,
                (None, true, true) => {
                    first = false;
                    Role::Master0
                }
                (None, true, false) => Role::Master,
                (None, false, _) => Role::Node,
            };
            (ip, role)
        })
        .collect();
    let specs: Vec<HostSpec> = roles
        .iter()
        .map(|(ip, r)| HostSpec {
            ip: ip.clone(),
            role: if r.is_master() {
                HostRole::Master
            } else {
                HostRole::Node
            },
        })
        .collect();
    let matched = crate::plan::match_nodes(&specs, nodes)?;
    let targets: Vec<Target> = roles
        .into_iter()
        .map(|(ip, role)| Target {
            node_id: matched.get(&ip).cloned().unwrap_or_default(),
            ip,
            role,
        })
        .collect();
    let others = previous
        .map(|p| {
            p.hosts
                .iter()
                .filter(|h| !targets.iter().any(|t| t.ip == h.ip) && !h.hostname.is_empty())
                .map(|h| (h.ip.clone(), h.hostname.clone()))
                .collect()
        })
        .unwrap_or_default();
    let disk_needed = image.map_or(0, |i| disk_needed(image_root, &i));
    Ok((
        targets,
        CheckPlan {
            cluster: name,
            env,
            disk_needed,
            registry_master0_only,
            others,
            ignore,
        },
    ))
}

/// The stage: checks `hosts`, records each host's table as its `preflight`
/// step, and fails naming every error.
pub(super) async fn run(
    driver: &Driver,
    hosts: &[String],
    ignore: &[String],
) -> Result<(), StageError> {
    let ignore = Ignore::parse(ignore).map_err(|e| StageError::Internal(e.to_string()))?;
    let (targets, plan_without_disk, image) = driver.record.read(|c| {
        let targets: Vec<Target> = c
            .hosts
            .iter()
            .filter(|h| hosts.contains(&h.ip))
            .map(|h| Target {
                ip: h.ip.clone(),
                node_id: h.node_id.clone(),
                role: h.role,
            })
            .collect();
        let others = c
            .hosts
            .iter()
            .filter(|h| !hosts.contains(&h.ip) && !h.hostname.is_empty())
            .map(|h| (h.ip.clone(), h.hostname.clone()))
            .collect();
        let plan = CheckPlan {
            cluster: c.name.clone(),
            env: c.spec.env.clone(),
            disk_needed: 0,
            registry_master0_only: c.spec.registry_master0_only,
            others,
            ignore: ignore.clone(),
        };
        (targets, plan, c.image.clone())
    });
    let image_root = driver.image_root.clone();
    let disk = tokio::task::spawn_blocking(move || disk_needed(&image_root, &image))
        .await
        .unwrap_or(0);
    let plan = CheckPlan {
        disk_needed: disk,
        ..plan_without_disk
    };
    for t in &targets {
        driver.record.host(&t.ip, |h| {
            h.phase = STAGE.to_string();
            h.set_step(STAGE, StepState::Running { attempt: 1 }, "");
        });
    }
    driver.save().await;
    let results = check_hosts(driver.agents.clone(), targets, &plan).await;
    let mut failures = Vec::new();
    for r in &results {
        let errors: Vec<String> = r
            .errors()
            .map(|c| format!("{}: {}", c.check, c.detail))
            .collect();
        let warnings = r
            .checks
            .iter()
            .filter(|c| c.level == Level::Warning)
            .count();
        let state = if errors.is_empty() {
            StepState::Done {
                summary: format!("{} checks passed, {warnings} warnings", r.checks.len()),
                elapsed_ms: 0,
            }
        } else {
            StepState::Failed {
                error: errors.join("; "),
            }
        };
        driver.record.host(&r.ip, |h| {
            if !r.hostname.is_empty() {
                h.hostname = r.hostname.clone();
            }
            h.set_step(STAGE, state, &r.table());
        });
        if !errors.is_empty() {
            failures.push((r.ip.clone(), errors.join("; ")));
        }
    }
    driver.save().await;
    if failures.is_empty() {
        Ok(())
    } else {
        Err(StageError::Preflight(failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(ip: &str, name: &str) -> HostChecks {
        HostChecks {
            ip: ip.into(),
            role: Role::Node,
            node_id: format!("{name}-1"),
            hostname: name.into(),
            checks: vec![],
        }
    }

    #[test]
    fn duplicate_hostnames_and_node_names_are_errors_naming_the_other_host() {
        let mut hosts = vec![
            host("10.0.0.1", "alpha"),
            host("10.0.0.2", "alpha"),
            host("10.0.0.3", "Beta"),
            host("10.0.0.4", "gamma"),
        ];
        compare_hostnames(&mut hosts, &[("10.0.0.9".into(), "beta".into())]);
        let hostname = |i: usize| {
            hosts[i]
                .checks
                .iter()
                .find(|c| c.check == "hostname")
                .unwrap()
        };
        assert_eq!(hostname(0).level, Level::Error);
        assert!(
            hostname(0).detail.contains("10.0.0.2 (alpha)"),
            "{:?}",
            hostname(0)
        );
        assert!(hostname(1).detail.contains("10.0.0.1 (alpha)"));
        assert_eq!(hostname(2).level, Level::Error);
        assert!(
            hostname(2).detail.contains("node name beta"),
            "{:?}",
            hostname(2)
        );
        assert_eq!(hostname(3).level, Level::Ok);
    }

    #[test]
    fn preflight_goes_first_on_the_hosts_fetched_to() {
        let mut stages = vec![
            StageSpec {
                name: "fetch".into(),
                work: Work::Fetch {
                    hosts: vec!["10.0.0.2".into()],
                },
            },
            StageSpec {
                name: "labels".into(),
                work: Work::LabelsTaints { hosts: vec![] },
            },
        ];
        prepend(&mut stages, &Ignore::parse(&["swap"]).unwrap());
        assert_eq!(stages[0].name, STAGE);
        assert_eq!(
            stages[0].work,
            Work::Preflight {
                hosts: vec!["10.0.0.2".into()],
                ignore: vec!["swap".into()]
            }
        );
        // Nothing fetched (a scale down): no preflight.
        let mut down = vec![StageSpec {
            name: "reset".into(),
            work: Work::Reset {
                hosts: vec!["10.0.0.2".into()],
                prune: false,
            },
        }];
        prepend(&mut down, &Ignore::default());
        assert_eq!(down.len(), 1);
    }

    #[test]
    fn registry_port_from_the_cluster_env() {
        assert_eq!(registry_port(&[]), 5000);
        assert_eq!(
            registry_port(&[("RegistryPort".into(), "5001".into())]),
            5001
        );
    }
}
