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
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use seaport_shared::codec;
use seaport_shared::digest::Digest;
use seaport_shared::distribution::{
    BadPeer, BadPeerReason, BlobPlan, BlobRequest, BlobResponse, PeerHolding, PieceTable,
    SyncRequest, SyncResponse, BLOB_FRAME_LIMIT,
};
use seaport_shared::tls::PEER_CONNECT_TIMEOUT;
use seaport_shared::wire::{self, StreamKind};

use super::peer;
use super::shared::{PeerPolicy, Shared};
use super::store::{Partial, PartialWriter, VerifiedPiece, PERSIST_EVERY};
use crate::identity::Identity;

const COORDINATOR: &str = "coordinator";
/// While fetching: how often the agent tells the coordinator what it holds
/// (and so learns what its peers hold). Peers learn of a new piece within
/// about two of these.
const SYNC_EVERY: Duration = Duration::from_millis(250);
const SYNC_IDLE_EVERY: Duration = Duration::from_secs(3);
/// With nothing in flight, sync again this soon.
const SYNC_STARVED: Duration = Duration::from_millis(100);
const TICK: Duration = Duration::from_millis(100);
const AVOID_UNREACHABLE: Duration = Duration::from_secs(15);
const PER_PEER: usize = 2;
/// Peers fetched from at once while the coordinator is sending this agent
/// pieces. Each host's downlink is shared by the coordinator's connection
/// and those of the peers it fetches from; with a few peers at a time the
/// coordinator's connection keeps a fair share of it, and with it the
/// coordinator's own link stays full of pieces nobody has yet. Without
/// coordinator pieces in flight, every peer may be used.
const PEERS_AT_ONCE: usize = 3;
/// Granted pieces fetched from the coordinator at once, besides the peer
/// requests: what the coordinator grants nobody else has, so these are
/// never left waiting behind peer transfers.
const COORDINATOR_SLOTS: usize = 3;
const CHUNK: usize = 256 * 1024;
const PIECE_TIMEOUT: Duration = Duration::from_secs(60);
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

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
    result: Result<(u64, VerifiedPiece), FetchError>,
}

type PeerSlot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

/// A sync's answer, or why it failed and the bad-peer reports it did not
/// deliver.
type SyncResult = Result<SyncResponse, (String, Vec<BadPeer>)>;

/// One sync with the coordinator on the session's connection.
async fn sync(conn: quinn::Connection, req: SyncRequest) -> SyncResult {
    let unsent = req.bad_peers.clone();
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
    match timeout(SYNC_TIMEOUT, fut).await {
        Ok(Ok(r)) => {
            super::counters::SYNCS.fetch_add(1, Ordering::Relaxed);
            Ok(r)
        }
        Ok(Err(e)) => Err((e, unsent)),
        Err(_) => Err(("sync timed out".to_string(), unsent)),
    }
}

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
    ///
    /// Syncs run beside the transfers (a sync waiting on a busy link does
    /// not hold up the next piece).
    async fn work(
        &mut self,
        conn: quinn::Connection,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut tasks: JoinSet<Done> = JoinSet::new();
        let mut syncing: Option<tokio::task::JoinHandle<SyncResult>> = None;
        let mut last_sync: Option<Instant> = None;
        let mut last_persist = Instant::now();
        let mut sync_soon = false;
        let stop = loop {
            let now = Instant::now();
            let idle = self.plans.is_empty();
            let since = last_sync.map(|t| now.saturating_duration_since(t));
            let due = match since {
                None => true,
                Some(s) => {
                    s >= if idle { SYNC_IDLE_EVERY } else { SYNC_EVERY }
                        || ((sync_soon || (!idle && tasks.is_empty())) && s >= SYNC_STARVED)
                }
            };
            if due && syncing.is_none() {
                last_sync = Some(now);
                sync_soon = false;
                syncing = Some(tokio::spawn(sync(conn.clone(), self.sync_request())));
            }
            while let Some((digest, piece, source)) = self.pick() {
                self.start(&mut tasks, &conn, digest, piece, source);
            }
            if last_persist.elapsed() >= PERSIST_EVERY {
                self.persist_all();
                last_persist = Instant::now();
            }
            tokio::select! {
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok(done) = done {
                        // A finished blob is reported at once.
                        sync_soon |= self.finish_piece(done);
                    }
                }
                r = async { syncing.as_mut().expect("guarded").await }, if syncing.is_some() => {
                    syncing = None;
                    match r {
                        Ok(Ok(resp)) => self.apply(resp),
                        Ok(Err((e, unsent))) => {
                            self.to_report.extend(unsent);
                            if conn.close_reason().is_some() {
                                break false;
                            }
                            debug!(error = %e, "sync failed");
                        }
                        Err(e) => debug!(error = %e, "sync task failed"),
                    }
                }
                () = tokio::time::sleep(TICK) => {}
                _ = conn.closed() => break false,
                _ = shutdown.wait_for(|s| *s) => break true,
            }
        };
        if let Some(t) = syncing {
            t.abort();
        }
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

    /// What the next sync reports; the bad peers it carries are taken
    /// (given back if the sync fails).
    fn sync_request(&mut self) -> SyncRequest {
        SyncRequest {
            peer_port: if self.endpoint.is_some() {
                self.shared.opts.peer_port
            } else {
                0
            },
            blobs: self.shared.reports(),
            bad_peers: std::mem::take(&mut self.to_report),
            received: self.received.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            served: self.shared.served.load(Ordering::Relaxed),
        }
    }

    fn apply(&mut self, resp: SyncResponse) {
        let policy = PeerPolicy::from_sync(&resp);
        self.shared.peers.send_if_modified(|cur| {
            if cur.as_deref() == Some(&policy) {
                false
            } else {
                *cur = Some(Arc::new(policy));
                true
            }
        });
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

    /// The next piece to fetch and where from: pieces the coordinator
    /// granted (up to [`COORDINATOR_SLOTS`] at once), then from peers (up to
    /// the fetch concurrency, [`PER_PEER`] per peer) the piece the fewest
    /// peers hold, from the least loaded of them.
    fn pick(&self) -> Option<(Digest, u32, Source)> {
        let mut digests: Vec<&Digest> = self.plans.keys().collect();
        digests.sort();
        let load_of = |src: &Source| self.per_source.get(src).copied().unwrap_or(0);
        let coordinator_load = load_of(&Source::Coordinator);
        if coordinator_load < COORDINATOR_SLOTS {
            for d in &digests {
                let Some(partial) = self.partials.get(*d) else {
                    continue;
                };
                if let Some(&i) = self.plans[*d]
                    .seed
                    .iter()
                    .find(|&&i| !partial.have.get(i) && !self.in_flight.contains(&(**d, i)))
                {
                    return Some((**d, i, Source::Coordinator));
                }
            }
        }
        let peer_load = self.in_flight.len().saturating_sub(coordinator_load);
        if peer_load >= self.shared.opts.fetch_concurrency {
            return None;
        }
        let busy_peers = self
            .per_source
            .iter()
            .filter(|(src, load)| matches!(src, Source::Peer { .. }) && **load > 0)
            .count();
        // Rarest first: (holders, place in this agent's scan order).
        let mut best: Option<((usize, u32), Digest, u32, Source)> = None;
        for d in &digests {
            let plan = &self.plans[*d];
            let Some(partial) = self.partials.get(*d) else {
                continue;
            };
            let peers: Vec<(&PeerHolding, Source, usize)> = plan
                .peers
                .iter()
                .filter(|p| self.usable(&p.node_id))
                .map(|p| {
                    let src = Source::Peer {
                        node_id: p.node_id.clone(),
                        addr: p.addr.clone(),
                    };
                    let load = load_of(&src);
                    (p, src, load)
                })
                .collect();
            // A peer can take a request if it has room and is one of the
            // peers fetched from now, or there is room for another peer.
            let open = |load: usize| {
                load < PER_PEER && (load > 0 || coordinator_load == 0 || busy_peers < PEERS_AT_ONCE)
            };
            if !peers.iter().any(|(_, _, load)| open(*load)) {
                continue;
            }
            let n = partial.table.count();
            // Each agent scans from a different place, so equally rare
            // pieces spread over the peers.
            let start = self.spread(n);
            for i in 0..n {
                if partial.have.get(i) || self.in_flight.contains(&(**d, i)) {
                    continue;
                }
                let holders = peers.iter().filter(|(p, _, _)| p.have.get(i)).count();
                if holders == 0 {
                    continue;
                }
                let key = (holders, (i + n - start) % n);
                if best.as_ref().is_some_and(|b| b.0 <= key) {
                    continue;
                }
                let Some((_, src, _)) = peers
                    .iter()
                    .filter(|(p, _, load)| open(*load) && p.have.get(i))
                    .min_by_key(|(_, _, load)| *load)
                else {
                    continue;
                };
                best = Some((key, **d, i, src.clone()));
            }
        }
        best.map(|(_, d, i, src)| (d, i, src))
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
        let writer = match partial.writer() {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot write a partial blob");
                return;
            }
        };
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
                        Err(e) => Target::Unavailable(e.to_string()),
                    },
                    None => Target::Unavailable("no peer endpoint".into()),
                }
            }
        };
        tasks.spawn(async move {
            let result = match timeout(
                PIECE_TIMEOUT,
                fetch_piece(target, &table, piece, &writer, &shared),
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

    /// Records a finished transfer; true when it completed a blob.
    fn finish_piece(&mut self, done: Done) -> bool {
        self.in_flight.remove(&(done.digest, done.piece));
        if let Some(n) = self.per_source.get_mut(&done.source) {
            *n = n.saturating_sub(1);
        }
        match done.result {
            Ok((bytes, verified)) => {
                let counter = match done.source {
                    Source::Coordinator => &super::counters::FROM_COORDINATOR,
                    Source::Peer { .. } => &super::counters::FROM_PEERS,
                };
                counter.fetch_add(bytes, Ordering::Relaxed);
                *self
                    .received
                    .entry(done.source.name().to_string())
                    .or_default() += bytes;
                if let Some(p) = self.partials.get_mut(&done.digest) {
                    p.mark(verified);
                    let (table, have) = (p.table.clone(), p.have.clone());
                    self.shared.set_partial(&table, &have);
                }
                return self.check_complete();
            }
            Err(FetchError::Corrupt) => {
                // The piece is fetched again (from another source).
                super::counters::REFETCHED.fetch_add(1, Ordering::Relaxed);
                match &done.source {
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
                }
            }
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
        false
    }

    /// Moves every fully verified partial into place; true if there was one.
    fn check_complete(&mut self) -> bool {
        let full: Vec<Digest> = self
            .partials
            .iter()
            .filter(|(d, p)| p.have.is_full() && !self.in_flight.iter().any(|(fd, _)| fd == *d))
            .map(|(d, _)| *d)
            .collect();
        let any = !full.is_empty();
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
                Err(e) => {
                    warn!(error = %e, "could not finish a blob");
                    self.shared.held().remove(&d);
                }
            }
        }
        any
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
    sink: &PartialWriter,
    shared: &Shared,
) -> Result<(u64, VerifiedPiece), FetchError> {
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
    // Each chunk is hashed on a blocking thread (pieces in flight are hashed
    // on several cores at once) and written by the partial's writer thread
    // while the next one arrives.
    let mut writer = sink.piece(piece);
    let len = writer.remaining();
    let mut buf = sink.buffer(CHUNK.min(len));
    while writer.remaining() > 0 {
        let want = writer.remaining().min(CHUNK);
        buf.resize(want);
        recv.read_exact(&mut buf).await.map_err(|e| failed(&e))?;
        shared.download.take(want).await;
        let (w, written) = writer.write_off_thread(buf).await;
        writer = w;
        buf = written.map_err(|e| failed(&e))?;
    }
    let verified = writer
        .verify_off_thread()
        .await
        .map_err(|e| failed(&format!("writing the piece: {e}")))?
        .ok_or(FetchError::Corrupt)?;
    Ok((len as u64, verified))
}
