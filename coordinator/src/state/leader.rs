//! Leadership among the coordinators of one site on etcd: exactly one of
//! them drives operations at a time.
//!
//! Each coordinator holds an etcd lease of [`DEFAULT_TTL`] (or the TTL it
//! was given) and campaigns with one transaction: "if the leader key does
//! not exist, create it, attached to my lease, naming me". The one whose
//! transaction succeeds leads; the key's create revision is its term. The
//! others read the key (who leads, at which address) and campaign again
//! every [`POLL`]. A leader renews its lease every quarter of the TTL;
//! when it cannot confirm a renewal for three quarters of the TTL (etcd
//! unreachable, the process paused), or the key is no longer its own, it
//! steps down at once. When a leader dies its lease expires within the
//! TTL, the key goes with it, and another coordinator wins its next
//! campaign: a new leader within the TTL plus [`POLL`].
//!
//! The fence: every write that drives operations (cluster records,
//! distribution assignments) is guarded in its etcd transaction by "the
//! leader key's create revision is still my term" (`Fence` in the store).
//! A leader that was paused past its lease and wakes up still believing it
//! leads has its writes refused by etcd itself: the key is gone or belongs
//! to a newer term.

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::warn;

use super::error::StateError;
use super::etcd::EtcdConfig;

/// The lease TTL unless told otherwise (`coordinator serve --lease-ttl`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// How often a coordinator that does not lead campaigns again.
pub const POLL: Duration = Duration::from_secs(1);
/// The leader key, under the site's prefix.
pub(crate) const LEADER_KEY: &str = "leader";

/// Who leads: written in the leader key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// A name of the coordinator for messages (its host name and pid).
    pub id: String,
    /// The address agents and the CLI reach it at (`HOST:PORT`).
    pub address: String,
}

/// This coordinator's part, as the election sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// It drives operations.
    Leader,
    /// Another coordinator leads (`None`: none known, an election is on).
    Follower { leader: Option<LeaderInfo> },
}

/// What a store's fenced writes are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fence {
    /// Not fenced: a store with no election (the CLI, one coordinator).
    Open,
    /// A coordinator that does not lead: fenced writes are refused here.
    Follower,
    /// A leader of the term that began at this revision: its fenced
    /// writes carry "the leader key's create revision is still this".
    Leader(i64),
}

/// A running campaign: the leadership as it changes, until dropped (a
/// leader then gives its lease back, so another leads at once).
pub struct Election {
    state: watch::Receiver<Leadership>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Election({:?})", *self.state.borrow())
    }
}

impl Election {
    /// The leadership now and its changes.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.state.clone()
    }

    /// Leadership for a coordinator alone on its state: always the leader.
    pub fn alone() -> watch::Receiver<Leadership> {
        watch::channel(Leadership::Leader).1
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Where an election keeps the fence it shares with its store.
pub(crate) type SharedFence = std::sync::Arc<std::sync::Mutex<Fence>>;

/// Starts campaigning on a thread of its own (its own runtime and etcd
/// connection, so that a busy store never delays a lease renewal).
pub(crate) fn start(
    config: &EtcdConfig,
    prefix: &str,
    me: LeaderInfo,
    ttl: Duration,
    fence: SharedFence,
) -> Result<Election, StateError> {
    let (state_tx, state) = watch::channel(Leadership::Follower { leader: None });
    let (stop, stop_rx) = watch::channel(false);
    let campaign = Campaign {
        endpoints: config.endpoints.clone(),
        opts: config.options()?,
        at: 0,
        client: None,
        key: format!("{prefix}{LEADER_KEY}"),
        me: serde_json::to_vec(&me).expect("leader info serializes"),
        ttl: ttl.max(Duration::from_secs(2)),
        fence,
        state: state_tx,
        stop: stop_rx,
    };
    std::thread::Builder::new()
        .name("seaport-leader".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return warn!(error = %e, "no runtime for the election"),
            };
            rt.block_on(campaign.run());
        })
        .map_err(|source| StateError::EtcdFile {
            path: "the election's thread".into(),
            source,
        })?;
    Ok(Election { state, stop })
}

struct Campaign {
    /// etcd's members, each tried in turn when the one in use fails.
    endpoints: Vec<String>,
    opts: etcd_client::ConnectOptions,
    at: usize,
    client: Option<Client>,
    key: String,
    me: Vec<u8>,
    ttl: Duration,
    fence: SharedFence,
    state: watch::Sender<Leadership>,
    stop: watch::Receiver<bool>,
}

/// How a term ended.
enum TermEnd {
    Stopped,
    Lost(String),
}

impl Campaign {
    fn set(&self, fence: Fence, leadership: Leadership) {
        *self.fence.lock().expect("fence lock") = fence;
        self.state.send_if_modified(|now| {
            let changed = *now != leadership;
            *now = leadership;
            changed
        });
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Waits `d`; false when asked to stop meanwhile.
    async fn wait(&mut self, d: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => !self.stopped(),
            _ = self.stop.changed() => false,
        }
    }

    /// One request, bounded so that a step-down is never late (an eighth
    /// of the TTL: a few tries on other members fit in one renewal).
    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, String> {
        let limit = self.ttl / 8;
        match tokio::time::timeout(limit, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    }

    /// A client of the member in use, connected on first use.
    async fn client(&mut self) -> Result<Client, String> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let Some(at) = self.member() else {
            return Err("no etcd endpoint".into());
        };
        let opts = self.opts.clone();
        let c = self.bounded(Client::connect([at], Some(opts))).await?;
        self.client = Some(c.clone());
        Ok(c)
    }

    fn member(&self) -> Option<String> {
        self.endpoints
            .get(self.at % self.endpoints.len().max(1))
            .cloned()
    }

    /// The member in use failed: the next request goes to the next one
    /// (one member down must not cost the leader its lease).
    fn next_member(&mut self, why: &str) {
        warn!(
            member = self.member().unwrap_or_default(),
            error = %why,
            "election: etcd member did not answer; trying the next"
        );
        self.client = None;
        self.at += 1;
    }

    async fn run(mut self) {
        while !self.stopped() {
            match self.term().await {
                TermEnd::Stopped => break,
                TermEnd::Lost(why) => {
                    warn!("{why}");
                    self.set(Fence::Follower, Leadership::Follower { leader: None });
                    if !self.wait(POLL).await {
                        break;
                    }
                }
            }
        }
        self.set(Fence::Follower, Leadership::Follower { leader: None });
    }

    /// Gives the lease back (best effort).
    async fn revoke(&mut self, lease: i64) {
        if let Ok(mut c) = self.client().await {
            let _ = self.bounded(c.lease_revoke(lease)).await;
        }
    }

    /// A lease, from the first member that answers.
    async fn grant(&mut self) -> Result<i64, String> {
        let secs = self.ttl.as_secs().max(1) as i64;
        let mut last = String::new();
        for _ in 0..self.endpoints.len() {
            let got = match self.client().await {
                Ok(mut c) => self.bounded(c.lease_grant(secs, None)).await,
                Err(e) => Err(e),
            };
            match got {
                Ok(r) => return Ok(r.id()),
                Err(e) => {
                    self.next_member(&e);
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// One campaign transaction: `Ok(Ok(term))` when this coordinator now
    /// leads, `Ok(Err(leader))` when another does.
    async fn campaign(&mut self, lease: i64) -> Result<Result<i64, Option<LeaderInfo>>, String> {
        let mut c = self.client().await?;
        self.bounded(c.lease_keep_alive(lease)).await?;
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(
                self.key.clone(),
                self.me.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(self.key.clone(), None)]);
        let r = self.bounded(c.txn(txn)).await?;
        if r.succeeded() {
            return Ok(Ok(r.header().map_or(0, |h| h.revision())));
        }
        Ok(Err(r.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .and_then(|kv| serde_json::from_slice(kv.value()).ok()),
            _ => None,
        })))
    }

    /// One renewal of a leader: `Ok(true)` renewed and the key is still
    /// this term's, `Ok(false)` the key is another's or gone.
    async fn renew(&mut self, lease: i64, term: i64) -> Result<bool, String> {
        let mut c = self.client().await?;
        self.bounded(c.lease_keep_alive(lease)).await?;
        let g = self.bounded(c.get(self.key.clone(), None)).await?;
        Ok(g.kvs().first().map(|kv| kv.create_revision()) == Some(term))
    }

    /// Campaigns with a new lease until it leads, then leads until it
    /// cannot confirm its lease (or is stopped, when it gives it back).
    async fn term(&mut self) -> TermEnd {
        let lease = match self.grant().await {
            Ok(l) => l,
            Err(e) => return TermEnd::Lost(format!("election: no lease from etcd: {e}")),
        };
        // Follower: campaign every POLL, keeping the lease alive.
        let mut waiting_since = Instant::now();
        let (revision, mut confirmed) = loop {
            let sent = Instant::now();
            match self.campaign(lease).await {
                Ok(Ok(term)) => break (term, sent),
                Ok(Err(leader)) => {
                    waiting_since = sent;
                    self.set(Fence::Follower, Leadership::Follower { leader });
                }
                Err(e) if e.contains("lease not found") => {
                    return TermEnd::Lost(format!("election: lease lost while waiting: {e}"));
                }
                Err(e) => {
                    self.next_member(&e);
                    if waiting_since.elapsed() >= self.ttl {
                        return TermEnd::Lost(format!("election: etcd unreachable: {e}"));
                    }
                    if !self.wait(POLL / 5).await {
                        return TermEnd::Stopped;
                    }
                    continue;
                }
            }
            if !self.wait(POLL).await {
                self.revoke(lease).await;
                return TermEnd::Stopped;
            }
        };
        self.set(Fence::Leader(revision), Leadership::Leader);
        // A change of leader is worth an operator's eye at the default level.
        warn!(term = revision, ttl = ?self.ttl, "leading the site's coordinators");
        let tick = self.ttl / 4;
        loop {
            if !self.wait(tick).await {
                // Stopping: fence first, then give the lease back so that
                // another coordinator leads at once.
                self.set(Fence::Follower, Leadership::Follower { leader: None });
                self.revoke(lease).await;
                return TermEnd::Stopped;
            }
            // Each member in turn until one answers, within the tick.
            for _ in 0..self.endpoints.len() {
                let sent = Instant::now();
                match self.renew(lease, revision).await {
                    Ok(true) => {
                        confirmed = sent;
                        break;
                    }
                    Ok(false) => {
                        return TermEnd::Lost(format!(
                            "stepped down: the leader key is no longer this coordinator's (term {revision})"
                        ));
                    }
                    Err(e) if e.contains("lease not found") => {
                        return TermEnd::Lost(format!("stepped down: the lease expired ({e})"));
                    }
                    Err(e) => self.next_member(&e),
                }
            }
            if confirmed.elapsed() >= self.ttl * 3 / 4 {
                return TermEnd::Lost(format!(
                    "stepped down: the lease was not confirmed for {:?} of its {:?}",
                    confirmed.elapsed(),
                    self.ttl
                ));
            }
        }
    }
}
