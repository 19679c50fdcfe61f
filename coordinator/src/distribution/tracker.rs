//! Who holds which pieces, and who may fetch what from the coordinator.
//!
//! No I/O and no clock of its own (callers pass `now`), so the seeding policy
//! is tested deterministically.
//!
//! The policy keeps the coordinator's egress near one copy of each blob: a
//! piece is granted to (sent by the coordinator to) one agent at a time, and
//! only while no usable peer holds it. Grants are a small window per agent
//! ([`SEED_WINDOW`] pieces over all its blobs), refilled as the agent
//! reports pieces it received: so different agents get disjoint pieces, an
//! agent that receives faster gets more of them, and every agent has
//! something new to offer its peers all along. A grant lapses after
//! [`GRANT_TTL`] or when its agent goes quiet, so a stalled or cut agent does
//! not hold pieces hostage.
//!
//! Everything here is keyed by what nodes report, so every table is bounded
//! per node: bitmaps only for blobs of images assigned to the node (the
//! caller filters them), bad-peer reports only about nodes the tracker
//! knows (that synced themselves) and at most [`MAX_BAD_PEERS`] of them,
//! byte counters for at most [`MAX_SOURCES`] sources. A name no node has
//! synced under never gets an entry, whoever reports it.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use seaport_shared::digest::Digest;
use seaport_shared::distribution::{BadPeerReason, Bitmap, PeerHolding};

/// Pieces the coordinator grants one agent at a time (over all blobs):
/// what the agent fetches at once from the coordinator, and a few more so it
/// never waits for its next sync.
pub const SEED_WINDOW: usize = 4;
/// A grant not turned into a held piece within this time lapses.
pub const GRANT_TTL: Duration = Duration::from_secs(20);
/// An agent that has not synced for this long is not offered as a peer.
pub const QUIET_AFTER: Duration = Duration::from_secs(8);
/// How long an unreachable peer is avoided by the agent that reported it.
pub const UNREACHABLE_FOR: Duration = Duration::from_secs(15);
/// Bad-peer reports kept per node.
pub const MAX_BAD_PEERS: usize = 256;
/// Sources of received bytes kept per node.
pub const MAX_SOURCES: usize = 64;

/// The name of the coordinator among the sources of received bytes.
pub const COORDINATOR_SOURCE: &str = "coordinator";

#[derive(Debug, Clone, Copy)]
struct Grant {
    node: usize,
    at: Instant,
}

#[derive(Debug, Default)]
struct BlobState {
    holders: HashMap<usize, Bitmap>,
    grants: HashMap<u32, Grant>,
}

#[derive(Debug)]
struct NodeState {
    id: String,
    peer_addr: Option<String>,
    last_sync: Option<Instant>,
    /// Peers this node reported, with why and when.
    bad: HashMap<usize, (BadPeerReason, Instant)>,
    received: Vec<(String, u64)>,
    served: u64,
    from_coordinator: u64,
}

/// What one sync tells the tracker about a node.
#[derive(Debug, Clone, Default)]
pub struct NodeReport {
    /// `IP:PORT` of its peer server, if it serves.
    pub peer_addr: Option<String>,
    /// Bitmap of every blob it holds or fetches.
    pub holdings: Vec<(Digest, Bitmap)>,
    /// Peers it reports, and why.
    pub bad: Vec<(String, BadPeerReason)>,
    /// Bytes received per source.
    pub received: Vec<(String, u64)>,
    /// Bytes it served to peers.
    pub served: u64,
}

/// How much the tracker holds: what stays bounded however nodes report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackerSize {
    /// Nodes known (each synced at least once).
    pub nodes: usize,
    /// Blobs with holders or grants.
    pub blobs: usize,
    /// Bitmaps held, over all blobs.
    pub holdings: usize,
    /// Grants outstanding, over all blobs.
    pub grants: usize,
    /// Bad-peer reports kept, over all nodes.
    pub bad_peers: usize,
    /// Received-byte counters kept, over all nodes.
    pub sources: usize,
}

/// The coordinator's in-memory view of transfers. Rebuilt from agents'
/// reports after a restart (they send their whole bitmaps on every sync).
#[derive(Debug, Default)]
pub struct Tracker {
    nodes: Vec<NodeState>,
    index: HashMap<String, usize>,
    blobs: HashMap<Digest, BlobState>,
}

impl Tracker {
    fn node(&mut self, id: &str) -> usize {
        if let Some(&i) = self.index.get(id) {
            return i;
        }
        self.nodes.push(NodeState {
            id: id.to_string(),
            peer_addr: None,
            last_sync: None,
            bad: HashMap::new(),
            received: Vec::new(),
            served: 0,
            from_coordinator: 0,
        });
        let i = self.nodes.len() - 1;
        self.index.insert(id.to_string(), i);
        i
    }

    /// Records a node's report.
    pub fn report(&mut self, node_id: &str, report: NodeReport, now: Instant) {
        let NodeReport {
            peer_addr,
            holdings,
            bad,
            received,
            served,
        } = report;
        let n = self.node(node_id);
        let received: Vec<(String, u64)> = received
            .into_iter()
            .filter(|(src, _)| src == COORDINATOR_SOURCE || self.index.contains_key(src))
            .take(MAX_SOURCES)
            .collect();
        {
            let st = &mut self.nodes[n];
            st.peer_addr = peer_addr;
            st.last_sync = Some(now);
            st.received = received;
            st.served = served;
        }
        for (peer, reason) in bad {
            // Only nodes that synced themselves: a made-up name gets nothing.
            let Some(&p) = self.index.get(&peer) else {
                continue;
            };
            if p == n {
                continue;
            }
            let bad = &mut self.nodes[n].bad;
            if bad.len() >= MAX_BAD_PEERS && !bad.contains_key(&p) {
                continue;
            }
            let entry = bad.entry(p).or_insert((reason, now));
            // Corrupt sticks; an unreachable report refreshes its time.
            if entry.0 != BadPeerReason::Corrupt {
                *entry = (reason, now);
            }
        }
        // The report is the node's whole holding: blobs it no longer
        // reports (collected, or a wiped store) are forgotten.
        let reported: HashSet<Digest> = holdings.iter().map(|(d, _)| *d).collect();
        for (digest, blob) in self.blobs.iter_mut() {
            if !reported.contains(digest) {
                blob.holders.remove(&n);
            }
        }
        for (digest, have) in holdings {
            let blob = self.blobs.entry(digest).or_default();
            blob.grants
                .retain(|piece, g| !(g.node == n && have.get(*piece)));
            blob.holders.insert(n, have);
        }
        self.blobs
            .retain(|_, b| !b.holders.is_empty() || !b.grants.is_empty());
    }

    /// How much the tracker holds.
    pub fn size(&self) -> TrackerSize {
        TrackerSize {
            nodes: self.nodes.len(),
            blobs: self.blobs.len(),
            holdings: self.blobs.values().map(|b| b.holders.len()).sum(),
            grants: self.blobs.values().map(|b| b.grants.len()).sum(),
            bad_peers: self.nodes.iter().map(|n| n.bad.len()).sum(),
            sources: self.nodes.iter().map(|n| n.received.len()).sum(),
        }
    }

    /// Forgets a node's holdings (revoked, or its session ended for good).
    pub fn forget(&mut self, node_id: &str) {
        if let Some(&n) = self.index.get(node_id) {
            for blob in self.blobs.values_mut() {
                blob.holders.remove(&n);
                blob.grants.retain(|_, g| g.node != n);
            }
            self.nodes[n].last_sync = None;
        }
    }

    fn active(&self, n: usize, now: Instant) -> bool {
        self.nodes[n]
            .last_sync
            .is_some_and(|t| now.saturating_duration_since(t) < QUIET_AFTER)
    }

    fn usable_peer(
        &self,
        me: usize,
        peer: usize,
        now: Instant,
        live: &dyn Fn(&str) -> bool,
    ) -> bool {
        if peer == me || !self.active(peer, now) || self.nodes[peer].peer_addr.is_none() {
            return false;
        }
        if !live(&self.nodes[peer].id) {
            return false;
        }
        match self.nodes[me].bad.get(&peer) {
            Some((BadPeerReason::Corrupt, _)) => false,
            Some((BadPeerReason::Unreachable, at)) => {
                now.saturating_duration_since(*at) >= UNREACHABLE_FOR
            }
            None => true,
        }
    }

    /// What `node_id` should fetch of `digest` now: the coordinator's grants
    /// to it and the peers holding pieces it lacks. `live` says whether a
    /// node has a session now (revoked nodes have none).
    pub fn plan(
        &mut self,
        node_id: &str,
        digest: &Digest,
        pieces: u32,
        now: Instant,
        live: &dyn Fn(&str) -> bool,
    ) -> (Vec<u32>, Vec<PeerHolding>) {
        let me = self.node(node_id);
        let mine = self
            .blobs
            .get(digest)
            .and_then(|b| b.holders.get(&me))
            .cloned()
            .unwrap_or_else(|| Bitmap::new(pieces));
        let Some(blob) = self.blobs.get(digest) else {
            self.blobs.insert(*digest, BlobState::default());
            return self.plan(node_id, digest, pieces, now, live);
        };
        let peers: Vec<usize> = blob
            .holders
            .iter()
            .filter(|(&p, have)| {
                self.usable_peer(me, p, now, live) && mine.missing().any(|i| have.get(i))
            })
            .map(|(&p, _)| p)
            .collect();
        let from_peers = |i: u32| peers.iter().any(|p| blob.holders[p].get(i));
        // Lapse grants of quiet nodes, old grants, and grants for pieces
        // someone usable now holds.
        let lapsed: Vec<u32> = blob
            .grants
            .iter()
            .filter(|(_, g)| {
                now.saturating_duration_since(g.at) >= GRANT_TTL || !self.active(g.node, now)
            })
            .map(|(&i, _)| i)
            .collect();
        let mut granted: HashSet<u32> = blob
            .grants
            .iter()
            .filter(|(i, g)| g.node == me && !mine.get(**i) && !lapsed.contains(i))
            .map(|(&i, _)| i)
            .collect();
        // The window is over all of the agent's blobs.
        let elsewhere: usize = self
            .blobs
            .iter()
            .filter(|(d, _)| *d != digest)
            .map(|(_, b)| {
                let have = b.holders.get(&me);
                b.grants
                    .iter()
                    .filter(|(i, g)| {
                        g.node == me
                            && !have.is_some_and(|h| h.get(**i))
                            && now.saturating_duration_since(g.at) < GRANT_TTL
                            && self.active(g.node, now)
                    })
                    .count()
            })
            .sum();
        let taken: HashSet<u32> = blob
            .grants
            .iter()
            .filter(|(i, g)| g.node != me && !lapsed.contains(i))
            .map(|(&i, _)| i)
            .collect();
        let mut new = Vec::new();
        for i in mine.missing() {
            if granted.len() + elsewhere >= SEED_WINDOW {
                break;
            }
            if granted.contains(&i) || taken.contains(&i) || from_peers(i) {
                continue;
            }
            granted.insert(i);
            new.push(i);
        }
        let holdings: Vec<PeerHolding> = peers
            .iter()
            .map(|&p| PeerHolding {
                node_id: self.nodes[p].id.clone(),
                addr: self.nodes[p].peer_addr.clone().unwrap_or_default(),
                have: blob.holders[&p].clone(),
            })
            .collect();
        let blob = self.blobs.get_mut(digest).expect("present");
        for i in lapsed {
            blob.grants.remove(&i);
        }
        // Grants already held keep their time: they lapse after GRANT_TTL.
        for &i in &new {
            blob.grants.insert(i, Grant { node: me, at: now });
        }
        let mut seed: Vec<u32> = granted.into_iter().collect();
        seed.sort_unstable();
        (seed, holdings)
    }

    /// Whether the coordinator may send piece `i` of `digest` to `node_id`.
    pub fn may_send(&self, node_id: &str, digest: &Digest, i: u32) -> bool {
        let Some(&n) = self.index.get(node_id) else {
            return false;
        };
        self.blobs
            .get(digest)
            .and_then(|b| b.grants.get(&i))
            .is_some_and(|g| g.node == n)
    }

    /// Counts bytes the coordinator sent to a node.
    pub fn sent(&mut self, node_id: &str, bytes: u64) {
        let n = self.node(node_id);
        self.nodes[n].from_coordinator += bytes;
    }

    /// What a node reported of one blob: its bitmap.
    pub fn holding(&self, node_id: &str, digest: &Digest) -> Option<&Bitmap> {
        let n = *self.index.get(node_id)?;
        self.blobs.get(digest)?.holders.get(&n)
    }

    /// Whether a node synced recently.
    pub fn is_active(&self, node_id: &str, now: Instant) -> bool {
        self.index
            .get(node_id)
            .is_some_and(|&n| self.active(n, now))
    }

    /// Peers a node reported as corrupt.
    pub fn corrupt_peers(&self, node_id: &str) -> Vec<String> {
        let Some(&n) = self.index.get(node_id) else {
            return Vec::new();
        };
        let mut out: Vec<String> = self.nodes[n]
            .bad
            .iter()
            .filter(|(_, (r, _))| *r == BadPeerReason::Corrupt)
            .map(|(&p, _)| self.nodes[p].id.clone())
            .collect();
        out.sort();
        out
    }

    /// (received per source, served to peers, sent by the coordinator).
    pub fn counters(&self, node_id: &str) -> (Vec<(String, u64)>, u64, u64) {
        match self.index.get(node_id) {
            Some(&n) => {
                let st = &self.nodes[n];
                (st.received.clone(), st.served, st.from_coordinator)
            }
            None => (Vec::new(), 0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> Digest {
        Digest::of(b"blob")
    }

    fn all_live(_: &str) -> bool {
        true
    }

    fn report(t: &mut Tracker, node: &str, have: &Bitmap, now: Instant) {
        let report = NodeReport {
            peer_addr: Some(format!("{node}:7444")),
            holdings: vec![(d(), have.clone())],
            ..Default::default()
        };
        t.report(node, report, now);
    }

    #[test]
    fn agents_get_disjoint_grants_then_trade() {
        let now = Instant::now();
        let mut t = Tracker::default();
        let empty = Bitmap::new(20);
        report(&mut t, "a", &empty, now);
        report(&mut t, "b", &empty, now);
        let (seed_a, peers_a) = t.plan("a", &d(), 20, now, &all_live);
        let (seed_b, _) = t.plan("b", &d(), 20, now, &all_live);
        assert_eq!(seed_a.len(), SEED_WINDOW);
        assert!(peers_a.is_empty());
        assert!(
            seed_a.iter().all(|i| !seed_b.contains(i)),
            "{seed_a:?} {seed_b:?}"
        );
        assert!(t.may_send("a", &d(), seed_a[0]) && !t.may_send("b", &d(), seed_a[0]));

        // a got its pieces: b is pointed at a for them, not granted them.
        let mut have_a = Bitmap::new(20);
        for &i in &seed_a {
            have_a.set(i);
        }
        report(&mut t, "a", &have_a, now);
        let (seed_b2, peers_b) = t.plan("b", &d(), 20, now, &all_live);
        assert_eq!(peers_b.len(), 1);
        assert_eq!(peers_b[0].node_id, "a");
        assert!(seed_b2.iter().all(|i| !have_a.get(*i)));
    }

    #[test]
    fn every_piece_is_granted_once_while_agents_keep_up() {
        let now = Instant::now();
        let mut t = Tracker::default();
        let n = 40;
        let mut haves: Vec<Bitmap> = (0..4).map(|_| Bitmap::new(n)).collect();
        let names = ["a", "b", "c", "d"];
        let mut granted_total = 0;
        for _round in 0..50 {
            for (k, name) in names.iter().enumerate() {
                report(&mut t, name, &haves[k], now);
                let (seed, peers) = t.plan(name, &d(), n, now, &all_live);
                granted_total += seed.iter().filter(|i| !haves[k].get(**i)).count();
                for i in seed {
                    haves[k].set(i);
                }
                for p in peers {
                    for i in 0..n {
                        if p.have.get(i) {
                            haves[k].set(i);
                        }
                    }
                }
            }
        }
        assert!(haves.iter().all(|h| h.is_full()));
        assert_eq!(
            granted_total, n as usize,
            "each piece sent by the coordinator once"
        );
    }

    #[test]
    fn the_grant_window_spans_every_blob_of_an_agent() {
        let now = Instant::now();
        let mut t = Tracker::default();
        let other = Digest::of(b"other blob");
        let report = NodeReport {
            peer_addr: Some("a:7444".into()),
            holdings: vec![(d(), Bitmap::new(20)), (other, Bitmap::new(20))],
            ..Default::default()
        };
        t.report("a", report.clone(), now);
        let (first, _) = t.plan("a", &d(), 20, now, &all_live);
        let (second, _) = t.plan("a", &other, 20, now, &all_live);
        assert_eq!(first.len(), SEED_WINDOW);
        assert!(second.is_empty(), "{second:?}");
        // Two granted pieces arrive: two more are granted, wherever.
        let mut have = Bitmap::new(20);
        have.set(first[0]);
        have.set(first[1]);
        let report = NodeReport {
            holdings: vec![(d(), have), (other, Bitmap::new(20))],
            ..report
        };
        t.report("a", report, now);
        let (first, _) = t.plan("a", &d(), 20, now, &all_live);
        let (second, _) = t.plan("a", &other, 20, now, &all_live);
        assert_eq!(first.len() + second.len(), SEED_WINDOW);
    }

    #[test]
    fn a_corrupt_peer_is_not_offered_and_its_pieces_are_granted() {
        let now = Instant::now();
        let mut t = Tracker::default();
        report(&mut t, "a", &Bitmap::full(4), now);
        report(&mut t, "b", &Bitmap::new(4), now);
        let (seed, peers) = t.plan("b", &d(), 4, now, &all_live);
        assert!(seed.is_empty());
        assert_eq!(peers.len(), 1);
        let report = NodeReport {
            peer_addr: Some("b:7444".into()),
            holdings: vec![(d(), Bitmap::new(4))],
            bad: vec![("a".into(), BadPeerReason::Corrupt)],
            ..Default::default()
        };
        t.report("b", report, now);
        let (seed, peers) = t.plan("b", &d(), 4, now, &all_live);
        assert!(peers.is_empty());
        assert_eq!(seed, vec![0, 1, 2, 3]);
        assert_eq!(t.corrupt_peers("b"), vec!["a".to_string()]);
    }

    #[test]
    fn a_node_that_lost_its_blobs_is_no_longer_counted_as_holding_them() {
        let now = Instant::now();
        let mut t = Tracker::default();
        report(&mut t, "a", &Bitmap::full(4), now);
        assert!(t.holding("a", &d()).is_some());
        t.report("a", NodeReport::default(), now);
        assert!(t.holding("a", &d()).is_none());
        report(&mut t, "b", &Bitmap::new(4), now);
        let (seed, peers) = t.plan("b", &d(), 4, now, &all_live);
        assert!(peers.is_empty());
        assert_eq!(seed.len(), 4);
    }

    #[test]
    fn grants_of_a_quiet_agent_lapse() {
        let now = Instant::now();
        let mut t = Tracker::default();
        report(&mut t, "a", &Bitmap::new(4), now);
        let (seed_a, _) = t.plan("a", &d(), 4, now, &all_live);
        assert_eq!(seed_a.len(), 4);
        let later = now + QUIET_AFTER + Duration::from_secs(1);
        report(&mut t, "b", &Bitmap::new(4), later);
        let (seed_b, _) = t.plan("b", &d(), 4, later, &all_live);
        assert_eq!(seed_b.len(), 4);
        // An offline (no session) holder is not offered as a peer.
        report(&mut t, "a", &Bitmap::full(4), later);
        let (_, peers) = t.plan("b", &d(), 4, later, &|n: &str| n != "a");
        assert!(peers.is_empty());
    }

    #[test]
    fn reports_about_unknown_names_add_nothing() {
        let now = Instant::now();
        let mut t = Tracker::default();
        report(&mut t, "a", &Bitmap::new(4), now);
        report(&mut t, "b", &Bitmap::new(4), now);
        let before = t.size();
        let flood = NodeReport {
            peer_addr: Some("b:7444".into()),
            holdings: vec![(d(), Bitmap::new(4))],
            bad: (0..1000)
                .map(|i| (format!("nobody-{i}"), BadPeerReason::Corrupt))
                .chain([
                    ("a".to_string(), BadPeerReason::Corrupt),
                    ("b".to_string(), BadPeerReason::Corrupt),
                ])
                .collect(),
            received: (0..1000)
                .map(|i| (format!("nobody-{i}"), 1))
                .chain([("coordinator".to_string(), 5)])
                .collect(),
            ..Default::default()
        };
        t.report("b", flood, now);
        let after = t.size();
        assert_eq!(after.nodes, before.nodes);
        assert_eq!(after.bad_peers, 1, "only the known peer a, not b itself");
        assert_eq!(after.sources, 1);
        assert_eq!(t.corrupt_peers("b"), vec!["a".to_string()]);
    }
}
