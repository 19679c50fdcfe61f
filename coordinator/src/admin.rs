//! The CLI's side of the admin API: connect to the running coordinator with
//! the admin certificate, one request per stream.
//!
//! A site with several coordinators: `--coordinator A,B,C` names them all;
//! the first that answers is used. A request that only the leader answers
//! (`AdminRequest::needs_leader`) and that reached another coordinator
//! comes back as `NotLeader` with the leader's address, and is sent there;
//! during an election (no leader known) it is asked again every second,
//! up to [`LEADER_WAIT`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use seaport_shared::codec::{self, CodecError};
use seaport_shared::tls::{self, TlsError};
use seaport_shared::wire::{
    self, AdminRequest, AdminResponse, StreamKind, WireError, ADMIN_FRAME_LIMIT,
    COORDINATOR_SERVER_NAME,
};

use crate::ca::{self, CaError};
use crate::daemon::read_serve_info;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request that needs the leader waits for an election.
pub const LEADER_WAIT: Duration = Duration::from_secs(30);

/// Errors talking to the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Ca(#[from] CaError),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("could not reach the coordinator at {addr}: {reason}; check that `seaport coordinator serve` runs there and that UDP to its port is open")]
    Unreachable { addr: String, reason: String },
    #[error("bad coordinator address {0:?}: {1}; give it as HOST:PORT, e.g. 10.0.0.1:7443")]
    BadAddress(String, String),
    #[error("admin stream: {0}")]
    Wire(#[from] WireError),
    #[error("admin stream: {0}")]
    Codec(#[from] CodecError),
    #[error("coordinator closed the admin stream without answering; its log says why (journalctl -u seaport-coordinator)")]
    NoAnswer,
    #[error("coordinator did not answer within {0:?}; it may be overloaded or stuck: see its log (journalctl -u seaport-coordinator)")]
    Timeout(Duration),
    #[error("coordinator refused: {0}")]
    Refused(String),
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    #[error("no running coordinator found under {0}: start `seaport coordinator serve` or pass --coordinator HOST:PORT")]
    NotRunning(String),
    #[error("no coordinator of the site led within {0:?} (an election is on, or the coordinators cannot reach etcd); try again, or see the coordinators' logs")]
    NoLeader(Duration),
}

/// Where the CLI finds the coordinator: `--coordinator`, else the address
/// `serve` wrote under the root (a wildcard address means this host).
pub fn coordinator_addr(root: &Path, explicit: Option<&str>) -> Result<Option<String>, AdminError> {
    if let Some(a) = explicit {
        return Ok(Some(a.to_string()));
    }
    Ok(read_serve_info(root).map(|info| {
        let mut addr = info.listen;
        if addr.ip().is_unspecified() {
            let ip: IpAddr = if addr.is_ipv6() {
                Ipv6Addr::LOCALHOST.into()
            } else {
                Ipv4Addr::LOCALHOST.into()
            };
            addr.set_ip(ip);
        }
        addr.to_string()
    }))
}

/// An admin connection to the coordinator.
pub struct AdminClient {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    /// To reach the leader when this coordinator is not it.
    config: quinn::ClientConfig,
}

impl AdminClient {
    /// Connects with the admin certificate under `root`.
    pub async fn connect(root: &Path, addr: &str) -> Result<AdminClient, AdminError> {
        let id = ca::admin_identity(root)?;
        let config = tls::mtls_client(&id.ca, id.chain, id.key)?;
        Self::connect_with(config, addr).await
    }

    /// Connects with any client configuration (tests use other identities)
    /// to the first of `addrs` (`HOST:PORT[,HOST:PORT...]`) that answers.
    pub async fn connect_with(
        config: quinn::ClientConfig,
        addrs: &str,
    ) -> Result<AdminClient, AdminError> {
        let mut last = None;
        for addr in addrs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match Self::connect_one(config.clone(), addr).await {
                Ok(c) => return Ok(c),
                Err(e @ AdminError::BadAddress(..)) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            AdminError::BadAddress(addrs.to_string(), "no address given".into())
        }))
    }

    async fn connect_one(
        config: quinn::ClientConfig,
        addr: &str,
    ) -> Result<AdminClient, AdminError> {
        let unreachable = |reason: String| AdminError::Unreachable {
            addr: addr.to_string(),
            reason,
        };
        let sock: SocketAddr = match addr.parse() {
            Ok(a) => a,
            Err(_) => tls::resolve(addr)
                .await
                .map_err(|e| AdminError::BadAddress(addr.to_string(), e.to_string()))?,
        };
        let endpoint = tls::client_endpoint(sock).map_err(|e| unreachable(e.to_string()))?;
        let connecting = endpoint
            .connect_with(config.clone(), sock, COORDINATOR_SERVER_NAME)
            .map_err(|e| unreachable(e.to_string()))?;
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable(format!("no answer within {CONNECT_TIMEOUT:?}"))),
        };
        Ok(AdminClient {
            endpoint,
            conn,
            config,
        })
    }

    /// Connects to the coordinator `--coordinator` names, or the one
    /// running under `root`.
    pub async fn connect_running(
        root: &Path,
        explicit: Option<&str>,
    ) -> Result<AdminClient, AdminError> {
        let Some(addr) = coordinator_addr(root, explicit)? else {
            return Err(AdminError::NotRunning(root.display().to_string()));
        };
        AdminClient::connect(root, &addr).await
    }

    /// Sends one request and waits for its answer. A refusal is an error.
    /// A request only the leader answers goes to the leader when this
    /// coordinator is not it.
    pub async fn request(&self, req: &AdminRequest) -> Result<AdminResponse, AdminError> {
        let started = std::time::Instant::now();
        let mut resp = self.request_here(req).await?;
        loop {
            let AdminResponse::NotLeader { leader } = resp else {
                return Ok(resp);
            };
            if started.elapsed() > LEADER_WAIT {
                return Err(AdminError::NoLeader(LEADER_WAIT));
            }
            resp = match leader {
                Some(addr) => {
                    let there = Self::connect_one(self.config.clone(), &addr).await?;
                    let r = there.request_here(req).await;
                    there.close().await;
                    r?
                }
                None => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    self.request_here(req).await?
                }
            };
        }
    }

    /// One request to this connection's coordinator.
    async fn request_here(&self, req: &AdminRequest) -> Result<AdminResponse, AdminError> {
        let fut = async {
            let (mut send, mut recv) =
                self.conn
                    .open_bi()
                    .await
                    .map_err(|e| AdminError::Unreachable {
                        addr: self.conn.remote_address().to_string(),
                        reason: e.to_string(),
                    })?;
            wire::client_handshake(&mut recv, &mut send, StreamKind::Admin).await?;
            codec::write_msg(&mut send, req).await?;
            let _ = send.finish();
            match codec::read_msg::<_, AdminResponse>(&mut recv, ADMIN_FRAME_LIMIT).await? {
                Some(AdminResponse::Refused { reason }) => Err(AdminError::Refused(reason)),
                Some(resp) => Ok(resp),
                None => Err(AdminError::NoAnswer),
            }
        };
        let result = tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| AdminError::Timeout(REQUEST_TIMEOUT))?;
        // A connection the coordinator closed says why (a revoked
        // certificate, say): that is the error to show.
        match (&result, self.conn.close_reason()) {
            (Err(_), Some(quinn::ConnectionError::ApplicationClosed(c)))
                if c.error_code == wire::close::SHUTDOWN.into() =>
            {
                Err(AdminError::ShuttingDown)
            }
            (Err(_), Some(quinn::ConnectionError::ApplicationClosed(c)))
                if !c.reason.is_empty() =>
            {
                Err(AdminError::Refused(
                    String::from_utf8_lossy(&c.reason).into_owned(),
                ))
            }
            _ => result,
        }
    }

    /// The underlying connection (tests open raw streams on it).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Closes the connection cleanly.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}
