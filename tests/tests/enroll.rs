//! The life of a node on loopback: join, sessions, renewal, expiry and
//! rejoin (with a token made for the node), coordinator restarts.

mod identity_support;

use std::time::Duration;

use identity_support::{wait_until, Agent, Coordinator};
use seaport_agent::session::{self, SessionEnd};
use seaport_agent::Identity;
use seaport_shared::wire::NodeStatus;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_agent_heartbeats_its_facts_and_identity_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let coord =
        Coordinator::start_loopback(&dir.path().join("root"), Duration::from_secs(3600)).await;
    let state = dir.path().join("agent");
    let joined = coord.join(&state, "worker-1").await;
    assert!(
        joined.node_id.starts_with("worker-1-"),
        "{}",
        joined.node_id
    );
    for f in ["node.key", "node.pem", "ca.pem", "coordinator"] {
        let mode = std::fs::metadata(state.join("identity").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    for f in ["ca.key", "server.key", "admin.key"] {
        let mode = std::fs::metadata(coord.root.join("coordinator").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    // Enrolled but not yet running: known, offline.
    let node = coord.node(&joined.node_id).await.unwrap();
    assert_eq!(node.status, NodeStatus::Offline);
    assert_eq!(node.last_seen, None);

    let agent = Agent::spawn(&state, "worker-1");
    wait_until(WAIT, "node online with its facts", || async {
        coord.node(&joined.node_id).await.is_some_and(|n| {
            n.status == NodeStatus::Online
                && n.hostname == "worker-1"
                && n.ips == ["127.0.0.1"]
                && n.agent_version == "test"
                && n.last_seen.is_some()
        })
    })
    .await;
    agent.stop().await;
    // A clean agent stop ends the session: offline at once, last seen kept.
    wait_until(WAIT, "node offline after the agent stops", || async {
        coord
            .node(&joined.node_id)
            .await
            .is_some_and(|n| n.status == NodeStatus::Offline && n.last_seen.is_some())
    })
    .await;
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_over_the_session_before_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_loopback(&dir.path().join("root"), Duration::from_secs(6)).await;
    let state = dir.path().join("agent");
    let joined = coord.join(&state, "renewing").await;
    let first = Identity::load(&state).unwrap().cert;
    let agent = Agent::spawn(&state, "renewing");
    // Past the first certificate's expiry, the node is still online with a
    // newer certificate on disk, renewed more than once.
    wait_until(WAIT, "two renewals", || async {
        let now = Identity::load(&state).unwrap().cert;
        now.serial >= first.serial + 2 && now.not_after > first.not_after
    })
    .await;
    wait_until(WAIT, "the first certificate to expire", || async {
        time::OffsetDateTime::now_utc().unix_timestamp() > first.not_after
    })
    .await;
    let node = coord.node(&joined.node_id).await.unwrap();
    assert_eq!(node.status, NodeStatus::Online, "{node:?}");
    assert!(node.cert_expires > first.not_after);
    agent.stop().await;
    coord.stop().await;
}

/// `seaport-agent run` as the library runs it (`service::run`, what the
/// binary and the many-agents benchmark call): the session heartbeats and
/// renews, the distribution service syncs with the coordinator over the
/// same connection, and a stop ends all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_service_heartbeats_syncs_content_and_renews() {
    use seaport_agent::distribution::{counters, DistributionOptions};
    use seaport_agent::service::{self, RunSettings};
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_loopback(&dir.path().join("root"), Duration::from_secs(6)).await;
    let state = dir.path().join("agent");
    let joined = coord.join(&state, "service").await;
    let first = Identity::load(&state).unwrap().cert;
    let syncs_before = counters::syncs();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let settings = RunSettings {
        state_dir: state.clone(),
        distribution: DistributionOptions {
            peer_port: 0,
            ..DistributionOptions::default()
        },
        data_root: dir.path().join("data"),
        trust: Default::default(),
    };
    let task = tokio::spawn(service::run(
        settings,
        identity_support::facts("service"),
        rx,
    ));
    wait_until(WAIT, "online, renewed and synced", || async {
        let online = coord
            .node(&joined.node_id)
            .await
            .is_some_and(|n| n.status == NodeStatus::Online && n.hostname == "service");
        let renewed = Identity::load(&state).unwrap().cert.serial > first.serial;
        online && renewed && counters::syncs() >= syncs_before + 2
    })
    .await;
    // The content store the distribution service keeps.
    assert!(state.join("content").is_dir());
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the service stops when asked")
        .unwrap();
    wait_until(WAIT, "node offline after the service stops", || async {
        coord
            .node(&joined.node_id)
            .await
            .is_some_and(|n| n.status == NodeStatus::Offline)
    })
    .await;
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_node_shows_expired_and_must_join_again() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_loopback(&dir.path().join("root"), Duration::from_secs(3)).await;
    let state = dir.path().join("agent");
    let host = identity_support::host_identity("sleeper");
    let joined = coord.join_host(&state, host.clone()).await;
    let cert = Identity::load(&state).unwrap().cert;
    wait_until(WAIT, "the certificate to expire", || async {
        time::OffsetDateTime::now_utc().unix_timestamp() > cert.not_after
    })
    .await;
    assert_eq!(
        coord.node(&joined.node_id).await.unwrap().status,
        NodeStatus::Expired
    );
    // The agent refuses to use it and says what to do.
    let (_tx, mut rx) = tokio::sync::watch::channel(false);
    let endpoint = seaport_shared::tls::client_endpoint(coord.addr).unwrap();
    let end = session::session(
        &endpoint,
        coord.addr,
        Identity::load(&state).unwrap(),
        state.clone(),
        &mut identity_support::facts("sleeper"),
        &mut rx,
    )
    .await;
    // The coordinator refuses it at the handshake.
    match end {
        SessionEnd::Lost(e) => assert!(e.to_string().contains("certificate expired"), "{e}"),
        other => panic!("an expired certificate got a session: {other:?}"),
    }
    // An ordinary token enrolls a new node, never the existing id; the
    // expired one stays as it was.
    let other = dir.path().join("other");
    let fresh = coord.join_host(&other, host.clone()).await;
    assert_ne!(fresh.node_id, joined.node_id);
    assert_eq!(
        coord.node(&joined.node_id).await.unwrap().status,
        NodeStatus::Expired
    );
    // A token made for the node brings it back under its id.
    let grant = coord.token_for(&joined.node_id).await;
    let mut opts = coord.join_options(&grant, &state, "sleeper");
    opts.host = host;
    let rejoined = seaport_agent::join(&opts).await.unwrap();
    assert_eq!(rejoined.node_id, joined.node_id);
    let agent = Agent::spawn(&state, "sleeper");
    wait_until(WAIT, "the rejoined node online", || async {
        coord
            .node(&rejoined.node_id)
            .await
            .is_some_and(|n| n.status == NodeStatus::Online)
    })
    .await;
    agent.stop().await;
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_reconnect_after_a_coordinator_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let coord = Coordinator::start_loopback(&root, Duration::from_secs(3600)).await;
    let addr = coord.addr;
    let mut agents = Vec::new();
    let mut ids = Vec::new();
    for host in ["r1", "r2", "r3"] {
        let state = dir.path().join(host);
        ids.push(coord.join(&state, host).await.node_id);
        agents.push(Agent::spawn(&state, host));
    }
    let all_online = |coord: &Coordinator| {
        let ids = ids.clone();
        let coord_addr = coord.addr;
        let root = coord.root.clone();
        async move {
            let c = Coordinator::attach(&root, coord_addr);
            let nodes = c.nodes().await;
            ids.iter().all(|id| {
                nodes
                    .iter()
                    .any(|n| &n.node_id == id && n.status == NodeStatus::Online)
            })
        }
    };
    wait_until(WAIT, "all agents online", || all_online(&coord)).await;
    coord.stop().await;
    // Same state, same port: every agent comes back by itself.
    let coord = Coordinator::start(&root, addr, Duration::from_secs(3600)).await;
    wait_until(WAIT, "all agents online after the restart", || {
        all_online(&coord)
    })
    .await;
    for a in agents {
        a.stop().await;
    }
    coord.stop().await;
}
