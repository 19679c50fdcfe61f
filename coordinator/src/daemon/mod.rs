//! The coordinator daemon: one QUIC endpoint for agents and the admin CLI.
//!
//! - [`Daemon::bind`] loads the CA and state, binds the UDP socket.
//! - [`Daemon::run`] accepts connections until the shutdown future resolves,
//!   then closes every session, flushes live state and returns.
//! - `conn.rs`: one task per connection; the peer's role comes from its
//!   verified certificate (none: enrollment only).
//! - `live.rs`: the sessions currently connected, their last heartbeat;
//!   open admin connections by certificate serial.
//! - `limits.rs`: per-source limits on what needs no credentials.

mod conn;
pub mod limits;
mod live;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::{debug, info, info_span, warn, Instrument};

use seaport_shared::pki::{self, PkiError};
use seaport_shared::tls;
use seaport_shared::wire::{NodeInfo, NodeStatus, OFFLINE_AFTER};

use crate::ca::{self, Ca, CaError, CoordinatorPaths};
use crate::distribution::Distribution;
use crate::state::{NodeRecord, StateError, Store};
use limits::SourceLimiter;

pub use live::LiveSessions;

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

/// QUIC application close codes.
pub(crate) mod close {
    pub const SHUTDOWN: u32 = 0;
    pub const PROTOCOL: u32 = 1;
    pub const REFUSED: u32 = 2;
    pub const REPLACED: u32 = 3;
    pub const DONE: u32 = 4;
}

/// Errors of the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Ca(#[from] CaError),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("{0}")]
    Pki(#[from] PkiError),
    #[error("{0}")]
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
}

/// What `serve` writes under the root so the CLI can find it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServeInfo {
    pub listen: SocketAddr,
    pub pid: u32,
}

/// State shared by every connection task.
pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) ca: Ca,
    pub(crate) live: LiveSessions,
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
    pub(crate) dist: Distribution,
    pub(crate) runs: crate::runs::Runs,
    /// Root of the image store (`--root`).
    pub(crate) image_root: PathBuf,
    /// The image signature policy (`crate::trust`).
    pub(crate) trust: seaport_rootfs::signing::Policy,
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
}

pub(crate) fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
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

    /// Loads state under `root` and binds the endpoint.
    pub fn bind(root: &Path, opts: ServeOptions) -> Result<Daemon, DaemonError> {
        let paths = CoordinatorPaths::new(root);
        let ca = Ca::load(root)?;
        let store = Store::open(&paths.state_db())?;
        // The CLI on this machine needs a current, recorded admin
        // certificate (installs from before admin records get a new one).
        if ca::ensure_local_admin(root, &store, &ca)? {
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
        Ok(Daemon {
            endpoint,
            shared: Arc::new(Shared {
                store,
                ca,
                live: LiveSessions::default(),
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
                dist: Distribution::new(root, &paths.dir),
                runs: crate::runs::Runs::default(),
                image_root: root.to_path_buf(),
                trust: opts.trust,
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
        pki::write_atomic(
            &self.paths.serve_info(),
            serde_json::to_string_pretty(&info)
                .expect("serve info serializes")
                .as_bytes(),
            0o644,
        )?;
        info!(%addr, "coordinator listening");
        crate::runs::resume_all(&self.shared);

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

        tokio::pin!(shutdown);
        loop {
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
                    tokio::spawn(
                        conn::handle(shared, incoming, slot)
                            .instrument(info_span!("conn", %remote)),
                    );
                }
                () = &mut shutdown => break,
            }
        }

        info!("shutting down: closing sessions");
        flusher.abort();
        admin_renewer.abort();
        self.endpoint
            .close(close::SHUTDOWN.into(), b"coordinator shutting down");
        flush(&self.shared).await;
        let _ = tokio::time::timeout(Duration::from_secs(3), self.endpoint.wait_idle()).await;
        let _ = std::fs::remove_file(self.paths.serve_info());
        info!("coordinator stopped");
        Ok(())
    }
}

/// Re-issues the coordinator's own admin certificate when it needs it.
pub(crate) async fn renew_local_admin(shared: &Arc<Shared>) {
    let shared = shared.clone();
    let res = tokio::task::spawn_blocking(move || {
        ca::ensure_local_admin(&shared.root, &shared.store, &shared.ca)
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

/// Reads the serve info `coordinator serve` left under the root.
pub fn read_serve_info(root: &Path) -> Option<ServeInfo> {
    let text = std::fs::read_to_string(CoordinatorPaths::new(root).serve_info()).ok()?;
    serde_json::from_str(&text).ok()
}

/// Where the state lives, for messages.
pub fn state_dir(root: &Path) -> PathBuf {
    CoordinatorPaths::new(root).dir
}
