//! `seaport-agent join`: enroll this host with a coordinator.
//!
//! The coordinator is trusted only through the CA pin given on the command
//! line (no trust on first use). The key is made here and only a CSR leaves
//! the host. The CSR asks for a name (the hostname as a label); the node id
//! is the coordinator's answer (the label and a suffix it draws, or, with a
//! token made for one node, that node's id). Nothing is written unless the
//! whole exchange succeeds.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::timeout;
use tracing::info;

use seaport_shared::codec::{self, CodecError};
use seaport_shared::pki::{self, CaPin, CertInfo, JoinToken, PkiError, Role};
use seaport_shared::tls::{self, TlsError};
use seaport_shared::wire::{
    self, EnrollRequest, EnrollResponse, StreamKind, WireError, COORDINATOR_SERVER_NAME,
    ENROLL_FRAME_LIMIT,
};

use crate::facts::HostIdentity;
use crate::identity::{cert_matches_key, Identity, IdentityError};

const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Errors of enrollment.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("{0}")]
    Pki(#[from] PkiError),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("could not resolve coordinator address {addr}: {source}")]
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    #[error("could not connect to the coordinator at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("enrollment stream: {0}")]
    Wire(#[from] WireError),
    #[error("enrollment stream: {0}")]
    Codec(#[from] CodecError),
    #[error("the coordinator refused to enroll this host: {0}")]
    Refused(String),
    #[error("the coordinator's answer does not check out: {0}; nothing was stored")]
    BadAnswer(String),
    #[error("no answer from the coordinator within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Identity(#[from] IdentityError),
}

/// What `join` needs.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// `HOST:PORT` of the coordinator.
    pub coordinator: String,
    pub token: String,
    /// `sha256:<hex>` of the coordinator CA's SubjectPublicKeyInfo.
    pub ca_pin: String,
    pub state_dir: PathBuf,
    pub host: HostIdentity,
    /// Addresses to name in the certificate.
    pub ips: Vec<IpAddr>,
}

/// A successful enrollment.
#[derive(Debug, Clone)]
pub struct Joined {
    pub node_id: String,
    /// Unix seconds.
    pub cert_expires: i64,
}

/// Enrolls this host and stores its identity.
pub async fn join(opts: &JoinOptions) -> Result<Joined, JoinError> {
    let pin = CaPin::parse(&opts.ca_pin)?;
    let token = JoinToken::parse(&opts.token)?;
    let label = opts.host.label();
    let key = pki::generate_key()?;
    let csr_der = pki::node_csr(&key, &label, &opts.ips)?;

    // Several coordinators of one site: the first that answers enrolls.
    let mut resp = Err(JoinError::Connect {
        addr: opts.coordinator.clone(),
        reason: "no coordinator address given".into(),
    });
    for addr in crate::session::endpoints(&opts.coordinator) {
        resp = enroll_at(&addr, &pin, &token, &csr_der).await;
        match &resp {
            Err(JoinError::Resolve { .. } | JoinError::Connect { .. } | JoinError::Timeout(_)) => {
                continue
            }
            _ => break,
        }
    }
    let resp = resp?;

    let (node_id, cert_pem, ca_pem, trust) = match resp {
        Some(EnrollResponse::Enrolled {
            node_id,
            cert_pem,
            ca_pem,
            trust,
        }) => {
            if !pki::is_valid_node_id(&node_id) {
                return Err(JoinError::BadAnswer(format!(
                    "{node_id:?} is not a node id"
                )));
            }
            (node_id, cert_pem, ca_pem, trust)
        }
        Some(EnrollResponse::Refused { reason }) => return Err(JoinError::Refused(reason)),
        None => {
            return Err(JoinError::BadAnswer(
                "the coordinator closed the stream without answering".into(),
            ))
        }
    };
    // The CA we store must be the pinned one, and the certificate ours.
    let ca_der = pki::certs_from_pem(&ca_pem, "the coordinator's CA")?.remove(0);
    if !CaPin::of_cert(&ca_der)?.matches(&pin) {
        return Err(JoinError::BadAnswer(
            "the CA sent does not match the pin".into(),
        ));
    }
    let cert_der = pki::certs_from_pem(&cert_pem, "the node certificate")?.remove(0);
    let info = CertInfo::from_der(&cert_der)?;
    if info.role != Role::Node || info.name != node_id || !cert_matches_key(&cert_der, &key) {
        return Err(JoinError::BadAnswer(
            "the certificate is not a node certificate for this host's key".into(),
        ));
    }
    // The image signature policy comes with the identity (before it: a
    // host whose node.pem exists has both).
    crate::trust::store(&opts.state_dir, &trust)
        .map_err(|e| JoinError::BadAnswer(format!("the image signature policy: {e}")))?;
    Identity::store_new(
        &opts.state_dir,
        &opts.coordinator,
        &ca_pem,
        &cert_pem,
        &key.serialize_pem(),
    )?;
    info!(node = %node_id, expires = info.not_after, "joined");
    Ok(Joined {
        node_id,
        cert_expires: info.not_after,
    })
}

/// One enrollment exchange with the coordinator at `coordinator`.
async fn enroll_at(
    coordinator: &str,
    pin: &CaPin,
    token: &JoinToken,
    csr_der: &[u8],
) -> Result<Option<EnrollResponse>, JoinError> {
    let addr = tls::resolve(coordinator)
        .await
        .map_err(|source| JoinError::Resolve {
            addr: coordinator.to_string(),
            source,
        })?;
    let endpoint = tls::client_endpoint(addr).map_err(|e| JoinError::Connect {
        addr: coordinator.to_string(),
        reason: e.to_string(),
    })?;
    let result = timeout(JOIN_TIMEOUT, async {
        let connecting = endpoint
            .connect_with(
                tls::enroll_client(pin.clone())?,
                addr,
                COORDINATOR_SERVER_NAME,
            )
            .map_err(|e| JoinError::Connect {
                addr: coordinator.to_string(),
                reason: e.to_string(),
            })?;
        let conn = connecting.await.map_err(|e| JoinError::Connect {
            addr: coordinator.to_string(),
            reason: e.to_string(),
        })?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| JoinError::Connect {
            addr: coordinator.to_string(),
            reason: e.to_string(),
        })?;
        wire::client_handshake(&mut recv, &mut send, StreamKind::Enroll).await?;
        codec::write_msg(
            &mut send,
            &EnrollRequest {
                token: token.to_string(),
                csr_der: csr_der.to_vec(),
            },
        )
        .await?;
        let _ = send.finish();
        let resp = codec::read_msg::<_, EnrollResponse>(&mut recv, ENROLL_FRAME_LIMIT).await?;
        conn.close(0u32.into(), b"enrolled");
        Ok::<_, JoinError>(resp)
    })
    .await;
    endpoint.wait_idle().await;
    result.map_err(|_| JoinError::Timeout(JOIN_TIMEOUT))?
}
