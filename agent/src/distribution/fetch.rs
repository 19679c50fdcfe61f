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
//!
//! Endgame: once every piece the agent lacks is in flight, the pieces in
//! flight longest are also asked of a second peer holding them. Such a
//! duplicate is received into memory and verified there, never written
//! while the first request may still write: whichever verifies first wins;
//! the other is cancelled, and a duplicate's bytes go to disk (hashed
//! again as they are written) only once the first request has stopped and
//! its writes have landed.

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
/// Endgame duplicates in flight at once (each holds up to one piece in
/// memory).
const ENDGAME_DUPLICATES: usize = 3;
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
    /// Stopped because another request for the piece verified first; every
    /// chunk it handed over is written.
    Cancelled,
}

/// What a finished transfer brings.
#[derive(Debug)]
enum Fetched {
    /// The piece is written at its offset and verified.
    Written(VerifiedPiece),
    /// An endgame duplicate: the piece's bytes, verified, not written.
    Held(Vec<u8>),
}

/// Which kind of request a transfer was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Written at the piece's offset as it arrives.
    Primary,
    /// An endgame duplicate, received into memory.
    Duplicate,
    /// A duplicate's bytes being written after the primary stopped.
    Held,
}

struct Done {
    digest: Digest,
    piece: u32,
    source: Source,
    kind: Kind,
    result: Result<(u64, Fetched), FetchError>,
}

/// A request in flight.
struct Flight {
    source: Source,
    since: Instant,
    /// Set to true to stop it (it finishes with [`FetchError::Cancelled`]).
    cancel: watch::Sender<bool>,
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
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err((e, unsent)),
        Err(_) => Err(("sync timed out".to_string(), unsent)),
    }
}

struct Fetcher {
    shared: Arc<Shared>,
    endpoint: Option<(quinn::Endpoint, Identity)>,
    partials: HashMap<Digest, Partial>,
    plans: HashMap<Digest, BlobPlan>,
    /// Requests writing pieces (and duplicates' bytes being written).
    in_flight: HashMap<(Digest, u32), Flight>,
    /// Endgame duplicates, at most one per piece.
    duplicates: HashMap<(Digest, u32), Flight>,
    /// Duplicates' verified bytes waiting for their piece's primary request
    /// to stop.
    held_back: HashMap<(Digest, u32), (Source, Vec<u8>)>,
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
    let mut f = Fetcher::new(shared);
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
    fn new(shared: Arc<Shared>) -> Fetcher {
        Fetcher {
            shared,
            endpoint: None,
            partials: HashMap::new(),
            plans: HashMap::new(),
            in_flight: HashMap::new(),
            duplicates: HashMap::new(),
            held_back: HashMap::new(),
            per_source: HashMap::new(),
            bad: HashMap::new(),
            to_report: Vec::new(),
            received: HashMap::new(),
            peer_conns: HashMap::new(),
            kept: None,
        }
    }

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
            while let Some((digest, piece, source, kind)) = self.pick() {
                self.start(&mut tasks, &conn, digest, piece, source, kind);
            }
            if last_persist.elapsed() >= PERSIST_EVERY {
                self.persist_all();
                last_persist = Instant::now();
            }
            tokio::select! {
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok(done) = done {
                        // A finished blob is reported at once.
                        sync_soon |= self.finish_piece(&mut tasks, done);
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
        self.duplicates.clear();
        self.held_back.clear();
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
    /// peers hold, from the least loaded of them; in the endgame, a
    /// duplicate request ([`Fetcher::pick_duplicate`]).
    fn pick(&self) -> Option<(Digest, u32, Source, Kind)> {
        if let Some((d, i, src)) = self.pick_new() {
            return Some((d, i, src, Kind::Primary));
        }
        self.pick_duplicate()
            .map(|(d, i, src)| (d, i, src, Kind::Duplicate))
    }

    /// Whether a request is (or is about to be) under way for the piece.
    fn busy(&self, key: &(Digest, u32)) -> bool {
        self.in_flight.contains_key(key) || self.held_back.contains_key(key)
    }

    /// Requests to peers in flight (duplicates included).
    fn peer_load(&self) -> usize {
        self.per_source
            .iter()
            .filter(|(src, _)| matches!(src, Source::Peer { .. }))
            .map(|(_, n)| *n)
            .sum()
    }

    /// Whether a peer with `load` requests in flight from here can take
    /// another: it has room, and it is one of the peers fetched from now or
    /// there is room for another peer.
    fn peer_open(&self, load: usize) -> bool {
        let coordinator_load = self
            .per_source
            .get(&Source::Coordinator)
            .copied()
            .unwrap_or(0);
        let busy_peers = self
            .per_source
            .iter()
            .filter(|(src, load)| matches!(src, Source::Peer { .. }) && **load > 0)
            .count();
        load < PER_PEER && (load > 0 || coordinator_load == 0 || busy_peers < PEERS_AT_ONCE)
    }

    /// Endgame: when every piece this agent lacks is in flight and a peer
    /// slot is free, the piece in flight longest that has no duplicate yet,
    /// from another usable peer holding it (the least loaded).
    fn pick_duplicate(&self) -> Option<(Digest, u32, Source)> {
        if self.duplicates.len() >= ENDGAME_DUPLICATES
            || self.peer_load() >= self.shared.opts.fetch_concurrency
        {
            return None;
        }
        for (d, p) in &self.partials {
            if !self.plans.contains_key(d) {
                continue;
            }
            if (0..p.table.count()).any(|i| !p.have.get(i) && !self.busy(&(*d, i))) {
                return None;
            }
        }
        let mut flights: Vec<(&(Digest, u32), &Flight)> = self
            .in_flight
            .iter()
            .filter(|(k, _)| !self.duplicates.contains_key(*k) && !self.held_back.contains_key(*k))
            .collect();
        flights.sort_by_key(|(k, f)| (f.since, **k));
        let load_of = |src: &Source| self.per_source.get(src).copied().unwrap_or(0);
        for ((d, i), flight) in flights {
            let Some(plan) = self.plans.get(d) else {
                continue;
            };
            let best = plan
                .peers
                .iter()
                .filter(|p| p.have.get(*i) && self.usable(&p.node_id))
                .map(|p| Source::Peer {
                    node_id: p.node_id.clone(),
                    addr: p.addr.clone(),
                })
                .filter(|src| *src != flight.source)
                .map(|src| {
                    let load = load_of(&src);
                    (load, src)
                })
                .filter(|(load, _)| self.peer_open(*load))
                .min_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name().cmp(b.1.name())));
            if let Some((_, src)) = best {
                return Some((*d, *i, src));
            }
        }
        None
    }

    /// A piece nobody is fetching yet, and where from.
    fn pick_new(&self) -> Option<(Digest, u32, Source)> {
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
                    .find(|&&i| !partial.have.get(i) && !self.busy(&(**d, i)))
                {
                    return Some((**d, i, Source::Coordinator));
                }
            }
        }
        if self.peer_load() >= self.shared.opts.fetch_concurrency {
            return None;
        }
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
            let open = |load: usize| self.peer_open(load);
            if !peers.iter().any(|(_, _, load)| open(*load)) {
                continue;
            }
            let n = partial.table.count();
            // Each agent scans from a different place, so equally rare
            // pieces spread over the peers.
            let start = self.spread(n);
            for i in 0..n {
                if partial.have.get(i) || self.busy(&(**d, i)) {
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
        kind: Kind,
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
        let (cancel, cancelled) = watch::channel(false);
        let flight = Flight {
            source: source.clone(),
            since: Instant::now(),
            cancel,
        };
        if kind == Kind::Duplicate {
            self.duplicates.insert((digest, piece), flight);
        } else {
            self.in_flight.insert((digest, piece), flight);
        }
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
            let fetch = async {
                let recv = open_piece(target, &table, piece, cancelled.clone()).await?;
                if kind == Kind::Duplicate {
                    receive_held(recv, &table, piece, &shared, cancelled).await
                } else {
                    receive_written(recv, piece, &writer, &shared, cancelled).await
                }
            };
            let result = match timeout(PIECE_TIMEOUT, fetch).await {
                Ok(r) => r,
                Err(_) => Err(FetchError::Failed("piece transfer timed out".into())),
            };
            Done {
                digest,
                piece,
                source,
                kind,
                result,
            }
        });
    }

    /// Writes a duplicate's verified bytes (hashed again as they are
    /// written; the piece is marked only if they verify on the way).
    fn start_held(
        &mut self,
        tasks: &mut JoinSet<Done>,
        digest: Digest,
        piece: u32,
        source: Source,
        bytes: Vec<u8>,
    ) {
        let Some(partial) = self.partials.get(&digest) else {
            return;
        };
        if partial.have.get(piece) {
            return;
        }
        let writer = match partial.writer() {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot write a partial blob");
                return;
            }
        };
        let (cancel, _) = watch::channel(false);
        self.in_flight.insert(
            (digest, piece),
            Flight {
                source: source.clone(),
                since: Instant::now(),
                cancel,
            },
        );
        tasks.spawn(async move {
            let len = bytes.len() as u64;
            let written = tokio::task::spawn_blocking(move || {
                let mut w = writer.piece(piece);
                for chunk in bytes.chunks(CHUNK) {
                    w.write(chunk.into())?;
                }
                w.verify()
            })
            .await;
            let result = match written {
                Ok(Ok(Some(v))) => Ok((len, Fetched::Written(v))),
                Ok(Ok(None)) => Err(FetchError::Corrupt),
                Ok(Err(e)) => Err(FetchError::Failed(format!("writing the piece: {e}"))),
                Err(e) => Err(FetchError::Failed(e.to_string())),
            };
            Done {
                digest,
                piece,
                source,
                kind: Kind::Held,
                result,
            }
        });
    }

    /// Whether piece `key` is verified here (or its blob is no longer
    /// fetched).
    fn has_piece(&self, key: &(Digest, u32)) -> bool {
        self.partials.get(&key.0).is_none_or(|p| p.have.get(key.1))
    }

    /// Records a finished transfer; true when it completed a blob.
    fn finish_piece(&mut self, tasks: &mut JoinSet<Done>, done: Done) -> bool {
        let key = (done.digest, done.piece);
        match done.kind {
            Kind::Duplicate => {
                self.duplicates.remove(&key);
            }
            Kind::Primary | Kind::Held => {
                self.in_flight.remove(&key);
            }
        }
        if done.kind != Kind::Held {
            if let Some(n) = self.per_source.get_mut(&done.source) {
                *n = n.saturating_sub(1);
            }
        }
        match done.result {
            Ok((bytes, fetched)) => {
                if done.kind != Kind::Held {
                    let counter = match done.source {
                        Source::Coordinator => &super::counters::FROM_COORDINATOR,
                        Source::Peer { .. } => &super::counters::FROM_PEERS,
                    };
                    counter.fetch_add(bytes, Ordering::Relaxed);
                    *self
                        .received
                        .entry(done.source.name().to_string())
                        .or_default() += bytes;
                }
                match fetched {
                    Fetched::Written(verified) => {
                        if let Some(p) = self.partials.get_mut(&done.digest) {
                            p.mark(verified);
                            let (table, have) = (p.table.clone(), p.have.clone());
                            self.shared.set_partial(&table, &have);
                        }
                        // The other request for the piece is not needed.
                        self.held_back.remove(&key);
                        if let Some(dup) = self.duplicates.get(&key) {
                            let _ = dup.cancel.send(true);
                        }
                        return self.check_complete();
                    }
                    Fetched::Held(held) => {
                        if self.has_piece(&key) {
                            // Too late: nothing is written.
                            return false;
                        }
                        match self.in_flight.get(&key) {
                            // Written once the primary request has stopped.
                            Some(primary) => {
                                let _ = primary.cancel.send(true);
                                self.held_back.insert(key, (done.source, held));
                            }
                            None => {
                                self.start_held(tasks, done.digest, done.piece, done.source, held)
                            }
                        }
                        return false;
                    }
                }
            }
            Err(FetchError::Cancelled) => {}
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
                if let (Source::Peer { node_id, addr }, false) =
                    (&done.source, done.kind == Kind::Held)
                {
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
        // The primary request stopped without the piece: a duplicate's
        // bytes waiting for it are written now.
        if done.kind != Kind::Duplicate {
            if let Some((source, held)) = self.held_back.remove(&key) {
                self.start_held(tasks, done.digest, done.piece, source, held);
            }
        }
        false
    }

    /// Moves every fully verified partial into place; true if there was one.
    fn check_complete(&mut self) -> bool {
        let full: Vec<Digest> = self
            .partials
            .iter()
            .filter(|(d, p)| p.have.is_full() && !self.in_flight.keys().any(|(fd, _)| fd == *d))
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

/// Opens a request for one piece and reads the answer's header; the
/// piece's bytes follow on the stream.
async fn open_piece(
    target: Target,
    table: &PieceTable,
    piece: u32,
    mut cancelled: watch::Receiver<bool>,
) -> Result<quinn::RecvStream, FetchError> {
    let open = async {
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
            Ok(Some(BlobResponse::Sending { pieces })) if pieces == [piece] => Ok(recv),
            Ok(Some(BlobResponse::Refused { reason })) => Err(FetchError::Failed(reason)),
            Ok(other) => Err(failed(&format!("unexpected answer {other:?}"))),
            Err(e) => Err(failed(&e)),
        }
    };
    tokio::select! {
        r = open => r,
        () = until_cancelled(&mut cancelled) => Err(FetchError::Cancelled),
    }
}

/// Resolves once the request is cancelled (never if it cannot be).
async fn until_cancelled(cancelled: &mut watch::Receiver<bool>) {
    if cancelled.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Receives a piece into its place in the partial blob. Each chunk is
/// hashed on a blocking thread (pieces in flight are hashed on several
/// cores at once) and written by the partial's writer thread while the next
/// one arrives. Cancelled, it stops between chunks, once the chunks handed
/// over are written.
async fn receive_written(
    mut recv: quinn::RecvStream,
    piece: u32,
    sink: &PartialWriter,
    shared: &Shared,
    mut cancelled: watch::Receiver<bool>,
) -> Result<(u64, Fetched), FetchError> {
    let failed = |e: &dyn std::fmt::Display| FetchError::Failed(e.to_string());
    let mut writer = sink.piece(piece);
    let len = writer.remaining();
    let mut buf = sink.buffer(CHUNK.min(len));
    while writer.remaining() > 0 {
        let want = writer.remaining().min(CHUNK);
        buf.resize(want);
        tokio::select! {
            r = recv.read_exact(&mut buf) => r.map_err(|e| failed(&e))?,
            () = until_cancelled(&mut cancelled) => {
                // Dropping the writer waits for its chunks to be written.
                let _ = tokio::task::spawn_blocking(move || drop(writer)).await;
                return Err(FetchError::Cancelled);
            }
        }
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
    Ok((len as u64, Fetched::Written(verified)))
}

/// Receives an endgame duplicate into memory and verifies it there.
async fn receive_held(
    mut recv: quinn::RecvStream,
    table: &PieceTable,
    piece: u32,
    shared: &Shared,
    mut cancelled: watch::Receiver<bool>,
) -> Result<(u64, Fetched), FetchError> {
    let failed = |e: &dyn std::fmt::Display| FetchError::Failed(e.to_string());
    let (_, len) = table.range(piece);
    let mut bytes = vec![0u8; len as usize];
    let mut done = 0;
    while done < bytes.len() {
        let want = (bytes.len() - done).min(CHUNK);
        tokio::select! {
            r = recv.read_exact(&mut bytes[done..done + want]) => r.map_err(|e| failed(&e))?,
            () = until_cancelled(&mut cancelled) => return Err(FetchError::Cancelled),
        }
        shared.download.take(want).await;
        done += want;
    }
    let expected = table.pieces[piece as usize];
    let (ok, bytes) = tokio::task::spawn_blocking(move || (Digest::of(&bytes) == expected, bytes))
        .await
        .map_err(|e| failed(&e))?;
    if !ok {
        return Err(FetchError::Corrupt);
    }
    Ok((u64::from(len), Fetched::Held(bytes)))
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;
    use std::sync::atomic::AtomicU64;
    use std::sync::Mutex;

    use tokio::sync::Semaphore;

    use seaport_shared::distribution::Bitmap;

    use super::super::options::{DistributionOptions, RateLimit};
    use super::super::store::BlobStore;
    use super::*;

    /// A blob of 4 pieces of 4 bytes.
    const DATA: &[u8] = b"0123456789abcdef";

    fn addr(name: &str) -> String {
        format!("198.18.0.{}:7444", 10 + name.len())
    }

    fn src(name: &str) -> Source {
        Source::Peer {
            node_id: name.into(),
            addr: addr(name),
        }
    }

    fn holding(name: &str, pieces: &[u32]) -> PeerHolding {
        let mut have = Bitmap::new(4);
        for &i in pieces {
            have.set(i);
        }
        PeerHolding {
            node_id: name.into(),
            addr: addr(name),
            have,
        }
    }

    /// A fetcher of one blob that the given peers hold pieces of.
    fn fetcher(dir: &Path, peers: Vec<PeerHolding>) -> (Fetcher, Digest) {
        let opts = DistributionOptions::default();
        let shared = Arc::new(Shared {
            store: BlobStore::open(dir).unwrap(),
            state_dir: dir.to_path_buf(),
            held: Mutex::new(HashMap::new()),
            peers: watch::channel(None).0,
            served: AtomicU64::new(0),
            download: RateLimit::new(0),
            upload: RateLimit::new(0),
            uploads: Semaphore::new(1),
            opts,
        });
        let table = PieceTable::compute(Digest::of(DATA), DATA, 4).unwrap();
        let d = table.digest;
        let mut f = Fetcher::new(shared);
        let partial = f.shared.store.partial(Arc::new(table.clone())).unwrap();
        f.partials.insert(d, partial);
        f.plans.insert(
            d,
            BlobPlan {
                table,
                seed: vec![],
                peers,
            },
        );
        (f, d)
    }

    /// Piece `i` written with the right bytes and verified.
    fn verified(f: &Fetcher, d: &Digest, i: u32) -> VerifiedPiece {
        let p = &f.partials[d];
        let (offset, len) = p.table.range(i);
        let mut w = p.writer().unwrap().piece(i);
        let bytes = &DATA[offset as usize..offset as usize + len as usize];
        w.write(bytes.into()).unwrap();
        w.verify().unwrap().expect("the right bytes verify")
    }

    fn mark(f: &mut Fetcher, d: &Digest, pieces: &[u32]) {
        for &i in pieces {
            let v = verified(f, d, i);
            f.partials.get_mut(d).unwrap().mark(v);
        }
    }

    /// Records a request in flight, as `start` does; the receiver shows
    /// whether it was cancelled.
    fn flying(
        f: &mut Fetcher,
        d: Digest,
        i: u32,
        source: Source,
        kind: Kind,
        since: Instant,
    ) -> watch::Receiver<bool> {
        let (cancel, cancelled) = watch::channel(false);
        *f.per_source.entry(source.clone()).or_default() += 1;
        let flight = Flight {
            source,
            since,
            cancel,
        };
        match kind {
            Kind::Duplicate => f.duplicates.insert((d, i), flight),
            _ => f.in_flight.insert((d, i), flight),
        };
        cancelled
    }

    fn done(d: Digest, i: u32, source: Source, kind: Kind, r: Result<Fetched, FetchError>) -> Done {
        Done {
            digest: d,
            piece: i,
            source,
            kind,
            result: r.map(|f| (4, f)),
        }
    }

    #[test]
    fn endgame_asks_another_peer_for_the_oldest_pieces_in_flight_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, d) = fetcher(
            dir.path(),
            vec![holding("a", &[0, 1, 2, 3]), holding("bb", &[0, 1, 2, 3])],
        );
        mark(&mut f, &d, &[0, 1]);
        let t0 = Instant::now();
        flying(&mut f, d, 3, src("a"), Kind::Primary, t0);
        flying(
            &mut f,
            d,
            2,
            src("a"),
            Kind::Primary,
            t0 + Duration::from_millis(5),
        );
        // Every missing piece is in flight from "a": the one in flight
        // longest is asked of "bb" too, then the other one.
        assert_eq!(f.pick(), Some((d, 3, src("bb"), Kind::Duplicate)));
        flying(&mut f, d, 3, src("bb"), Kind::Duplicate, Instant::now());
        assert_eq!(f.pick(), Some((d, 2, src("bb"), Kind::Duplicate)));
        flying(&mut f, d, 2, src("bb"), Kind::Duplicate, Instant::now());
        // One duplicate per piece.
        assert_eq!(f.pick(), None);
    }

    #[test]
    fn no_duplicate_before_the_endgame_nor_from_the_peer_already_sending() {
        let dir = tempfile::tempdir().unwrap();
        // Piece 3 is missing and nobody has it yet: not the endgame.
        let (mut f, d) = fetcher(
            dir.path(),
            vec![holding("a", &[0, 1, 2]), holding("bb", &[2])],
        );
        mark(&mut f, &d, &[0, 1]);
        flying(&mut f, d, 2, src("a"), Kind::Primary, Instant::now());
        assert_eq!(f.pick(), None);
        // In the endgame, only the peer already sending holds the piece.
        let dir = tempfile::tempdir().unwrap();
        let (mut f, d) = fetcher(
            dir.path(),
            vec![holding("a", &[0, 1, 2, 3]), holding("bb", &[3])],
        );
        mark(&mut f, &d, &[0, 1, 3]);
        flying(&mut f, d, 2, src("a"), Kind::Primary, Instant::now());
        assert_eq!(f.pick(), None);
    }

    #[tokio::test]
    async fn a_duplicate_verified_first_is_written_once_the_first_request_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, d) = fetcher(
            dir.path(),
            vec![holding("a", &[0, 1, 2, 3]), holding("bb", &[0, 1, 2, 3])],
        );
        mark(&mut f, &d, &[0, 1, 3]);
        let primary = flying(&mut f, d, 2, src("a"), Kind::Primary, Instant::now());
        flying(&mut f, d, 2, src("bb"), Kind::Duplicate, Instant::now());
        let mut tasks = JoinSet::new();
        let held = Fetched::Held(DATA[8..12].to_vec());
        assert!(!f.finish_piece(&mut tasks, done(d, 2, src("bb"), Kind::Duplicate, Ok(held))));
        // The first request is told to stop; nothing is written while it
        // may still write.
        assert!(*primary.borrow());
        assert!(tasks.is_empty());
        assert!(!f.partials[&d].have.get(2));
        // Once it stopped, the duplicate's bytes are written and verified.
        assert!(!f.finish_piece(
            &mut tasks,
            done(d, 2, src("a"), Kind::Primary, Err(FetchError::Cancelled))
        ));
        let written = tasks.join_next().await.unwrap().unwrap();
        assert_eq!(written.kind, Kind::Held);
        assert!(f.finish_piece(&mut tasks, written), "the blob completes");
        assert_eq!(fs::read(f.shared.store.blob_path(&d)).unwrap(), DATA);
    }

    #[tokio::test]
    async fn a_duplicate_arriving_after_the_piece_verified_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, d) = fetcher(
            dir.path(),
            vec![holding("a", &[0, 1, 2, 3]), holding("bb", &[0, 1, 2, 3])],
        );
        mark(&mut f, &d, &[0, 1]);
        flying(&mut f, d, 2, src("a"), Kind::Primary, Instant::now());
        let duplicate = flying(&mut f, d, 2, src("bb"), Kind::Duplicate, Instant::now());
        let mut tasks = JoinSet::new();
        let v = verified(&f, &d, 2);
        f.finish_piece(
            &mut tasks,
            done(d, 2, src("a"), Kind::Primary, Ok(Fetched::Written(v))),
        );
        assert!(*duplicate.borrow(), "the duplicate is cancelled");
        // It had already arrived (its bytes wrong here, to show they are
        // not written over the verified piece).
        let late = Fetched::Held(b"XXXX".to_vec());
        f.finish_piece(&mut tasks, done(d, 2, src("bb"), Kind::Duplicate, Ok(late)));
        while let Some(t) = tasks.join_next().await {
            f.finish_piece(&mut tasks, t.unwrap());
        }
        assert!(f.partials[&d].have.get(2));
        let on_disk = fs::read(f.partials[&d].part_path()).unwrap();
        assert_eq!(&on_disk[8..12], &DATA[8..12]);
        assert!(f.in_flight.is_empty() && f.duplicates.is_empty() && f.held_back.is_empty());
    }
}
