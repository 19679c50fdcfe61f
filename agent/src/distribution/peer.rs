//! The peer server: other nodes fetch verified pieces from this one.
//!
//! Clients must present a node certificate of the cluster CA (the TLS layer
//! enforces the CA). The rest comes from the coordinator's last sync
//! ([`PeerPolicy`]): nothing is served before the first one; a client must
//! be a node the coordinator named for an image assigned here, not revoked,
//! with a certificate no older than its latest enrollment (serial); and it
//! gets only blobs of the images it was named for. Open connections are
//! checked again whenever a sync changes that, and closed when they no
//! longer pass. Only pieces whose bit is set are served: verified here,
//! whether the blob is complete or still downloading.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::timeout;
use tracing::{debug, info, info_span, warn, Instrument};

use seaport_shared::codec;
use seaport_shared::digest::Digest;
use seaport_shared::distribution::{
    self as distribution, check_piece_count, BlobRequest, BlobResponse, SendError, BLOB_FRAME_LIMIT,
};
use seaport_shared::pki::{self, CertInfo, Role};
use seaport_shared::tls::{self, peer_client, peer_server};
use seaport_shared::wire::{self, StreamKind};

use super::shared::{PeerPolicy, Shared};
use crate::identity::Identity;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a client may keep (or open) a connection, by the current policy.
fn verdict(policy: Option<&PeerPolicy>, peer: &CertInfo) -> Result<(), &'static str> {
    match policy {
        None => Err("this node has not synced with the coordinator yet"),
        Some(p) => p.admits(&peer.name, peer.serial),
    }
}

/// Why peer transfers cannot be set up, or a piece request not served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    #[error(transparent)]
    Key(#[from] pki::PkiError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("could not bind a UDP socket for peer transfers: {0}")]
    Socket(std::io::Error),
    #[error("could not listen for peers on {addr} (udp): {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("piece {piece} of {digest} is not held here")]
    NotHeld { piece: u32, digest: Digest },
    #[error(transparent)]
    Send(#[from] SendError),
}

/// The client configuration for dialing the peer server of `node_id`.
pub(crate) fn client_for(
    identity: &Identity,
    node_id: &str,
) -> Result<quinn::ClientConfig, PeerError> {
    let key = pki::key_from_pem(&identity.key_pem, "node.key")?;
    Ok(peer_client(
        &identity.ca,
        identity.cert_chain.clone(),
        key,
        node_id,
    )?)
}

/// Binds the peer endpoint (serving on the peer port unless it is 0).
pub(crate) fn endpoint(shared: &Shared, identity: &Identity) -> Result<quinn::Endpoint, PeerError> {
    let port = shared.opts.peer_port;
    let endpoint = if port == 0 {
        quinn::Endpoint::client((std::net::Ipv4Addr::UNSPECIFIED, 0).into())
            .map_err(PeerError::Socket)?
    } else {
        let key = pki::key_from_pem(&identity.key_pem, "node.key")?;
        let server = peer_server(&identity.ca, identity.cert_chain.clone(), key)?;
        let addr: SocketAddr = (std::net::Ipv4Addr::UNSPECIFIED, port).into();
        quinn::Endpoint::server(server, addr)
            .map_err(|source| PeerError::Listen { addr, source })?
    };
    Ok(endpoint)
}

/// Accepts peer connections until the endpoint closes.
pub(crate) async fn serve(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        let shared = shared.clone();
        tokio::spawn(
            async move {
                let conn = match timeout(Duration::from_secs(5), incoming).await {
                    Ok(Ok(c)) => c,
                    _ => return,
                };
                let Some(info) = tls::peer_certificates(&conn)
                    .and_then(|c| c.first().and_then(|c| CertInfo::from_der(c).ok()))
                else {
                    conn.close(2u32.into(), b"a node certificate is required");
                    return;
                };
                if info.role != Role::Node {
                    conn.close(2u32.into(), b"only nodes fetch pieces from nodes");
                    return;
                }
                let now = verdict(shared.peers.borrow().as_deref(), &info);
                if let Err(reason) = now {
                    info!(peer = %info.name, serial = info.serial, %reason, "refused a peer");
                    conn.close(2u32.into(), reason.as_bytes());
                    return;
                }
                peer_conn(shared, conn, info)
                    .instrument(info_span!("peer", %remote))
                    .await;
            }
            .instrument(info_span!("peer_server")),
        );
    }
}

async fn peer_conn(shared: Arc<Shared>, conn: quinn::Connection, info: CertInfo) {
    let mut policy = shared.peers.subscribe();
    let peer = info.name.clone();
    loop {
        let (mut send, mut recv) = tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok(s) => s,
                Err(_) => return,
            },
            changed = policy.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = verdict(policy.borrow_and_update().as_deref(), &info);
                if let Err(reason) = now {
                    info!(%peer, %reason, "closing a peer connection");
                    conn.close(2u32.into(), reason.as_bytes());
                    return;
                }
                continue;
            }
        };
        let shared = shared.clone();
        let peer = peer.clone();
        tokio::spawn(async move {
            let hello = match timeout(REQUEST_TIMEOUT, wire::read_hello(&mut recv)).await {
                Ok(Ok(h)) => h,
                _ => return,
            };
            if hello.check_version().is_err() || hello.kind != StreamKind::Blob {
                let _ = wire::refuse_hello(&mut send, "peers serve blob streams only").await;
                let _ = send.finish();
                return;
            }
            if wire::accept_hello(&mut send).await.is_err() {
                return;
            }
            let req = match timeout(
                REQUEST_TIMEOUT,
                codec::read_msg(&mut recv, BLOB_FRAME_LIMIT),
            )
            .await
            {
                Ok(Ok(Some(r))) => r,
                _ => return,
            };
            let BlobRequest::Pieces { digest, pieces } = req else {
                let _ = codec::write_msg(
                    &mut send,
                    &BlobResponse::Refused {
                        reason: "syncs go to the coordinator".into(),
                    },
                )
                .await;
                let _ = send.finish();
                return;
            };
            let allowed = shared
                .peers
                .borrow()
                .as_ref()
                .is_some_and(|p| p.may_fetch(&peer, &digest));
            if !allowed {
                info!(%peer, %digest, "refused a blob the coordinator did not name this peer for");
                let _ = codec::write_msg(
                    &mut send,
                    &BlobResponse::Refused {
                        reason: format!(
                            "blob {digest} is not part of an image the coordinator assigned to node {peer}"
                        ),
                    },
                )
                .await;
                let _ = send.finish();
                return;
            }
            let Ok(_permit) = shared.uploads.acquire().await else {
                return;
            };
            match send_pieces(&shared, &digest, &pieces, &mut send).await {
                Ok(bytes) => debug!(%peer, %digest, bytes, "served pieces"),
                Err(e) => {
                    let reason = e.to_string();
                    debug!(%peer, %digest, %reason, "piece request not served");
                    let _ = codec::write_msg(&mut send, &BlobResponse::Refused { reason }).await;
                }
            }
            let _ = send.finish();
        });
    }
}

async fn send_pieces(
    shared: &Shared,
    digest: &Digest,
    pieces: &[u32],
    send: &mut quinn::SendStream,
) -> Result<u64, PeerError> {
    check_piece_count(pieces)?;
    let mut sources = Vec::new();
    for &piece in pieces {
        match shared.piece_source(digest, piece) {
            Some(s) => sources.push(s),
            None => {
                return Err(PeerError::NotHeld {
                    piece,
                    digest: *digest,
                })
            }
        }
    }
    let sent = distribution::send_pieces(send, pieces, &sources, |n| async move {
        shared.upload.take(n).await;
        shared.served.fetch_add(n as u64, Ordering::Relaxed);
        super::counters::SERVED.fetch_add(n as u64, Ordering::Relaxed);
    })
    .await;
    sent.map_err(|e| {
        if let SendError::File { path, .. } = &e {
            warn!(path = %path.display(), error = %e, "reading a piece to serve");
        }
        e.into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use seaport_shared::distribution::{ImageAssignment, NamedNode, SyncResponse};

    fn cert(name: &str, serial: u64) -> CertInfo {
        CertInfo {
            role: Role::Node,
            name: name.into(),
            serial,
            not_before: 0,
            not_after: i64::MAX,
            ips: vec![],
        }
    }

    #[test]
    fn nothing_is_served_before_the_first_sync_and_only_what_was_named_after() {
        let layer = Digest::of(b"layer");
        let other = Digest::of(b"other");
        assert!(verdict(None, &cert("a", 9))
            .unwrap_err()
            .contains("not synced"));
        let resp = SyncResponse {
            images: vec![ImageAssignment {
                image: "x:1".into(),
                manifest_digest: Digest::of(b"m"),
                blobs: vec![layer],
                nodes: vec![NamedNode {
                    node_id: "a".into(),
                    min_serial: 5,
                }],
            }],
            revoked: vec!["r".into()],
            sharing: vec![ImageAssignment {
                image: "y:1".into(),
                manifest_digest: Digest::of(b"n"),
                blobs: vec![other],
                nodes: vec![
                    NamedNode {
                        node_id: "b".into(),
                        min_serial: 1,
                    },
                    NamedNode {
                        node_id: "r".into(),
                        min_serial: 1,
                    },
                ],
            }],
            ..SyncResponse::default()
        };
        let p = PeerPolicy::from_sync(&resp);
        verdict(Some(&p), &cert("a", 5)).unwrap();
        assert!(verdict(Some(&p), &cert("a", 4))
            .unwrap_err()
            .contains("stale"));
        assert!(verdict(Some(&p), &cert("z", 9))
            .unwrap_err()
            .contains("not named"));
        assert!(verdict(Some(&p), &cert("r", 9))
            .unwrap_err()
            .contains("revoked"));
        assert!(p.may_fetch("a", &layer) && !p.may_fetch("a", &other));
        assert!(p.may_fetch("b", &other) && !p.may_fetch("b", &layer));
        assert!(!p.may_fetch("r", &other));
    }
}
