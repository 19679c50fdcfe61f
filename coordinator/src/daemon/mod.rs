//! The coordinator daemon: one QUIC endpoint for agents and the admin CLI.
//!
//! - [`Daemon::bind`] loads the CA and state, binds the UDP socket.
//! - [`Daemon::run`] accepts connections until the shutdown future resolves,
//!   then closes every session, flushes live state and returns.
//! - `conn.rs`: one task per connection; the peer's role comes from its
//!   verified certificate (none: enrollment only).
//! - `admin_api.rs`: the admin requests of the CLI.
//! - `agents.rs`: the operations' view of the agents (tasks on the nodes'
//!   sessions, images through distribution).
//! - `shared.rs`: what every connection task shares; the inventory view.
//! - `live.rs`: the sessions currently connected, their last heartbeat;
//!   open admin connections by certificate serial.
//! - `limits.rs`: per-source limits on what needs no credentials.

mod admin_api;
mod agents;
mod conn;
pub mod limits;
mod live;
mod shared;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::{debug, info, info_span, warn, Instrument};

use seaport_shared::clock::now_unix;
use seaport_shared::pki::{self, PkiError};
use seaport_shared::tls;
use seaport_shared::wire::close;

use crate::ca::{self, Ca, CaError, CoordinatorPaths};
use crate::distribution::Distribution;
use crate::operations::{ClusterStore, Operations};
use crate::state::{self, Election, LeaderInfo, Leadership, StateError, StateStore};
use agents::SessionAgents;
use limits::SourceLimiter;
use shared::Shared;

pub use live::LiveSessions;
pub use shared::node_info;

/// Default node certificate lifetime.
pub const DEFAULT_NODE_CERT_TTL: Duration = Duration::from_secs(30 * 86_400);
/// Unauthenticated connections (enrollments) handled at once, from all
/// sources together.
const MAX_ANONYMOUS: usize = 256;
/// Unauthenticated connections one source may hold at once, and how many
/// more of its connections may wait for one of those.
const ANONYMOUS_PER_SOURCE: usize = 4;
const ANONYMOUS_WAITING_PER_SOURCE: usize = 8;
/// Handshakes one source may have in progress at once.
const HANDSHAKES_PER_SOURCE: usize = 64;
/// Sources tracked at once by each limit.
const MAX_SOURCES: usize = 4096;
/// Past this many sources with handshakes in progress, a client whose
/// address QUIC has not validated gets a stateless retry first (spoofed
/// sources then cost no state).
const RETRY_ABOVE_SOURCES: usize = 256;
/// How often live last-seen times are written to the state database.
const FLUSH_EVERY: Duration = Duration::from_secs(60);
/// How often the coordinator checks its own admin certificate.
const LOCAL_ADMIN_CHECK_EVERY: Duration = Duration::from_secs(6 * 3600);

/// Errors of the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Write(#[from] seaport_shared::confined::ConfinedError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("could not listen on {addr} (udp): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("background task failed: {0}")]
    Join(String),
}

/// Settings of `coordinator serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub node_cert_ttl: Duration,
    /// The image signature policy for every cluster (and its agents).
    pub trust: seaport_rootfs::signing::Policy,
    /// The store given on the command line; `None`: the one recorded by
    /// `coordinator init`.
    pub store: Option<state::Backend>,
    /// With several coordinators on etcd: the address agents and the CLI
    /// reach this one at (`HOST:PORT`), written in the leader key while it
    /// leads; `None`: the listen address.
    pub advertise: Option<String>,
    /// With several coordinators on etcd: the leader's lease TTL
    /// (`crate::state::leader`).
    pub lease_ttl: Duration,
}

/// What `serve` writes under the root so the CLI can find it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServeInfo {
    pub listen: SocketAddr,
    pub pid: u32,
}

/// A view of a running coordinator's in-memory tables, to check that they
/// stay bounded whatever nodes send.
#[derive(Clone)]
pub struct Probe(Arc<Shared>);

impl Probe {
    /// The size of the distribution tracker.
    pub fn tracker_size(&self) -> crate::distribution::tracker::TrackerSize {
        self.0.dist.tracker_size()
    }
}

/// A bound, not yet running coordinator.
pub struct Daemon {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    paths: CoordinatorPaths,
    /// The campaign to lead the site (a store shared by coordinators).
    election: Option<Election>,
}

/// Checks join tokens against the running coordinator's state without
/// spending them (for the bootstrap endpoint, `crate::bootstrap`).
#[derive(Clone)]
pub struct TokenCheck(Arc<Shared>);

impl TokenCheck {
    pub fn check(&self, token: &pki::JoinToken) -> Result<(), StateError> {
        self.0.store.check_token(token, now_unix()).map(|_| ())
    }

    /// The CA certificate (PEM) the bootstrap endpoint pins hosts to.
    pub fn ca_pem(&self) -> String {
        self.0.ca.cert_pem().to_string()
    }
}

impl Daemon {
    /// A view of this daemon's in-memory tables.
    pub fn probe(&self) -> Probe {
        Probe(self.shared.clone())
    }

    /// A token checker sharing this daemon's state.
    pub fn token_check(&self) -> TokenCheck {
        TokenCheck(self.shared.clone())
    }

    /// Reads what the metrics show of the daemon at a scrape: nodes by
    /// state, open QUIC connections, hostnames. Blocking (the store).
    pub fn metrics_gauges(&self) -> impl Fn() -> crate::metrics::Gauges + Send + Sync + 'static {
        let (shared, endpoint) = (self.shared.clone(), self.endpoint.clone());
        move || {
            let mut g = crate::metrics::Gauges {
                quic_connections: endpoint.open_connections() as u64,
                ..Default::default()
            };
            for n in shared::node_infos(&shared).unwrap_or_default() {
                *g.nodes.entry(n.status.as_str().to_string()).or_default() += 1;
                g.hostnames.insert(n.node_id, n.hostname);
            }
            g
        }
    }

    /// Loads state under `root` and binds the endpoint.
    pub fn bind(root: &Path, opts: ServeOptions) -> Result<Daemon, DaemonError> {
        let paths = CoordinatorPaths::new(root);
        let ca = Ca::load(root)?;
        let store: Arc<dyn StateStore> = Arc::from(state::open_for_coordinator(
            &paths.dir,
            state::STORE_WAIT,
            opts.store.clone(),
        )?);
        let records: Arc<dyn ClusterStore> = store.clone();
        // The CLI on this machine needs a current, recorded admin
        // certificate (installs from before admin records get a new one).
        if ca::ensure_local_admin(root, &*store, &ca)? {
            info!("issued a new local admin certificate");
        }
        let id = ca::server_identity(root)?;
        let mut chain = id.chain;
        chain.push(id.ca.clone());
        let server_config = tls::server(&id.ca, chain, id.key)?;
        let endpoint = quinn::Endpoint::server(server_config, opts.listen).map_err(|source| {
            DaemonError::Bind {
                addr: opts.listen,
                source,
            }
        })?;
        let live = Arc::new(LiveSessions::default());
        let dist = Arc::new(Distribution::new(root, &paths.dir, store.clone()));
        let agents = Arc::new(SessionAgents {
            store: store.clone(),
            live: live.clone(),
            dist: dist.clone(),
        });
        let ops = Operations::new(agents, records, root.to_path_buf(), opts.trust.clone());
        let me = LeaderInfo {
            id: format!(
                "{} pid {}",
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map_or_else(|_| "?".to_string(), |h| h.trim().to_string()),
                std::process::id()
            ),
            address: opts
                .advertise
                .clone()
                .unwrap_or_else(|| endpoint.local_addr().map_or(opts.listen, |a| a).to_string()),
        };
        let election = store.elect(me, opts.lease_ttl)?;
        let leadership = election
            .as_ref()
            .map_or_else(Election::alone, Election::leadership);
        Ok(Daemon {
            election,
            endpoint,
            shared: Arc::new(Shared {
                store,
                ca,
                live,
                node_cert_ttl: opts.node_cert_ttl,
                anonymous: Semaphore::new(MAX_ANONYMOUS),
                handshakes: SourceLimiter::new(HANDSHAKES_PER_SOURCE, 0, MAX_SOURCES),
                anonymous_sources: SourceLimiter::new(
                    ANONYMOUS_PER_SOURCE,
                    ANONYMOUS_WAITING_PER_SOURCE,
                    MAX_SOURCES,
                ),
                admins: live::AdminSessions::default(),
                root: root.to_path_buf(),
                dist,
                ops,
                trust: opts.trust,
                leadership,
            }),
            paths,
        })
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// Serves until `shutdown` resolves, then closes sessions and flushes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
        let addr = self.local_addr();
        let info = ServeInfo {
            listen: addr,
            pid: std::process::id(),
        };
        seaport_shared::confined::write_atomic(
            &self.paths.serve_info(),
            serde_json::to_string_pretty(&info)
                .expect("serve info serializes")
                .as_bytes(),
            0o644,
        )?;
        info!(%addr, "coordinator listening");
        let leading = tokio::spawn(
            follow_leadership(self.shared.clone()).instrument(info_span!("leadership")),
        );

        let flusher = {
            let shared = self.shared.clone();
            tokio::spawn(
                async move {
                    let mut tick = tokio::time::interval(FLUSH_EVERY);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        flush(&shared).await;
                    }
                }
                .instrument(info_span!("flush")),
            )
        };
        let admin_renewer = {
            let shared = self.shared.clone();
            tokio::spawn(
                async move {
                    let mut tick = tokio::time::interval(LOCAL_ADMIN_CHECK_EVERY);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        renew_local_admin(&shared).await;
                    }
                }
                .instrument(info_span!("local_admin")),
            )
        };

        // Connection tasks, so that a shutdown ends them and the socket is
        // free for the next coordinator at once.
        let mut conns = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            while conns.try_join_next().is_some() {}
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let remote = incoming.remote_address();
                    if !incoming.remote_address_validated()
                        && self.shared.handshakes.sources() > RETRY_ABOVE_SOURCES
                    {
                        if let Err(e) = incoming.retry() {
                            e.into_incoming().ignore();
                        }
                        continue;
                    }
                    let Some(slot) = self.shared.handshakes.try_acquire(remote.ip()) else {
                        debug!(%remote, "too many handshakes from this source: refused");
                        incoming.refuse();
                        continue;
                    };
                    let shared = self.shared.clone();
                    conns.spawn(
                        conn::handle(shared, incoming, slot)
                            .instrument(info_span!("conn", %remote)),
                    );
                }
                () = &mut shutdown => break,
            }
        }

        info!("shutting down: closing sessions");
        leading.abort();
        // Leadership is given back first, so another coordinator takes
        // over while this one closes.
        drop(self.election);
        self.shared.ops.stop_all();
        flusher.abort();
        admin_renewer.abort();
        self.endpoint
            .close(close::SHUTDOWN.into(), b"coordinator shutting down");
        flush(&self.shared).await;
        let _ = tokio::time::timeout(Duration::from_secs(3), self.endpoint.wait_idle()).await;
        conns.shutdown().await;
        let _ = std::fs::remove_file(self.paths.serve_info());
        info!("coordinator stopped");
        Ok(())
    }
}

/// Drives operations while this coordinator leads: on becoming the leader
/// it resumes every unfinished operation from the store; on losing it, it
/// stops driving at once (its writes are fenced anyway) and sends its
/// agents to the new leader.
async fn follow_leadership(shared: Arc<Shared>) {
    let mut rx = shared.leadership.clone();
    let mut leading = false;
    loop {
        let now = rx.borrow_and_update().clone();
        match now {
            Leadership::Leader if !leading => {
                leading = true;
                info!("leading: resuming unfinished operations");
                let s = shared.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || s.ops.resume_all()).await {
                    warn!(error = %e, "resuming operations failed");
                }
            }
            Leadership::Leader => {}
            Leadership::Follower { leader } => {
                if leading {
                    leading = false;
                    warn!("no longer leading: operations stopped here");
                    shared.ops.stop_all();
                    // Cut off from etcd, it cannot tell agents who leads
                    // now: they go to the next coordinator of their list.
                    shared
                        .live
                        .close_all(close::SHUTDOWN, "this coordinator no longer leads");
                }
                if let Some(l) = leader {
                    let n = shared.live.close_all(close::NOT_LEADER, &l.address);
                    if n > 0 {
                        info!(leader = %l.address, sessions = n, "sent agents to the leader");
                    }
                }
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Re-issues the coordinator's own admin certificate when it needs it.
pub(crate) async fn renew_local_admin(shared: &Arc<Shared>) {
    let shared = shared.clone();
    let res = tokio::task::spawn_blocking(move || {
        ca::ensure_local_admin(&shared.root, &*shared.store, &shared.ca)
    })
    .await;
    match res {
        Ok(Ok(true)) => info!("issued a new local admin certificate"),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => warn!(error = %e, "could not renew the local admin certificate"),
        Err(e) => warn!(error = %e, "local admin certificate check failed"),
    }
}

/// Writes live facts and last-seen times to the state database.
async fn flush(shared: &Arc<Shared>) {
    let updates = shared.live.take_dirty();
    if updates.is_empty() {
        return;
    }
    let shared = shared.clone();
    let res = tokio::task::spawn_blocking(move || shared.store.update_nodes(&updates)).await;
    match res {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "could not write node state"),
        Err(e) => warn!(error = %e, "node state writer failed"),
    }
}

/// Reads the serve info `coordinator serve` left under the root.
pub fn read_serve_info(root: &Path) -> Option<ServeInfo> {
    let text = std::fs::read_to_string(CoordinatorPaths::new(root).serve_info()).ok()?;
    serde_json::from_str(&text).ok()
}

/// Where the state lives, for messages.
pub fn state_dir(root: &Path) -> PathBuf {
    CoordinatorPaths::new(root).dir
}
