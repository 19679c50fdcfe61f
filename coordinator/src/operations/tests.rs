//! `prepare` without a coordinator, and `drive` over recording doubles of
//! the agents and an in-memory store.

use std::sync::{Arc, Mutex};

use seaport_rootfs::oci::Descriptor;
use seaport_rootfs::store::StoredImage;
use seaport_shared::cluster::{ClusterName, ImageDigest, OperationKind, Role, Step};
use seaport_shared::digest::Digest;
use seaport_shared::preflight::{CheckResult, Ignore, Level};
use seaport_shared::wire::{RunRequest, RunState, StepState, TaskEvent, TaskRequest};

use super::agents::{Agents, AgentsError, Fetched, TaskEvents};
use super::drive::Driver;
use super::prepare::{desired, prepare, PrepareInput, ResolvedImage, Want};
use super::record::LiveRecord;
use super::run::Outcome;
use super::store::{ClusterStore, MemoryStore};
use super::{Cluster, OperationError};
use crate::records::NodeRecord;

fn image() -> ResolvedImage {
    let platform =
        crate::plan::tests::platform_image("amd64", seaport_rootfs::oci::MEDIA_TYPE_LAYER_ZSTD);
    let stored = StoredImage {
        name: platform.image.name.clone(),
        descriptor: Descriptor {
            media_type: seaport_rootfs::oci::MEDIA_TYPE_MANIFEST.into(),
            digest: platform.image.manifest_digest,
            size: platform.image.manifest_size,
            annotations: Default::default(),
            platform: None,
        },
        index: None,
        manifests: vec![platform],
    };
    ResolvedImage::new("k8s:v1", stored)
}

/// Nodes bound to 10.0.0.1 .. by their connections.
fn nodes(n: usize) -> Vec<NodeRecord> {
    (1..=n)
        .map(|i| NodeRecord {
            node_id: format!("n{i}"),
            hostname: format!("host{i}"),
            ips: vec![format!("10.0.0.{i}")],
            observed_ip: Some(format!("10.0.0.{i}")),
            arch: "x86_64".into(),
            ..Default::default()
        })
        .collect()
}

fn run(masters: &[&str], workers: &[&str]) -> Want {
    Want::Run(RunRequest {
        cluster: ClusterName::parse("c").unwrap(),
        image: "k8s:v1".into(),
        masters: masters.iter().map(|s| s.to_string()).collect(),
        nodes: workers.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        ignore_preflight: vec![],
    })
}

fn prepared(want: Want, nodes: &[NodeRecord]) -> Result<super::Prepared, OperationError> {
    prepare(PrepareInput {
        desired: desired(want, None)?,
        previous: None,
        nodes,
        image: image(),
        dry_run: false,
        now: 100,
    })
}

/// The cluster `want` installs on `nodes`, recorded as installed.
fn installed(want: Want, nodes: &[NodeRecord]) -> Cluster {
    let mut c = prepared(want, nodes).unwrap().cluster;
    c.state = RunState::Succeeded;
    c.installed_digest = Some(c.manifest_digest);
    c.stages_done = c.stages.len();
    c
}

/// The operation that takes `installed` to `want`, `nodes` enrolled.
fn change(want: Want, installed: &Cluster, nodes: &[NodeRecord]) -> super::Prepared {
    prepare(PrepareInput {
        desired: desired(want, Some(installed)).unwrap(),
        previous: Some(installed),
        nodes,
        image: image(),
        dry_run: false,
        now: 200,
    })
    .unwrap()
}

#[test]
fn prepare_plans_an_install_once_with_typed_roles_and_the_resolved_digest() {
    let p = prepared(run(&["10.0.0.1", "10.0.0.2"], &["10.0.0.3"]), &nodes(3)).unwrap();
    assert_eq!(p.operation.kind, OperationKind::Install);
    let digest: ImageDigest = Digest::of(b"amd64 manifest").into();
    assert_eq!(p.operation.image.digest, digest);
    assert_eq!(p.cluster.manifest_digest, digest);
    assert_eq!(
        p.operation.roles,
        [
            ("10.0.0.1".to_string(), Role::Master0),
            ("10.0.0.2".to_string(), Role::Master),
            ("10.0.0.3".to_string(), Role::Node)
        ]
    );
    let placed: Vec<(&str, &str, Role)> = p
        .cluster
        .hosts
        .iter()
        .map(|h| (h.ip.as_str(), h.node_id.as_str(), h.role))
        .collect();
    assert_eq!(
        placed,
        [
            ("10.0.0.1", "n1", Role::Master0),
            ("10.0.0.2", "n2", Role::Master),
            ("10.0.0.3", "n3", Role::Node)
        ]
    );
    assert_eq!(p.cluster.operation, Some(OperationKind::Install));
    assert_eq!(p.cluster.generation, 1);
    assert_eq!(p.cluster.stages.first().unwrap().name, "fetch");
    assert_eq!(p.planned().operation, OperationKind::Install);
}

#[test]
fn prepare_refuses_hosts_without_an_agent_and_clusters_being_deleted() {
    let err = prepared(run(&["10.0.0.1"], &["10.0.0.9"]), &nodes(1))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("10.0.0.9") && err.contains("bootstrap"),
        "{err}"
    );

    let mut previous = prepared(run(&["10.0.0.1"], &[]), &nodes(1))
        .unwrap()
        .cluster;
    previous.state = RunState::Deleting;
    let err = prepare(PrepareInput {
        desired: desired(run(&["10.0.0.1"], &[]), None).unwrap(),
        previous: Some(&previous),
        nodes: &nodes(1),
        image: image(),
        dry_run: false,
        now: 100,
    })
    .unwrap_err();
    assert!(matches!(err, OperationError::BeingDeleted(_)), "{err}");

    let join = Want::Join {
        cluster: ClusterName::parse("other").unwrap(),
        masters: vec![],
        nodes: vec!["10.0.0.2".into()],
    };
    let err = desired(join, Some(&previous)).unwrap_err().to_string();
    assert!(err.contains("no cluster named other"), "{err}");
}

#[test]
fn a_second_apply_of_the_same_spec_converges_and_new_hosts_scale_up() {
    let mut installed = prepared(run(&["10.0.0.1"], &["10.0.0.2"]), &nodes(3))
        .unwrap()
        .cluster;
    installed.state = RunState::Succeeded;
    installed.installed_digest = Some(installed.manifest_digest);
    let again = |want| {
        prepare(PrepareInput {
            desired: desired(want, Some(&installed)).unwrap(),
            previous: Some(&installed),
            nodes: &nodes(3),
            image: image(),
            dry_run: false,
            now: 200,
        })
        .unwrap()
    };
    let same = again(run(&["10.0.0.1"], &["10.0.0.2"]));
    assert_eq!(same.operation.kind, OperationKind::Converge);
    assert_eq!(same.cluster.generation, 2);
    let up = again(Want::Join {
        cluster: ClusterName::parse("c").unwrap(),
        masters: vec![],
        nodes: vec!["10.0.0.3".into()],
    });
    assert_eq!(up.operation.kind, OperationKind::ScaleUp);
}

/// Agents that answer every task at once and have every image fetched.
#[derive(Default)]
struct Answering {
    /// Nodes whose preflight finds swap on.
    swap_on: Vec<String>,
    /// Nodes without a session (their host powered off).
    offline: Vec<String>,
    sent: Mutex<Vec<(String, TaskRequest)>>,
    /// (node, shell step prefix): the first such shell task fails.
    fail_once: Mutex<Vec<(String, String)>>,
    distributed: Mutex<Vec<(String, ImageDigest, Vec<String>)>>,
}

const JOIN_DATA: &str = r#"{"api_server_endpoint":"10.0.0.1:6443","master0_ip":"10.0.0.1","token":"abcdef.0123456789abcdef","ca_cert_hashes":["sha256:abababababababababababababababababababababababababababababababab"],"certificate_key":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}"#;

impl Agents for Answering {
    fn nodes(&self) -> Result<Vec<NodeRecord>, AgentsError> {
        Ok(nodes(3))
    }

    fn online(&self, node_id: &str) -> bool {
        !self.offline.iter().any(|n| n == node_id)
    }

    fn run_task(&self, node_id: &str, task: TaskRequest) -> Result<TaskEvents, AgentsError> {
        if !self.online(node_id) {
            return Err(AgentsError::NotConnected(node_id.to_string()));
        }
        self.sent
            .lock()
            .unwrap()
            .push((node_id.to_string(), task.clone()));
        let (tx, events) = TaskEvents::channel();
        let mut answer = vec![];
        let last = match &task {
            TaskRequest::Apply(a) => {
                for s in &a.steps {
                    answer.push(TaskEvent::Step {
                        step: s.to_string(),
                        state: StepState::Done {
                            summary: "ok".into(),
                            elapsed_ms: 1,
                        },
                    });
                }
                let init = a.role == Role::Master0 && a.steps.contains(&Step::Kubeadm);
                TaskEvent::Finished {
                    ok: true,
                    error: None,
                    join_data: init.then(|| JOIN_DATA.to_string()),
                }
            }
            TaskRequest::Balancer(b) => TaskEvent::Balancer {
                facts: Some(seaport_shared::wire::BalancerFacts {
                    listen: format!("{}:{}", b.listen_ip, b.port),
                    backends: b
                        .backends
                        .iter()
                        .map(|a| seaport_shared::wire::BackendFacts {
                            addr: a.clone(),
                            healthy: true,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
                error: None,
            },
            TaskRequest::Shell(sh)
                if {
                    let mut fail = self.fail_once.lock().unwrap();
                    let hit = fail
                        .iter()
                        .position(|(n, p)| n == node_id && sh.step.starts_with(p.as_str()));
                    hit.map(|i| fail.remove(i)).is_some()
                } =>
            {
                TaskEvent::Finished {
                    ok: false,
                    error: Some(format!("{} failed", sh.step)),
                    join_data: None,
                }
            }
            TaskRequest::Preflight(_) => TaskEvent::Preflight {
                hostname: format!("host-{node_id}"),
                checks: vec![if self.swap_on.iter().any(|n| n == node_id) {
                    CheckResult::new("swap", Level::Error, "swap is on: /swapfile")
                } else {
                    CheckResult::new("swap", Level::Ok, "no active swap")
                }],
            },
            _ => TaskEvent::Finished {
                ok: true,
                error: None,
                join_data: None,
            },
        };
        answer.push(last);
        tokio::spawn(async move {
            for e in answer {
                let _ = tx.send(Ok(e)).await;
            }
        });
        Ok(events)
    }

    fn distribute(
        &self,
        image: &str,
        digest: ImageDigest,
        nodes: &[String],
    ) -> Result<(), AgentsError> {
        self.distributed
            .lock()
            .unwrap()
            .push((image.to_string(), digest, nodes.to_vec()));
        Ok(())
    }

    fn fetch_progress(&self, _: &str, _: ImageDigest) -> Result<Option<Vec<Fetched>>, AgentsError> {
        Ok(Some(
            nodes(5)
                .iter()
                .map(|n| Fetched {
                    node_id: n.node_id.clone(),
                    done_bytes: 10,
                    total_bytes: 10,
                    complete: true,
                })
                .collect(),
        ))
    }

    fn release(&self, _: &str) -> Result<(), AgentsError> {
        Ok(())
    }
}

#[tokio::test]
async fn drive_sends_each_host_its_phases_in_order_and_records_the_end() {
    let agents = Arc::new(Answering::default());
    let store = Arc::new(MemoryStore::default());
    let cluster = prepared(run(&["10.0.0.1"], &["10.0.0.2"]), &nodes(3))
        .unwrap()
        .cluster;
    let digest = cluster.manifest_digest;
    let driver = Driver {
        agents: agents.clone(),
        store: store.clone(),
        image_root: std::path::PathBuf::from("/nonexistent"),
        record: LiveRecord::new(cluster),
    };
    // The image's plugins come from the coordinator's copy: none here, so
    // that stage is skipped for this test.
    driver
        .record
        .write(|c| c.stages.retain(|s| s.name != "image-plugins"));
    assert!(matches!(driver.drive().await, Outcome::Succeeded));
    let stored = store
        .cluster(&ClusterName::parse("c").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(stored.state, RunState::Succeeded);
    assert_eq!(stored.stages_done, stored.stages.len());
    assert_eq!(stored.installed_digest, Some(digest));
    assert!(
        stored.join_data.is_some(),
        "join data from kubeadm init kept"
    );
    // The image went by its digest to both nodes.
    let distributed = agents.distributed.lock().unwrap().clone();
    assert_eq!(
        distributed,
        [(
            "k8s:v1".to_string(),
            digest,
            vec!["n1".to_string(), "n2".to_string()]
        )]
    );
    // Each node's apply tasks, in order, carry its steps.
    let sent = agents.sent.lock().unwrap().clone();
    let steps_of = |node: &str| -> Vec<Step> {
        sent.iter()
            .filter(|(n, _)| n == node)
            .filter_map(|(_, t)| match t {
                TaskRequest::Apply(a) => Some(a.steps.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    };
    assert_eq!(
        steps_of("n1"),
        seaport_shared::cluster::steps_for(Role::Master0, true, false)
    );
    assert_eq!(
        steps_of("n2"),
        seaport_shared::cluster::steps_for(Role::Node, false, false)
    );
    // The worker got the first master's join data, checked.
    let worker_join = sent.iter().find_map(|(n, t)| match t {
        TaskRequest::Apply(a) if n == "n2" && a.steps.contains(&Step::Kubeadm) => {
            a.join_data.clone()
        }
        _ => None,
    });
    assert!(worker_join.is_some_and(|j| j.contains("abcdef.0123456789abcdef")));
    let ended = store.audit_log(10).unwrap();
    assert!(
        ended.iter().any(
            |(_, e)| e.what == "install of cluster c (operation 1) ended"
                && e.result == "succeeded"
        ),
        "{ended:?}"
    );
}

/// A run with preflight first, on agents where `swap_on` nodes report swap.
async fn drive_with_preflight(
    swap_on: &[&str],
    ignore: &[&str],
) -> (Outcome, Arc<Answering>, Cluster) {
    let agents = Arc::new(Answering {
        swap_on: swap_on.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    });
    let store = Arc::new(MemoryStore::default());
    let mut cluster = prepared(run(&["10.0.0.1"], &["10.0.0.2"]), &nodes(3))
        .unwrap()
        .cluster;
    cluster.stages.retain(|s| s.name != "image-plugins");
    super::stages::preflight::prepend(&mut cluster.stages, &Ignore::parse(ignore).unwrap());
    let driver = Driver {
        agents: agents.clone(),
        store: store.clone(),
        image_root: std::path::PathBuf::from("/nonexistent"),
        record: LiveRecord::new(cluster),
    };
    let outcome = driver.drive().await;
    let stored = store
        .cluster(&ClusterName::parse("c").unwrap())
        .unwrap()
        .unwrap();
    (outcome, agents, stored)
}

#[tokio::test]
async fn a_preflight_error_stops_the_operation_before_any_host_is_touched() {
    let (outcome, agents, stored) = drive_with_preflight(&["n2"], &[]).await;
    assert!(matches!(outcome, Outcome::Failed));
    assert_eq!(stored.state, RunState::Failed);
    let error = stored.error.clone().unwrap();
    assert!(
        error.contains("preflight failed: 10.0.0.2: swap: swap is on"),
        "{error}"
    );
    // Only the checks went out: no fetch, no apply, no shell.
    let sent = agents.sent.lock().unwrap().clone();
    assert!(
        sent.iter()
            .all(|(_, t)| matches!(t, TaskRequest::Preflight(_))),
        "{sent:?}"
    );
    assert_eq!(sent.len(), 2);
    assert!(agents.distributed.lock().unwrap().is_empty());
    // Each host's table is its `preflight` step.
    let worker = stored.host("10.0.0.2").unwrap();
    let step = worker.steps.iter().find(|s| s.step == "preflight").unwrap();
    assert!(matches!(step.state, StepState::Failed { .. }));
    assert!(step.log_tail.contains("swap"), "{}", step.log_tail);
    assert_eq!(worker.hostname, "host-n2");
}

#[tokio::test]
async fn an_ignored_preflight_error_lets_the_operation_go_on() {
    let (outcome, agents, stored) = drive_with_preflight(&["n2"], &["swap"]).await;
    assert!(matches!(outcome, Outcome::Succeeded), "{:?}", stored.error);
    let worker = stored.host("10.0.0.2").unwrap();
    let step = worker.steps.iter().find(|s| s.step == "preflight").unwrap();
    assert!(step.log_tail.contains("ignored"), "{}", step.log_tail);
    assert!(agents
        .sent
        .lock()
        .unwrap()
        .iter()
        .any(|(_, t)| matches!(t, TaskRequest::Apply(_))));
}

#[test]
fn the_audit_log_says_what_was_accepted_in_words() {
    let p = prepared(run(&["10.0.0.1"], &["10.0.0.2"]), &nodes(3)).unwrap();
    assert_eq!(
        super::service::accepted_words(&p),
        "install of cluster c, operation 1"
    );
}

#[test]
fn a_check_keeps_the_roles_a_cluster_has_and_names_its_other_hosts() {
    use super::stages::preflight::check_targets;
    let req = |masters: &[&str], nodes: &[&str]| seaport_shared::wire::CheckRequest {
        clusterfile: None,
        cluster: ClusterName::parse("c").unwrap(),
        masters: masters.iter().map(|s| s.to_string()).collect(),
        nodes: nodes.iter().map(|s| s.to_string()).collect(),
        image: None,
        env: vec![],
        ignore_preflight: vec![],
    };
    let roles = |targets: &[super::stages::preflight::Target]| -> Vec<(String, Role)> {
        targets.iter().map(|t| (t.ip.clone(), t.role)).collect()
    };
    let root = std::path::Path::new("/nonexistent");
    // No cluster yet: the first master named is master0.
    let (t, plan) = check_targets(
        req(&["10.0.0.2", "10.0.0.1"], &["10.0.0.3"]),
        Ignore::default(),
        None,
        &nodes(3),
        root,
    )
    .unwrap();
    assert_eq!(
        roles(&t),
        [
            ("10.0.0.2".to_string(), Role::Master0),
            ("10.0.0.1".to_string(), Role::Master),
            ("10.0.0.3".to_string(), Role::Node)
        ]
    );
    assert_eq!(t[0].node_id, "n2");
    assert!(plan.others.is_empty());
    // An installed cluster (master0 10.0.0.1): its hosts keep their roles,
    // a new master is not master0, and the hosts not checked are named.
    let installed = prepared(run(&["10.0.0.1"], &["10.0.0.2"]), &nodes(3))
        .unwrap()
        .cluster;
    let (t, plan) = check_targets(
        req(&["10.0.0.3", "10.0.0.1"], &[]),
        Ignore::default(),
        Some(&installed),
        &nodes(3),
        root,
    )
    .unwrap();
    assert_eq!(
        roles(&t),
        [
            ("10.0.0.3".to_string(), Role::Master),
            ("10.0.0.1".to_string(), Role::Master0)
        ]
    );
    assert_eq!(plan.others, [("10.0.0.2".to_string(), "host2".to_string())]);
    // A host without an agent is refused, naming it.
    let err = check_targets(
        req(&["10.0.0.9"], &[]),
        Ignore::default(),
        None,
        &nodes(3),
        root,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("10.0.0.9"), "{err}");
}

/// A cluster of master0 (n1) and a worker (n2) installed, being deleted
/// with `--prune` while n1 is offline.
fn deleting_with_master0_offline(force: bool) -> (Arc<Answering>, Arc<MemoryStore>, Driver) {
    let agents = Arc::new(Answering {
        offline: vec!["n1".into()],
        ..Default::default()
    });
    let store = Arc::new(MemoryStore::default());
    let mut installed = prepared(run(&["10.0.0.1"], &["10.0.0.2"]), &nodes(3))
        .unwrap()
        .cluster;
    installed.state = RunState::Succeeded;
    installed.stages_done = installed.stages.len();
    let deleting = super::prepare::deleting(installed, true, force, "admin", 300);
    let driver = Driver {
        agents: agents.clone(),
        store: store.clone(),
        image_root: std::path::PathBuf::from("/nonexistent"),
        record: LiveRecord::new(deleting),
    };
    (agents, store, driver)
}

fn resets_sent_to(agents: &Answering) -> Vec<String> {
    agents
        .sent
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, t)| matches!(t, TaskRequest::Reset(_)))
        .map(|(n, _)| n.clone())
        .collect()
}

#[tokio::test]
async fn delete_names_an_offline_host_at_once_and_waits_for_it() {
    let (agents, store, driver) = deleting_with_master0_offline(false);
    let running = tokio::spawn({
        let driver = driver.clone();
        async move { driver.drive().await }
    });
    // Within a second or two: the worker is reset, and master0's note (in
    // the stored record too, which `seaport status` reads) says it is
    // offline, that the delete waits and how to go on without it.
    let name = ClusterName::parse("c").unwrap();
    let mut note = None;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        note = store
            .cluster(&name)
            .unwrap()
            .and_then(|c| c.host("10.0.0.1").and_then(|h| h.error.clone()));
        if note.is_some() && resets_sent_to(&agents) == ["n2"] {
            break;
        }
    }
    let note = note.expect("no note on the offline host");
    assert!(
        note.contains("offline")
            && note.contains("n1")
            && note.contains("waits")
            && note.contains("--force"),
        "{note}"
    );
    assert_eq!(resets_sent_to(&agents), ["n2"]);
    assert!(
        !running.is_finished(),
        "the delete did not wait for the offline host"
    );
    running.abort();
}

#[tokio::test]
async fn delete_force_goes_on_without_an_offline_host_and_says_so() {
    let (agents, store, driver) = deleting_with_master0_offline(true);
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), driver.drive())
        .await
        .expect("delete --force waited for the offline host");
    assert!(matches!(outcome, Outcome::Deleted));
    assert_eq!(resets_sent_to(&agents), ["n2"]);
    let stored = store
        .cluster(&ClusterName::parse("c").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(stored.state, RunState::Deleted);
    let m0 = stored.host("10.0.0.1").unwrap();
    assert_eq!(m0.error.as_deref(), Some(super::LEFT_OUT));
    assert!(
        !m0.steps.iter().any(|s| s.step == "reset"),
        "the offline host shows a reset: {:?}",
        m0.steps
    );
    let n2 = stored.host("10.0.0.2").unwrap();
    assert_eq!(n2.error, None);
}

/// Drives `cluster` on answering agents to its end; the tasks sent, in order.
async fn drive_all(mut cluster: Cluster) -> (Outcome, Vec<(String, TaskRequest)>) {
    cluster.stages.retain(|s| s.name != "image-plugins");
    let agents = Arc::new(Answering::default());
    let driver = Driver {
        agents: agents.clone(),
        store: Arc::new(MemoryStore::default()),
        image_root: std::path::PathBuf::from("/nonexistent"),
        record: LiveRecord::new(cluster),
    };
    let outcome = driver.drive().await;
    let sent = agents.sent.lock().unwrap().clone();
    (outcome, sent)
}

/// Where in `sent` the first task matching `f` went, and to which node.
fn first_sent(
    sent: &[(String, TaskRequest)],
    f: impl Fn(&str, &TaskRequest) -> bool,
) -> Option<usize> {
    sent.iter().position(|(n, t)| f(n, t))
}

fn kubeadm_to(node: &str) -> impl Fn(&str, &TaskRequest) -> bool + '_ {
    move |n, t| n == node && matches!(t, TaskRequest::Apply(a) if a.steps.contains(&Step::Kubeadm))
}

#[tokio::test]
async fn workers_balancers_get_every_master_after_the_masters_joined_and_before_workers_join() {
    let masters = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    let cluster = prepared(run(&masters, &["10.0.0.4", "10.0.0.5"]), &nodes(5))
        .unwrap()
        .cluster;
    let (outcome, sent) = drive_all(cluster).await;
    assert!(matches!(outcome, Outcome::Succeeded));
    let balancer_tasks: Vec<(&str, &seaport_shared::wire::BalancerTask)> = sent
        .iter()
        .filter_map(|(n, t)| match t {
            TaskRequest::Balancer(b) => Some((n.as_str(), b)),
            _ => None,
        })
        .collect();
    let to: Vec<&str> = balancer_tasks.iter().map(|(n, _)| *n).collect();
    assert_eq!(to.len(), 2, "{to:?}");
    assert!(
        to.contains(&"n4") && to.contains(&"n5"),
        "workers only: {to:?}"
    );
    for (_, b) in &balancer_tasks {
        assert_eq!((b.listen_ip.as_str(), b.port), ("10.103.97.2", 6443));
        assert_eq!(
            b.backends,
            ["10.0.0.1:6443", "10.0.0.2:6443", "10.0.0.3:6443"]
        );
        // Every master runs a registry (sealer's localRegistry.ha): the
        // workers' registry port forwards to each.
        assert_eq!(b.registry_port, Some(5000));
        assert_eq!(
            b.registry_backends,
            ["10.0.0.1:5000", "10.0.0.2:5000", "10.0.0.3:5000"]
        );
    }
    let registry_steps: Vec<&str> = sent
        .iter()
        .filter(|(_, t)| matches!(t, TaskRequest::Apply(a) if a.steps.contains(&Step::Registry)))
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(registry_steps.len(), 3, "{registry_steps:?}");
    assert!(["n1", "n2", "n3"]
        .iter()
        .all(|m| registry_steps.contains(m)));
    // sea.hub: a master its own registry, a worker its balancer.
    for (n, t) in &sent {
        if let TaskRequest::Apply(a) = t {
            let want = if a.role == Role::Node {
                "10.103.97.2"
            } else {
                a.host_ip.as_str()
            };
            assert_eq!(a.registry_ip, want, "{n}");
        }
    }
    let first_balancer = first_sent(&sent, |_, t| matches!(t, TaskRequest::Balancer(_))).unwrap();
    for m in ["n1", "n2", "n3"] {
        let joined = first_sent(&sent, kubeadm_to(m)).unwrap();
        assert!(
            joined < first_balancer,
            "{m} joins before the balancers get it"
        );
    }
    for w in ["n4", "n5"] {
        let joins = first_sent(&sent, kubeadm_to(w)).unwrap();
        assert!(
            first_balancer < joins,
            "{w}'s balancer is set before it joins"
        );
    }
}

#[tokio::test]
async fn a_leaving_master_leaves_every_balancer_before_it_is_reset() {
    let all = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    let installed = installed(run(&all, &["10.0.0.4", "10.0.0.5"]), &nodes(5));
    let down = change(
        run(&["10.0.0.1", "10.0.0.2"], &["10.0.0.4", "10.0.0.5"]),
        &installed,
        &nodes(5),
    );
    assert_eq!(down.operation.kind, OperationKind::ScaleDown);
    let (outcome, sent) = drive_all(down.cluster).await;
    assert!(matches!(outcome, Outcome::Succeeded));
    let balancers: Vec<&(String, TaskRequest)> = sent
        .iter()
        .filter(|(_, t)| matches!(t, TaskRequest::Balancer(_)))
        .collect();
    assert_eq!(balancers.len(), 2, "{sent:?}");
    for (_, t) in &balancers {
        let TaskRequest::Balancer(b) = t else {
            unreachable!()
        };
        assert_eq!(b.backends, ["10.0.0.1:6443", "10.0.0.2:6443"]);
    }
    let reset = first_sent(&sent, |n, t| {
        n == "n3" && matches!(t, TaskRequest::Reset(_))
    })
    .unwrap();
    let last_balancer = sent
        .iter()
        .rposition(|(_, t)| matches!(t, TaskRequest::Balancer(_)))
        .unwrap();
    assert!(
        last_balancer < reset,
        "every balancer drops it before its reset"
    );
    // Reached, it left etcd in its own reset: nothing asks master0.
    assert!(
        !sent.iter().any(
            |(_, t)| matches!(t, TaskRequest::Shell(s) if s.script.contains("etcd member remove"))
        ),
        "{sent:?}"
    );
}

#[test]
fn an_unusable_balancer_address_in_the_cluster_env_is_refused_naming_the_key() {
    let Want::Run(mut req) = run(&["10.0.0.1"], &["10.0.0.2"]) else {
        unreachable!()
    };
    req.env = vec![("APIServerVIP".into(), "10.103.97".into())];
    let err = match prepared(Want::Run(req), &nodes(3)) {
        Ok(_) => panic!("planned"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("env APIServerVIP=10.103.97: not a unicast IPv4 address"),
        "{err}"
    );
}

#[test]
fn ha_false_keeps_the_registry_on_master0_for_every_host() {
    let file = r#"apiVersion: sealer.io/v2
kind: Cluster
metadata:
  name: c
spec:
  image: k8s:v1
  hosts:
    - ips: [10.0.0.1, 10.0.0.2]
      roles: [master]
    - ips: [10.0.0.3]
      roles: [node]
  registry:
    localRegistry:
      ha: false
"#;
    let p = prepared(Want::Clusterfile(file.into()), &nodes(3)).unwrap();
    assert!(p.cluster.spec.registry_master0_only);
    let registry = p
        .cluster
        .stages
        .iter()
        .find(|s| s.name == "registry")
        .unwrap();
    let crate::converge::Work::Apply { tasks, .. } = &registry.work else {
        panic!("{registry:?}")
    };
    assert_eq!(
        tasks.iter().map(|t| t.host.as_str()).collect::<Vec<_>>(),
        ["10.0.0.1"]
    );
    let balancers = p
        .cluster
        .stages
        .iter()
        .find(|s| s.name == "balancers")
        .unwrap();
    let crate::converge::Work::Balancers { registries, .. } = &balancers.work else {
        panic!("{balancers:?}")
    };
    assert_eq!(registries, &["10.0.0.1".to_string()]);
}

#[tokio::test]
async fn preflight_wants_the_registry_port_free_on_every_master_that_runs_a_registry() {
    let mut cluster = prepared(run(&["10.0.0.1", "10.0.0.2"], &["10.0.0.3"]), &nodes(3))
        .unwrap()
        .cluster;
    super::stages::preflight::prepend(&mut cluster.stages, &Ignore::parse::<&str>(&[]).unwrap());
    let (outcome, sent) = drive_all(cluster).await;
    assert!(matches!(outcome, Outcome::Succeeded));
    let registry_port_of = |node: &str| {
        sent.iter()
            .find_map(|(n, t)| match t {
                TaskRequest::Preflight(p) if n == node => Some((p.registry_port, p.ports.clone())),
                _ => None,
            })
            .unwrap()
    };
    for m in ["n1", "n2"] {
        let (port, ports) = registry_port_of(m);
        assert_eq!(port, Some(5000), "{m}");
        assert!(ports.contains(&5000), "{m}: {ports:?}");
    }
    let (port, ports) = registry_port_of("n3");
    assert_eq!(port, None);
    assert!(!ports.contains(&5000), "{ports:?}");
}

#[tokio::test]
async fn the_local_registrys_credentials_reach_every_hosts_apply_and_no_log_shows_the_password() {
    let file = r#"apiVersion: sealer.io/v2
kind: Cluster
metadata:
  name: c
spec:
  image: k8s:v1
  hosts:
    - ips: [10.0.0.1]
      roles: [master]
    - ips: [10.0.0.2]
      roles: [node]
  registry:
    localRegistry:
      username: admin
      password: pw-Zq81
"#;
    let p = prepared(Want::Clusterfile(file.into()), &nodes(2)).unwrap();
    let (outcome, sent) = drive_all(p.cluster).await;
    assert!(matches!(outcome, Outcome::Succeeded));
    let applies: Vec<&seaport_shared::wire::ApplyTask> = sent
        .iter()
        .filter_map(|(_, t)| match t {
            TaskRequest::Apply(a) => Some(a),
            _ => None,
        })
        .collect();
    assert!(applies.iter().any(|a| a.role == Role::Node));
    for a in &applies {
        let auth = a
            .registry_auth
            .as_ref()
            .expect("credentials in every apply");
        assert_eq!(
            (auth.username.as_str(), auth.password.as_str()),
            ("admin", "pw-Zq81")
        );
        // What a log line of the task shows.
        let shown = format!("{a:?}");
        assert!(
            shown.contains("admin") && !shown.contains("pw-Zq81"),
            "{shown}"
        );
    }

    // Without them: none sent.
    let plain = file.replace(
        "      username: admin\n      password: pw-Zq81\n",
        "      ha: true\n",
    );
    let p = prepared(Want::Clusterfile(plain), &nodes(2)).unwrap();
    let (_, sent) = drive_all(p.cluster).await;
    assert!(sent
        .iter()
        .all(|(_, t)| !matches!(t, TaskRequest::Apply(a) if a.registry_auth.is_some())));
}

#[tokio::test]
async fn delete_m_force_removes_an_offline_master_from_balancers_kubernetes_and_etcd_and_forgets_it(
) {
    let all = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    let installed = installed(run(&all, &["10.0.0.4"]), &nodes(4));
    let mut down = change(
        Want::Remove {
            cluster: ClusterName::parse("c").unwrap(),
            ips: vec!["10.0.0.3".into()],
            force: true,
        },
        &installed,
        &nodes(4),
    );
    // What the service does for `--force`.
    down.cluster.force = true;
    let stages: Vec<&str> = down
        .cluster
        .stages
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    let at = |n: &str| stages.iter().position(|s| *s == n).unwrap();
    assert!(at("balancers") < at("delete-nodes"), "{stages:?}");
    assert!(
        at("reset") < at("etcd-members") && at("etcd-members") < at("forget"),
        "{stages:?}"
    );

    let agents = Arc::new(Answering {
        offline: vec!["n3".into()],
        ..Default::default()
    });
    let driver = Driver {
        agents: agents.clone(),
        store: Arc::new(MemoryStore::default()),
        image_root: std::path::PathBuf::from("/nonexistent"),
        record: LiveRecord::new(down.cluster),
    };
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), driver.drive())
        .await
        .expect("delete -m --force waited for the offline master");
    assert!(matches!(outcome, Outcome::Succeeded));
    let sent = agents.sent.lock().unwrap().clone();
    assert!(sent.iter().all(|(n, _)| n != "n3"), "{sent:?}");
    let balancer = first_sent(&sent, |n, t| {
        n == "n4" && matches!(t, TaskRequest::Balancer(b) if b.backends == ["10.0.0.1:6443", "10.0.0.2:6443"])
    })
    .expect("the worker's balancer without the leaving master");
    let shell = |needle: &'static str| {
        move |n: &str, t: &TaskRequest| {
            n == "n1" && matches!(t, TaskRequest::Shell(s) if s.script.contains(needle))
        }
    };
    let delete_node =
        first_sent(&sent, shell("kubectl delete node 'host3'")).expect("kubectl delete node");
    let etcd = first_sent(&sent, shell("etcd member remove")).expect("etcd member removal");
    assert!(balancer < delete_node && delete_node < etcd, "{sent:?}");
    let TaskRequest::Shell(s) = &sent[etcd].1 else {
        unreachable!()
    };
    assert!(
        s.script.contains("exec 'etcd-host1' -- etcdctl"),
        "{}",
        s.script
    );
    assert!(s.script.contains("https://10.0.0.3:2380"), "{}", s.script);
    let c = driver.record.snapshot();
    assert!(c.host("10.0.0.3").is_none(), "forgotten");
    assert_eq!(c.left_out.len(), 1, "{:?}", c.left_out);
    let note = &c.left_out[0];
    assert!(
        note.starts_with("10.0.0.3 (host3) was offline: not reset")
            && note.contains("its etcd member from 10.0.0.1")
            && note.contains("seaport-agent reset --cluster c"),
        "{note}"
    );
    assert_eq!(c.view(|_| true).left_out, c.left_out);
}

/// A cluster of masters 10.0.0.1, 10.0.0.2 and worker 10.0.0.3 installed
/// from an image of Kubernetes v1.19.8, and the operation that applies an
/// image of `to` (another digest) to it.
fn upgrade_to(to: &str) -> Result<super::Prepared, OperationError> {
    let masters = ["10.0.0.1", "10.0.0.2"];
    let mut old = image();
    old.kube_version = Some("v1.19.8".into());
    let mut installed = prepare(PrepareInput {
        desired: desired(run(&masters, &["10.0.0.3"]), None).unwrap(),
        previous: None,
        nodes: &nodes(3),
        image: old,
        dry_run: false,
        now: 100,
    })
    .unwrap()
    .cluster;
    installed.state = RunState::Succeeded;
    installed.installed_digest = Some(installed.manifest_digest);
    installed.installed_kube_version = installed.kube_version.clone();
    installed.stages_done = installed.stages.len();
    let mut new = image();
    new.kube_version = Some(to.into());
    new.digest = Digest::of(b"the newer image").into();
    prepare(PrepareInput {
        desired: desired(run(&masters, &["10.0.0.3"]), Some(&installed)).unwrap(),
        previous: Some(&installed),
        nodes: &nodes(3),
        image: new,
        dry_run: false,
        now: 200,
    })
}

/// The control-plane upgrade's shell steps sent: (node, step, script).
fn upgrade_shells(sent: &[(String, TaskRequest)]) -> Vec<(String, String, String)> {
    sent.iter()
        .filter_map(|(n, t)| match t {
            TaskRequest::Shell(s)
                if ["drain:", "kubeadm-upgrade@", "uncordon:"]
                    .iter()
                    .any(|p| s.step.starts_with(p)) =>
            {
                Some((n.clone(), s.step.clone(), s.script.clone()))
            }
            _ => None,
        })
        .collect()
}

fn drive_on(agents: &Arc<Answering>, store: &Arc<MemoryStore>, cluster: Cluster) -> Driver {
    let mut cluster = cluster;
    cluster.stages.retain(|s| s.name != "image-plugins");
    Driver {
        agents: agents.clone(),
        store: store.clone(),
        image_root: std::path::PathBuf::from("/nonexistent"),
        record: LiveRecord::new(cluster),
    }
}

#[tokio::test]
async fn a_newer_kubernetes_upgrades_master0_then_each_master_then_each_worker_drained_and_uncordoned(
) {
    let up = upgrade_to("v1.20.4").unwrap();
    assert_eq!(up.operation.kind, OperationKind::Upgrade);
    let (agents, store) = (
        Arc::new(Answering::default()),
        Arc::new(MemoryStore::default()),
    );
    let outcome = drive_on(&agents, &store, up.cluster).drive().await;
    assert!(matches!(outcome, Outcome::Succeeded));
    let sent = agents.sent.lock().unwrap().clone();
    let shells = upgrade_shells(&sent);
    let steps: Vec<(&str, &str)> = shells
        .iter()
        .map(|(n, s, _)| (n.as_str(), s.as_str()))
        .collect();
    assert_eq!(
        steps,
        [
            ("n1", "drain:host1@v1.20.4"),
            ("n1", "kubeadm-upgrade@v1.20.4"),
            ("n1", "uncordon:host1@v1.20.4"),
            ("n1", "drain:host2@v1.20.4"),
            ("n2", "kubeadm-upgrade@v1.20.4"),
            ("n1", "uncordon:host2@v1.20.4"),
            ("n1", "drain:host3@v1.20.4"),
            ("n3", "kubeadm-upgrade@v1.20.4"),
            ("n1", "uncordon:host3@v1.20.4"),
        ]
    );
    assert!(shells[0]
        .2
        .contains("kubectl drain 'host1' --ignore-daemonsets --delete-emptydir-data"));
    assert!(
        shells[1].2.contains("kubeadm upgrade apply 'v1.20.4' -y"),
        "{}",
        shells[1].2
    );
    assert!(
        shells[4].2.contains("kubeadm upgrade node"),
        "{}",
        shells[4].2
    );
    assert!(
        shells[7].2.contains("kubeadm upgrade node"),
        "{}",
        shells[7].2
    );
    assert!(shells[8].2.contains("kubectl uncordon 'host3'"));
    // After every host has the new image's binaries.
    let last_apply = sent
        .iter()
        .rposition(|(_, t)| matches!(t, TaskRequest::Apply(_)))
        .unwrap();
    let first_drain = sent
        .iter()
        .position(|(_, t)| matches!(t, TaskRequest::Shell(s) if s.step.starts_with("drain:")))
        .unwrap();
    assert!(last_apply < first_drain);
    let stored = store
        .cluster(&ClusterName::parse("c").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(stored.installed_kube_version.as_deref(), Some("v1.20.4"));
    for h in &stored.hosts {
        assert!(
            h.steps
                .iter()
                .any(|s| s.step == "control-plane@v1.20.4"
                    && matches!(s.state, StepState::Done { .. })),
            "{}: {:?}",
            h.ip,
            h.steps
        );
    }
}

#[tokio::test]
async fn an_interrupted_control_plane_upgrade_resumes_at_the_host_that_was_not_done() {
    let up = upgrade_to("v1.20.4").unwrap();
    let (agents, store) = (
        Arc::new(Answering::default()),
        Arc::new(MemoryStore::default()),
    );
    agents
        .fail_once
        .lock()
        .unwrap()
        .push(("n3".into(), "kubeadm-upgrade@".into()));
    let outcome = drive_on(&agents, &store, up.cluster).drive().await;
    assert!(matches!(outcome, Outcome::Failed));
    let name = ClusterName::parse("c").unwrap();
    let mut record = store.cluster(&name).unwrap().unwrap();
    assert_eq!(
        record.stages[record.stages_done].name,
        "control-plane-upgrade"
    );
    // The coordinator restarts: the record is resumed where it stopped.
    record.state = RunState::Running;
    record.error = None;
    let again = Arc::new(Answering::default());
    let outcome = drive_on(&again, &store, record).drive().await;
    assert!(matches!(outcome, Outcome::Succeeded));
    let shells = upgrade_shells(&again.sent.lock().unwrap());
    let steps: Vec<(&str, &str)> = shells
        .iter()
        .map(|(n, s, _)| (n.as_str(), s.as_str()))
        .collect();
    assert_eq!(
        steps,
        [
            ("n1", "drain:host3@v1.20.4"),
            ("n3", "kubeadm-upgrade@v1.20.4"),
            ("n1", "uncordon:host3@v1.20.4"),
        ],
        "master0 and the other master were upgraded again"
    );
}

#[test]
fn a_failed_upgrade_applied_again_is_the_upgrade_again() {
    let mut failed = upgrade_to("v1.20.4").unwrap().cluster;
    failed.state = RunState::Failed;
    let mut new = image();
    new.kube_version = Some("v1.20.4".into());
    new.digest = failed.manifest_digest;
    let again = prepare(PrepareInput {
        desired: desired(run(&["10.0.0.1", "10.0.0.2"], &["10.0.0.3"]), Some(&failed)).unwrap(),
        previous: Some(&failed),
        nodes: &nodes(3),
        image: new,
        dry_run: false,
        now: 300,
    })
    .unwrap();
    assert_eq!(again.operation.kind, OperationKind::Upgrade);
    assert!(again
        .cluster
        .stages
        .iter()
        .any(|s| s.name == "control-plane-upgrade"));
}

#[test]
fn an_older_kubernetes_or_a_skipped_minor_release_is_refused_before_anything_runs() {
    let err = upgrade_to("v1.18.20").unwrap_err().to_string();
    assert!(
        err.contains("v1.18.20") && err.contains("v1.19.8") && err.contains("older"),
        "{err}"
    );
    let err = upgrade_to("v1.21.0").unwrap_err().to_string();
    assert!(err.contains("one minor release"), "{err}");
    // The same version on a new image: no control-plane upgrade.
    let same = upgrade_to("v1.19.8").unwrap();
    assert_eq!(same.operation.kind, OperationKind::Upgrade);
    assert!(!same
        .cluster
        .stages
        .iter()
        .any(|s| s.name == "control-plane-upgrade"));
}

#[test]
fn the_registry_certificate_is_made_once_per_cluster_and_its_key_goes_to_registry_hosts_only() {
    let file = |names: &str| {
        format!(
            "apiVersion: sealer.io/v2\nkind: Cluster\nmetadata:\n  name: c\nspec:\n  image: k8s:v1\n  hosts:\n    - ips: [10.0.0.1]\n      roles: [master]\n    - ips: [10.0.0.2]\n      roles: [node]\n  registry:\n    localRegistry:\n      cert:\n        subjectAltName:\n          dnsNames: [{names}]\n"
        )
    };
    let first = prepared(Want::Clusterfile(file("a.example")), &nodes(2))
        .unwrap()
        .cluster;
    let tls = first.spec.registry_tls.clone().expect("TLS by default");
    assert_eq!(tls.domain, "sea.hub");
    assert_eq!(
        tls.generated_for.as_deref(),
        Some(&["sea.hub".to_string(), "a.example".to_string()][..])
    );
    seaport_shared::registry_cert::check(&tls.cert, "a.example", std::time::SystemTime::now())
        .unwrap();
    let mut installed = first.clone();
    installed.state = RunState::Succeeded;
    installed.installed_digest = Some(installed.manifest_digest);
    let again = |text: String| {
        prepare(PrepareInput {
            desired: desired(Want::Clusterfile(text), Some(&installed)).unwrap(),
            previous: Some(&installed),
            nodes: &nodes(2),
            image: image(),
            dry_run: false,
            now: 200,
        })
        .unwrap()
        .cluster
    };
    // The same names: the same CA, certificate and key.
    assert_eq!(
        again(file("a.example")).spec.registry_tls,
        Some(tls.clone())
    );
    // Other names: a new certificate.
    let other = again(file("b.example")).spec.registry_tls.unwrap();
    assert_ne!(other.cert, tls.cert);
    // The key in no debug output; only the registry host is sent it.
    assert!(!format!("{:?}", first.spec).contains("PRIVATE KEY"));
    assert_eq!(
        tls.for_host(true).key.as_deref(),
        Some(tls.cert.key.as_str())
    );
    assert_eq!(tls.for_host(false).key, None);
    assert_eq!(tls.for_host(false).certificate, None);
    assert_eq!(tls.for_host(false).ca, tls.cert.ca);
    // `seaport run`: sealer's default, TLS for sea.hub.
    let run = prepared(run(&["10.0.0.1"], &[]), &nodes(1))
        .unwrap()
        .cluster;
    assert_eq!(run.spec.registry_tls.unwrap().domain, "sea.hub");
    // `insecure: true`: none.
    let plain = file("a.example").replace("      cert:", "      insecure: true\n      cert:");
    let p = prepared(Want::Clusterfile(plain), &nodes(2))
        .unwrap()
        .cluster;
    assert_eq!(p.spec.registry_tls, None);
}
