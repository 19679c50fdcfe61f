//! Security acceptance of identity and transport, on loopback against a real
//! coordinator: each test fails if the protection it names is removed.

mod identity_support;

use std::time::Duration;

use identity_support::{closed_by_peer, connect, facts, wait_until, Agent, Coordinator};
use seaport::admin::{AdminClient, AdminError};
use seaport_agent::join::JoinError;
use seaport_agent::Identity;
use seaport_shared::codec;
use seaport_shared::pki::CaPin;
use seaport_shared::tls;
use seaport_shared::wire::{
    self, AdminRequest, AgentMessage, CoordinatorMessage, NodeStatus, StreamHello, StreamKind,
    CONTROL_FRAME_LIMIT,
};

const TTL: Duration = Duration::from_secs(3600);
const WAIT: Duration = Duration::from_secs(20);

fn application_code(e: &quinn::ConnectionError) -> Option<u64> {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_pin_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_loopback(&dir.path().join("root"), TTL).await;
    let other = tempfile::tempdir().unwrap();
    let other_pin = seaport::ca::init(other.path()).unwrap().ca_pin.to_string();

    let grant = coord.token(600, 1).await;
    let state = dir.path().join("agent");
    let mut opts = coord.join_options(&grant, &state, "pinned");
    opts.ca_pin = other_pin;
    let err = seaport_agent::join(&opts).await.unwrap_err();
    assert!(
        err.to_string().contains("does not match the --ca-pin"),
        "{err}"
    );
    assert!(!state.exists(), "a refused join must store nothing");
    // The token was not spent: the right pin still joins with it.
    opts.ca_pin = grant.ca_pin.clone();
    seaport_agent::join(&opts).await.unwrap();
    assert!(state.join("identity/node.pem").exists());
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_loopback(&dir.path().join("root"), TTL).await;
    let grant = coord.token(1, 5).await;
    // Wait until the coordinator's clock is past the expiry (whole seconds).
    wait_until(WAIT, "the token to expire", || async {
        time::OffsetDateTime::now_utc().unix_timestamp() > grant.expires_at
    })
    .await;
    let state = dir.path().join("agent");
    let err = seaport_agent::join(&coord.join_options(&grant, &state, "late"))
        .await
        .unwrap_err();
    assert!(matches!(err, JoinError::Refused(_)), "{err}");
    assert!(err.to_string().contains("expired"), "{err}");
    assert!(!state.exists());
    assert!(coord.nodes().await.is_empty());
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_refused_after_its_uses() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_loopback(&dir.path().join("root"), TTL).await;
    let grant = coord.token(600, 2).await;
    for host in ["one", "two"] {
        let state = dir.path().join(host);
        seaport_agent::join(&coord.join_options(&grant, &state, host))
            .await
            .unwrap();
    }
    let state = dir.path().join("three");
    let err = seaport_agent::join(&coord.join_options(&grant, &state, "three"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no uses left"), "{err}");
    assert!(!state.exists());
    assert_eq!(coord.nodes().await.len(), 2);
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_loopback(&dir.path().join("root"), TTL).await;
    let other = tempfile::tempdir().unwrap();
    seaport::ca::init(other.path()).unwrap();
    // The other CA's admin certificate, trusting our coordinator's CA so only
    // the client side is wrong.
    let theirs = seaport::ca::admin_identity(other.path()).unwrap();
    let ours = seaport::ca::admin_identity(&coord.root).unwrap();
    let config = tls::mtls_client(&ours.ca, theirs.chain, theirs.key).unwrap();
    let result = async {
        let client = AdminClient::connect_with(config, &coord.addr.to_string()).await?;
        client.request(&AdminRequest::ListNodes).await
    }
    .await;
    assert!(result.is_err(), "a foreign client certificate was accepted");
    // Our own admin certificate still works.
    coord.nodes().await;
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_certificate_cannot_call_admin_operations() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_loopback(&dir.path().join("root"), TTL).await;
    let state = dir.path().join("node");
    let joined = coord.join(&state, "worker").await;
    let identity = Identity::load(&state).unwrap();
    let client =
        AdminClient::connect_with(identity.client_config().unwrap(), &coord.addr.to_string())
            .await
            .unwrap();
    for req in [
        AdminRequest::ListNodes,
        AdminRequest::CreateToken {
            ttl_secs: 60,
            uses: 1,
            node: None,
        },
        AdminRequest::RemoveNode {
            node: joined.node_id.clone(),
        },
    ] {
        match client.request(&req).await {
            Err(AdminError::Wire(e)) => {
                assert!(e.to_string().contains("permission denied"), "{e}")
            }
            other => panic!("node ran admin request {req:?}: {other:?}"),
        }
    }
    client.close().await;
    let node = coord.node(&joined.node_id).await.unwrap();
    assert_ne!(node.status, NodeStatus::Revoked);
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_cannot_report_as_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_loopback(&dir.path().join("root"), TTL).await;
    let a_dir = dir.path().join("a");
    let b_dir = dir.path().join("b");
    coord.join(&a_dir, "host-a").await;
    let b = coord.join(&b_dir, "host-b").await;
    let b_agent = Agent::spawn(&b_dir, "host-b");
    wait_until(WAIT, "node b online", || async {
        coord.node(&b.node_id).await.map(|n| n.status) == Some(NodeStatus::Online)
    })
    .await;

    let a = Identity::load(&a_dir).unwrap();
    let (_ep, conn) = connect(coord.addr, a.client_config().unwrap())
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    wire::client_handshake(&mut recv, &mut send, StreamKind::Control)
        .await
        .unwrap();
    let mut forged = facts("forged");
    forged.hostname = "forged".into();
    codec::write_msg(
        &mut send,
        &AgentMessage::Heartbeat {
            node_id: b.node_id.clone(),
            facts: forged,
        },
    )
    .await
    .unwrap();
    let reply = next_reply(&mut recv).await;
    match reply {
        Some(CoordinatorMessage::Refused { reason }) => {
            assert!(reason.contains("cannot report as"), "{reason}")
        }
        other => panic!("forged heartbeat answered with {other:?}"),
    }
    let e = closed_by_peer(&conn, WAIT).await;
    assert_eq!(application_code(&e), Some(2), "{e}");
    let b_now = coord.node(&b.node_id).await.unwrap();
    assert_eq!(b_now.hostname, "host-b");
    b_agent.stop().await;
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_node_is_dropped_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_loopback(&dir.path().join("root"), TTL).await;
    let state = dir.path().join("node");
    let joined = coord.join(&state, "doomed").await;
    let identity = Identity::load(&state).unwrap();

    // A live session, opened by hand so we can watch it being dropped.
    let (_ep, conn) = connect(coord.addr, identity.client_config().unwrap())
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    wire::client_handshake(&mut recv, &mut send, StreamKind::Control)
        .await
        .unwrap();
    codec::write_msg(
        &mut send,
        &AgentMessage::Heartbeat {
            node_id: joined.node_id.clone(),
            facts: facts("doomed"),
        },
    )
    .await
    .unwrap();
    let ack = next_reply(&mut recv).await;
    assert!(matches!(ack, Some(CoordinatorMessage::HeartbeatAck { .. })));

    coord
        .admin(AdminRequest::RemoveNode {
            node: "doomed".into(),
        })
        .await
        .unwrap();
    let e = closed_by_peer(&conn, WAIT).await;
    assert!(e.to_string().contains("revoked"), "{e}");

    // Reconnecting with the same certificate is refused.
    let (_ep2, conn2) = connect(coord.addr, identity.client_config().unwrap())
        .await
        .unwrap();
    let e = closed_by_peer(&conn2, WAIT).await;
    assert!(e.to_string().contains("revoked"), "{e}");
    assert_eq!(
        coord.node(&joined.node_id).await.unwrap().status,
        NodeStatus::Revoked
    );
    coord.stop().await;
}

/// Starts a healthy agent to prove the coordinator keeps serving others.
async fn healthy_neighbour(coord: &Coordinator, dir: &std::path::Path) -> (Agent, String) {
    let state = dir.join("neighbour");
    let joined = coord.join(&state, "neighbour").await;
    let agent = Agent::spawn(&state, "neighbour");
    wait_until(WAIT, "neighbour online", || async {
        coord.node(&joined.node_id).await.map(|n| n.status) == Some(NodeStatus::Online)
    })
    .await;
    (agent, joined.node_id)
}

async fn neighbour_still_served(coord: &Coordinator, node_id: &str) {
    let before = coord.node(node_id).await.unwrap().last_seen.unwrap();
    wait_until(WAIT, "a newer heartbeat from the neighbour", || async {
        let n = coord.node(node_id).await.unwrap();
        n.status == NodeStatus::Online && n.last_seen.unwrap() > before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_loopback(&dir.path().join("root"), TTL).await;
    let (neighbour, neighbour_id) = healthy_neighbour(&coord, dir.path()).await;

    let state = dir.path().join("big");
    coord.join(&state, "big").await;
    let identity = Identity::load(&state).unwrap();
    let (_ep, conn) = connect(coord.addr, identity.client_config().unwrap())
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    wire::client_handshake(&mut recv, &mut send, StreamKind::Control)
        .await
        .unwrap();
    // A length just over the hard limit, then a little body: the coordinator
    // must refuse from the prefix, not wait for 16 MiB.
    send.write_all(&(codec::MAX_FRAME_LEN + 1).to_be_bytes())
        .await
        .unwrap();
    send.write_all(&[0u8; 1024]).await.unwrap();
    let e = closed_by_peer(&conn, WAIT).await;
    assert_eq!(application_code(&e), Some(1), "{e}");
    assert!(e.to_string().contains("exceeds the limit"), "{e}");

    // Control streams have a tighter limit than the hard one.
    let (_ep, conn) = connect(coord.addr, identity.client_config().unwrap())
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    wire::client_handshake(&mut recv, &mut send, StreamKind::Control)
        .await
        .unwrap();
    send.write_all(&(CONTROL_FRAME_LIMIT + 1).to_be_bytes())
        .await
        .unwrap();
    let e = closed_by_peer(&conn, WAIT).await;
    assert_eq!(application_code(&e), Some(1), "{e}");

    neighbour_still_served(&coord, &neighbour_id).await;
    neighbour.stop().await;
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_close_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_loopback(&dir.path().join("root"), TTL).await;
    let (neighbour, neighbour_id) = healthy_neighbour(&coord, dir.path()).await;
    let pin = CaPin::of_cert(&seaport::ca::Ca::load(&coord.root).unwrap().cert_der()[..]).unwrap();
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();

    // On an unauthenticated connection, instead of a stream hello.
    let (_ep, conn) = connect(coord.addr, tls::enroll_client(pin).unwrap())
        .await
        .unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&noise).await.unwrap();
    let e = closed_by_peer(&conn, WAIT).await;
    assert_eq!(application_code(&e), Some(1), "{e}");

    // On a node's control stream, after a valid hello.
    let state = dir.path().join("noisy");
    coord.join(&state, "noisy").await;
    let identity = Identity::load(&state).unwrap();
    let (_ep, conn) = connect(coord.addr, identity.client_config().unwrap())
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    wire::client_handshake(&mut recv, &mut send, StreamKind::Control)
        .await
        .unwrap();
    let mut framed = 64u32.to_be_bytes().to_vec();
    framed.extend_from_slice(&[0xff; 64]);
    send.write_all(&framed).await.unwrap();
    let e = closed_by_peer(&conn, WAIT).await;
    assert_eq!(application_code(&e), Some(1), "{e}");

    neighbour_still_served(&coord, &neighbour_id).await;
    neighbour.stop().await;
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_protocol_version_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_loopback(&dir.path().join("root"), TTL).await;
    let state = dir.path().join("future");
    coord.join(&state, "future").await;
    let identity = Identity::load(&state).unwrap();
    let (_ep, conn) = connect(coord.addr, identity.client_config().unwrap())
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello = StreamHello {
        version: 99,
        kind: StreamKind::Control,
    };
    send.write_all(&hello.to_bytes()).await.unwrap();
    match wire::HelloReply::read(&mut recv).await.unwrap() {
        wire::HelloReply::Refused { version, reason } => {
            assert_eq!(version, wire::PROTOCOL_VERSION);
            assert!(reason.contains("version 99 is not supported"), "{reason}");
        }
        other => panic!("version 99 accepted: {other:?}"),
    }
    coord.stop().await;
}

// ---------------------------------------------------------------------------
// Attacks by a token holder, a compromised node, a leaked admin key and an
// attacker without any credential. Each is done as the attacker would, and
// each test restarts the coordinator in the middle of the attack: honest
// nodes keep being served and the attack stays refused.

/// Another loopback address: a second source, as another host would be.
const ELSEWHERE: [u8; 4] = [127, 0, 0, 2];

fn ip(a: [u8; 4]) -> std::net::IpAddr {
    std::net::IpAddr::from(a)
}

/// Facts of a host named `hostname` reporting `ips`.
fn facts_of(hostname: &str, ips: &[&str]) -> wire::HostFacts {
    let mut f = facts(hostname);
    f.ips = ips.iter().map(|s| s.to_string()).collect();
    f
}

async fn node_now(coord: &Coordinator, id: &str) -> wire::NodeInfo {
    coord
        .node(id)
        .await
        .unwrap_or_else(|| panic!("no node {id}"))
}

fn binding_of(n: &wire::NodeInfo, ip: &str) -> Option<wire::IpBinding> {
    n.addresses.iter().find(|a| a.ip == ip).map(|a| a.binding)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_cannot_take_over_an_existing_node_id() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_loopback(&dir.path().join("root"), TTL).await;
    // The victim: a real agent, heartbeating.
    let victim_host = identity_support::host_identity("victim");
    let victim_state = dir.path().join("victim");
    let victim = coord.join_host(&victim_state, victim_host.clone()).await;
    let victim_agent = Agent::spawn(&victim_state, "victim");
    wait_until(WAIT, "victim online", || async {
        coord.node(&victim.node_id).await.map(|n| n.status) == Some(NodeStatus::Online)
    })
    .await;
    let before = node_now(&coord, &victim.node_id).await;
    let victim_serial = Identity::load(&victim_state).unwrap().cert.serial;

    // The attacker holds a multi-use token (as cloud-init user-data would).
    let grant = coord.token(600, 5).await;

    // 1. A real agent on another host with the victim's machine id and
    //    hostname copied: it becomes a node of its own, never the victim.
    let copy_state = dir.path().join("copy");
    let mut opts = coord.join_options(&grant, &copy_state, "victim");
    opts.host = victim_host.clone();
    let copy = seaport_agent::join(&opts).await.unwrap();
    assert_ne!(copy.node_id, victim.node_id, "the copy got the victim's id");

    // 2. A modified agent asking for the victim's node id by name: refused.
    let key = seaport_shared::pki::generate_key().unwrap();
    let csr = seaport_shared::pki::node_csr(&key, &victim.node_id, &[]).unwrap();
    match coord.enroll_raw(ip(ELSEWHERE), &grant.token, csr).await {
        wire::EnrollResponse::Refused { reason } => assert!(
            reason.contains("enrolled already") && reason.contains("token create --node"),
            "{reason}"
        ),
        other => panic!("enrollment under the victim's id answered {other:?}"),
    }

    // 3. A removed node cannot come back under its id with the token.
    coord
        .admin(AdminRequest::RemoveNode {
            node: copy.node_id.clone(),
        })
        .await
        .unwrap();
    let key = seaport_shared::pki::generate_key().unwrap();
    let csr = seaport_shared::pki::node_csr(&key, &copy.node_id, &[]).unwrap();
    assert!(matches!(
        coord.enroll_raw(ip(ELSEWHERE), &grant.token, csr).await,
        wire::EnrollResponse::Refused { .. }
    ));
    assert_eq!(
        node_now(&coord, &copy.node_id).await.status,
        NodeStatus::Revoked
    );

    // The victim is as it was and keeps heartbeating on its session.
    neighbour_still_served(&coord, &victim.node_id).await;
    let after = node_now(&coord, &victim.node_id).await;
    assert_eq!(after.enrolled_at, before.enrolled_at);
    assert_eq!(after.cert_expires, before.cert_expires);
    assert_eq!(
        Identity::load(&victim_state).unwrap().cert.serial,
        victim_serial
    );

    // Restarted under attack: the victim's certificate is still its valid
    // one (it reconnects with it), the removed node stays removed.
    let coord = coord.restart(TTL).await;
    neighbour_still_served(&coord, &victim.node_id).await;
    let key = seaport_shared::pki::generate_key().unwrap();
    let csr = seaport_shared::pki::node_csr(&key, &victim.node_id, &[]).unwrap();
    assert!(matches!(
        coord.enroll_raw(ip(ELSEWHERE), &grant.token, csr).await,
        wire::EnrollResponse::Refused { .. }
    ));
    assert_eq!(
        node_now(&coord, &copy.node_id).await.status,
        NodeStatus::Revoked
    );
    // The admin's way back for a reinstalled host: a token made for it.
    let back = coord.token_for(&copy.node_id).await;
    let mut opts = coord.join_options(&back, &copy_state, "victim");
    opts.host = victim_host;
    assert_eq!(
        seaport_agent::join(&opts).await.unwrap().node_id,
        copy.node_id
    );
    neighbour_still_served(&coord, &victim.node_id).await;
    victim_agent.stop().await;
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reporting_another_hosts_ip_is_not_given_that_host() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_loopback(&dir.path().join("root"), TTL).await;
    identity_support::build_image(&coord.root, "trust:1");
    // The victim connects from 127.0.0.1 and reports it.
    let (victim_agent, victim) = healthy_neighbour(&coord, dir.path()).await;
    // The attacker enrolls with a valid token, connects from 127.0.0.2 and
    // reports the victim's address too, and one no agent has. Its name
    // sorts first, so "the first node that reports it" would be it.
    let attacker_state = dir.path().join("attacker");
    let attacker = coord.join(&attacker_state, "aaa-intruder").await;
    assert!(attacker.node_id < victim);
    let impostor = identity_support::Impostor::start(
        coord.addr,
        &attacker_state,
        ip(ELSEWHERE),
        facts_of("aaa-intruder", &["127.0.0.1", "127.0.0.2", "127.0.0.3"]),
    );
    wait_until(WAIT, "the attacker's claims recorded", || async {
        coord
            .node(&attacker.node_id)
            .await
            .is_some_and(|n| n.ips.len() == 3 && n.status == NodeStatus::Online)
    })
    .await;

    // `seaport nodes` tells evidence from claims.
    let v = node_now(&coord, &victim).await;
    assert_eq!(v.connects_from.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        binding_of(&v, "127.0.0.1"),
        Some(wire::IpBinding::Connection)
    );
    let a = node_now(&coord, &attacker.node_id).await;
    assert_eq!(a.connects_from.as_deref(), Some("127.0.0.2"));
    assert_eq!(binding_of(&a, "127.0.0.1"), Some(wire::IpBinding::Claimed));
    assert_eq!(
        binding_of(&a, "127.0.0.2"),
        Some(wire::IpBinding::Connection)
    );

    let plan = |coord: &Coordinator| {
        let text = identity_support::clusterfile("c1", "trust:1", "127.0.0.1", &[]);
        let req = AdminRequest::Apply {
            clusterfile: text,
            dry_run: true,
            ignore_preflight: vec![],
        };
        let root = coord.root.clone();
        let addr = coord.addr;
        async move {
            match Coordinator::attach(&root, addr).admin(req).await.unwrap() {
                wire::AdminResponse::Planned(p) => p,
                other => panic!("unexpected answer {other:?}"),
            }
        }
    };
    // The victim's host goes to the victim.
    let p = plan(&coord).await;
    assert_eq!(p.hosts[0].node.as_deref(), Some(victim.as_str()), "{p:?}");
    // A host only the attacker claims: refused, naming it; nothing recorded.
    let run = AdminRequest::Run(wire::RunRequest {
        cluster: "c2".parse().unwrap(),
        image: "trust:1".into(),
        masters: vec!["127.0.0.3".into()],
        nodes: vec![],
        env: vec![],
        ignore_preflight: vec![],
    });
    match coord.admin(run.clone()).await {
        Err(AdminError::Refused(reason)) => assert!(
            reason.contains("127.0.0.3")
                && reason.contains(&attacker.node_id)
                && reason.contains("only claims"),
            "{reason}"
        ),
        other => panic!("a run on a host only the attacker claims: {other:?}"),
    }
    assert!(coord.clusters().await.is_empty());

    // Restarted under attack: the same answers, the victim served.
    let coord = coord.restart(TTL).await;
    neighbour_still_served(&coord, &victim).await;
    let p = plan(&coord).await;
    assert_eq!(p.hosts[0].node.as_deref(), Some(victim.as_str()), "{p:?}");
    assert!(matches!(
        coord.admin(run).await,
        Err(AdminError::Refused(_))
    ));
    assert!(coord.clusters().await.is_empty());
    assert_eq!(impostor.stop().await, 0, "the attacker was sent tasks");
    victim_agent.stop().await;
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_claiming_another_nodes_hostname_is_refused_at_plan_time() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_loopback(&dir.path().join("root"), TTL).await;
    identity_support::build_image(&coord.root, "trust:1");
    // The victim, hostname "neighbour", on 127.0.0.1.
    let (victim_agent, victim) = healthy_neighbour(&coord, dir.path()).await;
    // A worker on 127.0.0.2 that renamed itself after the victim: were it
    // let in, removing it would run `kubectl delete node neighbour`.
    let state = dir.path().join("worker");
    let worker = coord.join(&state, "worker").await;
    let impostor = identity_support::Impostor::start(
        coord.addr,
        &state,
        ip(ELSEWHERE),
        facts_of("neighbour", &["127.0.0.2"]),
    );
    wait_until(WAIT, "the worker's hostname claim recorded", || async {
        coord
            .node(&worker.node_id)
            .await
            .is_some_and(|n| n.hostname == "neighbour")
    })
    .await;
    let run = AdminRequest::Run(wire::RunRequest {
        cluster: "c".parse().unwrap(),
        image: "trust:1".into(),
        masters: vec!["127.0.0.1".into()],
        nodes: vec!["127.0.0.2".into()],
        env: vec![],
        ignore_preflight: vec![],
    });
    let refused = |r: Result<wire::AdminResponse, AdminError>| match r {
        Err(AdminError::Refused(reason)) => assert!(
            reason.contains("hostname neighbour")
                && reason.contains(&format!("127.0.0.1 (node {victim})"))
                && reason.contains(&format!("127.0.0.2 (node {})", worker.node_id)),
            "{reason}"
        ),
        other => panic!("two hosts named neighbour were planned: {other:?}"),
    };
    refused(coord.admin(run.clone()).await);
    assert!(coord.clusters().await.is_empty());
    let dry = AdminRequest::Apply {
        clusterfile: identity_support::clusterfile("c", "trust:1", "127.0.0.1", &["127.0.0.2"]),
        dry_run: true,
        ignore_preflight: vec![],
    };
    match coord.admin(dry.clone()).await.unwrap() {
        wire::AdminResponse::Planned(p) => assert!(
            p.warnings.iter().any(|w| w.contains("hostname neighbour")),
            "{p:?}"
        ),
        other => panic!("unexpected answer {other:?}"),
    }

    let coord = coord.restart(TTL).await;
    neighbour_still_served(&coord, &victim).await;
    refused(coord.admin(run).await);
    assert!(coord.clusters().await.is_empty());
    assert_eq!(impostor.stop().await, 0);
    victim_agent.stop().await;
    coord.stop().await;
}

/// An admin client with the certificate issued for `name`, its key made here.
async fn issue_admin(coord: &Coordinator, name: &str, ttl_secs: u64) -> (u64, quinn::ClientConfig) {
    let key = seaport_shared::pki::generate_key().unwrap();
    let csr = seaport_shared::pki::node_csr(&key, name, &[]).unwrap();
    let resp = coord
        .admin(AdminRequest::IssueAdmin {
            name: name.into(),
            csr_der: csr,
            ttl_secs,
        })
        .await
        .unwrap();
    let wire::AdminResponse::AdminIssued {
        info,
        cert_pem,
        ca_pem,
    } = resp
    else {
        panic!("unexpected answer {resp:?}")
    };
    assert_eq!(info.name, name);
    let ca = seaport_shared::pki::certs_from_pem(&ca_pem, "ca")
        .unwrap()
        .remove(0);
    let chain = seaport_shared::pki::certs_from_pem(&cert_pem, "cert").unwrap();
    let key = seaport_shared::pki::key_from_pem(&key.serialize_pem(), "key").unwrap();
    (info.serial, tls::mtls_client(&ca, chain, key).unwrap())
}

async fn admins(coord: &Coordinator) -> Vec<wire::AdminCertInfo> {
    match coord.admin(AdminRequest::ListAdmins).await.unwrap() {
        wire::AdminResponse::Admins(a) => a,
        other => panic!("unexpected answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_admin_certificate_is_refused_and_its_open_connection_closed() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_loopback(&dir.path().join("root"), TTL).await;
    let (neighbour, neighbour_id) = healthy_neighbour(&coord, dir.path()).await;
    // Lifetimes are months: the local certificate and a default issue.
    let local = seaport::ca::admin_identity(&coord.root).unwrap();
    let local_info = seaport_shared::pki::CertInfo::from_der(&local.chain[0]).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        local_info.not_after - now <= 90 * 86_400 + 60,
        "{local_info:?}"
    );
    let (leaked, leaked_cfg) = issue_admin(&coord, "leaked", 90 * 86_400).await;
    let (_, other_cfg) = issue_admin(&coord, "other", 90 * 86_400).await;
    let listed = admins(&coord).await;
    let l = listed.iter().find(|a| a.serial == leaked).unwrap();
    assert_eq!(l.expires_at - l.issued_at, 90 * 86_400);
    assert!(listed.iter().any(|a| a.local && a.revoked_at.is_none()));

    // The holder of the leaked key has a connection open and working.
    let addr = coord.addr.to_string();
    let open = AdminClient::connect_with(leaked_cfg.clone(), &addr)
        .await
        .unwrap();
    open.request(&AdminRequest::ListNodes).await.unwrap();

    // Nobody revokes the certificate they are using.
    match coord
        .admin(AdminRequest::RevokeAdmin {
            cert: local_info.serial.to_string(),
        })
        .await
    {
        Err(AdminError::Refused(r)) => assert!(r.contains("making this request"), "{r}"),
        other => panic!("self-revocation answered {other:?}"),
    }
    coord
        .admin(AdminRequest::RevokeAdmin {
            cert: "leaked".into(),
        })
        .await
        .unwrap();

    // Its open connection is closed, its next requests and connections
    // refused; the others keep working.
    let e = closed_by_peer(open.connection(), WAIT).await;
    assert!(e.to_string().contains("revoked"), "{e}");
    let refused = |cfg: quinn::ClientConfig| {
        let addr = addr.clone();
        async move {
            let r = async {
                let c = AdminClient::connect_with(cfg, &addr).await?;
                c.request(&AdminRequest::ListNodes).await
            }
            .await;
            match r {
                Err(e) => assert!(e.to_string().contains("revoked"), "{e}"),
                Ok(resp) => panic!("a revoked admin certificate was served: {resp:?}"),
            }
        }
    };
    refused(leaked_cfg.clone()).await;
    let other = AdminClient::connect_with(other_cfg.clone(), &addr)
        .await
        .unwrap();
    other.request(&AdminRequest::ListNodes).await.unwrap();
    other.close().await;
    coord.nodes().await;
    let listed = admins(&coord).await;
    assert!(listed
        .iter()
        .any(|a| a.serial == leaked && a.revoked_at.is_some()));

    // Restarted: still refused; the rest still served.
    let coord = coord.restart(TTL).await;
    neighbour_still_served(&coord, &neighbour_id).await;
    refused(leaked_cfg).await;
    let other = AdminClient::connect_with(other_cfg, &coord.addr.to_string())
        .await
        .unwrap();
    other.request(&AdminRequest::ListNodes).await.unwrap();
    other.close().await;
    coord.nodes().await;
    neighbour.stop().await;
    coord.stop().await;
}

/// Opens `count` unauthenticated connections from `from` and never sends a
/// byte on them; with `sustain`, opens a new one whenever the coordinator
/// closes one. `open` counts those open now.
fn idle_flood(
    addr: std::net::SocketAddr,
    pin: CaPin,
    from: std::net::IpAddr,
    count: usize,
    sustain: bool,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        let endpoint = quinn::Endpoint::client((from, 0).into()).unwrap();
        let config = tls::enroll_client(pin).unwrap();
        let mut set = tokio::task::JoinSet::new();
        let mut opened = 0usize;
        loop {
            while set.len() < count && (sustain || opened < count) {
                opened += 1;
                let (endpoint, config, open) = (endpoint.clone(), config.clone(), open.clone());
                set.spawn(async move {
                    let Ok(connecting) =
                        endpoint.connect_with(config, addr, wire::COORDINATOR_SERVER_NAME)
                    else {
                        return;
                    };
                    if let Ok(conn) = connecting.await {
                        open.fetch_add(1, Ordering::SeqCst);
                        conn.closed().await;
                        open.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
            if set.join_next().await.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_flood_from_one_source_does_not_stop_an_honest_enrollment() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_loopback(&dir.path().join("root"), TTL).await;
    let (neighbour, neighbour_id) = healthy_neighbour(&coord, dir.path()).await;
    let pin = CaPin::of_cert(&seaport::ca::Ca::load(&coord.root).unwrap().cert_der()[..]).unwrap();
    // 150 idle connections from one source at once cost the coordinator a
    // few (4 served, 8 waiting, and a few more while their handshakes end
    // on a busy machine), not 150.
    let open = std::sync::Arc::new(AtomicUsize::new(0));
    let burst = idle_flood(
        coord.addr,
        pin.clone(),
        ip(ELSEWHERE),
        150,
        false,
        open.clone(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = open.load(Ordering::SeqCst);
    assert!(held <= 16, "{held} idle unauthenticated connections held");
    burst.abort();
    // Then kept up: every connection the coordinator closes is reopened.
    let open = std::sync::Arc::new(AtomicUsize::new(0));
    let flood = idle_flood(
        coord.addr,
        pin.clone(),
        ip(ELSEWHERE),
        150,
        true,
        open.clone(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    let honest = |coord: &Coordinator, n: usize| {
        let state = dir.path().join(format!("honest-{n}"));
        let (root, addr) = (coord.root.clone(), coord.addr);
        async move {
            let c = Coordinator::attach(&root, addr);
            let grant = c.token(600, 1).await;
            let started = std::time::Instant::now();
            let joined = tokio::time::timeout(
                Duration::from_secs(5),
                seaport_agent::join(&c.join_options(&grant, &state, "honest")),
            )
            .await
            .expect("an honest enrollment waited more than 5 s behind the flood")
            .expect("an honest enrollment was refused during the flood");
            eprintln!("honest enrollment took {:?}", started.elapsed());
            joined
        }
    };
    let h = honest(&coord, 1).await;
    assert!(coord.node(&h.node_id).await.is_some());
    neighbour_still_served(&coord, &neighbour_id).await;

    // Restarted while the flood goes on.
    let coord = coord.restart(TTL).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let h = honest(&coord, 2).await;
    assert!(coord.node(&h.node_id).await.is_some());
    neighbour_still_served(&coord, &neighbour_id).await;
    flood.abort();
    neighbour.stop().await;
    coord.stop().await;
}

/// The next control message that answers the agent (the image signature
/// policy the coordinator sends first is skipped).
async fn next_reply(recv: &mut quinn::RecvStream) -> Option<CoordinatorMessage> {
    loop {
        match codec::read_msg(recv, CONTROL_FRAME_LIMIT)
            .await
            .unwrap_or(None)
        {
            Some(CoordinatorMessage::Trust(_)) => continue,
            other => return other,
        }
    }
}
