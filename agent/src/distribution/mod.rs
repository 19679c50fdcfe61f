//! Layer distribution, the agent's side (docs/distribution.md).
//!
//! - `store.rs`: `STATE_DIR/content/`: verified blobs, partial blobs with
//!   their persisted bitmaps, garbage collection.
//! - `fetch.rs`: the fetch loop: sync with the coordinator over the
//!   session's connection, fetch pieces from peers first and from the
//!   coordinator where it grants them, verify each piece while writing.
//! - `options.rs`: the service's settings and rate limits; `shared.rs`:
//!   what the fetcher and the peer server share (blobs held, peer policy).
//! - `peer.rs`: the peer server: serves verified pieces (of complete blobs
//!   and of blobs still downloading) to the nodes the coordinator named
//!   for the image, with current certificates.
//!
//! [`DistributionService::run`] runs both for as long as the agent runs; the
//! session hands it each new coordinator connection through a watch channel.

mod fetch;
mod options;
mod peer;
mod shared;
pub mod store;

/// This agent's distribution counters since it started, for the
/// coordinator's metrics (sent with every heartbeat).
pub mod counters {
    use std::sync::atomic::{AtomicU64, Ordering};

    use seaport_shared::wire::NodeCounters;

    pub(crate) static SERVED: AtomicU64 = AtomicU64::new(0);
    pub(crate) static FROM_PEERS: AtomicU64 = AtomicU64::new(0);
    pub(crate) static FROM_COORDINATOR: AtomicU64 = AtomicU64::new(0);
    pub(crate) static REFETCHED: AtomicU64 = AtomicU64::new(0);
    pub(crate) static SYNCS: AtomicU64 = AtomicU64::new(0);

    /// The counters now.
    pub fn snapshot() -> NodeCounters {
        NodeCounters {
            served_bytes: SERVED.load(Ordering::Relaxed),
            fetched_peer_bytes: FROM_PEERS.load(Ordering::Relaxed),
            fetched_coordinator_bytes: FROM_COORDINATOR.load(Ordering::Relaxed),
            refetched_pieces: REFETCHED.load(Ordering::Relaxed),
        }
    }

    /// Syncs with the coordinator answered since the start, by every
    /// distribution service of this process (agents run in-process count
    /// together).
    pub fn syncs() -> u64 {
        SYNCS.load(Ordering::Relaxed)
    }
}

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Semaphore};

pub use options::{DistributionArgs, DistributionOptions, RateLimit};
use shared::Shared;

use seaport_shared::digest::Digest;

pub use store::{BlobStore, BlobStoreError};

/// The distribution service of a running agent.
pub struct DistributionService {
    shared: Arc<Shared>,
}

impl DistributionService {
    /// Opens the blob store under `state_dir` and indexes what it holds.
    pub fn open(
        state_dir: &Path,
        opts: DistributionOptions,
    ) -> Result<DistributionService, BlobStoreError> {
        let store = BlobStore::open(state_dir)?;
        let shared = Arc::new(Shared {
            store: store.clone(),
            state_dir: state_dir.to_path_buf(),
            held: Mutex::new(HashMap::new()),
            peers: watch::channel(None).0,
            served: AtomicU64::new(0),
            download: RateLimit::new(opts.max_download_rate),
            upload: RateLimit::new(opts.max_upload_rate),
            uploads: Semaphore::new(opts.serve_concurrency.max(1)),
            opts,
        });
        if let Ok(entries) = std::fs::read_dir(store.dir().join("sha256")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let (Ok(d), Ok(meta)) = (Digest::from_hex(&name), e.metadata()) {
                    shared.set_complete(d, meta.len());
                }
            }
        }
        Ok(DistributionService { shared })
    }

    /// Bytes served to peers since the start.
    pub fn served_bytes(&self) -> u64 {
        self.shared.served.load(Ordering::Relaxed)
    }

    /// Runs the fetcher and the peer server until `shutdown` turns true.
    /// `coordinator` carries the session's connection while there is one.
    pub async fn run(
        self,
        coordinator: watch::Receiver<Option<quinn::Connection>>,
        shutdown: watch::Receiver<bool>,
    ) {
        fetch::run(self.shared, coordinator, shutdown).await;
    }
}
