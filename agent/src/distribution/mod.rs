//! Layer distribution, the agent's side (docs/distribution.md).
//!
//! - `store.rs`: `STATE_DIR/content/`: verified blobs, partial blobs with
//!   their persisted bitmaps, garbage collection.
//! - `fetch.rs`: the fetch loop: sync with the coordinator over the
//!   session's connection, fetch pieces from peers first and from the
//!   coordinator where it grants them, verify each piece while writing.
//! - `peer.rs`: the peer server: serves verified pieces (of complete blobs
//!   and of blobs still downloading) to the nodes the coordinator named
//!   for the image, with current certificates.
//!
//! [`DistributionService::run`] runs both for as long as the agent runs; the
//! session hands it each new coordinator connection through a watch channel.

mod fetch;
mod peer;
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

    /// The counters now.
    pub fn snapshot() -> NodeCounters {
        NodeCounters {
            served_bytes: SERVED.load(Ordering::Relaxed),
            fetched_peer_bytes: FROM_PEERS.load(Ordering::Relaxed),
            fetched_coordinator_bytes: FROM_COORDINATOR.load(Ordering::Relaxed),
            refetched_pieces: REFETCHED.load(Ordering::Relaxed),
        }
    }
}

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};

pub(crate) use peer::PeerPolicy;

use seaport_shared::digest::Digest;
use seaport_shared::distribution::{
    piece_count, Bitmap, BlobReport, PieceSource, PieceTable, DEFAULT_PEER_PORT, PIECE_SIZE,
};

pub use store::{BlobStore, BlobStoreError};

/// Settings of the distribution service (flags of `seaport-agent run`).
#[derive(Debug, Clone)]
pub struct DistributionOptions {
    /// UDP port of the peer server; 0 disables serving peers.
    pub peer_port: u16,
    /// Download cap in bytes/s (0: none).
    pub max_download_rate: u64,
    /// Upload cap to peers in bytes/s (0: none).
    pub max_upload_rate: u64,
    /// Piece requests to peers in flight at once (up to 3 pieces granted by
    /// the coordinator come on top).
    pub fetch_concurrency: usize,
    /// Piece requests served to peers at once.
    pub serve_concurrency: usize,
}

impl Default for DistributionOptions {
    fn default() -> Self {
        DistributionOptions {
            peer_port: DEFAULT_PEER_PORT,
            max_download_rate: 0,
            max_upload_rate: 0,
            fetch_concurrency: 8,
            serve_concurrency: 8,
        }
    }
}

/// Flags of `seaport-agent run` for layer distribution.
#[derive(Debug, Clone, clap::Args)]
pub struct DistributionArgs {
    /// UDP port to serve pieces to peer nodes on (0: do not serve).
    #[arg(long, env = "SEAPORT_AGENT_PEER_PORT", default_value_t = DEFAULT_PEER_PORT)]
    pub peer_port: u16,
    /// Download rate cap in Mbit/s (0: none).
    #[arg(long, env = "SEAPORT_AGENT_MAX_DOWNLOAD_MBIT", default_value_t = 0)]
    pub max_download_mbit: u64,
    /// Upload rate cap to peers in Mbit/s (0: none).
    #[arg(long, env = "SEAPORT_AGENT_MAX_UPLOAD_MBIT", default_value_t = 0)]
    pub max_upload_mbit: u64,
    /// Piece requests to peers in flight at once (up to 3 pieces granted by
    /// the coordinator come on top).
    #[arg(long, env = "SEAPORT_AGENT_FETCH_CONCURRENCY", default_value_t = 8)]
    pub fetch_concurrency: usize,
    /// Piece requests served to peers at once.
    #[arg(long, env = "SEAPORT_AGENT_SERVE_CONCURRENCY", default_value_t = 8)]
    pub serve_concurrency: usize,
}

impl DistributionArgs {
    pub fn options(&self) -> DistributionOptions {
        DistributionOptions {
            peer_port: self.peer_port,
            max_download_rate: self.max_download_mbit * 1_000_000 / 8,
            max_upload_rate: self.max_upload_mbit * 1_000_000 / 8,
            fetch_concurrency: self.fetch_concurrency.max(1),
            serve_concurrency: self.serve_concurrency.max(1),
        }
    }
}

/// A token bucket: callers take bytes and sleep while the bucket is in debt.
#[derive(Debug)]
pub struct RateLimit {
    rate: u64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// `rate` bytes per second; 0 means unlimited.
    pub fn new(rate: u64) -> RateLimit {
        RateLimit {
            rate,
            state: Mutex::new((0.0, Instant::now())),
        }
    }

    /// How long to wait before sending `bytes` more (and books them).
    pub fn book(&self, bytes: usize, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let rate = self.rate as f64;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *st;
        // Refill, with a burst of at most a quarter second.
        *tokens =
            (*tokens + now.saturating_duration_since(*last).as_secs_f64() * rate).min(rate / 4.0);
        *last = now;
        *tokens -= bytes as f64;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / rate)
        }
    }

    pub async fn take(&self, bytes: usize) {
        let wait = self.book(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_books_debt_as_waiting_time() {
        let r = RateLimit::new(1000);
        let t0 = Instant::now();
        assert_eq!(r.book(0, t0), Duration::ZERO);
        let w = r.book(500, t0);
        assert!(
            w >= Duration::from_millis(490) && w <= Duration::from_millis(510),
            "{w:?}"
        );
        // A second later the debt is paid and 250 bytes of burst are back.
        let w = r.book(250, t0 + Duration::from_secs(1));
        assert_eq!(w, Duration::ZERO);
        assert_eq!(RateLimit::new(0).book(1 << 30, t0), Duration::ZERO);
    }
}
