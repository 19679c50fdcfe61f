//! What every connection task of the daemon shares, and the node
//! inventory as the CLI sees it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use seaport_shared::clock::now_unix;
use seaport_shared::wire::{NodeInfo, NodeStatus, OFFLINE_AFTER};

use super::limits::SourceLimiter;
use super::live::{self, LiveSessions};
use crate::ca::Ca;
use crate::distribution::Distribution;
use crate::operations::Operations;
use crate::records::NodeRecord;
use crate::state::{StateError, StateStore};

/// State shared by every connection task.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) ca: Ca,
    pub(crate) live: Arc<LiveSessions>,
    pub(crate) node_cert_ttl: Duration,
    pub(crate) anonymous: Semaphore,
    /// Per-source limits: handshakes in progress, unauthenticated
    /// connections.
    pub(crate) handshakes: Arc<SourceLimiter>,
    pub(crate) anonymous_sources: Arc<SourceLimiter>,
    /// Open admin connections, to close when their certificate is revoked.
    pub(crate) admins: live::AdminSessions,
    /// Root of the coordinator's files (`--root`).
    pub(crate) root: PathBuf,
    pub(crate) dist: Arc<Distribution>,
    pub(crate) ops: Arc<Operations>,
    /// The image signature policy (`crate::trust`).
    pub(crate) trust: seaport_rootfs::signing::Policy,
    /// Whether this coordinator leads its site now (always, alone on its
    /// state; `crate::state::leader`).
    pub(crate) leadership: tokio::sync::watch::Receiver<crate::state::Leadership>,
}

impl Shared {
    /// `None` when this coordinator leads; else who does, if known.
    pub(crate) fn follows(&self) -> Option<Option<crate::state::LeaderInfo>> {
        match &*self.leadership.borrow() {
            crate::state::Leadership::Leader => None,
            crate::state::Leadership::Follower { leader } => Some(leader.clone()),
        }
    }
}

/// The inventory as the CLI shows it, statuses computed now.
pub(crate) fn node_infos(shared: &Shared) -> Result<Vec<NodeInfo>, StateError> {
    let now = now_unix();
    let mut out: Vec<NodeInfo> = shared
        .store
        .nodes()?
        .into_iter()
        .map(|rec| {
            let live = shared.live.get(&rec.node_id);
            node_info(rec, live, now)
        })
        .collect();
    out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(out)
}

/// A node's listing from its record and, if connected, its live session.
pub fn node_info(mut rec: NodeRecord, live: Option<live::LiveView>, now: i64) -> NodeInfo {
    let mut online = false;
    if let Some(live) = &live {
        if let Some(facts) = &live.facts {
            rec.apply_facts(facts);
        }
        if live.last_seen.is_some() {
            rec.last_seen = live.last_seen;
        }
        if live.cert_expires > rec.cert_expires {
            rec.cert_expires = live.cert_expires;
        }
        online = live
            .last_seen
            .is_some_and(|t| now - t <= OFFLINE_AFTER.as_secs() as i64);
    }
    let status = if rec.revoked {
        NodeStatus::Revoked
    } else if rec.cert_expires <= now {
        NodeStatus::Expired
    } else if online {
        NodeStatus::Online
    } else {
        NodeStatus::Offline
    };
    let addresses = rec.addresses();
    NodeInfo {
        node_id: rec.node_id,
        hostname: rec.hostname,
        ips: rec.ips,
        addresses,
        connects_from: rec.observed_ip,
        status,
        last_seen: rec.last_seen,
        agent_version: rec.agent_version,
        cert_expires: rec.cert_expires,
        enrolled_at: rec.enrolled_at,
        os: rec.os,
        kernel: rec.kernel,
        arch: rec.arch,
        cpus: rec.cpus,
        memory_total: rec.memory_total,
    }
}
