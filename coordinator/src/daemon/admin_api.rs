//! The admin API: one request per `Admin` stream of a connection with an
//! admin certificate, answered from the state store, the distribution
//! tracker and the operations.

use std::sync::Arc;

use tracing::{info, warn};

use seaport_shared::clock::now_unix;
use seaport_shared::cluster::ClusterName;
use seaport_shared::wire::{close, AdminCertInfo, AdminRequest, AdminResponse};

use super::shared::{node_infos, Shared};
use crate::ca;
use crate::operations::{OperationError, Want};
use crate::state::{AdminRecord, StateError};

pub(super) async fn admin_request(
    shared: &Arc<Shared>,
    who: &str,
    serial: u64,
    req: AdminRequest,
) -> AdminResponse {
    let refused = |reason: String| AdminResponse::Refused { reason };
    if req.needs_leader() {
        if let Some(leader) = shared.follows() {
            return AdminResponse::NotLeader {
                leader: leader.map(|l| l.address),
            };
        }
    }
    // Runs are driven by tasks of this runtime, not a blocking thread.
    let req = match req {
        AdminRequest::Run(run) => {
            let ignore = run.ignore_preflight.clone();
            return accepted(
                shared
                    .ops
                    .accept_ignoring(who, Want::Run(run), &ignore)
                    .await,
            );
        }
        AdminRequest::Apply {
            clusterfile,
            dry_run: false,
            ignore_preflight,
        } => {
            let want = Want::Clusterfile(clusterfile);
            return accepted(
                shared
                    .ops
                    .accept_ignoring(who, want, &ignore_preflight)
                    .await,
            );
        }
        AdminRequest::Apply {
            clusterfile,
            dry_run: true,
            ..
        } => {
            return match shared.ops.dry_run(clusterfile).await {
                Ok(p) => AdminResponse::Planned(p),
                Err(e) => refused(e.to_string()),
            }
        }
        AdminRequest::Join {
            cluster,
            masters,
            nodes,
            ignore_preflight,
        } => {
            let want = Want::Join {
                cluster,
                masters,
                nodes,
            };
            return accepted(
                shared
                    .ops
                    .accept_ignoring(who, want, &ignore_preflight)
                    .await,
            );
        }
        AdminRequest::Check(req) => {
            return match shared.ops.check(req).await {
                Ok(c) => AdminResponse::Checked(c),
                Err(e) => refused(e.to_string()),
            }
        }
        AdminRequest::RemoveHosts { cluster, ips } => {
            return accepted(shared.ops.accept(who, Want::Remove { cluster, ips }).await)
        }
        AdminRequest::Drift { cluster } => {
            return match shared.ops.drift(&cluster).await {
                Ok(d) => AdminResponse::Drift(d),
                Err(e) => refused(e.to_string()),
            }
        }
        AdminRequest::DeleteCluster { cluster, prune } => {
            return match shared.ops.delete(who, cluster, prune).await {
                Ok(list) => AdminResponse::Deleting(list),
                Err(e) => refused(e.to_string()),
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
                    crate::metrics::global().forget_node(&node_id);
                    shared.live.close(&node_id, close::REFUSED, "node revoked");
                    AdminResponse::Removed { node_id }
                })
            }
            AdminRequest::Distribute { image, nodes } => Ok(
                match shared
                    .dist
                    .resolve(&image)
                    .and_then(|digest| shared.dist.assign(&image, digest, &nodes, now_unix()))
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
            AdminRequest::DistributionStatus => Ok(match shared.dist.status() {
                Ok(s) => AdminResponse::DistributionStatus(s),
                Err(e) => AdminResponse::Refused {
                    reason: e.to_string(),
                },
            }),
            AdminRequest::CancelDistribution { image } => Ok(match shared.dist.cancel(&image) {
                Ok(()) => AdminResponse::Cancelled { image },
                Err(e) => AdminResponse::Refused {
                    reason: e.to_string(),
                },
            }),
            AdminRequest::Clusters => Ok(match shared.ops.views() {
                Ok(v) => AdminResponse::Clusters(v),
                Err(e) => AdminResponse::Refused {
                    reason: e.to_string(),
                },
            }),
            AdminRequest::Audit { limit } => Ok(match shared.ops.audit_log(limit) {
                Ok(v) => AdminResponse::Audit(v),
                Err(e) => AdminResponse::Refused {
                    reason: e.to_string(),
                },
            }),
            AdminRequest::Run(_)
            | AdminRequest::DeleteCluster { .. }
            | AdminRequest::Apply { .. }
            | AdminRequest::Join { .. }
            | AdminRequest::RemoveHosts { .. }
            | AdminRequest::Drift { .. }
            | AdminRequest::Check(_) => {
                unreachable!("handled above")
            }
            AdminRequest::CreateToken {
                ttl_secs,
                uses,
                node,
            } => Ok(
                match crate::tokens::create(
                    &*shared.store,
                    &shared.ca,
                    ttl_secs,
                    uses,
                    node.as_deref(),
                ) {
                    Ok(grant) => AdminResponse::Token(grant),
                    Err(e) => refused(e.to_string()),
                },
            ),
            AdminRequest::ApproveIps { node, ips } => shared
                .store
                .approve_ips(&node, &ips, true)
                .map(|(node_id, approved_ips)| {
                    info!(node = %node_id, ?ips, "host IPs approved");
                    AdminResponse::Approved {
                        node_id,
                        approved_ips,
                    }
                }),
            AdminRequest::UnapproveIps { node, ips } => shared
                .store
                .approve_ips(&node, &ips, false)
                .map(|(node_id, approved_ips)| {
                    info!(node = %node_id, ?ips, "host IP approvals withdrawn");
                    AdminResponse::Approved {
                        node_id,
                        approved_ips,
                    }
                }),
            AdminRequest::ListAdmins => shared
                .store
                .admins()
                .map(|list| AdminResponse::Admins(list.iter().map(AdminRecord::info).collect())),
            AdminRequest::IssueAdmin {
                name,
                csr_der,
                ttl_secs,
            } => Ok(
                match crate::tokens::issue_admin(
                    &*shared.store,
                    &shared.ca,
                    &name,
                    &csr_der,
                    ttl_secs,
                ) {
                    Ok((info, cert_pem)) => {
                        info!(serial = info.serial, name = %info.name, "admin certificate issued");
                        AdminResponse::AdminIssued {
                            info,
                            cert_pem,
                            ca_pem: shared.ca.cert_pem().to_string(),
                        }
                    }
                    Err(e) => refused(e.to_string()),
                },
            ),
            AdminRequest::RevokeAdmin { cert } => Ok(match revoke_admin(&shared, &cert, serial) {
                Ok(info) => AdminResponse::AdminRevoked(info),
                Err(e) => refused(e.to_string()),
            }),
        }
    })
    .await;
    match res {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => refused(e.to_string()),
        Err(e) => refused(format!("internal error: {e}")),
    }
}

fn accepted(r: Result<(ClusterName, u64), OperationError>) -> AdminResponse {
    match r {
        Ok((cluster, generation)) => AdminResponse::RunAccepted {
            cluster,
            generation,
        },
        Err(e) => AdminResponse::Refused {
            reason: e.to_string(),
        },
    }
}

/// Why an admin certificate is not revoked.
#[derive(Debug, thiserror::Error)]
enum RevokeError {
    #[error("admin certificate serial {0} is the one making this request: issue another (`seaport admin issue`) and revoke this one with it")]
    OwnCertificate(u64),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Revokes an admin certificate (not the one asking) and closes its open
/// connections; the coordinator's own is then re-issued at once.
fn revoke_admin(shared: &Shared, cert: &str, asking: u64) -> Result<AdminCertInfo, RevokeError> {
    let rec = shared.store.resolve_admin(cert)?;
    if rec.serial == asking {
        return Err(RevokeError::OwnCertificate(rec.serial));
    }
    let rec = shared.store.revoke_admin(rec.serial, now_unix())?;
    let closed = shared.admins.close(
        rec.serial,
        close::REFUSED,
        &format!("admin certificate serial {} was revoked", rec.serial),
    );
    info!(serial = rec.serial, name = %rec.name, closed, "admin certificate revoked");
    if rec.local {
        match ca::ensure_local_admin(&shared.root, &*shared.store, &shared.ca) {
            Ok(_) => info!("issued a new local admin certificate"),
            Err(e) => warn!(error = %e, "could not re-issue the local admin certificate"),
        }
    }
    Ok(rec.info())
}
