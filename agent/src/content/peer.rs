//! The peer server: other nodes fetch verified pieces from this one.
//!
//! Clients must present a node certificate of the cluster CA (the TLS layer
//! enforces the CA; the role and the coordinator's revocation list are
//! checked here). Only pieces whose bit is set are served: verified here,
//! whether the blob is complete or still downloading.

use std::io::SeekFrom;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::time::timeout;
use tracing::{debug, info, info_span, warn, Instrument};

use seaport_shared::codec;
use seaport_shared::pki::{self, CertInfo, Role};
use seaport_shared::tls;
use seaport_shared::transfer::{
    self, BlobRequest, BlobResponse, BLOB_FRAME_LIMIT, MAX_PIECES_PER_REQUEST,
};
use seaport_shared::wire::{self, StreamKind};

use super::Shared;
use crate::identity::Identity;

const CHUNK: usize = 256 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The client configuration for dialing the peer server of `node_id`.
pub(crate) fn client_for(
    identity: &Identity,
    node_id: &str,
) -> Result<quinn::ClientConfig, String> {
    let key = pki::key_from_pem(&identity.key_pem, "node.key").map_err(|e| e.to_string())?;
    transfer::peer_client(&identity.ca, identity.cert_chain.clone(), key, node_id)
        .map_err(|e| e.to_string())
}

/// Binds the peer endpoint (serving on the peer port unless it is 0).
pub(crate) fn endpoint(shared: &Shared, identity: &Identity) -> Result<quinn::Endpoint, String> {
    let key = || pki::key_from_pem(&identity.key_pem, "node.key").map_err(|e| e.to_string());
    let port = shared.opts.peer_port;
    let endpoint = if port == 0 {
        quinn::Endpoint::client((std::net::Ipv4Addr::UNSPECIFIED, 0).into())
            .map_err(|e| e.to_string())?
    } else {
        let server = transfer::peer_server(&identity.ca, identity.cert_chain.clone(), key()?)
            .map_err(|e| e.to_string())?;
        let addr: SocketAddr = (std::net::Ipv4Addr::UNSPECIFIED, port).into();
        quinn::Endpoint::server(server, addr)
            .map_err(|e| format!("could not listen for peers on {addr} (udp): {e}"))?
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
                let revoked = shared
                    .revoked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&info.name);
                if revoked {
                    info!(peer = %info.name, "refused a revoked node");
                    conn.close(2u32.into(), b"node revoked");
                    return;
                }
                peer_conn(shared, conn, info.name)
                    .instrument(info_span!("peer", %remote))
                    .await;
            }
            .instrument(info_span!("peer_server")),
        );
    }
}

async fn peer_conn(shared: Arc<Shared>, conn: quinn::Connection, peer: String) {
    loop {
        let Ok((mut send, mut recv)) = conn.accept_bi().await else {
            return;
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
            let Ok(_permit) = shared.uploads.acquire().await else {
                return;
            };
            match send_pieces(&shared, &digest, &pieces, &mut send).await {
                Ok(bytes) => debug!(%peer, %digest, bytes, "served pieces"),
                Err(reason) => {
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
    digest: &seaport_shared::digest::Digest,
    pieces: &[u32],
    send: &mut quinn::SendStream,
) -> Result<u64, String> {
    if pieces.is_empty() || pieces.len() > MAX_PIECES_PER_REQUEST {
        return Err(format!("ask for 1 to {MAX_PIECES_PER_REQUEST} pieces"));
    }
    let mut sources = Vec::new();
    for &i in pieces {
        match shared.piece_source(digest, i) {
            Some(s) => sources.push(s),
            None => return Err(format!("piece {i} of {digest} is not held here")),
        }
    }
    codec::write_msg(
        send,
        &BlobResponse::Sending {
            pieces: pieces.to_vec(),
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    for (path, offset, len) in sources {
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        file.seek(SeekFrom::Start(offset))
            .await
            .map_err(|e| e.to_string())?;
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(CHUNK);
            file.read_exact(&mut buf[..n]).await.map_err(|e| {
                warn!(path = %path.display(), error = %e, "reading a piece to serve");
                e.to_string()
            })?;
            shared.upload.take(n).await;
            send.write_all(&buf[..n]).await.map_err(|e| e.to_string())?;
            shared.served.fetch_add(n as u64, Ordering::Relaxed);
            total += n as u64;
            left -= n;
        }
    }
    Ok(total)
}
