//! A compromised node against a real coordinator in-process: what one host
//! says must not reach the others. Each test fails if the protection it
//! names is removed.
//!
//! The nodes are real enrolled nodes (their own keys and certificates, their
//! own sessions from their own loopback addresses) answering tasks by
//! script (`node_support`).

mod identity_support;
mod node_support;

use std::fs;
use std::path::Path;

use node_support::{join_data_json, Node, Running, Script};
use seaport_shared::wire::{AdminRequest, AdminResponse, RunRequest, RunState, TaskRequest};

/// Builds `name` into the coordinator's image store from `files`.
fn build_image(root: &Path, work: &Path, name: &str, files: &[(&str, &str)]) {
    let ctx = work.join(format!("ctx-{}", name.replace(':', "-")));
    for (rel, text) in files {
        let p = ctx.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    let kubefile = ctx.join("Kubefile");
    fs::write(&kubefile, "FROM scratch\nCOPY . .\n").unwrap();
    let store = seaport_rootfs::store::Store::open(root).unwrap();
    let mut opts = seaport_rootfs::build::BuildOptions::new(&kubefile, &ctx, name);
    opts.platform = "linux/amd64".into();
    seaport_rootfs::build::build(&store, &opts).unwrap();
}

async fn run(c: &Running, req: AdminRequest) -> u64 {
    match c.coord.admin(req).await.expect("operation accepted") {
        AdminResponse::RunAccepted { generation, .. } => generation,
        other => panic!("unexpected answer {other:?}"),
    }
}

/// Join data in the apply tasks a node received.
fn join_data_given(n: &Node) -> Vec<serde_json::Value> {
    n.tasks()
        .iter()
        .filter_map(|t| match t {
            TaskRequest::Apply(a) => a.join_data.as_deref(),
            _ => None,
        })
        .map(|j| serde_json::from_str(j).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_data_forged_by_a_worker_is_refused_and_later_joins_get_master0s() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let mut c = Running::start(&root).await;
    build_image(&root, dir.path(), "relay:v1", &[("etc/motd", "hi\n")]);
    let real = join_data_json("127.0.0.2", "127.0.0.2", "abcdef.0123456789abcdef");
    let forged = join_data_json("127.0.0.2", "127.0.0.3", "evil00.0123456789abcdef");
    let mut m0 = Node::start(
        &c.coord,
        dir.path(),
        "m0",
        "127.0.0.2",
        Script {
            init_join_data: Some(real.clone()),
            ..Script::default()
        },
    )
    .await;
    // The compromised worker reports its own join data (its API server, its
    // token) with every task it finishes.
    let mut evil = Node::start(
        &c.coord,
        dir.path(),
        "evil",
        "127.0.0.3",
        Script {
            forged_join_data: Some(forged.clone()),
            ..Script::default()
        },
    )
    .await;
    let generation = run(
        &c,
        AdminRequest::Run(RunRequest {
            cluster: "c1".parse().unwrap(),
            image: "relay:v1".into(),
            masters: vec![m0.ip.to_string()],
            nodes: vec![evil.ip.to_string()],
            env: vec![],
            ignore_preflight: vec![],
        }),
    )
    .await;
    let view = c.wait_cluster("c1", generation).await;
    assert_eq!(view.state, RunState::Succeeded, "{view:?}");

    // The coordinator restarts (what it keeps of the install comes from its
    // database now), the hosts reconnect, and the worker keeps forging.
    c = c.restart().await;
    m0.reconnect(&c.coord).await;
    evil.reconnect(&c.coord).await;

    // A host joining later gets master0's join data, not the worker's.
    let late = Node::start(&c.coord, dir.path(), "late", "127.0.0.4", Script::default()).await;
    let generation = run(
        &c,
        AdminRequest::Join {
            cluster: "c1".parse().unwrap(),
            masters: vec![],
            nodes: vec![late.ip.to_string()],
            ignore_preflight: vec![],
        },
    )
    .await;
    let after = c.wait_cluster("c1", generation).await;
    assert_eq!(after.state, RunState::Succeeded, "{after:?}");
    let given = join_data_given(&late);
    let real: serde_json::Value = serde_json::from_str(&real).unwrap();
    assert!(!given.is_empty(), "the joining host got no join data");
    assert!(
        given.iter().all(|j| *j == real),
        "the joining host was given {given:?}, not master0's {real}"
    );
    // The install shows which host tried.
    let flagged = view
        .hosts
        .iter()
        .find(|h| h.ip == "127.0.0.3")
        .and_then(|h| h.error.clone())
        .unwrap_or_default();
    assert!(flagged.contains("reported join data"), "{view:?}");
    drop((m0, evil, late));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_run_on_hosts_are_the_images_own_not_master0s_report() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let c = Running::start(&root).await;
    let own = "apiVersion: sealer.aliyun.com/v1alpha1\nkind: Plugin\nmetadata:\n  name: own\nspec:\n  type: SHELL\n  action: PostInstall\n  data: echo the-image-plugin\n";
    build_image(
        &root,
        dir.path(),
        "plugins:v1",
        &[("plugins/own.yaml", own), ("etc/motd", "hi\n")],
    );
    let forged = "apiVersion: sealer.aliyun.com/v1alpha1\nkind: Plugin\nmetadata:\n  name: forged\nspec:\n  type: SHELL\n  action: PostInstall\n  data: echo forged-by-master0\n";
    let m0 = Node::start(
        &c.coord,
        dir.path(),
        "m0",
        "127.0.0.2",
        Script {
            init_join_data: Some(join_data_json(
                "127.0.0.2",
                "127.0.0.2",
                "abcdef.0123456789abcdef",
            )),
            forged_plugins: vec![("plugins/own.yaml".into(), forged.into())],
            ..Script::default()
        },
    )
    .await;
    let n1 = Node::start(&c.coord, dir.path(), "n1", "127.0.0.3", Script::default()).await;
    let generation = run(
        &c,
        AdminRequest::Run(RunRequest {
            cluster: "c1".parse().unwrap(),
            image: "plugins:v1".into(),
            masters: vec![m0.ip.to_string()],
            nodes: vec![n1.ip.to_string()],
            env: vec![],
            ignore_preflight: vec![],
        }),
    )
    .await;
    let view = c.wait_cluster("c1", generation).await;
    assert_eq!(view.state, RunState::Succeeded, "{view:?}");
    for n in [&m0, &n1] {
        let scripts: Vec<String> = n
            .tasks()
            .iter()
            .filter_map(|t| match t {
                TaskRequest::Shell(s) => Some(s.script.clone()),
                _ => None,
            })
            .collect();
        assert!(
            scripts.iter().any(|s| s.contains("echo the-image-plugin")),
            "{}: the image's plugin did not run: {scripts:?}",
            n.hostname
        );
        assert!(
            !scripts.iter().any(|s| s.contains("forged-by-master0")),
            "{}: master0's forged plugin ran: {scripts:?}",
            n.hostname
        );
    }
    drop((m0, n1));
    c.stop().await;
}
