//! What the fetcher and the peer server share: the blobs held here and the
//! peer policy of the last sync.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Semaphore};

use seaport_shared::digest::Digest;
use seaport_shared::distribution::{
    piece_count, Bitmap, BlobReport, PieceSource, PieceTable, SyncResponse, PIECE_SIZE,
};

use super::options::{DistributionOptions, RateLimit};
use super::store::BlobStore;

/// What the agent holds of one blob.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub(crate) size: u64,
    pub(crate) have: Bitmap,
    pub(crate) complete: bool,
}

/// State shared by the fetcher and the peer server.
pub(crate) struct Shared {
    pub(crate) store: BlobStore,
    pub(crate) state_dir: PathBuf,
    pub(crate) held: Mutex<HashMap<Digest, Held>>,
    /// Whom the peer server serves what: from the last sync, `None` before
    /// the first (nothing is served then). Open peer connections re-check
    /// when it changes.
    pub(crate) peers: watch::Sender<Option<Arc<PeerPolicy>>>,
    pub(crate) served: AtomicU64,
    pub(crate) download: RateLimit,
    pub(crate) upload: RateLimit,
    pub(crate) uploads: Semaphore,
    pub(crate) opts: DistributionOptions,
}

impl Shared {
    pub(crate) fn held(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The file and byte range of piece `i` of `digest`, if it is verified here.
    pub(crate) fn piece_source(&self, digest: &Digest, i: u32) -> Option<PieceSource> {
        let held = self.held();
        let h = held.get(digest)?;
        if !h.have.get(i) {
            return None;
        }
        let offset = u64::from(i) * u64::from(PIECE_SIZE);
        let len = (h.size - offset).min(u64::from(PIECE_SIZE)) as u32;
        let path = if h.complete {
            self.store.blob_path(digest)
        } else {
            self.store
                .dir()
                .join("tmp")
                .join(format!("{}.part", digest.hex()))
        };
        Some(PieceSource { path, offset, len })
    }

    /// The report of everything held, for a sync.
    pub(crate) fn reports(&self) -> Vec<BlobReport> {
        self.held()
            .iter()
            .map(|(d, h)| BlobReport {
                digest: *d,
                have: h.have.clone(),
                complete: h.complete,
            })
            .collect()
    }

    pub(crate) fn set_partial(&self, table: &PieceTable, have: &Bitmap) {
        self.held().insert(
            table.digest,
            Held {
                size: table.size,
                have: have.clone(),
                complete: false,
            },
        );
    }

    pub(crate) fn set_complete(&self, digest: Digest, size: u64) {
        let count = piece_count(size, PIECE_SIZE);
        self.held().insert(
            digest,
            Held {
                size,
                have: Bitmap::full(count),
                complete: true,
            },
        );
    }
}

/// Whom the peer server serves, from the coordinator's last sync.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PeerPolicy {
    /// Nodes named for the images assigned here (and for other images
    /// sharing their blobs): the lowest serial each may present, and the
    /// blobs each may fetch.
    named: HashMap<String, (u64, HashSet<Digest>)>,
    revoked: HashSet<String>,
}

impl PeerPolicy {
    pub(crate) fn from_sync(resp: &SyncResponse) -> PeerPolicy {
        let mut named: HashMap<String, (u64, HashSet<Digest>)> = HashMap::new();
        for a in resp.images.iter().chain(&resp.sharing) {
            for n in &a.nodes {
                let e = named.entry(n.node_id.clone()).or_default();
                e.0 = e.0.max(n.min_serial);
                e.1.extend(a.blobs.iter().copied());
            }
        }
        PeerPolicy {
            named,
            revoked: resp.revoked.iter().cloned().collect(),
        }
    }

    /// Whether the node `node` presenting certificate `serial` may fetch
    /// from here at all.
    pub(crate) fn admits(&self, node: &str, serial: u64) -> Result<(), &'static str> {
        if self.revoked.contains(node) {
            return Err("node revoked");
        }
        match self.named.get(node) {
            None => Err("node not named for any image assigned here"),
            Some((min, _)) if serial < *min => {
                Err("stale certificate: issued before the node's latest enrollment")
            }
            Some(_) => Ok(()),
        }
    }

    /// Whether `node` may fetch `digest` from here.
    pub(crate) fn may_fetch(&self, node: &str, digest: &Digest) -> bool {
        !self.revoked.contains(node)
            && self
                .named
                .get(node)
                .is_some_and(|(_, blobs)| blobs.contains(digest))
    }
}
