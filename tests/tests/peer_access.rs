//! Other nodes against an agent's peer server, with a real coordinator and a
//! real agent (the library the agent binary runs) in-process: only nodes
//! the coordinator named for the image get its blobs, with a current
//! certificate, and a revoked node loses its open connection. Each test
//! fails if the protection it names is removed.

mod identity_support;
mod node_support;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use identity_support::{facts, wait_until};
use node_support::{Node, Running, Script};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use seaport_agent::distribution::{DistributionOptions, DistributionService};
use seaport_agent::{session, Identity};
use seaport_shared::codec;
use seaport_shared::digest::Digest;
use seaport_shared::distribution::{BlobRequest, BlobResponse, BLOB_FRAME_LIMIT};
use seaport_shared::pki;
use seaport_shared::tls::peer_client;
use seaport_shared::wire::{self, AdminRequest, AdminResponse, StreamKind};

const WAIT: Duration = Duration::from_secs(30);

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A client certificate: chain and key.
struct Cert {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key_pem: String,
}

impl Cert {
    fn of(state: &Path) -> Cert {
        let id = Identity::load(state).unwrap();
        Cert {
            ca: id.ca,
            chain: id.cert_chain,
            key_pem: id.key_pem,
        }
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        pki::key_from_pem(&self.key_pem, "key").unwrap()
    }
}

/// Asks the peer server at `addr` (node `server`) for piece 0 of `digest`
/// from `from`, presenting `cert`: `Ok` when it starts sending, else the
/// refusal or the close reason.
async fn ask(
    addr: SocketAddr,
    server: &str,
    from: &str,
    cert: &Cert,
    digest: Digest,
) -> (Result<(), String>, quinn::Connection, quinn::Endpoint) {
    let config = peer_client(&cert.ca, cert.chain.clone(), cert.key(), server).unwrap();
    let endpoint = quinn::Endpoint::client(format!("{from}:0").parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(config, addr, &addr.ip().to_string())
        .unwrap()
        .await
        .expect("the peer server answers the handshake");
    let r = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        wire::client_handshake(&mut recv, &mut send, StreamKind::Blob)
            .await
            .map_err(|e| e.to_string())?;
        codec::write_msg(
            &mut send,
            &BlobRequest::Pieces {
                digest,
                pieces: vec![0],
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        let _ = send.finish();
        match codec::read_msg::<_, BlobResponse>(&mut recv, BLOB_FRAME_LIMIT).await {
            Ok(Some(BlobResponse::Sending { .. })) => Ok(()),
            Ok(Some(BlobResponse::Refused { reason })) => Err(reason),
            other => Err(format!(
                "{other:?} ({})",
                conn.close_reason()
                    .map(|e| e.to_string())
                    .unwrap_or_default()
            )),
        }
    }
    .await;
    let r = r.map_err(|e| match conn.close_reason() {
        Some(c) => format!("{e}; closed: {c}"),
        None => e,
    });
    (r, conn, endpoint)
}

async fn complete(c: &Running, image: &str, node: &str) -> bool {
    match c.coord.admin(AdminRequest::DistributionStatus).await {
        Ok(AdminResponse::DistributionStatus(s)) => s
            .images
            .iter()
            .filter(|i| i.image == image)
            .flat_map(|i| &i.nodes)
            .any(|n| n.node_id == node && n.complete),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_go_only_to_named_current_nodes_and_a_revoked_node_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let c = Running::start(&root).await;
    let ctx = dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("data"), vec![7u8; 1 << 20]).unwrap();
    fs::write(ctx.join("Kubefile"), "FROM scratch\nCOPY data data\n").unwrap();
    let store = seaport_rootfs::store::Store::open(&root).unwrap();
    let mut opts = seaport_rootfs::build::BuildOptions::new(ctx.join("Kubefile"), &ctx, "peer:v1");
    opts.platform = "linux/amd64".into();
    seaport_rootfs::build::build(&store, &opts).unwrap();
    let layer = store.resolve("peer:v1").unwrap().manifest.layers[0].digest;

    // The holder: a real agent serving peers on a loopback port.
    let holder_dir = dir.path().join("holder");
    let holder = c.coord.join(&holder_dir, "holder").await;
    let port = free_udp_port();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (link, link_rx) = tokio::sync::watch::channel(None);
    let service = DistributionService::open(
        &holder_dir,
        DistributionOptions {
            peer_port: port,
            ..DistributionOptions::default()
        },
    )
    .unwrap();
    let content = tokio::spawn(service.run(link_rx, stop_rx.clone()));
    let agent = {
        let (d, rx) = (holder_dir.clone(), stop_rx.clone());
        tokio::spawn(async move { session::run_linked(&d, facts("holder"), rx, Some(link)).await })
    };
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    c.coord
        .admin(AdminRequest::Distribute {
            image: "peer:v1".into(),
            nodes: vec![holder.node_id.clone()],
        })
        .await
        .unwrap();
    wait_until(WAIT, "the holder has the image", || {
        complete(&c, "peer:v1", &holder.node_id)
    })
    .await;

    // A node the image is assigned to, and one it is not.
    let named = Node::start(
        &c.coord,
        dir.path(),
        "named",
        "127.0.0.3",
        Script::default(),
    )
    .await;
    let other = Node::start(
        &c.coord,
        dir.path(),
        "other",
        "127.0.0.4",
        Script::default(),
    )
    .await;
    c.coord
        .admin(AdminRequest::Distribute {
            image: "peer:v1".into(),
            nodes: vec![named.node_id.clone()],
        })
        .await
        .unwrap();
    let named_cert = Cert::of(&dir.path().join("named"));
    let mut served = None;
    for _ in 0..100 {
        let (r, conn, ep) = ask(server, &holder.node_id, "127.0.0.3", &named_cert, layer).await;
        if r.is_ok() {
            served = Some((conn, ep));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (open_conn, _open_ep) = served.expect("a named node is served");

    // Not assigned the image: refused, though its certificate is valid.
    let other_cert = Cert::of(&dir.path().join("other"));
    let (r, _, _) = ask(server, &holder.node_id, "127.0.0.4", &other_cert, layer).await;
    let err = r.expect_err("a node the image is not assigned to was served");
    assert!(err.contains("not named"), "{err}");

    // The named node's id with an older certificate (issued by the same CA
    // before its latest enrollment, as a copied key and certificate would
    // be): refused.
    let ca = seaport::ca::Ca::load(&root).unwrap();
    let key = pki::generate_key().unwrap();
    let csr = pki::node_csr(&key, &named.node_id, &["127.0.0.3".parse().unwrap()]).unwrap();
    let (pem, _) = ca
        .issue_node(&csr, &named.node_id, 1, Duration::from_secs(3600))
        .unwrap();
    let stale = Cert {
        ca: named_cert.ca.clone(),
        chain: pki::certs_from_pem(&pem, "stale").unwrap(),
        key_pem: key.serialize_pem(),
    };
    let (r, _, _) = ask(server, &holder.node_id, "127.0.0.3", &stale, layer).await;
    let err = r.expect_err("a stale certificate was served");
    assert!(err.contains("stale certificate"), "{err}");

    // Revoked: its open connection is closed, and it cannot come back.
    c.coord
        .admin(AdminRequest::RemoveNode {
            node: named.node_id.clone(),
        })
        .await
        .unwrap();
    let closed = tokio::time::timeout(WAIT, open_conn.closed())
        .await
        .expect("the revoked node's open connection was not closed");
    assert!(closed.to_string().contains("revoked"), "{closed}");
    let (r, _, _) = ask(server, &holder.node_id, "127.0.0.3", &named_cert, layer).await;
    let err = r.expect_err("a revoked node was served");
    assert!(err.contains("revoked"), "{err}");

    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), content).await;
    drop((named, other));
    c.stop().await;
}
