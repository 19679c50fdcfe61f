//! The fetch loop: sync with the coordinator, fetch pieces, verify, repeat.
//!
//! Each sync reports every blob's bitmap, peers that misbehaved and byte
//! counters; the answer lists the assigned images (their blobs are kept,
//! everything else collected), and for each incomplete blob its piece table,
//! the pieces the coordinator grants this agent, and the peers holding
//! pieces it lacks. Peers come first; granted pieces come from the
//! coordinator. A piece is hashed while it is written at its offset and
//! marked only when its digest matches; a mismatch bans that peer for good
//! and the piece is fetched elsewhere.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::Digest as _;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use seaport_shared::codec;
use seaport_shared::digest::Digest;
use seaport_shared::transfer::{
    BadPeer, BadPeerReason, BlobPlan, BlobRequest, BlobResponse, PieceTable, SyncRequest,
    SyncResponse, BLOB_FRAME_LIMIT, PEER_CONNECT_TIMEOUT,
};
use seaport_shared::wire::{self, StreamKind};

use super::store::{ContentError, Partial};
use super::{peer, Shared};
use crate::identity::Identity;

const COORDINATOR: &str = "coordinator";
const SYNC_EVERY: Duration = Duration::from_secs(1);
const SYNC_IDLE_EVERY: Duration = Duration::from_secs(3);
const SYNC_STARVED: Duration = Duration::from_millis(200);
const PERSIST_EVERY: Duration = Duration::from_secs(1);
const AVOID_UNREACHABLE: Duration = Duration::from_secs(15);
const PER_PEER: usize = 2;
const CHUNK: usize = 256 * 1024;
const PIECE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    Coordinator,
    Peer { node_id: String, addr: String },
}

impl Source {
    fn name(&self) -> &str {
        match self {
            Source::Coordinator => COORDINATOR,
            Source::Peer { node_id, .. } => node_id,
        }
    }
}

#[derive(Debug)]
enum FetchError {
    Corrupt,
    Failed(String),
}

struct Done {
    digest: Digest,
    piece: u32,
    source: Source,
    result: Result<u64, FetchError>,
}

type PeerSlot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

struct Fetcher {
    shared: Arc<Shared>,
    endpoint: Option<(quinn::Endpoint, Identity)>,
    partials: HashMap<Digest, Partial>,
    plans: HashMap<Digest, BlobPlan>,
    in_flight: HashSet<(Digest, u32)>,
    per_source: HashMap<Source, usize>,
    bad: HashMap<String, (BadPeerReason, Instant)>,
    to_report: Vec<BadPeer>,
    received: HashMap<String, u64>,
    peer_conns: HashMap<String, PeerSlot>,
    kept: Option<HashSet<Digest>>,
}

/// Runs until shutdown; works while the session has a connection.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut coordinator: watch::Receiver<Option<quinn::Connection>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut f = Fetcher {
        shared,
        endpoint: None,
        partials: HashMap::new(),
        plans: HashMap::new(),
        in_flight: HashSet::new(),
        per_source: HashMap::new(),
        bad: HashMap::new(),
        to_report: Vec::new(),
        received: HashMap::new(),
        peer_conns: HashMap::new(),
        kept: None,
    };
    loop {
        let conn = coordinator
            .borrow_and_update()
            .clone()
            .filter(|c| c.close_reason().is_none());
        let Some(conn) = conn else {
            tokio::select! {
                r = coordinator.changed() => if r.is_err() { break },
                _ = shutdown.wait_for(|s| *s) => break,
            }
            continue;
        };
        f.ensure_endpoint();
        if f.work(conn, &mut shutdown).await {
            break;
        }
    }
    f.persist_all();
    if let Some((ep, _)) = &f.endpoint {
        ep.close(0u32.into(), b"agent stopping");
    }
}

impl Fetcher {
    fn ensure_endpoint(&mut self) {
        if self.endpoint.is_some() {
            return;
        }
        let identity = match Identity::load(&self.shared.state_dir) {
            Ok(i) => i,
            Err(e) => {
                warn!(error = %e, "no identity for peer transfers");
                return;
            }
        };
        match peer::endpoint(&self.shared, &identity) {
            Ok(ep) => {
                if self.shared.opts.peer_port != 0 {
                    info!(port = self.shared.opts.peer_port, "serving pieces to peers");
                    tokio::spawn(peer::serve(self.shared.clone(), ep.clone()));
                }
                self.endpoint = Some((ep, identity));
            }
            Err(e) => warn!(error = %e, "peer transfers disabled"),
        }
    }

    /// Works on one coordinator connection; true when asked to stop.
    async fn work(
        &mut self,
        conn: quinn::Connection,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut tasks: JoinSet<Done> = JoinSet::new();
        let mut last_sync: Option<Instant> = None;
        let mut last_persist = Instant::now();
        let stop = loop {
            let now = Instant::now();
            let idle = self.plans.is_empty();
            let since = last_sync.map(|t| now.saturating_duration_since(t));
            let starved = tasks.len() < self.shared.opts.fetch_concurrency;
            let due = match since {
                None => true,
                Some(s) => {
                    s >= if idle { SYNC_IDLE_EVERY } else { SYNC_EVERY }
                        || (!idle && starved && tasks.is_empty() && s >= SYNC_STARVED)
                }
            };
            if due {
                last_sync = Some(now);
                match self.sync(&conn).await {
                    Ok(resp) => self.apply(resp),
                    Err(e) => {
                        if conn.close_reason().is_some() {
                            break false;
                        }
                        debug!(error = %e, "sync failed");
                    }
                }
            }
            while tasks.len() < self.shared.opts.fetch_concurrency {
                let Some((digest, piece, source)) = self.pick() else {
                    break;
                };
                self.start(&mut tasks, &conn, digest, piece, source);
            }
            if last_persist.elapsed() >= PERSIST_EVERY {
                self.persist_all();
                last_persist = Instant::now();
            }
            tokio::select! {
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok(done) = done {
                        self.finish_piece(done);
                    }
                }
                () = tokio::time::sleep(SYNC_STARVED) => {}
                _ = conn.closed() => break false,
                _ = shutdown.wait_for(|s| *s) => break true,
            }
        };
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        self.in_flight.clear();
        self.per_source.clear();
        self.persist_all();
        stop
    }

    fn persist_all(&mut self) {
        for p in self.partials.values_mut() {
            if let Err(e) = p.persist() {
                warn!(error = %e, "could not persist a partial blob's bitmap");
            }
        }
    }

    async fn sync(&mut self, conn: &quinn::Connection) -> Result<SyncResponse, String> {
        let req = SyncRequest {
            peer_port: if self.endpoint.is_some() {
                self.shared.opts.peer_port
            } else {
                0
            },
            blobs: self.shared.reports(),
            bad_peers: self.to_report.clone(),
            received: self.received.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            served: self.shared.served.load(Ordering::Relaxed),
        };
        let fut = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            wire::client_handshake(&mut recv, &mut send, StreamKind::Blob)
                .await
                .map_err(|e| e.to_string())?;
            codec::write_msg(&mut send, &BlobRequest::Sync(req))
                .await
                .map_err(|e| e.to_string())?;
            let _ = send.finish();
            match codec::read_msg::<_, BlobResponse>(&mut recv, BLOB_FRAME_LIMIT).await {
                Ok(Some(BlobResponse::Sync(r))) => Ok(r),
                Ok(Some(BlobResponse::Refused { reason })) => Err(reason),
                Ok(Some(_)) => Err("unexpected answer to a sync".to_string()),
                Ok(None) => Err("no answer to a sync".to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        let resp = timeout(Duration::from_secs(10), fut)
            .await
            .map_err(|_| "sync timed out".to_string())??;
        self.to_report.clear();
        Ok(resp)
    }

    fn apply(&mut self, resp: SyncResponse) {
        *self
            .shared
            .revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = resp.revoked.into_iter().collect();
        let keep: HashSet<Digest> = resp
            .images
            .iter()
            .flat_map(|i| i.blobs.iter().copied())
            .collect();
        if self.kept.as_ref() != Some(&keep) {
            if let Err(e) = self.shared.store.set_images(&resp.images) {
                warn!(error = %e, "could not record assigned images");
            }
            let removed = self.shared.store.gc(&keep);
            if !removed.is_empty() {
                info!(
                    count = removed.len(),
                    "removed blobs no image assigned here uses"
                );
            }
            self.shared.held().retain(|d, _| keep.contains(d));
            self.partials.retain(|d, _| keep.contains(d));
            self.kept = Some(keep.clone());
        }
        self.plans.clear();
        for plan in resp.blobs {
            let d = plan.table.digest;
            if !keep.contains(&d) || plan.table.check().is_err() || self.shared.store.has(&d) {
                continue;
            }
            if !self.partials.contains_key(&d) {
                match self.shared.store.partial(Arc::new(plan.table.clone())) {
                    Ok(p) => {
                        self.shared.set_partial(&p.table, &p.have);
                        if p.have.count() > 0 {
                            info!(digest = %d, pieces = p.have.count(), of = p.table.count(), "resuming a partial blob");
                        }
                        self.partials.insert(d, p);
                    }
                    Err(e) => {
                        warn!(error = %e, "could not open a partial blob");
                        continue;
                    }
                }
            }
            self.plans.insert(d, plan);
        }
        self.check_complete();
    }

    fn usable(&self, node_id: &str) -> bool {
        match self.bad.get(node_id) {
            None => true,
            Some((BadPeerReason::Corrupt, _)) => false,
            Some((BadPeerReason::Unreachable, at)) => at.elapsed() >= AVOID_UNREACHABLE,
        }
    }

    /// The next piece to fetch and where from.
    fn pick(&self) -> Option<(Digest, u32, Source)> {
        let coordinator_max = self.shared.opts.fetch_concurrency.div_ceil(2).max(1);
        let mut digests: Vec<&Digest> = self.plans.keys().collect();
        digests.sort();
        // Peers first: what they hold is free for the coordinator.
        let mut best: Option<(Digest, u32, Source, usize)> = None;
        for d in &digests {
            let plan = &self.plans[*d];
            let Some(partial) = self.partials.get(*d) else {
                continue;
            };
            for p in &plan.peers {
                if !self.usable(&p.node_id) {
                    continue;
                }
                let src = Source::Peer {
                    node_id: p.node_id.clone(),
                    addr: p.addr.clone(),
                };
                let load = self.per_source.get(&src).copied().unwrap_or(0);
                if load >= PER_PEER || best.as_ref().is_some_and(|b| b.3 <= load) {
                    continue;
                }
                // Start from a different place on each agent so peers spread.
                let n = partial.table.count();
                let start = self.spread(n);
                let found = (0..n).map(|k| (start + k) % n).find(|&i| {
                    p.have.get(i) && !partial.have.get(i) && !self.in_flight.contains(&(**d, i))
                });
                if let Some(i) = found {
                    best = Some((**d, i, src, load));
                }
            }
        }
        if let Some((d, i, src, _)) = best {
            return Some((d, i, src));
        }
        let load = self
            .per_source
            .get(&Source::Coordinator)
            .copied()
            .unwrap_or(0);
        if load >= coordinator_max {
            return None;
        }
        for d in digests {
            let plan = &self.plans[d];
            let Some(partial) = self.partials.get(d) else {
                continue;
            };
            if let Some(&i) = plan
                .seed
                .iter()
                .find(|&&i| !partial.have.get(i) && !self.in_flight.contains(&(*d, i)))
            {
                return Some((*d, i, Source::Coordinator));
            }
        }
        None
    }

    fn spread(&self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let seed = self.shared.opts.peer_port as u32 ^ std::process::id();
        seed % n
    }

    fn start(
        &mut self,
        tasks: &mut JoinSet<Done>,
        conn: &quinn::Connection,
        digest: Digest,
        piece: u32,
        source: Source,
    ) {
        let Some(partial) = self.partials.get(&digest) else {
            return;
        };
        let table = partial.table.clone();
        let file = partial.file.clone();
        let shared = self.shared.clone();
        self.in_flight.insert((digest, piece));
        *self.per_source.entry(source.clone()).or_default() += 1;
        let target = match &source {
            Source::Coordinator => Target::Coordinator(conn.clone()),
            Source::Peer { addr, node_id } => {
                let slot = self.peer_conns.entry(addr.clone()).or_default().clone();
                match &self.endpoint {
                    Some((ep, identity)) => match peer::client_for(identity, node_id) {
                        Ok(config) => Target::Peer {
                            slot,
                            endpoint: ep.clone(),
                            config,
                            addr: addr.clone(),
                        },
                        Err(e) => Target::Unavailable(e),
                    },
                    None => Target::Unavailable("no peer endpoint".into()),
                }
            }
        };
        tasks.spawn(async move {
            let result = match timeout(
                PIECE_TIMEOUT,
                fetch_piece(target, &table, piece, &file, &shared),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(FetchError::Failed("piece transfer timed out".into())),
            };
            Done {
                digest,
                piece,
                source,
                result,
            }
        });
    }

    fn finish_piece(&mut self, done: Done) {
        self.in_flight.remove(&(done.digest, done.piece));
        if let Some(n) = self.per_source.get_mut(&done.source) {
            *n = n.saturating_sub(1);
        }
        match done.result {
            Ok(bytes) => {
                *self
                    .received
                    .entry(done.source.name().to_string())
                    .or_default() += bytes;
                if let Some(p) = self.partials.get_mut(&done.digest) {
                    p.mark(done.piece);
                    let (table, have) = (p.table.clone(), p.have.clone());
                    self.shared.set_partial(&table, &have);
                }
                self.check_complete();
            }
            Err(FetchError::Corrupt) => match &done.source {
                Source::Peer { node_id, .. } => {
                    warn!(peer = %node_id, digest = %done.digest, piece = done.piece,
                        "piece from peer failed verification; not using that peer again");
                    self.bad
                        .insert(node_id.clone(), (BadPeerReason::Corrupt, Instant::now()));
                    self.to_report.push(BadPeer {
                        node_id: node_id.clone(),
                        digest: done.digest,
                        reason: BadPeerReason::Corrupt,
                    });
                }
                Source::Coordinator => {
                    warn!(digest = %done.digest, piece = done.piece,
                        "piece from the coordinator failed verification; fetching it again");
                }
            },
            Err(FetchError::Failed(reason)) => {
                info!(source = done.source.name(), %reason, "piece transfer failed");
                if let Source::Peer { node_id, addr } = &done.source {
                    let already = self.bad.contains_key(node_id);
                    if !already {
                        self.bad.insert(
                            node_id.clone(),
                            (BadPeerReason::Unreachable, Instant::now()),
                        );
                        self.to_report.push(BadPeer {
                            node_id: node_id.clone(),
                            digest: done.digest,
                            reason: BadPeerReason::Unreachable,
                        });
                    }
                    self.peer_conns.remove(addr);
                }
            }
        }
    }

    /// Moves every fully verified partial into place.
    fn check_complete(&mut self) {
        let full: Vec<Digest> = self
            .partials
            .iter()
            .filter(|(d, p)| p.have.is_full() && !self.in_flight.iter().any(|(fd, _)| fd == *d))
            .map(|(d, _)| *d)
            .collect();
        for d in full {
            let Some(p) = self.partials.remove(&d) else {
                continue;
            };
            let size = p.table.size;
            self.plans.remove(&d);
            match p.finish(&self.shared.store) {
                Ok(()) => {
                    info!(digest = %d, size, "blob complete and verified");
                    self.shared.set_complete(d, size);
                }
                Err(e @ ContentError::Mismatch { .. }) => {
                    warn!(error = %e, "blob deleted");
                    self.shared.held().remove(&d);
                }
                Err(e) => {
                    warn!(error = %e, "could not finish a blob");
                    self.shared.held().remove(&d);
                }
            }
        }
    }
}

enum Target {
    Coordinator(quinn::Connection),
    Peer {
        slot: PeerSlot,
        endpoint: quinn::Endpoint,
        config: quinn::ClientConfig,
        addr: String,
    },
    Unavailable(String),
}

async fn connect_peer(
    slot: &PeerSlot,
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    addr: &str,
) -> Result<quinn::Connection, FetchError> {
    let mut guard = slot.lock().await;
    if let Some(c) = guard.as_ref() {
        if c.close_reason().is_none() {
            return Ok(c.clone());
        }
    }
    let fail = |e: &dyn std::fmt::Display| FetchError::Failed(format!("peer {addr}: {e}"));
    let sock: SocketAddr = addr.parse().map_err(|e| fail(&e))?;
    // The verifier checks the node id; the name only has to be valid.
    let connecting = endpoint
        .connect_with(config.clone(), sock, &sock.ip().to_string())
        .map_err(|e| fail(&e))?;
    let conn = timeout(PEER_CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| fail(&"connect timed out"))?
        .map_err(|e| fail(&e))?;
    *guard = Some(conn.clone());
    Ok(conn)
}

async fn fetch_piece(
    target: Target,
    table: &PieceTable,
    piece: u32,
    file: &std::fs::File,
    shared: &Shared,
) -> Result<u64, FetchError> {
    let conn = match &target {
        Target::Coordinator(c) => c.clone(),
        Target::Peer {
            slot,
            endpoint,
            config,
            addr,
        } => connect_peer(slot, endpoint, config, addr).await?,
        Target::Unavailable(e) => return Err(FetchError::Failed(e.clone())),
    };
    let failed = |e: &dyn std::fmt::Display| FetchError::Failed(e.to_string());
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| failed(&e))?;
    wire::client_handshake(&mut recv, &mut send, StreamKind::Blob)
        .await
        .map_err(|e| failed(&e))?;
    codec::write_msg(
        &mut send,
        &BlobRequest::Pieces {
            digest: table.digest,
            pieces: vec![piece],
        },
    )
    .await
    .map_err(|e| failed(&e))?;
    let _ = send.finish();
    match codec::read_msg::<_, BlobResponse>(&mut recv, BLOB_FRAME_LIMIT).await {
        Ok(Some(BlobResponse::Sending { pieces })) if pieces == [piece] => {}
        Ok(Some(BlobResponse::Refused { reason })) => return Err(FetchError::Failed(reason)),
        Ok(other) => return Err(failed(&format!("unexpected answer {other:?}"))),
        Err(e) => return Err(failed(&e)),
    }
    let (offset, len) = table.range(piece);
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0usize;
    while done < len as usize {
        let want = (len as usize - done).min(CHUNK);
        recv.read_exact(&mut buf[..want])
            .await
            .map_err(|e| failed(&e))?;
        shared.download.take(want).await;
        hasher.update(&buf[..want]);
        file.write_all_at(&buf[..want], offset + done as u64)
            .map_err(|e| failed(&e))?;
        done += want;
    }
    let actual = Digest::from_bytes(hasher.finalize().into());
    if actual != table.pieces[piece as usize] {
        return Err(FetchError::Corrupt);
    }
    Ok(u64::from(len))
}
