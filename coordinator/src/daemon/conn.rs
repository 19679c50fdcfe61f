//! One connection: who the peer is (from its verified certificate, never
//! from a message) decides what it may do.
//!
//! - no client certificate: one `Enroll` stream, then the connection ends
//!   (bounded per source, one short deadline for the whole exchange);
//! - `OU=node`: one `Control` stream at a time, reporting only as itself;
//!   the connection's source address is recorded as evidence of the host
//!   IP the node serves;
//! - `OU=admin`: any number of `Admin` streams, one request each, while
//!   the certificate is recorded and not revoked (checked at connection and
//!   at every request).
//!
//! Any framing or decoding error closes the whole connection (code
//! `PROTOCOL`), other connections are not affected.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::timeout;
use tracing::{debug, info, info_span, warn, Instrument};

use seaport_shared::codec::{self, CodecError};
use seaport_shared::pki::{self, CertInfo, JoinToken, Role};
use seaport_shared::tls;
use seaport_shared::wire::{
    self, AdminRequest, AdminResponse, AgentMessage, CoordinatorMessage, EnrollRequest,
    EnrollResponse, StreamKind, WireError, CONTROL_FRAME_LIMIT, ENROLL_FRAME_LIMIT,
};

use seaport_shared::clock::now_unix;
use seaport_shared::wire::close;

use super::admin_api::admin_request;
use super::limits::SourceSlot;
use super::shared::Shared;
use crate::ca::{Ca, CaError};
use crate::state::{Issued, StateError};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// An unauthenticated connection must open its stream, say hello and send
/// its enrollment request within this, all together.
const ENROLL_DEADLINE: Duration = Duration::from_secs(5);
/// How long an unauthenticated connection may wait for a slot.
const ANONYMOUS_SLOT_WAIT: Duration = Duration::from_secs(3);

/// Handles one incoming connection to its end. `handshake` is the
/// source's handshake slot, given back once the handshake is over.
pub(super) async fn handle(shared: Arc<Shared>, incoming: quinn::Incoming, handshake: SourceSlot) {
    let accepted = timeout(HANDSHAKE_TIMEOUT, incoming).await;
    drop(handshake);
    let conn = match accepted {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            debug!(error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            debug!("handshake timed out");
            return;
        }
    };
    let Some(chain) = tls::peer_certificates(&conn) else {
        anonymous(shared, conn).await;
        return;
    };
    let info = match chain.first().map(|c| CertInfo::from_der(c)) {
        Some(Ok(info)) => info,
        _ => {
            conn.close(close::REFUSED.into(), b"certificate has no seaport role");
            return;
        }
    };
    match info.role {
        Role::Node => {
            let span = info_span!("node", node = %info.name);
            node(shared, conn, info).instrument(span).await
        }
        Role::Admin => {
            let check = {
                let shared = shared.clone();
                let serial = info.serial;
                tokio::task::spawn_blocking(move || shared.store.check_admin(serial)).await
            };
            match check {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    info!(error = %e, "admin certificate refused");
                    let reason = e.to_string();
                    conn.close(close::REFUSED.into(), reason.as_bytes());
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "admin certificate check failed");
                    conn.close(close::REFUSED.into(), b"internal error");
                    return;
                }
            }
            shared.admins.register(info.serial, &conn);
            let who = format!("{} (admin certificate serial {})", info.name, info.serial);
            admin(shared.clone(), conn.clone(), who, info.serial)
                .instrument(info_span!("admin"))
                .await;
            shared.admins.unregister(info.serial, &conn);
        }
        Role::Coordinator => conn.close(
            close::REFUSED.into(),
            b"a coordinator certificate cannot be used as a client",
        ),
    }
}

fn protocol_error(conn: &quinn::Connection, what: &dyn std::fmt::Display) {
    warn!(error = %what, "protocol error; closing connection");
    let reason = what.to_string();
    conn.close(
        close::PROTOCOL.into(),
        &reason.as_bytes()[..reason.len().min(512)],
    );
}

/// Why a stream is refused (told to the peer in the hello reply).
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    #[error("{0}")]
    Version(WireError),
    #[error("this connection has no client certificate: only enrollment is allowed")]
    EnrollmentOnly,
    #[error("this session already has a control stream")]
    SecondControl,
    #[error("permission denied: admin operations need the admin certificate, not node {0}'s")]
    NodeIsNotAdmin(String),
    #[error("already enrolled: enrollment is for connections without a certificate")]
    AlreadyEnrolled,
    #[error("task streams go from the coordinator to agents")]
    TasksGoToAgents,
    #[error("the admin certificate is for admin streams only")]
    AdminStreamsOnly,
}

/// Reads a stream's hello. A wrong version or a kind the caller refuses gets
/// a refusal on the stream; garbage closes the connection.
async fn accept_stream(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    allowed: impl Fn(StreamKind) -> Result<(), Refusal>,
) -> Option<StreamKind> {
    let hello = match timeout(STREAM_TIMEOUT, wire::read_hello(recv)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e @ (WireError::BadMagic | WireError::UnknownKind(_)))) => {
            protocol_error(conn, &e);
            return None;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "stream ended before its hello");
            return None;
        }
        Err(_) => {
            protocol_error(conn, &"no stream hello within 10 s");
            return None;
        }
    };
    let verdict = hello
        .check_version()
        .map_err(Refusal::Version)
        .and_then(|()| allowed(hello.kind));
    match verdict {
        Ok(()) => {
            if wire::accept_hello(send).await.is_err() {
                return None;
            }
            Some(hello.kind)
        }
        Err(refusal) => {
            let reason = refusal.to_string();
            info!(%reason, kind = ?hello.kind, "stream refused");
            let _ = wire::refuse_hello(send, &reason).await;
            let _ = send.finish();
            None
        }
    }
}

/// A connection without a client certificate: enrollment only. Each source
/// holds a few such connections at once (more wait briefly, or are turned
/// away), and the whole request must arrive within a few seconds, so idle
/// or slow connections from one address cost little and block no one else.
async fn anonymous(shared: Arc<Shared>, conn: quinn::Connection) {
    let source = conn.remote_address().ip();
    let Some(_source_slot) = shared
        .anonymous_sources
        .acquire(source, ANONYMOUS_SLOT_WAIT)
        .await
    else {
        debug!("too many unauthenticated connections from this source");
        conn.close(
            close::REFUSED.into(),
            b"too many enrollments from this address at once; retry",
        );
        return;
    };
    let Ok(Ok(_permit)) = timeout(ANONYMOUS_SLOT_WAIT, shared.anonymous.acquire()).await else {
        conn.close(
            close::REFUSED.into(),
            b"too many enrollments at once; retry",
        );
        return;
    };
    let exchange = timeout(ENROLL_DEADLINE, async {
        let Ok((mut send, mut recv)) = conn.accept_bi().await else {
            conn.close(close::PROTOCOL.into(), b"no enrollment stream");
            return None;
        };
        let kind = accept_stream(&conn, &mut send, &mut recv, |kind| match kind {
            StreamKind::Enroll => Ok(()),
            _ => Err(Refusal::EnrollmentOnly),
        })
        .await;
        if kind.is_none() {
            return Some(None);
        }
        match codec::read_msg::<_, EnrollRequest>(&mut recv, ENROLL_FRAME_LIMIT).await {
            Ok(Some(req)) => Some(Some((send, req))),
            Ok(None) => None,
            Err(e) => {
                protocol_error(&conn, &e);
                None
            }
        }
    })
    .await;
    let (mut send, req) = match exchange {
        Ok(Some(Some(got))) => got,
        Ok(Some(None)) => {
            let _ = timeout(Duration::from_secs(2), conn.closed()).await;
            return;
        }
        Ok(None) => return,
        Err(_) => {
            return protocol_error(
                &conn,
                &format!(
                    "no enrollment request within {}s",
                    ENROLL_DEADLINE.as_secs()
                ),
            )
        }
    };
    let response = enroll(&shared, req).await;
    if let EnrollResponse::Refused { reason } = &response {
        info!(%reason, "enrollment refused");
        crate::metrics::global().enroll_refused(refusal_kind(reason));
    }
    if codec::write_msg(&mut send, &response).await.is_ok() {
        let _ = send.finish();
    }
    // Let the agent read the answer and close first.
    let _ = timeout(Duration::from_secs(5), conn.closed()).await;
    conn.close(close::DONE.into(), b"enrollment done");
}

/// A refusal's reason in one word, for the metrics' label.
fn refusal_kind(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("token") {
        "token"
    } else if r.contains("csr") || r.contains("node name") {
        "csr"
    } else if r.contains("node") {
        "node"
    } else {
        "other"
    }
}

async fn enroll(shared: &Arc<Shared>, req: EnrollRequest) -> EnrollResponse {
    let refused = |reason: String| EnrollResponse::Refused { reason };
    let Ok(token) = JoinToken::parse(&req.token) else {
        return refused(StateError::TokenInvalid.to_string());
    };
    // The name the host asks for: a label the coordinator makes a new node
    // id from (or, if it is an existing node id, a request the store
    // refuses unless the token was made for that node).
    let requested = match Ca::csr_common_name(&req.csr_der) {
        Ok(name) if pki::is_valid_node_id(&name) => name,
        Ok(name) => {
            return refused(format!(
                "CSR names {name:?}, which is not a valid node name"
            ))
        }
        Err(e) => return refused(e.to_string()),
    };
    let task_shared = shared.clone();
    let result = tokio::task::spawn_blocking(move || {
        let shared = task_shared;
        shared
            .store
            .enroll(&token, &requested, now_unix(), &mut |node_id, serial| {
                sign(&shared, &req.csr_der, node_id, serial)
            })
    })
    .await;
    match result {
        Ok(Ok((node_id, issued))) => {
            info!(node = %node_id, expires = issued.expires, "node enrolled");
            // A node enrolled again (with a token made for it) replaces its
            // old session.
            shared
                .live
                .close(&node_id, close::REPLACED, "node enrolled again");
            EnrollResponse::Enrolled {
                node_id,
                cert_pem: issued.cert_pem,
                ca_pem: shared.ca.cert_pem().to_string(),
                trust: crate::trust::to_wire(&shared.trust),
            }
        }
        Ok(Err(e)) => refused(e.to_string()),
        Err(e) => refused(format!("internal error: {e}")),
    }
}

fn sign(shared: &Shared, csr_der: &[u8], node_id: &str, serial: u64) -> Result<Issued, StateError> {
    let (cert_pem, expires) = shared
        .ca
        .issue_node(csr_der, node_id, serial, shared.node_cert_ttl)
        .map_err(|e: CaError| StateError::Issue(e.to_string()))?;
    Ok(Issued { cert_pem, expires })
}

/// A node's connection.
async fn node(shared: Arc<Shared>, conn: quinn::Connection, info: CertInfo) {
    let check = {
        let shared = shared.clone();
        let (name, serial) = (info.name.clone(), info.serial);
        tokio::task::spawn_blocking(move || shared.store.check_node_cert(&name, serial)).await
    };
    let record = match check {
        Ok(Ok(record)) => record,
        Ok(Err(e)) => {
            info!(error = %e, "node certificate refused");
            let reason = e.to_string();
            conn.close(close::REFUSED.into(), reason.as_bytes());
            return;
        }
        Err(e) => {
            warn!(error = %e, "certificate check failed");
            conn.close(close::REFUSED.into(), b"internal error");
            return;
        }
    };
    // Where this session comes from is the coordinator's own observation,
    // not the node's word: it binds the host IP the node serves.
    let source = conn.remote_address().ip().to_canonical().to_string();
    if record.observed_ip.as_deref() != Some(source.as_str()) {
        let shared = shared.clone();
        let name = info.name.clone();
        let src = source.clone();
        let res =
            tokio::task::spawn_blocking(move || shared.store.observe(&name, &src, now_unix()))
                .await;
        if let Ok(Err(e)) = res {
            warn!(error = %e, "could not record the node's address");
        }
    }
    // The leader drives operations through its agents' sessions: a
    // coordinator that does not lead sends them there (while no leader is
    // known, it keeps them).
    if let Some(Some(leader)) = shared.follows() {
        debug!(leader = %leader.address, "sent to the leader");
        conn.close(close::NOT_LEADER.into(), leader.address.as_bytes());
        return;
    }
    if let Some(old) = shared
        .live
        .register(&info.name, conn.clone(), info.not_after)
    {
        old.close(
            close::REPLACED.into(),
            b"replaced by a newer session of this node",
        );
    }
    info!("node session started");
    let info = Arc::new(info);
    let control_active = Arc::new(AtomicBool::new(false));
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                info!(reason = %e, "node session ended");
                break;
            }
        };
        let (shared, conn, info, control_active) = (
            shared.clone(),
            conn.clone(),
            info.clone(),
            control_active.clone(),
        );
        tokio::spawn(
            async move {
                let kind = accept_stream(&conn, &mut send, &mut recv, |kind| match kind {
                    StreamKind::Control => {
                        if control_active.swap(true, Ordering::SeqCst) {
                            Err(Refusal::SecondControl)
                        } else {
                            Ok(())
                        }
                    }
                    StreamKind::Admin => Err(Refusal::NodeIsNotAdmin(info.name.clone())),
                    StreamKind::Enroll => Err(Refusal::AlreadyEnrolled),
                    StreamKind::Blob => Ok(()),
                    StreamKind::Task => Err(Refusal::TasksGoToAgents),
                })
                .await;
                if kind == Some(StreamKind::Control) {
                    control(&shared, &conn, &info, send, recv).await;
                    control_active.store(false, Ordering::SeqCst);
                } else if kind == Some(StreamKind::Blob) {
                    let node = info.name.clone();
                    let live = shared.live.clone();
                    let online = Arc::new(move |n: &str| live.get(n).is_some());
                    crate::distribution::handle_blob_stream(
                        shared.dist.clone(),
                        online,
                        conn,
                        node,
                        send,
                        recv,
                    )
                    .await;
                }
            }
            .instrument(info_span!("stream")),
        );
    }
    shared.live.unregister(&info.name, &conn);
}

/// The control stream of a node session: heartbeats and renewals.
async fn control(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    info: &CertInfo,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let me = info.name.as_str();
    // The image signature policy first: the agent keeps it with its identity.
    let trust = CoordinatorMessage::Trust(crate::trust::to_wire(&shared.trust));
    if let Err(e) = codec::write_msg(&mut send, &trust).await {
        debug!(error = %e, "could not send the image signature policy");
        return;
    }
    loop {
        let msg: AgentMessage = match codec::read_msg(&mut recv, CONTROL_FRAME_LIMIT).await {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(CodecError::Io(e)) => {
                debug!(error = %e, "control stream ended");
                return;
            }
            Err(e) => return protocol_error(conn, &e),
        };
        let reply = match msg {
            AgentMessage::Heartbeat { node_id, mut facts } => {
                if node_id != me {
                    let reason = format!(
                        "node {me} cannot report as node {node_id}: a node speaks only for itself"
                    );
                    warn!(claimed = %node_id, "node reported under another node's id");
                    return refuse_and_close(conn, send, reason).await;
                }
                let now = now_unix();
                let expires = shared.live.cert_expires(me).unwrap_or(info.not_after);
                if expires <= now {
                    let reason = format!(
                        "the certificate of node {me} expired; join again with a token made for it (`seaport token create --node {me}`)"
                    );
                    return refuse_and_close(conn, send, reason).await;
                }
                // Counters change with every heartbeat: metrics, not facts.
                crate::metrics::global().node_counters(me, std::mem::take(&mut facts.counters));
                if let Some(facts) = shared.live.heartbeat(me, conn, facts, now) {
                    // New or changed host facts are written at once (hostnames
                    // name nodes in `nodes remove`); plain heartbeats are not.
                    let shared = shared.clone();
                    let update = vec![(me.to_string(), Some(facts), Some(now))];
                    let res =
                        tokio::task::spawn_blocking(move || shared.store.update_nodes(&update))
                            .await;
                    if let Ok(Err(e)) = res {
                        warn!(error = %e, "could not record host facts");
                    }
                }
                CoordinatorMessage::HeartbeatAck { server_time: now }
            }
            AgentMessage::Renew { csr_der } => {
                let task_shared = shared.clone();
                let node_id = me.to_string();
                let res = tokio::task::spawn_blocking(move || {
                    let shared = task_shared;
                    shared.store.renew(&node_id, &mut |serial| {
                        sign(&shared, &csr_der, &node_id, serial)
                    })
                })
                .await;
                match res {
                    Ok(Ok(issued)) => {
                        info!(expires = issued.expires, "certificate renewed");
                        shared.live.set_cert_expires(me, issued.expires);
                        CoordinatorMessage::Renewed {
                            cert_pem: issued.cert_pem,
                        }
                    }
                    Ok(Err(e)) => CoordinatorMessage::Refused {
                        reason: e.to_string(),
                    },
                    Err(e) => CoordinatorMessage::Refused {
                        reason: format!("internal error: {e}"),
                    },
                }
            }
        };
        if let Err(e) = codec::write_msg(&mut send, &reply).await {
            debug!(error = %e, "could not answer on control stream");
            return;
        }
    }
}

/// Sends a refusal on the control stream, lets it arrive, closes the connection.
async fn refuse_and_close(conn: &quinn::Connection, mut send: quinn::SendStream, reason: String) {
    let msg = CoordinatorMessage::Refused {
        reason: reason.clone(),
    };
    if codec::write_msg(&mut send, &msg).await.is_ok() && send.finish().is_ok() {
        let _ = timeout(Duration::from_secs(2), send.stopped()).await;
    }
    conn.close(close::REFUSED.into(), reason.as_bytes());
}

/// An admin connection: one request per stream, each checked against the
/// certificate's record (revoked while connected: refused and closed).
async fn admin(shared: Arc<Shared>, conn: quinn::Connection, who: String, serial: u64) {
    let who = Arc::new(who);
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let (shared, conn, who) = (shared.clone(), conn.clone(), who.clone());
        tokio::spawn(
            async move {
                let kind = accept_stream(&conn, &mut send, &mut recv, |kind| match kind {
                    StreamKind::Admin => Ok(()),
                    _ => Err(Refusal::AdminStreamsOnly),
                })
                .await;
                if kind.is_none() {
                    return;
                }
                let req: AdminRequest = match timeout(
                    STREAM_TIMEOUT,
                    codec::read_msg(&mut recv, CONTROL_FRAME_LIMIT),
                )
                .await
                {
                    Ok(Ok(Some(r))) => r,
                    Ok(Ok(None)) => return,
                    Ok(Err(e)) => return protocol_error(&conn, &e),
                    Err(_) => return protocol_error(&conn, &"no admin request within 10 s"),
                };
                let check = {
                    let shared = shared.clone();
                    tokio::task::spawn_blocking(move || shared.store.check_admin(serial)).await
                };
                let resp = match check {
                    Ok(Ok(_)) => admin_request(&shared, &who, serial, req).await,
                    Ok(Err(e)) => {
                        let reason = e.to_string();
                        let resp = AdminResponse::Refused {
                            reason: reason.clone(),
                        };
                        if codec::write_msg(&mut send, &resp).await.is_ok() {
                            let _ = send.finish();
                            let _ = timeout(Duration::from_secs(2), send.stopped()).await;
                        }
                        conn.close(close::REFUSED.into(), reason.as_bytes());
                        return;
                    }
                    Err(e) => AdminResponse::Refused {
                        reason: format!("internal error: {e}"),
                    },
                };
                if codec::write_msg(&mut send, &resp).await.is_ok() {
                    let _ = send.finish();
                }
            }
            .instrument(info_span!("admin_stream")),
        );
    }
}
