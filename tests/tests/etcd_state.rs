//! End to end with the coordinator's state in a real etcd (Debian's
//! `etcd-server`, one member on the machine's loopback): agents on 2 lab
//! hosts enroll through a coordinator initialised with `--store etcd`; the
//! nodes are keys under the site's prefix in etcd and there is no state
//! file; the coordinator killed with SIGKILL and started again finds every
//! node in etcd and every agent reconnects; `seaport nodes remove` revokes
//! a node through it, and a new coordinator root on the same prefix (with
//! the site key copied) sees the same nodes and takes the site's CA, so
//! that with the first coordinator stopped, the agent that remains comes
//! online through a coordinator of the new root.
//! Needs root, systemd-nspawn, debootstrap and etcd-server (docs/lab.md,
//! docs/ha.md).

#[path = "../../coordinator/src/state/local_etcd.rs"]
mod local_etcd;

use std::process::Command;
use std::time::Duration;

use seaport_lab::runs;
use seaport_lab::seaport::{self, status_of, Binaries, Coordinator};
use seaport_lab::{lab, Lab};

const PREFIX: &str = "/lab-site/";

/// The node keys under the site's prefix, as etcdctl lists them.
fn node_keys(url: &str) -> Vec<String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", url, "get", "--prefix", "--keys-only"])
        .arg(format!("{PREFIX}nodes/"))
        .output()
        .expect("run etcdctl (etcd-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn agents_enroll_and_are_removed_through_a_coordinator_whose_state_is_in_etcd() {
    if let Err(e) = lab::preflight() {
        panic!("the lab tests cannot run here: {e}");
    }
    let etcd = local_etcd::LocalEtcd::start().expect("this test needs etcd-server");
    let bins = Binaries::build_for_tests().expect("build seaport and seaport-agent");
    let lab = Lab::up(2).expect("bring up a lab of 2 hosts");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("coordinator");
    let names: Vec<String> = lab.hosts().iter().map(|h| h.name().to_string()).collect();
    let store = [
        "--store",
        "etcd",
        "--etcd-endpoints",
        etcd.url.as_str(),
        "--etcd-prefix",
        PREFIX,
    ];
    let mut init = vec!["coordinator", "init"];
    init.extend(store);
    bins.seaport_ok(&root, &init);

    // Enrollment goes through the etcd store: one key per node, no file.
    let (mut coordinator, nodes) = runs::enroll_all(&lab, &bins, &root).expect("enroll the agents");
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    let keys = node_keys(&etcd.url);
    for n in &nodes {
        assert!(
            keys.contains(&format!("{PREFIX}nodes/{}", n.node_id)),
            "{} not in etcd: {keys:?}",
            n.node_id
        );
    }
    assert!(!root.join("coordinator/state.redb").exists());

    // SIGKILL and start again: the nodes are in etcd, the agents reconnect.
    coordinator.kill();
    coordinator.restart().expect("start the coordinator again");
    let again = seaport::wait_for_nodes(
        &bins,
        &root,
        "every agent online after the coordinator was killed",
        Duration::from_secs(90),
        |n| names.iter().all(|h| status_of(n, h) == Some("online")),
    )
    .expect("the agents reconnect to the coordinator on etcd");
    let mut before: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
    let mut after: Vec<&str> = again.iter().map(|n| n.node_id.as_str()).collect();
    before.sort_unstable();
    after.sort_unstable();
    assert_eq!(before, after, "the same nodes, from etcd");

    // nodes remove through the coordinator: revoked in etcd, and another
    // coordinator root on the same prefix sees it so.
    let gone = &names[1];
    bins.seaport_ok(&root, &["nodes", "remove", gone]);
    let revoked = seaport::wait_for_nodes(
        &bins,
        &root,
        "the removed node revoked",
        Duration::from_secs(30),
        |n| status_of(n, gone) == Some("revoked"),
    )
    .expect("nodes remove revokes the node");
    assert_eq!(status_of(&revoked, &names[0]), Some("online"));
    let other = tmp.path().join("other");
    std::fs::create_dir_all(other.join("coordinator")).unwrap();
    std::fs::copy(
        root.join("coordinator/site.key"),
        other.join("coordinator/site.key"),
    )
    .unwrap();
    bins.seaport_ok(&other, &init);
    let seen = seaport::nodes(&bins, &other).expect("nodes from the other root");
    assert_eq!(status_of(&seen, gone), Some("revoked"), "{seen:?}");

    // That root took the site's CA from etcd: with the first coordinator
    // stopped, a coordinator from it on the same address is the one the
    // agent that remains reconnects to.
    let listen = coordinator.listen().to_string();
    coordinator.stop().unwrap();
    let mut second = Coordinator::start(&bins, &other, &listen).expect("start the second root");
    let nodes = seaport::wait_for_nodes(
        &bins,
        &other,
        "the remaining agent online through the second root",
        Duration::from_secs(90),
        |n| status_of(n, &names[0]) == Some("online"),
    )
    .expect("the agent trusts the second root's coordinator (one site CA)");
    assert_eq!(status_of(&nodes, gone), Some("revoked"));
    second.stop().unwrap();
}
