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
    let reply: Option<CoordinatorMessage> = codec::read_msg(&mut recv, CONTROL_FRAME_LIMIT)
        .await
        .unwrap_or(None);
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
    let ack: Option<CoordinatorMessage> = codec::read_msg(&mut recv, CONTROL_FRAME_LIMIT)
        .await
        .unwrap();
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
