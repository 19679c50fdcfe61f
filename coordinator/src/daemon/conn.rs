//! One connection: who the peer is (from its verified certificate, never
//! from a message) decides what it may do.
//!
//! - no client certificate: one `Enroll` stream, then the connection ends;
//! - `OU=node`: one `Control` stream at a time, reporting only as itself;
//! - `OU=admin`: any number of `Admin` streams, one request each.
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
    EnrollResponse, StreamKind, TokenGrant, WireError, CONTROL_FRAME_LIMIT, ENROLL_FRAME_LIMIT,
};

use super::{close, node_infos, now_unix, Shared};
use crate::ca::{Ca, CaError};
use crate::runs::Want;
use crate::state::{Issued, StateError};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// Handles one incoming connection to its end.
pub(super) async fn handle(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let conn = match timeout(HANDSHAKE_TIMEOUT, incoming).await {
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
            let who = format!("{} (admin certificate serial {})", info.name, info.serial);
            admin(shared, conn, who)
                .instrument(info_span!("admin"))
                .await
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

/// Reads a stream's hello. A wrong version or a kind the caller refuses gets
/// a refusal on the stream; garbage closes the connection.
async fn accept_stream(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    allowed: impl Fn(StreamKind) -> Result<(), String>,
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
        .map_err(|e| e.to_string())
        .and_then(|()| allowed(hello.kind));
    match verdict {
        Ok(()) => {
            if wire::accept_hello(send).await.is_err() {
                return None;
            }
            Some(hello.kind)
        }
        Err(reason) => {
            info!(%reason, kind = ?hello.kind, "stream refused");
            let _ = wire::refuse_hello(send, &reason).await;
            let _ = send.finish();
            None
        }
    }
}

/// A connection without a client certificate: enrollment only.
async fn anonymous(shared: Arc<Shared>, conn: quinn::Connection) {
    // Bounded: past the limit, wait a little for a slot before refusing.
    let Ok(Ok(_permit)) = timeout(STREAM_TIMEOUT, shared.anonymous.acquire()).await else {
        conn.close(
            close::REFUSED.into(),
            b"too many enrollments at once; retry",
        );
        return;
    };
    let (mut send, mut recv) = match timeout(STREAM_TIMEOUT, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        _ => {
            conn.close(close::PROTOCOL.into(), b"no enrollment stream");
            return;
        }
    };
    let kind = accept_stream(&conn, &mut send, &mut recv, |kind| match kind {
        StreamKind::Enroll => Ok(()),
        _ => {
            Err("this connection has no client certificate: only enrollment is allowed".to_string())
        }
    })
    .await;
    if kind.is_none() {
        let _ = timeout(Duration::from_secs(2), conn.closed()).await;
        return;
    }
    let req: EnrollRequest = match timeout(
        STREAM_TIMEOUT,
        codec::read_msg(&mut recv, ENROLL_FRAME_LIMIT),
    )
    .await
    {
        Ok(Ok(Some(req))) => req,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => return protocol_error(&conn, &e),
        Err(_) => return protocol_error(&conn, &"no enrollment request within 10 s"),
    };
    let response = enroll(&shared, req).await;
    if let EnrollResponse::Refused { reason } = &response {
        info!(%reason, "enrollment refused");
    }
    if codec::write_msg(&mut send, &response).await.is_ok() {
        let _ = send.finish();
    }
    // Let the agent read the answer and close first.
    let _ = timeout(Duration::from_secs(5), conn.closed()).await;
    conn.close(close::DONE.into(), b"enrollment done");
}

async fn enroll(shared: &Arc<Shared>, req: EnrollRequest) -> EnrollResponse {
    let refused = |reason: String| EnrollResponse::Refused { reason };
    let Ok(token) = JoinToken::parse(&req.token) else {
        return refused(StateError::TokenInvalid.to_string());
    };
    let node_id = match Ca::csr_common_name(&req.csr_der) {
        Ok(id) if pki::is_valid_node_id(&id) => id,
        Ok(id) => return refused(format!("CSR names {id:?}, which is not a valid node id")),
        Err(e) => return refused(e.to_string()),
    };
    let task_shared = shared.clone();
    let task_node = node_id.clone();
    let result = tokio::task::spawn_blocking(move || {
        let shared = task_shared;
        shared
            .store
            .enroll(&token, &task_node, now_unix(), |serial| {
                sign(&shared, &req.csr_der, &task_node, serial)
            })
    })
    .await;
    match result {
        Ok(Ok(issued)) => {
            info!(node = %node_id, expires = issued.expires, "node enrolled");
            // A node enrolling again replaces its old session.
            shared
                .live
                .close(&node_id, close::REPLACED, "node enrolled again");
            EnrollResponse::Enrolled {
                node_id,
                cert_pem: issued.cert_pem,
                ca_pem: shared.ca.cert_pem().to_string(),
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
    match check {
        Ok(Ok(_)) => {}
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
                            Err("this session already has a control stream".into())
                        } else {
                            Ok(())
                        }
                    }
                    StreamKind::Admin => Err(format!(
                        "permission denied: admin operations need the admin certificate, not node {}'s",
                        info.name
                    )),
                    StreamKind::Enroll => Err("already enrolled: enrollment is for connections without a certificate".into()),
                    StreamKind::Blob => Ok(()),
                    StreamKind::Task => Err("task streams go from the coordinator to agents".into()),
                })
                .await;
                if kind == Some(StreamKind::Control) {
                    control(&shared, &conn, &info, send, recv).await;
                    control_active.store(false, Ordering::SeqCst);
                } else if kind == Some(StreamKind::Blob) {
                    let node = info.name.clone();
                    crate::distribution::handle_blob_stream(shared, conn, node, send, recv).await;
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
            AgentMessage::Heartbeat { node_id, facts } => {
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
                        "the certificate of node {me} expired; join again with a new token"
                    );
                    return refuse_and_close(conn, send, reason).await;
                }
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
                    shared
                        .store
                        .renew(&node_id, |serial| sign(&shared, &csr_der, &node_id, serial))
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

/// An admin connection: one request per stream.
async fn admin(shared: Arc<Shared>, conn: quinn::Connection, who: String) {
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
                    _ => Err("the admin certificate is for admin streams only".into()),
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
                let resp = admin_request(&shared, &who, req).await;
                if codec::write_msg(&mut send, &resp).await.is_ok() {
                    let _ = send.finish();
                }
            }
            .instrument(info_span!("admin_stream")),
        );
    }
}

async fn admin_request(shared: &Arc<Shared>, who: &str, req: AdminRequest) -> AdminResponse {
    let refused = |reason: String| AdminResponse::Refused { reason };
    // Runs are driven by tasks of this runtime, not a blocking thread.
    let req = match req {
        AdminRequest::Run(run) => {
            return accepted(crate::runs::start(shared, who, Want::Run(run)).await)
        }
        AdminRequest::Apply {
            clusterfile,
            dry_run: false,
        } => {
            return accepted(crate::runs::start(shared, who, Want::Clusterfile(clusterfile)).await)
        }
        AdminRequest::Apply {
            clusterfile,
            dry_run: true,
        } => {
            return match crate::runs::dry_run(shared, clusterfile).await {
                Ok(p) => AdminResponse::Planned(p),
                Err(reason) => refused(reason),
            }
        }
        AdminRequest::Join {
            cluster,
            masters,
            nodes,
        } => {
            let want = Want::Join {
                cluster,
                masters,
                nodes,
            };
            return accepted(crate::runs::start(shared, who, want).await);
        }
        AdminRequest::RemoveHosts { cluster, ips } => {
            return accepted(crate::runs::start(shared, who, Want::Remove { cluster, ips }).await)
        }
        AdminRequest::Drift { cluster } => {
            return match crate::runs::drift(shared, &cluster).await {
                Ok(d) => AdminResponse::Drift(d),
                Err(reason) => refused(reason),
            }
        }
        AdminRequest::DeleteCluster { cluster, prune } => {
            return match crate::runs::start_delete(shared, who, cluster, prune).await {
                Ok(list) => AdminResponse::Deleting(list),
                Err(reason) => refused(reason),
            };
        }
        other => other,
    };
    let task_shared = shared.clone();
    let res = tokio::task::spawn_blocking(move || {
        let shared = task_shared;
        match req {
            AdminRequest::ListNodes => node_infos(&shared).map(AdminResponse::Nodes),
            AdminRequest::RemoveNode { node } => {
                shared.store.revoke(&node, now_unix()).map(|node_id| {
                    info!(node = %node_id, "node revoked");
                    shared.dist.forget(&node_id);
                    shared.live.close(&node_id, close::REFUSED, "node revoked");
                    AdminResponse::Removed { node_id }
                })
            }
            AdminRequest::Distribute { image, nodes } => Ok(
                match shared
                    .dist
                    .assign(&shared.store, &image, &nodes, now_unix())
                {
                    Ok(a) => {
                        info!(image = %a.image, nodes = ?a.nodes, "image assigned");
                        AdminResponse::Distributing {
                            image: a.image,
                            manifest_digest: a.manifest_digest.to_string(),
                            nodes: a.nodes,
                        }
                    }
                    Err(e) => AdminResponse::Refused {
                        reason: e.to_string(),
                    },
                },
            ),
            AdminRequest::DistributionStatus => Ok(match shared.dist.status(&shared.store) {
                Ok(s) => AdminResponse::DistributionStatus(s),
                Err(e) => AdminResponse::Refused {
                    reason: e.to_string(),
                },
            }),
            AdminRequest::CancelDistribution { image } => {
                Ok(match shared.dist.cancel(&shared.store, &image) {
                    Ok(()) => AdminResponse::Cancelled { image },
                    Err(e) => AdminResponse::Refused {
                        reason: e.to_string(),
                    },
                })
            }
            AdminRequest::Clusters => Ok(match crate::runs::views(&shared) {
                Ok(v) => AdminResponse::Clusters(v),
                Err(reason) => AdminResponse::Refused { reason },
            }),
            AdminRequest::Audit { limit } => Ok(match crate::runs::audit_views(&shared, limit) {
                Ok(v) => AdminResponse::Audit(v),
                Err(reason) => AdminResponse::Refused { reason },
            }),
            AdminRequest::Run(_)
            | AdminRequest::DeleteCluster { .. }
            | AdminRequest::Apply { .. }
            | AdminRequest::Join { .. }
            | AdminRequest::RemoveHosts { .. }
            | AdminRequest::Drift { .. } => {
                unreachable!("handled above")
            }
            AdminRequest::CreateToken { ttl_secs, uses } => {
                Ok(match create_token(&shared, ttl_secs, uses) {
                    Ok(grant) => AdminResponse::Token(grant),
                    Err(reason) => AdminResponse::Refused { reason },
                })
            }
        }
    })
    .await;
    match res {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => refused(e.to_string()),
        Err(e) => refused(format!("internal error: {e}")),
    }
}

fn accepted(r: Result<(String, u64), String>) -> AdminResponse {
    match r {
        Ok((cluster, generation)) => AdminResponse::RunAccepted {
            cluster,
            generation,
        },
        Err(reason) => AdminResponse::Refused { reason },
    }
}

fn create_token(shared: &Shared, ttl_secs: u64, uses: u32) -> Result<TokenGrant, String> {
    crate::tokens::create(&shared.store, &shared.ca, ttl_secs, uses).map_err(|e| e.to_string())
}
