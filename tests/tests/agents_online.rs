//! End to end: a coordinator on the lab bridge, the agent installed in 3
//! hosts as an operator does it and running as a systemd service, all nodes
//! online; a host whose link is cut goes offline and comes back by itself;
//! a restarted coordinator sees every agent reconnect.
//! Needs root, systemd-nspawn and debootstrap (see docs/lab.md).

use std::time::{Duration, SystemTime};

use seaport_lab::runs;
use seaport_lab::seaport::{self, status_of, Binaries, Node};
use seaport_lab::{lab, Lab};

/// What the issue asks: a cut host shows offline within 15 s.
const OFFLINE_WITHIN: Duration = Duration::from_secs(15);
/// Generous bounds for things that only have to happen eventually.
const EVENTUALLY: Duration = Duration::from_secs(90);

/// Prints how long each phase took (shown with `--nocapture`).
struct Phases(std::time::Instant);

impl Phases {
    fn done(&mut self, what: &str) {
        eprintln!("phase {what}: {:.1} s", self.0.elapsed().as_secs_f64());
        self.0 = std::time::Instant::now();
    }
}

fn all_online(names: &[String]) -> impl Fn(&[Node]) -> bool + '_ {
    move |nodes| names.iter().all(|h| status_of(nodes, h) == Some("online"))
}

fn seen_after(node: &Node, t: i64) -> bool {
    node.last_seen_unix().is_some_and(|seen| seen >= t)
}

#[test]
fn agents_enroll_go_offline_on_a_cut_link_and_reconnect() {
    if let Err(e) = lab::preflight() {
        panic!("the lab tests cannot run here: {e}");
    }
    let mut phases = Phases(std::time::Instant::now());
    let bins = Binaries::build_for_tests().expect("build seaport and seaport-agent");
    phases.done("build binaries");
    let lab = Lab::up(3).expect("bring up a lab of 3 hosts");
    phases.done("lab up");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("coordinator");
    let names: Vec<String> = lab.hosts().iter().map(|h| h.name().to_string()).collect();

    // Enroll: coordinator on 198.18.0.1:7443, agent installed and joined in
    // every host, then enabled as a service; all online.
    let (mut coordinator, nodes) = runs::enroll_all(&lab, &bins, &root).expect("enroll the agents");
    phases.done("enroll 3 agents");
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    for h in lab.hosts() {
        let active = h
            .exec(&["systemctl", "is-active", "seaport-agent.service"])
            .unwrap();
        assert_eq!(
            active.stdout.trim(),
            "active",
            "{}: agent not running as a service",
            h.name()
        );
        let enabled = h
            .exec(&["systemctl", "is-enabled", "seaport-agent.service"])
            .unwrap();
        assert_eq!(enabled.stdout.trim(), "enabled");
        let node = nodes.iter().find(|n| n.hostname == h.name()).unwrap();
        assert!(
            node.ips.iter().any(|ip| ip == &h.ip().to_string()),
            "{}: node ips {:?} lack {}",
            h.name(),
            node.ips,
            h.ip()
        );
    }

    // Cut h2's link: it shows offline within 15 s; the others stay online.
    let cut = lab.host(1);
    cut.cut_link().unwrap();
    let nodes = seaport::wait_for_nodes(
        &bins,
        &root,
        "h2 offline after its link was cut",
        OFFLINE_WITHIN,
        |n| status_of(n, cut.name()) == Some("offline"),
    )
    .expect("a host with a cut link shows offline within 15 s");
    phases.done("cut link seen offline");
    for other in [&names[0], &names[2]] {
        assert_eq!(
            status_of(&nodes, other),
            Some("online"),
            "{other} went offline too: {nodes:?}"
        );
    }

    // Restore it: back online without any manual step.
    cut.restore_link().unwrap();
    seaport::wait_for_nodes(
        &bins,
        &root,
        "h2 online again after its link came back",
        EVENTUALLY,
        all_online(&names),
    )
    .expect("the agent reconnects by itself");
    phases.done("restored link seen online");

    // Stop the coordinator (SIGTERM: a clean exit) and start it again: every
    // agent reconnects, seen after the restart.
    let status = coordinator
        .stop()
        .unwrap()
        .expect("the coordinator was running");
    assert!(
        status.success(),
        "the coordinator did not exit cleanly on SIGTERM: {status}"
    );
    let restarted_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 1;
    coordinator.restart().expect("start the coordinator again");
    seaport::wait_for_nodes(
        &bins,
        &root,
        "every agent back after a coordinator restart",
        EVENTUALLY,
        |n| {
            all_online(&names)(n)
                && names.iter().all(|h| {
                    n.iter()
                        .any(|node| &node.hostname == h && seen_after(node, restarted_at))
                })
        },
    )
    .expect("every agent reconnects to the restarted coordinator");
    phases.done("coordinator restart, all reconnected");

    drop(coordinator);
    lab.down().expect("tear the lab down");
    phases.done("lab down");
}
