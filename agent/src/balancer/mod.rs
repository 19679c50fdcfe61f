//! The node-local API balancer: a TCP listener on the host (on workers the
//! virtual IP that `apiserver.cluster.local` names, port 6443) that forwards
//! each connection to a healthy master's API server, as k3s, RKE2 and
//! Talos do in their agents (IPVS, which sealer's lvscare uses, is not
//! available everywhere; a userspace forwarder is).
//!
//! Health is known two ways: an active check of every backend every
//! [`CHECK_INTERVAL`] (TLS against the cluster's CA plus `GET /healthz`,
//! within [`CHECK_TIMEOUT`]: `health.rs`), and passive detection (a dial
//! that fails or times out marks the backend down at once). A connection
//! goes to the healthy backends in turn; when every backend is down, every
//! one is still tried, in order, rather than refusing it. The backend list
//! is replaced as a whole ([`Balancer::set_backends`]): known backends keep
//! their state, new ones start healthy and are checked at once.
//!
//! # Layout
//!
//! - `pool.rs`: the backends, their states and the order to try them.
//! - `health.rs`: the active check.
//! - [`host`]: the balancer the agent runs on its host for a cluster, its
//!   address on the loopback link, the list kept across restarts.

mod health;
pub mod host;
mod pool;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls_pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

pub use pool::BackendStatus;
use pool::Pool;

/// How often every backend is checked.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How long one check may take (connect, TLS, the answer's status line).
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a dial to a backend may take before the next is tried.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// The path of the active check.
pub const HEALTH_PATH: &str = "/healthz";
/// The active check of a local registry backend.
pub const REGISTRY_HEALTH_PATH: &str = "/v2/";

/// Why the balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    /// The listening address is taken or not on this host.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The cluster's CA cannot verify anything.
    #[error("the cluster CA: {0}")]
    Ca(String),
}

/// What a balancer serves and how it checks its backends.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The masters' API servers.
    pub backends: Vec<SocketAddr>,
    /// TLS for the active checks ([`check_tls`]); none: a check is a TCP
    /// connect until `ca_file` gives the cluster's CA.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The cluster's CA (PEM) on this host, read again when it changes
    /// (a worker has it only once it joined).
    pub ca_file: Option<std::path::PathBuf>,
    /// How often every backend is checked.
    pub interval: Duration,
    /// How long one check may take.
    pub check_timeout: Duration,
    /// How long a dial may take before the next backend is tried.
    pub dial_timeout: Duration,
    /// The path of the active check.
    pub health_path: String,
    /// The check asks `health_path` over plain HTTP (the local registry),
    /// not TLS.
    pub plain_http: bool,
    /// The name the backends' certificates must carry (the local
    /// registry's domain); none: the backend's IP.
    pub server_name: Option<String>,
}

impl Options {
    /// The defaults: checks every 2 s, 1.5 s for a check, 1 s for a dial,
    /// `/healthz`.
    pub fn new(
        listen: SocketAddr,
        backends: Vec<SocketAddr>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        Options {
            listen,
            backends,
            tls: Some(tls),
            ca_file: None,
            interval: CHECK_INTERVAL,
            check_timeout: CHECK_TIMEOUT,
            dial_timeout: DIAL_TIMEOUT,
            health_path: HEALTH_PATH.into(),
            plain_http: false,
            server_name: None,
        }
    }

    /// The defaults without TLS: checks are TCP connects until `ca_file`
    /// is set and holds the cluster's CA.
    pub fn unverified(listen: SocketAddr, backends: Vec<SocketAddr>) -> Self {
        Options {
            listen,
            backends,
            tls: None,
            ca_file: None,
            interval: CHECK_INTERVAL,
            check_timeout: CHECK_TIMEOUT,
            dial_timeout: DIAL_TIMEOUT,
            health_path: HEALTH_PATH.into(),
            plain_http: false,
            server_name: None,
        }
    }
}

impl Options {
    /// The local registry's port: checks are `GET /v2/` (401, the
    /// registry wants credentials, counts as up), over plain HTTP, or with
    /// `tls` over TLS verified against its CA for its domain.
    pub fn registry(
        listen: SocketAddr,
        backends: Vec<SocketAddr>,
        tls: Option<(Arc<rustls::ClientConfig>, String)>,
    ) -> Self {
        let (tls, server_name) = tls.map_or((None, None), |(c, n)| (Some(c), Some(n)));
        Options {
            health_path: REGISTRY_HEALTH_PATH.into(),
            plain_http: tls.is_none(),
            tls,
            server_name,
            ..Options::unverified(listen, backends)
        }
    }
}

/// TLS for the active checks: the API server's certificate must chain to
/// the cluster's CA (kubeadm's `pki/ca.crt`) and name the backend's IP.
pub fn check_tls(ca: CertificateDer<'static>) -> Result<Arc<rustls::ClientConfig>, BalancerError> {
    let provider = seaport_shared::tls::provider();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca)
        .map_err(|e| BalancerError::Ca(e.to_string()))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| BalancerError::Ca(e.to_string()))?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BalancerError::Ca(e.to_string()))?
        .with_webpki_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// A running balancer. Dropping it (or [`Balancer::stop`]) stops the
/// listener, the checks and the connections it forwards.
pub struct Balancer {
    pool: Arc<Pool>,
    local: SocketAddr,
    changed: Arc<Notify>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Balancer {
    /// Listens on `o.listen` and starts checking the backends.
    pub async fn start(o: Options) -> Result<Balancer, BalancerError> {
        let listener =
            TcpListener::bind(o.listen)
                .await
                .map_err(|source| BalancerError::Listen {
                    addr: o.listen,
                    source,
                })?;
        let local = listener
            .local_addr()
            .map_err(|source| BalancerError::Listen {
                addr: o.listen,
                source,
            })?;
        let pool = Arc::new(Pool::default());
        pool.set(&o.backends);
        let changed = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(serve(
            listener,
            pool.clone(),
            o.dial_timeout,
            stopped.clone(),
        ));
        tasks.spawn(checks(pool.clone(), o, changed.clone(), stopped));
        info!(listen = %local, "API balancer started");
        Ok(Balancer {
            pool,
            local,
            changed,
            stop,
            tasks,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Replaces the backends; the new list is checked at once.
    pub fn set_backends(&self, addrs: &[SocketAddr]) {
        self.pool.set(addrs);
        self.changed.notify_one();
    }

    /// Every backend's state.
    pub fn status(&self) -> Vec<BackendStatus> {
        self.pool.status()
    }

    /// Stops listening, checking and forwarding.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Accepts connections and forwards each to a backend.
async fn serve(
    listener: TcpListener,
    pool: Arc<Pool>,
    dial_timeout: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    conns.spawn(forward(client, peer, pool.clone(), dial_timeout));
                }
                Err(e) => {
                    warn!(error = %e, "API balancer: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Dials the backends in the pool's order until one answers, then copies
/// both ways until either side closes.
async fn forward(mut client: TcpStream, peer: SocketAddr, pool: Arc<Pool>, dial_timeout: Duration) {
    for addr in pool.order() {
        let up = match tokio::time::timeout(dial_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(up)) => up,
            Ok(Err(e)) => {
                warn!(backend = %addr, error = %e, "API balancer: dial failed; backend down");
                pool.dial_failed(addr, format!("dial: {e}"));
                continue;
            }
            Err(_) => {
                warn!(backend = %addr, "API balancer: dial timed out; backend down");
                pool.dial_failed(addr, format!("dial: no answer within {dial_timeout:?}"));
                continue;
            }
        };
        pool.forwarded(addr);
        let _ = up.set_nodelay(true);
        let _ = client.set_nodelay(true);
        let mut up = up;
        let r = tokio::io::copy_bidirectional(&mut client, &mut up).await;
        debug!(client = %peer, backend = %addr, result = ?r, "API balancer: connection ended");
        return;
    }
    warn!(client = %peer, "API balancer: no backend answered; connection closed");
}

/// Checks every backend every interval, and at once when the list
/// changes.
async fn checks(
    pool: Arc<Pool>,
    o: Options,
    changed: Arc<Notify>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut tls = o.tls.clone();
    let mut ca_seen: Option<Vec<u8>> = None;
    loop {
        if let Some(file) = &o.ca_file {
            reload_ca(file, &mut ca_seen, &mut tls);
        }
        let mut round = JoinSet::new();
        for addr in pool.addrs() {
            let (tls, path) = (tls.clone(), o.health_path.clone());
            let (timeout, plain, name) = (o.check_timeout, o.plain_http, o.server_name.clone());
            round.spawn(async move {
                let how = health::How {
                    tls,
                    plain_http: plain,
                    server_name: name,
                };
                (addr, health::check(addr, how, &path, timeout).await)
            });
        }
        while let Some(Ok((addr, r))) = round.join_next().await {
            let down = r.as_ref().err().cloned();
            if pool.mark(addr, r) {
                match down {
                    None => info!(backend = %addr, "API balancer: backend up"),
                    Some(why) => {
                        warn!(backend = %addr, reason = %why, "API balancer: backend down")
                    }
                }
            }
        }
        tokio::select! {
            _ = stopped.changed() => return,
            _ = changed.notified() => {}
            _ = tokio::time::sleep(o.interval) => {}
        }
    }
}

/// Reads the cluster's CA from `file` when it changed, and makes the
/// checks' TLS from it; a CA that cannot be used keeps the previous one.
fn reload_ca(
    file: &std::path::Path,
    seen: &mut Option<Vec<u8>>,
    tls: &mut Option<Arc<rustls::ClientConfig>>,
) {
    let Ok(pem) = std::fs::read(file) else {
        return;
    };
    if seen.as_deref() == Some(pem.as_slice()) {
        return;
    }
    let first = seaport_shared::pki::certs_from_pem(&String::from_utf8_lossy(&pem), "CA")
        .ok()
        .and_then(|c| c.into_iter().next());
    match first {
        Some(der) => match check_tls(der) {
            Ok(cfg) => {
                info!(ca = %file.display(), "API balancer: checks verify the cluster CA");
                *tls = Some(cfg);
            }
            Err(e) => warn!(ca = %file.display(), error = %e, "API balancer: unusable CA"),
        },
        _ => warn!(ca = %file.display(), "API balancer: no certificate in the CA file"),
    }
    *seen = Some(pem);
}
