//! `seaport-agent run`: keep one mTLS session to the coordinator.
//!
//! Each attempt re-reads the identity (so a `join` or a renewal made while the
//! service runs is picked up), connects, opens the control stream and sends a
//! heartbeat every [`HEARTBEAT_INTERVAL`]. At two thirds of the certificate's
//! lifetime it asks for a renewed certificate on the same stream. When the
//! session ends it reconnects after a jittered exponential backoff
//! ([`Backoff`]: 1 s doubling, capped at [`BACKOFF_CAP`], each delay drawn
//! between half and all of its step), so a coordinator restart does not bring
//! every agent back in the same instant.
//!
//! A site with several coordinators: the identity's coordinator address is
//! a list (`A:7443,B:7443,C:7443`, see [`endpoints`]). A session that is
//! lost goes to the next coordinator of the list after the backoff; a
//! coordinator that does not lead closes the session naming the leader
//! (`close::NOT_LEADER`), and the agent goes there at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tracing::{debug, error, info, info_span, warn, Instrument};

use seaport_shared::codec::{self, CodecError};
use seaport_shared::pki::{self, CertInfo, PkiError, Role};
use seaport_shared::tls;
use seaport_shared::wire::{
    self, AgentMessage, CoordinatorMessage, StreamKind, WireError, CONTROL_FRAME_LIMIT,
    COORDINATOR_SERVER_NAME, HEARTBEAT_INTERVAL,
};

use crate::facts::FactsSource;
use crate::identity::{cert_matches_key, Identity, IdentityError};

/// First reconnect step.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest wait between reconnect attempts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A session that lasted this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// Errors of one session attempt.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Identity(#[from] IdentityError),
    #[error("{0}")]
    Pki(#[from] PkiError),
    #[error("could not resolve {addr}: {source}")]
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    #[error("could not connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("the certificate of node {node} expired at {at}; join again with a token made for this node (seaport token create --node {node}, then seaport-agent join)")]
    Expired { node: String, at: String },
    #[error("control stream: {0}")]
    Wire(#[from] WireError),
    #[error("control stream: {0}")]
    Codec(#[from] CodecError),
    #[error("the coordinator refused: {0}")]
    Refused(String),
    #[error("session lost: {0}")]
    Lost(String),
    #[error("that coordinator does not lead its site; going to the leader at {0}")]
    Redirected(String),
}

/// The coordinators' addresses in an identity's (or `join`'s) list:
/// separated by commas, spaces or lines.
pub fn endpoints(list: &str) -> Vec<String> {
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// Which coordinator the next attempt goes to.
#[derive(Debug, Default)]
struct Route {
    /// The leader a coordinator named when it sent this agent away.
    redirect: Option<String>,
    /// Otherwise: the next one of the list, in turn.
    index: usize,
}

impl Route {
    fn pick(&mut self, list: &str) -> String {
        if let Some(r) = self.redirect.take() {
            return r;
        }
        let all = endpoints(list);
        all.get(self.index % all.len().max(1))
            .cloned()
            .unwrap_or_default()
    }
}

/// Jittered exponential backoff.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    base: Duration,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            attempt: 0,
            base: BACKOFF_BASE,
            cap: BACKOFF_CAP,
        }
    }
}

impl Backoff {
    /// The next delay: half of the step plus a random part of the other half.
    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Asked to stop.
    Shutdown,
    /// The coordinator or the network ended it.
    Lost(SessionError),
}

/// Runs the agent service until `shutdown` turns true.
pub async fn run(state_dir: &Path, facts: impl FactsSource, shutdown: watch::Receiver<bool>) {
    run_linked(state_dir, facts, shutdown, None).await
}

/// The connection of the current session, `None` between sessions (the
/// distribution service fetches blobs over it).
pub type SessionLink = watch::Sender<Option<quinn::Connection>>;

/// [`run`], publishing each session's connection on `link`.
pub async fn run_linked(
    state_dir: &Path,
    mut facts: impl FactsSource,
    mut shutdown: watch::Receiver<bool>,
    link: Option<SessionLink>,
) {
    let mut backoff = Backoff::default();
    let mut endpoint: Option<quinn::Endpoint> = None;
    let mut route = Route::default();
    let mut redirected = false;
    loop {
        let asked = *shutdown.borrow();
        if asked {
            break;
        }
        let started = Instant::now();
        let end = attempt(
            state_dir,
            &mut route,
            &mut endpoint,
            &mut facts,
            &mut shutdown,
            link.as_ref(),
        )
        .await;
        let mut delay = None;
        match end {
            SessionEnd::Shutdown => break,
            SessionEnd::Lost(SessionError::Redirected(leader)) => {
                info!(%leader, "going to the leader");
                route.redirect = Some(leader);
                // At once, unless sent away twice in a row (an election).
                if !std::mem::replace(&mut redirected, true) {
                    delay = Some(Duration::from_millis(100));
                }
            }
            SessionEnd::Lost(e) => {
                redirected = false;
                route.index += 1;
                match &e {
                    SessionError::Identity(IdentityError::NotJoined(_))
                    | SessionError::Expired { .. } => error!("{e}"),
                    _ => warn!("{e}"),
                }
            }
        }
        if started.elapsed() >= STABLE_SESSION {
            backoff.reset();
        }
        let delay = delay.unwrap_or_else(|| backoff.next_delay());
        debug!(?delay, "reconnecting after backoff");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stopped(&mut shutdown) => break,
        }
    }
    if let Some(ep) = endpoint {
        let _ = timeout(Duration::from_secs(2), ep.wait_idle()).await;
    }
    info!("agent stopped");
}

async fn attempt(
    state_dir: &Path,
    route: &mut Route,
    endpoint: &mut Option<quinn::Endpoint>,
    facts: &mut impl FactsSource,
    shutdown: &mut watch::Receiver<bool>,
    link: Option<&SessionLink>,
) -> SessionEnd {
    let identity = match Identity::load(state_dir) {
        Ok(i) => i,
        Err(e) => return SessionEnd::Lost(e.into()),
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if identity.cert.not_after <= now {
        return SessionEnd::Lost(SessionError::Expired {
            node: identity.node_id.clone(),
            at: seaport_shared::clock::rfc3339(identity.cert.not_after),
        });
    }
    let target = route.pick(&identity.coordinator);
    let addr = match tls::resolve(&target).await {
        Ok(a) => a,
        Err(source) => {
            return SessionEnd::Lost(SessionError::Resolve {
                addr: target,
                source,
            })
        }
    };
    let ep = match endpoint {
        Some(ep) if ep.local_addr().map(|a| a.is_ipv6()).ok() == Some(addr.is_ipv6()) => ep,
        _ => match tls::client_endpoint(addr) {
            Ok(ep) => endpoint.insert(ep),
            Err(e) => {
                return SessionEnd::Lost(SessionError::Connect {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                })
            }
        },
    };
    let span = info_span!("session", node = %identity.node_id, coordinator = %addr);
    let state_dir = state_dir.to_path_buf();
    session_linked(ep, addr, identity, state_dir, facts, shutdown, link)
        .instrument(span)
        .await
}

/// Resolves once shutdown is asked for (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let asked = rx.wait_for(|s| *s).await.is_ok();
    if !asked {
        // Sender dropped: nobody can ask any more; treat as a stop.
    }
}

/// One session: connect, open the control stream, heartbeat until it ends.
pub async fn session(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    identity: Identity,
    state_dir: PathBuf,
    facts: &mut impl FactsSource,
    shutdown: &mut watch::Receiver<bool>,
) -> SessionEnd {
    session_linked(endpoint, addr, identity, state_dir, facts, shutdown, None).await
}

async fn session_linked(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    mut identity: Identity,
    state_dir: PathBuf,
    facts: &mut impl FactsSource,
    shutdown: &mut watch::Receiver<bool>,
    link: Option<&SessionLink>,
) -> SessionEnd {
    let lost = SessionEnd::Lost;
    let mut config = match identity.client_config() {
        Ok(c) => c,
        Err(e) => return lost(e.into()),
    };
    // Blobs travel on this connection too: LAN-sized flow-control windows.
    config.transport_config(tls::lan_transport());
    let connect_err = |reason: String| SessionError::Connect {
        addr: addr.to_string(),
        reason,
    };
    let connecting = match endpoint.connect_with(config, addr, COORDINATOR_SERVER_NAME) {
        Ok(c) => c,
        Err(e) => return lost(connect_err(e.to_string())),
    };
    let conn = tokio::select! {
        r = timeout(CONNECT_TIMEOUT, connecting) => match r {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return lost(connect_err(e.to_string())),
            Err(_) => return lost(connect_err(format!("no answer within {CONNECT_TIMEOUT:?}"))),
        },
        _ = stopped(shutdown) => return SessionEnd::Shutdown,
    };
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return lost(lost_reason(&conn).unwrap_or(SessionError::Lost(e.to_string()))),
    };
    if let Err(e) = wire::client_handshake(&mut recv, &mut send, StreamKind::Control).await {
        return lost(lost_reason(&conn).unwrap_or(e.into()));
    }
    info!("session established");
    if let Some(link) = link {
        link.send_replace(Some(conn.clone()));
    }

    // Reading is not cancel-safe in a select!, so it gets its own task.
    let (tx, mut rx) = mpsc::channel::<Result<CoordinatorMessage, CodecError>>(8);
    let reader = tokio::spawn(
        async move {
            loop {
                let msg = codec::read_msg::<_, CoordinatorMessage>(&mut recv, CONTROL_FRAME_LIMIT)
                    .await
                    .transpose();
                let Some(msg) = msg else { break };
                let stop = msg.is_err();
                if tx.send(msg).await.is_err() || stop {
                    break;
                }
            }
        }
        .instrument(info_span!("control_reader")),
    );

    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Renewal has its own deadline: checking only on heartbeat ticks would
    // miss short lifetimes whose renewal window is narrower than a tick.
    let renew = tokio::time::sleep_until(renew_deadline(&identity.cert));
    tokio::pin!(renew);
    let end = loop {
        tokio::select! {
            _ = tick.tick() => {
                let msg = AgentMessage::Heartbeat {
                    node_id: identity.node_id.clone(),
                    facts: facts.facts(),
                };
                if let Err(e) = codec::write_msg(&mut send, &msg).await {
                    break lost(lost_reason(&conn).unwrap_or(e.into()));
                }
            }
            () = &mut renew => {
                match renew_request(&identity) {
                    Ok(msg) => {
                        if let Err(e) = codec::write_msg(&mut send, &msg).await {
                            break lost(lost_reason(&conn).unwrap_or(e.into()));
                        }
                        info!("asked for a renewed certificate");
                    }
                    Err(e) => warn!(error = %e, "could not make a renewal request"),
                }
                // Ask again if no renewed certificate arrives by then.
                renew.as_mut().reset(tokio::time::Instant::now() + RENEW_RETRY);
            }
            msg = rx.recv() => match msg {
                Some(Ok(CoordinatorMessage::HeartbeatAck { .. })) => {}
                Some(Ok(CoordinatorMessage::Trust(trust))) => {
                    match crate::trust::store(&state_dir, &trust) {
                        Ok(()) => info!(
                            keys = trust.keys.len(),
                            require_signed = trust.require_signed,
                            "image signature policy stored"
                        ),
                        Err(e) => warn!(error = %e, "image signature policy not stored"),
                    }
                }
                Some(Ok(CoordinatorMessage::Renewed { cert_pem })) => {
                    match accept_renewed(&identity, &state_dir, &cert_pem) {
                        Ok(info) => {
                            info!(expires = %seaport_shared::clock::rfc3339(info.not_after), "certificate renewed");
                            identity.cert = info;
                            renew.as_mut().reset(renew_deadline(&identity.cert));
                        }
                        Err(e) => warn!(error = %e, "renewed certificate not accepted"),
                    }
                }
                Some(Ok(CoordinatorMessage::Refused { reason })) => {
                    break lost(SessionError::Refused(reason));
                }
                Some(Err(e)) => break lost(lost_reason(&conn).unwrap_or(e.into())),
                None => break lost(lost_reason(&conn).unwrap_or(SessionError::Lost("control stream closed".into()))),
            },
            e = conn.closed() => break lost(closed_error(&e)),
            _ = stopped(shutdown) => {
                conn.close(0u32.into(), b"agent stopping");
                break SessionEnd::Shutdown;
            }
        }
    };
    reader.abort();
    if let Some(link) = link {
        link.send_replace(None);
    }
    end
}

/// How long to wait for a renewed certificate before asking again.
const RENEW_RETRY: Duration = Duration::from_secs(5);

/// When to ask for a renewed certificate: at 2/3 of its lifetime.
fn renew_deadline(cert: &CertInfo) -> tokio::time::Instant {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let wait = u64::try_from(cert.renew_at() - now).unwrap_or(0);
    tokio::time::Instant::now() + Duration::from_secs(wait)
}

fn renew_request(identity: &Identity) -> Result<AgentMessage, SessionError> {
    let key = identity.key_pair()?;
    let ips = crate::facts::host_ips();
    let csr_der = pki::node_csr(&key, &identity.node_id, &ips)?;
    Ok(AgentMessage::Renew { csr_der })
}

fn accept_renewed(
    identity: &Identity,
    state_dir: &Path,
    cert_pem: &str,
) -> Result<CertInfo, SessionError> {
    let der = pki::certs_from_pem(cert_pem, "the renewed certificate")?.remove(0);
    let info = CertInfo::from_der(&der)?;
    let key = identity.key_pair()?;
    if info.role != Role::Node || info.name != identity.node_id || !cert_matches_key(&der, &key) {
        return Err(SessionError::Refused(
            "renewed certificate is not for this node's key".into(),
        ));
    }
    Identity::store_cert(state_dir, cert_pem)?;
    Ok(info)
}

fn describe_close(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            format!(
                "closed by the coordinator: {}",
                String::from_utf8_lossy(&c.reason)
            )
        }
        other => other.to_string(),
    }
}

/// If the connection was closed, why (the coordinator's reason).
fn lost_reason(conn: &quinn::Connection) -> Option<SessionError> {
    conn.close_reason().map(|e| closed_error(&e))
}

/// Why a connection closed: a coordinator that does not lead names the
/// leader.
fn closed_error(e: &quinn::ConnectionError) -> SessionError {
    match e {
        quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == wire::close::NOT_LEADER.into() =>
        {
            SessionError::Redirected(String::from_utf8_lossy(&c.reason).into_owned())
        }
        other => SessionError::Lost(describe_close(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_coordinators_is_tried_in_turn_and_a_leader_first() {
        assert_eq!(endpoints("a:1, b:2\nc:3,"), ["a:1", "b:2", "c:3"]);
        let mut r = Route::default();
        assert_eq!(r.pick("a:1,b:2"), "a:1");
        r.index += 1;
        assert_eq!(r.pick("a:1,b:2"), "b:2");
        r.redirect = Some("c:3".into());
        assert_eq!(r.pick("a:1,b:2"), "c:3");
        assert_eq!(r.pick("a:1,b:2"), "b:2");
        r.index += 1;
        assert_eq!(r.pick("a:1"), "a:1");
    }

    #[test]
    fn backoff_grows_jittered_and_capped() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(
            first >= BACKOFF_BASE / 2 && first <= BACKOFF_BASE,
            "{first:?}"
        );
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= BACKOFF_CAP, "{d:?}");
        }
        let late = b.next_delay();
        assert!(late >= BACKOFF_CAP / 2, "{late:?}");
        b.reset();
        assert!(b.next_delay() <= BACKOFF_BASE);
    }
}
