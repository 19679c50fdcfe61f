//! End to end on 3 lab hosts: what a holder of a valid join token can do
//! from another host with a real agent, and what it cannot.
//!
//! h1 (master0) and h2 (worker) are enrolled as an operator does it. The
//! attacker, root on h3 with the same multi-use token (as cloud-init
//! user-data would hold it):
//!
//! 1. copies h1's machine id and hostname and joins with the real agent:
//!    it becomes a node of its own; h1's node keeps its enrollment and
//!    keeps heartbeating on its session;
//! 2. gives itself h1's address (on its loopback, so its agent reports it)
//!    and a name sorting before every other node's, and runs its agent:
//!    `seaport nodes` shows the address as only claimed by it, `seaport
//!    run` gives master0's tasks and join data to h1's node, and h3 gets
//!    nothing (no cluster data, no kubeadm call);
//! 3. renames itself after h1: adding h3 to the cluster is refused at plan
//!    time naming both nodes, so removing it could never delete h1's
//!    Kubernetes node; the cluster is as it was.
//!
//! Needs root, systemd-nspawn, debootstrap and Debian's containerd, runc
//! and docker-registry on the machine (see docs/lab.md and docs/install.md).

use std::path::Path;
use std::time::Duration;

use seaport_lab::checks::Phases;
use seaport_lab::seaport::{self as sp, Binaries, Coordinator, AGENT_BIN_PATH, COORDINATOR_PORT};
use seaport_lab::state::CoordinatorRecord;
use seaport_lab::{testimage, wait, Host, Lab};

const CLUSTER: &str = "trust";

fn nodes(bins: &Binaries, root: &Path) -> Vec<serde_json::Value> {
    bins.seaport_json(root, &["nodes", "--json"])
        .as_array()
        .unwrap()
        .clone()
}

fn node(bins: &Binaries, root: &Path, id: &str) -> serde_json::Value {
    nodes(bins, root)
        .into_iter()
        .find(|n| n["node_id"] == id)
        .unwrap_or_else(|| panic!("no node {id}"))
}

fn binding(node: &serde_json::Value, ip: &str) -> Option<String> {
    node["addresses"]
        .as_array()?
        .iter()
        .find(|a| a["ip"] == ip)
        .and_then(|a| a["binding"].as_str())
        .map(str::to_string)
}

fn last_seen(node: &serde_json::Value) -> i64 {
    node["last_seen"]
        .as_str()
        .and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        })
        .map_or(0, |t| t.unix_timestamp())
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Waits until the node has heartbeated after `t` and is online.
fn heartbeats_after(bins: &Binaries, root: &Path, id: &str, t: i64) {
    wait::until(
        "a newer heartbeat from the victim",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let n = node(bins, root, id);
            if n["status"] == "online" && last_seen(&n) > t {
                Ok(())
            } else {
                Err(n.to_string())
            }
        },
    )
    .unwrap();
}

fn has_no_cluster(h: &Host) {
    for path in [
        format!("/var/lib/seaport/data/{CLUSTER}"),
        "/var/lib/kubeadm-double/calls.log".to_string(),
    ] {
        assert!(
            !h.exec(&["test", "-e", &path]).unwrap().success(),
            "{}: {path} exists: the attacker's host got cluster work",
            h.name()
        );
    }
}

#[test]
fn a_token_holder_on_another_host_cannot_take_a_nodes_id_ip_or_hostname() {
    let mut phases = Phases::start();
    let testimage::Prepared {
        bins,
        tmp: _tmp,
        image: _,
        root,
    } = testimage::prepare();
    phases.done("build binaries and the test image");

    let lab = Lab::up(3).expect("bring up a lab of 3 hosts");
    let (h1, h2, h3) = (lab.host(0), lab.host(1), lab.host(2));
    let (ip1, ip2, ip3) = (
        h1.ip().to_string(),
        h2.ip().to_string(),
        h3.ip().to_string(),
    );
    Coordinator::init(&bins, &root).unwrap();
    let listen = format!("{}:{COORDINATOR_PORT}", lab.gateway());
    let coordinator = Coordinator::start(&bins, &root, &listen).unwrap();
    lab.record_coordinator(Some(CoordinatorRecord {
        root: root.clone(),
        listen: listen.clone(),
        pid: coordinator.pid().unwrap_or_default(),
    }));
    // One multi-use token, as cloud-init user-data on every host would hold.
    let token = sp::create_token(&bins, &root, "1h", 10).unwrap();
    for h in [h1, h2] {
        sp::install_agent(h, &bins, &listen, &token).unwrap();
    }
    let online = sp::wait_for_nodes(
        &bins,
        &root,
        "h1 and h2 online",
        Duration::from_secs(90),
        |n| {
            [h1, h2]
                .iter()
                .all(|h| sp::status_of(n, h.name()) == Some("online"))
        },
    )
    .unwrap();
    let victim = online
        .iter()
        .find(|n| n.hostname == h1.name())
        .unwrap()
        .node_id
        .clone();
    let before = node(&bins, &root, &victim);
    assert_eq!(binding(&before, &ip1).as_deref(), Some("connection"));
    assert_eq!(before["connects_from"], ip1.as_str());
    phases.done("lab up, h1 and h2 enrolled");

    // 1. h3 copies h1's machine id and hostname and joins with the token.
    h3.copy_in(&bins.agent, AGENT_BIN_PATH, 0o755).unwrap();
    let machine_id = h1.exec_ok(&["cat", "/etc/machine-id"]).unwrap().stdout;
    h3.sh(&format!(
        "cp /etc/machine-id /root/machine-id.own && printf '%s\\n' {} > /etc/machine-id && hostname {}",
        machine_id.trim(),
        h1.name()
    ))
    .unwrap();
    let attack_at = now();
    let join = h3
        .exec(&[
            AGENT_BIN_PATH,
            "join",
            "--coordinator",
            &listen,
            "--token",
            &token.token,
            "--ca-pin",
            &token.ca_pin,
            "--state-dir",
            "/var/lib/seaport-copy",
        ])
        .unwrap();
    assert!(join.success(), "{}{}", join.stdout, join.stderr);
    let copy_id = join
        .stdout
        .split_whitespace()
        .nth(3)
        .unwrap_or_default()
        .to_string();
    assert!(
        !copy_id.is_empty() && copy_id != victim,
        "the copy joined as {copy_id:?}, the victim is {victim}: {}",
        join.stdout
    );
    // The victim keeps its enrollment and its session.
    heartbeats_after(&bins, &root, &victim, attack_at + 4);
    let v = node(&bins, &root, &victim);
    assert_eq!(v["enrolled_at"], before["enrolled_at"]);
    assert_eq!(v["cert_expires"], before["cert_expires"]);
    h3.sh("cp /root/machine-id.own /etc/machine-id").unwrap();
    phases.done("a copied machine id and hostname is a new node; the victim keeps heartbeating");

    // 2. h3 reports h1's address and a name sorting before every node's.
    h3.sh(&format!(
        "hostname aaa-spoof && ip addr add {ip1}/32 dev lo"
    ))
    .unwrap();
    sp::install_agent(h3, &bins, &listen, &token).unwrap();
    let attacker = wait::until(
        "the attacker's agent reporting h1's address",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let all = nodes(&bins, &root);
            match all.iter().find(|n| n["hostname"] == "aaa-spoof") {
                Some(n)
                    if n["status"] == "online"
                        && n["ips"].as_array().unwrap().iter().any(|i| i == &ip1) =>
                {
                    Ok(n.clone())
                }
                _ => Err(serde_json::to_string(&all).unwrap()),
            }
        },
    )
    .unwrap();
    let attacker_id = attacker["node_id"].as_str().unwrap().to_string();
    assert!(
        attacker_id.as_str() < victim.as_str(),
        "{attacker_id} {victim}"
    );
    assert_eq!(binding(&attacker, &ip1).as_deref(), Some("claimed"));
    assert_eq!(binding(&attacker, &ip3).as_deref(), Some("connection"));
    assert_eq!(attacker["connects_from"], ip3.as_str());
    let (ok, table, _) = bins.seaport_out(&root, &["nodes"]);
    assert!(ok && table.contains(&format!("{ip1} (claimed)")), "{table}");

    let (ok, out, err) = bins.seaport_out(
        &root,
        &[
            "run",
            testimage::IMAGE_NAME,
            "-m",
            &ip1,
            "-n",
            &ip2,
            "--cluster",
            CLUSTER,
        ],
    );
    assert!(
        ok && out.contains(&format!("cluster {CLUSTER}: succeeded")),
        "{out}{err}"
    );
    let status = bins.seaport_json(&root, &["status", "--json"]);
    let cluster = status
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cluster"] == CLUSTER)
        .unwrap()
        .clone();
    let host_node = |ip: &str| {
        cluster["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["ip"] == ip)
            .map(|h| h["node_id"].as_str().unwrap().to_string())
    };
    assert_eq!(host_node(&ip1).as_deref(), Some(victim.as_str()));
    let init = h1
        .exec_ok(&["cat", "/var/lib/kubeadm-double/calls.log"])
        .unwrap()
        .stdout;
    assert!(init.starts_with("init --config"), "{init}");
    has_no_cluster(h3);
    let v = node(&bins, &root, &victim);
    assert_eq!(v["enrolled_at"], before["enrolled_at"]);
    phases.done("seaport run: master0's work went to h1's node, none to h3");

    // 3. h3 renames itself after h1, and is asked into the cluster.
    h3.sh(&format!("hostname {}", h1.name())).unwrap();
    wait::until(
        "the attacker's new hostname recorded",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let n = node(&bins, &root, &attacker_id);
            if n["hostname"] == h1.name() {
                Ok(())
            } else {
                Err(n.to_string())
            }
        },
    )
    .unwrap();
    let (ok, out, err) = bins.seaport_out(&root, &["join", "-n", &ip3, "--cluster", CLUSTER]);
    assert!(
        !ok && err.contains(&format!("hostname {}", h1.name()))
            && err.contains(&format!("{ip1} (node {victim})"))
            && err.contains(&format!("{ip3} (node {attacker_id})")),
        "{out}{err}"
    );
    let status = bins.seaport_json(&root, &["status", "--json"]);
    let cluster = status
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cluster"] == CLUSTER)
        .unwrap();
    assert_eq!(cluster["state"], "succeeded");
    assert_eq!(cluster["hosts"].as_array().unwrap().len(), 2, "{cluster}");
    has_no_cluster(h3);
    heartbeats_after(&bins, &root, &victim, now());
    phases.done("a stolen hostname is refused at plan time");
    drop(coordinator);
}
