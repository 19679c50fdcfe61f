//! `Blob` streams of a node session: one request each, a sync or a piece send.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::timeout;
use tracing::{debug, info, warn};

use seaport_shared::codec;
use seaport_shared::digest::Digest;
use seaport_shared::distribution::{
    self as distribution, check_piece_count, BlobRequest, BlobResponse, PieceSource, SendError,
    SyncRequest, BLOB_FRAME_LIMIT,
};
use seaport_shared::wire::close;

use super::assignments::{pieces_len, DistError, Distribution};

/// Whether a node is connected now (its peers are offered while it is).
pub(crate) type Online = Arc<dyn Fn(&str) -> bool + Send + Sync>;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the answer to an idle agent's sync waits for an assignment
/// (agents sync every 3 s when idle, and give a sync 10 s).
const HOLD_IDLE_SYNC: Duration = Duration::from_millis(2500);

/// Serves one `Blob` stream of node `node_id` (hello already accepted).
pub(crate) async fn handle_blob_stream(
    dist: Arc<Distribution>,
    online: Online,
    conn: quinn::Connection,
    node_id: String,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let req: BlobRequest = match timeout(
        REQUEST_TIMEOUT,
        codec::read_msg(&mut recv, BLOB_FRAME_LIMIT),
    )
    .await
    {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            debug!(error = %e, "bad blob request");
            conn.close(close::PROTOCOL.into(), b"bad blob request");
            return;
        }
        Err(_) => return,
    };
    match req {
        BlobRequest::Sync(sync) => {
            let peer_addr = (sync.peer_port != 0)
                .then(|| std::net::SocketAddr::new(conn.remote_address().ip(), sync.peer_port))
                .map(|a| a.to_string());
            let mut changes = dist.subscribe();
            let mut resp =
                answer_sync(&dist, &online, &node_id, peer_addr.clone(), sync.clone()).await;
            // Nothing to fetch: hold the answer for a while, so an image
            // assigned meanwhile reaches the agent at once rather than at
            // its next idle sync.
            let idle = matches!(&resp, BlobResponse::Sync(r) if r.blobs.is_empty());
            if idle && matches!(timeout(HOLD_IDLE_SYNC, changes.changed()).await, Ok(Ok(()))) {
                resp = answer_sync(&dist, &online, &node_id, peer_addr, sync).await;
            }
            // Ahead of the piece data queued on the same connection: an
            // agent waits for this answer to learn what it may fetch next.
            let _ = send.set_priority(1);
            if codec::write_msg(&mut send, &resp).await.is_ok() {
                let _ = send.finish();
            }
        }
        BlobRequest::Pieces { digest, pieces } => {
            if let Err(e) = send_pieces(&dist, &node_id, digest, &pieces, &mut send).await {
                let reason = e.to_string();
                debug!(%reason, %digest, "piece request refused");
                let _ = codec::write_msg(&mut send, &BlobResponse::Refused { reason }).await;
            }
            let _ = send.finish();
        }
    }
}

/// The answer to a sync: the tracker records the report and plans.
async fn answer_sync(
    dist: &Arc<Distribution>,
    online: &Online,
    node_id: &str,
    peer_addr: Option<String>,
    sync: SyncRequest,
) -> BlobResponse {
    let (dist, online) = (dist.clone(), online.clone());
    let node = node_id.to_string();
    let res = tokio::task::spawn_blocking(move || {
        let live = |n: &str| online(n);
        dist.sync(&live, &node, peer_addr, sync)
    })
    .await;
    match res {
        Ok(Ok(r)) => BlobResponse::Sync(r),
        Ok(Err(e)) => {
            warn!(error = %e, "sync failed");
            BlobResponse::Refused {
                reason: e.to_string(),
            }
        }
        Err(e) => BlobResponse::Refused {
            reason: format!("internal error: {e}"),
        },
    }
}

/// Why a piece request of a node is not served.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("blob {digest} is not part of an image assigned to node {node}")]
    NotAssigned { digest: Digest, node: String },
    #[error("pieces not granted to this node now: sync again and fetch from peers")]
    NotGranted,
    #[error(transparent)]
    Send(#[from] SendError),
    #[error(transparent)]
    Distribution(#[from] DistError),
    #[error("internal error: {0}")]
    Internal(String),
}

async fn send_pieces(
    dist: &Arc<Distribution>,
    node_id: &str,
    digest: Digest,
    pieces: &[u32],
    send: &mut quinn::SendStream,
) -> Result<(), Refusal> {
    check_piece_count(pieces)?;
    let task = dist.clone();
    let node = node_id.to_string();
    let allowed = tokio::task::spawn_blocking(move || {
        let ok = task.allowed(&node, &digest)?;
        Ok::<_, DistError>(ok.then(|| task.cached_table(&digest)).flatten())
    })
    .await
    .map_err(|e| Refusal::Internal(e.to_string()))??;
    let Some(table) = allowed else {
        return Err(Refusal::NotAssigned {
            digest,
            node: node_id.to_string(),
        });
    };
    if !dist.may_send(node_id, &table, pieces) {
        return Err(Refusal::NotGranted);
    }
    let bytes = pieces_len(&table, pieces);
    info!(%digest, pieces = ?pieces, bytes, "serving pieces");
    dist.count_sent(node_id, bytes);
    crate::metrics::global().coordinator_served(bytes);
    let path = dist.blob_path(&digest);
    let sources: Vec<PieceSource> = pieces
        .iter()
        .map(|&i| {
            let (offset, len) = table.range(i);
            PieceSource {
                path: path.clone(),
                offset,
                len,
            }
        })
        .collect();
    distribution::send_pieces(send, pieces, &sources, |_| std::future::ready(())).await?;
    Ok(())
}
