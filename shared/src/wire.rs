//! The Seaport wire protocol: what travels on each QUIC stream.
//!
//! Every stream, in either direction, opens with a [`StreamHello`]: seven raw
//! bytes (`SPRT`, a big-endian `u16` protocol version, a one-byte
//! [`StreamKind`]). They are not bincode on purpose: a peer of any version can
//! read them, so an unknown version gets a [`HelloReply::Refused`] with a clear
//! message instead of a decode error. The reply is raw too. After it, the
//! stream carries length-prefixed bincode frames ([`crate::codec`]) of the
//! message types below, one family per stream kind.
//!
//! | stream | opened by | frames |
//! | --- | --- | --- |
//! | `Enroll` | agent without a client certificate | [`EnrollRequest`] then [`EnrollResponse`] |
//! | `Control` | agent with its node certificate, one per session | [`AgentMessage`] and [`CoordinatorMessage`] |
//! | `Admin` | CLI with the admin certificate, one per request | [`AdminRequest`] then [`AdminResponse`] |
//! | `Blob` | agent to coordinator or agent to agent, one request per stream | [`crate::distribution::BlobRequest`] then [`crate::distribution::BlobResponse`] (and piece bytes) |
//! | `Task` | coordinator to agent, on the agent's session, one task per stream | [`TaskRequest`] then [`TaskEvent`]s, the last a `Finished` or `ResetDone` |

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::cluster::{ClusterName, ImageDigest, OperationKind, Role, Step};

/// Version carried in every [`StreamHello`].
pub const PROTOCOL_VERSION: u16 = 1;
/// TLS server name the coordinator's certificate carries and clients ask for.
/// The CA is private to one coordinator, so its name, not an address, is what
/// identifies it: agents reach it through any address or NAT.
pub const COORDINATOR_SERVER_NAME: &str = "coordinator.seaport";

/// How often an agent sends a heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// A node with no heartbeat for this long is shown offline.
pub const OFFLINE_AFTER: Duration = Duration::from_secs(10);

/// Frame limit on the unauthenticated enrollment stream.
pub const ENROLL_FRAME_LIMIT: u32 = 64 * 1024;
/// Frame limit on a node's control stream.
pub const CONTROL_FRAME_LIMIT: u32 = 1024 * 1024;
/// Frame limit on task streams (a step's log tail is bounded well below it).
pub const TASK_FRAME_LIMIT: u32 = 1024 * 1024;
/// Frame limit on admin streams (node listings can be long).
pub const ADMIN_FRAME_LIMIT: u32 = crate::codec::MAX_FRAME_LEN;

/// QUIC application close codes.
pub mod close {
    /// The coordinator shuts down.
    pub const SHUTDOWN: u32 = 0;
    /// A framing or decoding error.
    pub const PROTOCOL: u32 = 1;
    /// The peer's certificate or request is refused.
    pub const REFUSED: u32 = 2;
    /// A newer session of the same node replaced this one.
    pub const REPLACED: u32 = 3;
    /// The exchange (enrollment) is over.
    pub const DONE: u32 = 4;
    /// This coordinator does not lead its site now; the reason is the
    /// leader's address (`HOST:PORT`), where the agent goes next.
    pub const NOT_LEADER: u32 = 5;
}

const MAGIC: &[u8; 4] = b"SPRT";
const HELLO_LEN: usize = 7;
const MAX_REFUSAL_LEN: usize = 1024;

/// Errors of the stream handshake.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("peer is not speaking the seaport protocol (bad stream header)")]
    BadMagic,
    #[error("unknown stream kind {0}")]
    UnknownKind(u8),
    #[error("protocol version {theirs} is not supported (this side speaks version {ours}); upgrade the older of coordinator and agent")]
    UnsupportedVersion { theirs: u16, ours: u16 },
    #[error("stream refused by the peer: {0}")]
    Refused(String),
    #[error("bad stream handshake reply")]
    BadReply,
    #[error("i/o error during stream handshake: {0}")]
    Io(#[from] std::io::Error),
}

/// What a stream is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Enroll = 1,
    Control = 2,
    Admin = 3,
    Blob = 4,
    Task = 5,
}

impl StreamKind {
    fn from_byte(b: u8) -> Result<Self, WireError> {
        Ok(match b {
            1 => StreamKind::Enroll,
            2 => StreamKind::Control,
            3 => StreamKind::Admin,
            4 => StreamKind::Blob,
            5 => StreamKind::Task,
            other => return Err(WireError::UnknownKind(other)),
        })
    }
}

/// The first bytes of every stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHello {
    pub version: u16,
    pub kind: StreamKind,
}

impl StreamHello {
    /// A hello for this build's protocol version.
    pub fn new(kind: StreamKind) -> Self {
        StreamHello {
            version: PROTOCOL_VERSION,
            kind,
        }
    }

    pub fn to_bytes(self) -> [u8; HELLO_LEN] {
        let v = self.version.to_be_bytes();
        [
            MAGIC[0],
            MAGIC[1],
            MAGIC[2],
            MAGIC[3],
            v[0],
            v[1],
            self.kind as u8,
        ]
    }

    /// Parses the seven header bytes. The version is returned as is: checking
    /// it is [`StreamHello::check_version`]'s job, so the refusal can name it.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() != HELLO_LEN || &bytes[..4] != MAGIC {
            return Err(WireError::BadMagic);
        }
        let version = u16::from_be_bytes([bytes[4], bytes[5]]);
        let kind = StreamKind::from_byte(bytes[6])?;
        Ok(StreamHello { version, kind })
    }

    pub fn check_version(&self) -> Result<(), WireError> {
        if self.version != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion {
                theirs: self.version,
                ours: PROTOCOL_VERSION,
            });
        }
        Ok(())
    }
}

/// The answer to a [`StreamHello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloReply {
    Accepted { version: u16 },
    Refused { version: u16, reason: String },
}

impl HelloReply {
    /// `[status u8][version u16][reason length u16][reason utf-8]`.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            HelloReply::Accepted { version } => {
                let v = version.to_be_bytes();
                vec![0, v[0], v[1], 0, 0]
            }
            HelloReply::Refused { version, reason } => {
                let mut reason = reason.as_bytes();
                if reason.len() > MAX_REFUSAL_LEN {
                    reason = &reason[..MAX_REFUSAL_LEN];
                }
                let mut out = vec![1];
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&(reason.len() as u16).to_be_bytes());
                out.extend_from_slice(reason);
                out
            }
        }
    }

    /// Reads a reply from a stream.
    pub async fn read<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Self, WireError> {
        let mut head = [0u8; 5];
        reader.read_exact(&mut head).await?;
        let version = u16::from_be_bytes([head[1], head[2]]);
        let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
        if len > MAX_REFUSAL_LEN {
            return Err(WireError::BadReply);
        }
        let mut reason = vec![0u8; len];
        reader.read_exact(&mut reason).await?;
        match head[0] {
            0 if len == 0 => Ok(HelloReply::Accepted { version }),
            1 => Ok(HelloReply::Refused {
                version,
                reason: String::from_utf8_lossy(&reason).into_owned(),
            }),
            _ => Err(WireError::BadReply),
        }
    }
}

/// Client side of the handshake: send the hello, wait for acceptance.
pub async fn client_handshake<R, W>(
    reader: &mut R,
    writer: &mut W,
    kind: StreamKind,
) -> Result<(), WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    writer.write_all(&StreamHello::new(kind).to_bytes()).await?;
    match HelloReply::read(reader).await? {
        HelloReply::Accepted { .. } => Ok(()),
        HelloReply::Refused { reason, .. } => Err(WireError::Refused(reason)),
    }
}

/// Server side, first half: read and parse the hello. The caller decides
/// whether the kind is allowed, then calls [`accept_hello`] or [`refuse_hello`].
pub async fn read_hello<R: AsyncRead + Unpin>(reader: &mut R) -> Result<StreamHello, WireError> {
    let mut bytes = [0u8; HELLO_LEN];
    reader.read_exact(&mut bytes).await?;
    StreamHello::parse(&bytes)
}

pub async fn accept_hello<W: AsyncWrite + Unpin>(writer: &mut W) -> Result<(), WireError> {
    let reply = HelloReply::Accepted {
        version: PROTOCOL_VERSION,
    };
    writer.write_all(&reply.to_bytes()).await?;
    Ok(())
}

pub async fn refuse_hello<W: AsyncWrite + Unpin>(
    writer: &mut W,
    reason: &str,
) -> Result<(), WireError> {
    let reply = HelloReply::Refused {
        version: PROTOCOL_VERSION,
        reason: reason.to_string(),
    };
    writer.write_all(&reply.to_bytes()).await?;
    Ok(())
}

/// First frame on an `Enroll` stream: the token (proof of authorization) and
/// the CSR (proof of key possession). Nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub token: String,
    pub csr_der: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnrollResponse {
    Enrolled {
        node_id: String,
        cert_pem: String,
        ca_pem: String,
        /// The image signature policy, stored with the identity.
        trust: ImageTrust,
    },
    Refused {
        reason: String,
    },
}

/// What an agent reports about its host in each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_total: u64,
    pub memory_available: u64,
    pub disk_total: u64,
    pub disk_available: u64,
    pub ips: Vec<String>,
    pub machine_id: String,
    pub agent_version: String,
    pub uptime_secs: u64,
    /// The agent's counters since it started (metrics).
    #[serde(default)]
    pub counters: NodeCounters,
    /// The node-local API balancer, when the agent runs one.
    #[serde(default)]
    pub balancer: Option<BalancerFacts>,
}

/// The node-local API balancer as its agent reports it (heartbeats, the
/// answer to a [`BalancerTask`]): where it listens and every backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalancerFacts {
    /// `IP:PORT` it listens on.
    pub listen: String,
    /// The masters' API servers, in the order the coordinator gave them.
    pub backends: Vec<BackendFacts>,
    /// `IP:PORT` of the port forwarding to the local registries, if any.
    #[serde(default)]
    pub registry_listen: Option<String>,
    /// The registry hosts' local registries.
    #[serde(default)]
    pub registry: Vec<BackendFacts>,
}

/// One backend of a node-local API balancer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendFacts {
    /// `IP:PORT` of the master's API server.
    pub addr: String,
    /// Whether new connections go to it.
    pub healthy: bool,
    /// Why it is down, when it is.
    pub reason: Option<String>,
    /// Connections forwarded to it since the agent started.
    pub forwarded: u64,
    /// Dials to it that failed since the agent started.
    pub failed_dials: u64,
}

/// An agent's layer distribution counters since it started, sent with its
/// heartbeats for the coordinator's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCounters {
    /// Bytes it served to peers.
    pub served_bytes: u64,
    /// Bytes it fetched from peers.
    pub fetched_peer_bytes: u64,
    /// Bytes it fetched from the coordinator.
    pub fetched_coordinator_bytes: u64,
    /// Pieces it fetched again because their hash was wrong.
    pub refetched_pieces: u64,
}

/// Agent to coordinator, on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // one message at a time; boxing buys nothing
pub enum AgentMessage {
    /// `node_id` is a claim the coordinator checks against the certificate;
    /// the certificate's name is what counts.
    Heartbeat { node_id: String, facts: HostFacts },
    /// A CSR for a renewed certificate, signed by the node's key.
    Renew { csr_der: Vec<u8> },
}

/// Which cluster images an agent accepts: signed by one of `keys` (PEM
/// public keys, ECDSA P-256), and whether unsigned ones are refused. The
/// coordinator gives it to agents with their identity (at enrollment) and
/// at the start of every session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageTrust {
    pub keys: Vec<String>,
    pub require_signed: bool,
}

/// An image's signatures: the signature image (cosign's key-based layout)
/// of the digest an [`ApplyTask`] names, its manifest and the blobs the
/// manifest names (config and payloads). The agent checks every blob
/// against its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSignatures {
    pub manifest: Vec<u8>,
    pub blobs: Vec<Vec<u8>>,
}

/// Coordinator to agent, on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordinatorMessage {
    /// The image signature policy; sent first on every control stream.
    Trust(ImageTrust),
    HeartbeatAck {
        server_time: i64,
    },
    Renewed {
        cert_pem: String,
    },
    /// The coordinator refuses the last message; the session ends after it.
    Refused {
        reason: String,
    },
}

/// One request per `Admin` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    ListNodes,
    /// Revoke a node, named by node id or hostname.
    RemoveNode {
        node: String,
    },
    /// A join token. With `node`, it enrolls exactly that existing node
    /// (re-enrollment of a reinstalled or removed host), once.
    CreateToken {
        ttl_secs: u64,
        uses: u32,
        node: Option<String>,
    },
    /// Bind host IPs to a node on the admin's word (for addresses its
    /// connection does not come from: NAT, a second interface).
    ApproveIps {
        node: String,
        ips: Vec<String>,
    },
    /// Withdraw approvals given with `ApproveIps`.
    UnapproveIps {
        node: String,
        ips: Vec<String>,
    },
    /// Every admin certificate the coordinator issued.
    ListAdmins,
    /// Sign an admin certificate for the key in `csr_der`, named `name`.
    IssueAdmin {
        name: String,
        csr_der: Vec<u8>,
        ttl_secs: u64,
    },
    /// Revoke an admin certificate, by serial or (unique) name.
    RevokeAdmin {
        cert: String,
    },
    /// Assign an image of the coordinator's store to nodes (by node id,
    /// hostname or IP): they fetch its blobs.
    Distribute {
        image: String,
        nodes: Vec<String>,
    },
    /// Progress of every assigned image.
    DistributionStatus,
    /// Drop an image's assignment (agents then collect its blobs).
    CancelDistribution {
        image: String,
    },
    /// Install (or converge) a cluster: answered at once with
    /// [`AdminResponse::RunAccepted`]; progress is read with `Clusters`.
    Run(RunRequest),
    /// Every cluster and the state of its run.
    Clusters,
    /// Undo a cluster's install on every host (all clusters when `None`).
    DeleteCluster {
        cluster: Option<ClusterName>,
        prune: bool,
        /// Go on without the hosts whose agents are offline (they are
        /// named in the result and left as they are).
        #[serde(default)]
        force: bool,
    },
    /// Converge a cluster to a Clusterfile (its text). With `dry_run`,
    /// answered with `Planned` and nothing changes.
    Apply {
        clusterfile: String,
        dry_run: bool,
        /// Preflight errors to ignore (`--ignore-preflight`).
        ignore_preflight: Vec<String>,
    },
    /// Add hosts to a cluster.
    Join {
        cluster: ClusterName,
        masters: Vec<String>,
        nodes: Vec<String>,
        /// Preflight errors to ignore (`--ignore-preflight`).
        ignore_preflight: Vec<String>,
    },
    /// Remove hosts from a cluster (cleaned, reset, deleted from it).
    RemoveHosts {
        cluster: ClusterName,
        ips: Vec<String>,
        /// Hosts whose agents are offline are left out (not reset) instead
        /// of waited for; a leaving master's etcd member is removed from a
        /// living master.
        force: bool,
    },
    /// The last `limit` entries of the audit log.
    Audit {
        limit: u32,
    },
    /// Ask every host of a cluster to check the files its install wrote.
    Drift {
        cluster: ClusterName,
    },
    /// Run the preflight checks on hosts, changing nothing.
    Check(CheckRequest),
}

/// What `seaport check` asks for: hosts from a Clusterfile, or masters and
/// nodes (then `image`, if given, sizes the disk check).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRequest {
    pub clusterfile: Option<String>,
    pub cluster: ClusterName,
    pub masters: Vec<String>,
    pub nodes: Vec<String>,
    pub image: Option<String>,
    pub env: Vec<(String, String)>,
    pub ignore_preflight: Vec<String>,
}

/// What an apply would do, per host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedApply {
    pub cluster: ClusterName,
    pub image: String,
    pub operation: OperationKind,
    pub stages: Vec<String>,
    pub hosts: Vec<PlannedHost>,
    /// What the Clusterfile holds that is accepted but ignored.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedHost {
    pub ip: String,
    pub role: Role,
    /// The enrolled node, if any (`None`: no agent on that host).
    pub node: Option<String>,
    /// The stages that touch this host.
    pub stages: Vec<String>,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditView {
    pub seq: u64,
    pub at: i64,
    pub who: String,
    pub what: String,
    pub result: String,
}

/// One host's drift report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDrift {
    pub ip: String,
    pub modified: Vec<String>,
    pub missing: Vec<String>,
    pub checked: u64,
    pub error: Option<String>,
}

/// What `seaport run` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    pub cluster: ClusterName,
    /// An image of the coordinator's store.
    pub image: String,
    /// Master IPs; the first is master0.
    pub masters: Vec<String>,
    /// Worker IPs.
    pub nodes: Vec<String>,
    /// Cluster env, `K=V` pairs in order.
    pub env: Vec<(String, String)>,
    /// Preflight errors to ignore (`--ignore-preflight`).
    pub ignore_preflight: Vec<String>,
}

/// One step as the coordinator records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepView {
    pub step: String,
    pub state: StepState,
    /// Last lines of the step's output (failures and hooks).
    pub log_tail: String,
}

/// A host of a cluster and how far it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    pub ip: String,
    pub node_id: String,
    pub hostname: String,
    pub role: Role,
    /// The phase the host is in (or last finished), e.g. `fetch`, `runtime`.
    pub phase: String,
    /// Layer bytes on the host and in total (the fetch phase).
    pub fetched_bytes: u64,
    pub total_bytes: u64,
    /// Steps in the order they ran.
    pub steps: Vec<StepView>,
    /// The last error on this host, if any.
    pub error: Option<String>,
    /// Whether its node is connected now.
    pub online: bool,
    /// Its node-local API balancer, as its agent last reported it.
    pub balancer: Option<BalancerFacts>,
}

/// The state of a cluster's latest operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Succeeded,
    Failed,
    Deleting,
    Deleted,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Deleting => "deleting",
            RunState::Deleted => "deleted",
        }
    }

    /// Whether nothing more will happen without a new request.
    pub fn is_final(self) -> bool {
        !matches!(self, RunState::Running | RunState::Deleting)
    }
}

/// A cluster as `seaport status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub cluster: ClusterName,
    pub image: String,
    pub manifest_digest: ImageDigest,
    pub state: RunState,
    /// Increases with every `run` and `delete` of this cluster.
    pub generation: u64,
    /// The phase running now (or the last one), and every phase in order.
    pub phase: String,
    pub phases: Vec<String>,
    pub hosts: Vec<HostView>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// Why the run failed, naming the host and step.
    pub error: Option<String>,
    /// Hosts the last operation removed from the cluster without reaching
    /// them (`delete -m/-n --force` of offline hosts), each with what was
    /// not done there.
    #[serde(default)]
    pub left_out: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminResponse {
    Nodes(Vec<NodeInfo>),
    Removed {
        node_id: String,
    },
    Token(TokenGrant),
    /// The node's approved IPs after an approval change.
    Approved {
        node_id: String,
        approved_ips: Vec<String>,
    },
    Admins(Vec<AdminCertInfo>),
    AdminIssued {
        info: AdminCertInfo,
        cert_pem: String,
        ca_pem: String,
    },
    AdminRevoked(AdminCertInfo),
    Refused {
        reason: String,
    },
    /// The assignment as stored: image, manifest digest, node ids.
    Distributing {
        image: String,
        manifest_digest: String,
        nodes: Vec<String>,
    },
    DistributionStatus(crate::distribution::DistributionStatus),
    Cancelled {
        image: String,
    },
    /// The run was accepted and goes on in the coordinator.
    RunAccepted {
        cluster: ClusterName,
        generation: u64,
    },
    Clusters(Vec<ClusterView>),
    /// The clusters being deleted, with their new generations.
    Deleting(Vec<(ClusterName, u64)>),
    Planned(PlannedApply),
    Audit(Vec<AuditView>),
    Drift(Vec<HostDrift>),
    /// Every host's preflight checks.
    Checked(Vec<crate::preflight::HostChecks>),
    /// The request needs the coordinator that leads the site (it drives
    /// operations and holds the agents' sessions); this one does not. The
    /// leader's address, when one is known: ask there.
    NotLeader {
        leader: Option<String>,
    },
}

impl AdminRequest {
    /// Whether only the coordinator that leads its site answers it: what
    /// starts or drives an operation, or needs the agents' sessions (which
    /// are with the leader). The others are answered from the shared state
    /// by any coordinator.
    pub fn needs_leader(&self) -> bool {
        !matches!(
            self,
            AdminRequest::Apply { dry_run: true, .. }
                | AdminRequest::CreateToken { .. }
                | AdminRequest::ApproveIps { .. }
                | AdminRequest::UnapproveIps { .. }
                | AdminRequest::ListAdmins
                | AdminRequest::IssueAdmin { .. }
                | AdminRequest::RevokeAdmin { .. }
                | AdminRequest::Audit { .. }
        )
    }
}

/// One unit of work for an agent, on its own `Task` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // one per stream
pub enum TaskRequest {
    Apply(ApplyTask),
    Reset(ResetTask),
    /// Read files of the cluster's rootfs (answered with `Files`).
    ReadFiles(ReadFilesTask),
    /// Write files into the cluster's rootfs (answered with `Written`).
    WriteFiles(WriteFilesTask),
    /// Run a shell plugin or command on the host (step events, then
    /// `Finished`).
    Shell(ShellTask),
    /// Check the files the install wrote outside the agent's directories
    /// (answered with `Drift`).
    Drift(DriftTask),
    /// Check the host before an install changes it (answered with
    /// `Preflight`).
    Preflight(crate::preflight::PreflightTask),
    /// Run (or update, or stop) the node-local API balancer (answered
    /// with `Balancer`).
    Balancer(BalancerTask),
}

/// The node-local API balancer a host runs for a cluster: it listens on
/// `listen_ip:port` (the agent adds `listen_ip` to the loopback link when
/// it is not a loopback address) and forwards to `backends`. An empty list
/// stops it. The agent keeps the last one it was given on the host, so it
/// runs again after the agent restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalancerTask {
    pub cluster: ClusterName,
    pub listen_ip: String,
    pub port: u16,
    /// `IP:PORT` of every master's API server.
    pub backends: Vec<String>,
    /// The port on `listen_ip` that forwards to the local registries.
    #[serde(default)]
    pub registry_port: Option<u16>,
    /// `IP:PORT` of every registry host's local registry.
    #[serde(default)]
    pub registry_backends: Vec<String>,
    /// The local registry serves TLS: its checks verify this CA (PEM) and
    /// the registry's domain (`registry_domain`). None: plain HTTP.
    #[serde(default)]
    pub registry_ca: Option<String>,
    /// The local registry's domain, the name its certificate carries.
    #[serde(default)]
    pub registry_domain: Option<String>,
}

/// Files of `<data-root>/<cluster>/rootfs`, by path relative to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadFilesTask {
    pub cluster: ClusterName,
    pub paths: Vec<String>,
    /// Directories whose `*.yaml` and `*.yml` files are read too (not
    /// recursively).
    pub dirs: Vec<String>,
}

/// Files to write into the cluster's rootfs (relative paths inside it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteFilesTask {
    pub cluster: ClusterName,
    pub files: Vec<(String, Vec<u8>)>,
}

/// A shell script run with `bash -c` as root on the host, in the cluster's
/// rootfs directory, with `env` (and `HostIP`) set. Files it writes under
/// /etc, /usr and /opt are journaled, so a reset undoes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellTask {
    pub cluster: ClusterName,
    /// The step name it is reported and journaled under (e.g.
    /// `plugin:NAME@PreInit`); a done step with the same script is skipped
    /// unless `always`.
    pub step: String,
    pub script: String,
    pub env: Vec<(String, String)>,
    pub host_ip: String,
    pub timeout_secs: u64,
    /// Run even when a step of this name is done with the same script.
    pub always: bool,
}

/// Check the host against what the install wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftTask {
    pub cluster: ClusterName,
}

/// Run steps of an install on this host. The agent runs the image's steps
/// for `role` in their order, only those in `steps`, skipping what its
/// journal says is done with the same inputs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyTask {
    pub cluster: ClusterName,
    /// The image's name (for messages).
    pub image: String,
    /// What the name resolved to when the operation was planned: the agent
    /// reads the image from its blob store by it.
    pub manifest_digest: ImageDigest,
    pub role: Role,
    pub steps: Vec<Step>,
    pub host_ip: String,
    pub master0_ip: String,
    pub registry_ip: String,
    pub master_ips: Vec<String>,
    pub env: Vec<(String, String)>,
    pub host_env: Vec<(String, String)>,
    /// kubeadm documents merged over the image's.
    pub kubeadm_config: Option<String>,
    /// The first master's join data (JSON), for joining hosts. Secret.
    pub join_data: Option<String>,
    /// The cluster is installed from another image on this host: move it
    /// to this one (steps whose inputs changed run again; kubeadm does not).
    pub upgrade: bool,
    /// The signatures of `manifest_digest`, if the image has any.
    pub signatures: Option<ImageSignatures>,
    /// What the cluster's Clusterfile adds to the policy the agent holds:
    /// more trusted keys, and whether signatures are required.
    pub cluster_trust: ImageTrust,
    /// The local registry's `localRegistry.username`/`password`: its
    /// htpasswd on registry hosts, the runtime's and kubelet's credentials
    /// on every host. Secret.
    pub registry_auth: Option<RegistryCredentials>,
    /// The local registry's TLS (`localRegistry.insecure: false` or a
    /// `cert`): the CA every host's runtime trusts, and on registry hosts
    /// the certificate and key it serves. None: plain HTTP. Secret (the
    /// key).
    pub registry_tls: Option<RegistryTls>,
}

/// The local registry's TLS as one host needs it. The key never shows in
/// `Debug` output (logs).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryTls {
    /// The CA (PEM) the hosts trust.
    pub ca: String,
    /// The server certificate and any intermediates (PEM), registry hosts
    /// only.
    pub certificate: Option<String>,
    /// The server's key (PEM), registry hosts only.
    pub key: Option<String>,
}

impl std::fmt::Debug for RegistryTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryTls")
            .field("ca", &self.ca)
            .field("certificate", &self.certificate)
            .field("key", &self.key.as_ref().map(|_| "<secret>"))
            .finish()
    }
}

/// A registry's username and password. The password never shows in
/// `Debug` output (logs).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<secret>")
            .finish()
    }
}

impl std::fmt::Debug for ApplyTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplyTask")
            .field("cluster", &self.cluster)
            .field("image", &self.image)
            .field("role", &self.role)
            .field("steps", &self.steps)
            .field("host_ip", &self.host_ip)
            .field("join_data", &self.join_data.as_ref().map(|_| "<secret>"))
            .field("registry_auth", &self.registry_auth)
            .field("registry_tls", &self.registry_tls)
            .finish_non_exhaustive()
    }
}

/// Undo a cluster's install on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetTask {
    pub cluster: ClusterName,
    pub prune: bool,
}

/// How a step stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    Pending,
    Running { attempt: u32 },
    Skipped,
    Done { summary: String, elapsed_ms: u64 },
    Failed { error: String },
}

impl StepState {
    pub fn label(&self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running { .. } => "running",
            StepState::Skipped => "skipped",
            StepState::Done { .. } => "done",
            StepState::Failed { .. } => "failed",
        }
    }
}

/// Agent to coordinator on a `Task` stream.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskEvent {
    Step {
        step: String,
        state: StepState,
    },
    /// The apply task ended. `join_data` (JSON, secret) comes from the first
    /// master's kubeadm step.
    Finished {
        ok: bool,
        error: Option<String>,
        join_data: Option<String>,
    },
    ResetDone {
        had_install: bool,
        actions: Vec<String>,
        warnings: Vec<String>,
        error: Option<String>,
    },
    /// The files asked for: `None` for one that does not exist.
    Files {
        files: Vec<(String, Option<Vec<u8>>)>,
        error: Option<String>,
    },
    Written {
        error: Option<String>,
    },
    /// Host paths the install wrote that differ from what it wrote, or are
    /// gone; `checked` files in all.
    Drift {
        modified: Vec<String>,
        missing: Vec<String>,
        checked: u64,
        error: Option<String>,
    },
    /// The host's preflight checks and the hostname it has now.
    Preflight {
        hostname: String,
        checks: Vec<crate::preflight::CheckResult>,
    },
    /// The balancer as it runs now (none when the task stopped it).
    Balancer {
        facts: Option<BalancerFacts>,
        error: Option<String>,
    },
}

impl std::fmt::Debug for TaskEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskEvent::Step { step, state } => f
                .debug_struct("Step")
                .field("step", step)
                .field("state", state)
                .finish(),
            TaskEvent::Finished {
                ok,
                error,
                join_data,
            } => f
                .debug_struct("Finished")
                .field("ok", ok)
                .field("error", error)
                .field("join_data", &join_data.as_ref().map(|_| "<secret>"))
                .finish(),
            TaskEvent::ResetDone {
                had_install,
                actions,
                warnings,
                error,
            } => f
                .debug_struct("ResetDone")
                .field("had_install", had_install)
                .field("actions", actions)
                .field("warnings", warnings)
                .field("error", error)
                .finish(),
            TaskEvent::Files { files, error } => f
                .debug_struct("Files")
                .field(
                    "files",
                    &files.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
                )
                .field("error", error)
                .finish(),
            TaskEvent::Written { error } => {
                f.debug_struct("Written").field("error", error).finish()
            }
            TaskEvent::Drift {
                modified,
                missing,
                checked,
                error,
            } => f
                .debug_struct("Drift")
                .field("modified", modified)
                .field("missing", missing)
                .field("checked", checked)
                .field("error", error)
                .finish(),
            TaskEvent::Preflight { hostname, checks } => f
                .debug_struct("Preflight")
                .field("hostname", hostname)
                .field("checks", checks)
                .finish(),
            TaskEvent::Balancer { facts, error } => f
                .debug_struct("Balancer")
                .field("facts", facts)
                .field("error", error)
                .finish(),
        }
    }
}

/// A node as the inventory shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    pub hostname: String,
    /// The addresses the node reports (claims).
    pub ips: Vec<String>,
    /// Every address claimed or approved, and what binds it to the node.
    pub addresses: Vec<NodeAddress>,
    /// The source address of the node's latest session, as the coordinator
    /// saw it.
    pub connects_from: Option<String>,
    pub status: NodeStatus,
    /// Unix seconds of the last heartbeat, if any.
    pub last_seen: Option<i64>,
    pub agent_version: String,
    /// Unix seconds at which the node's current certificate expires.
    pub cert_expires: i64,
    pub enrolled_at: i64,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_total: u64,
}

/// An address of a node and what binds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddress {
    pub ip: String,
    pub binding: IpBinding,
}

/// What ties a host IP to a node. Only `Connection` and `Approved` are
/// evidence: a plan places a host's tasks on a node only through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpBinding {
    /// The node reports it and its session connects from it.
    Connection,
    /// An admin approved it (`seaport nodes approve`).
    Approved,
    /// Only the node says so.
    Claimed,
}

impl IpBinding {
    pub fn as_str(self) -> &'static str {
        match self {
            IpBinding::Connection => "connection",
            IpBinding::Approved => "approved",
            IpBinding::Claimed => "claimed",
        }
    }

    /// Whether it is evidence (not only the node's word).
    pub fn is_evidence(self) -> bool {
        !matches!(self, IpBinding::Claimed)
    }
}

/// An admin certificate as `seaport admin list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminCertInfo {
    pub serial: u64,
    pub name: String,
    /// Unix seconds.
    pub issued_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    /// The coordinator's own (`ROOT/coordinator/admin.pem`), renewed by it.
    pub local: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Online,
    Offline,
    Expired,
    Revoked,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Online => "online",
            NodeStatus::Offline => "offline",
            NodeStatus::Expired => "expired",
            NodeStatus::Revoked => "revoked",
        }
    }
}

/// A freshly created join token, the only time its secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenGrant {
    pub token: String,
    pub ca_pin: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub uses: u32,
    /// The existing node it re-enrolls, if it is bound to one.
    pub node: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip_and_version_check() {
        let hello = StreamHello::new(StreamKind::Control);
        let parsed = StreamHello::parse(&hello.to_bytes()).unwrap();
        assert_eq!(parsed, hello);
        parsed.check_version().unwrap();

        let future = StreamHello {
            version: PROTOCOL_VERSION + 1,
            kind: StreamKind::Control,
        };
        let err = StreamHello::parse(&future.to_bytes())
            .unwrap()
            .check_version()
            .unwrap_err();
        assert!(
            err.to_string().contains("version 2 is not supported"),
            "{err}"
        );
    }

    #[test]
    fn hello_rejects_garbage() {
        assert!(matches!(
            StreamHello::parse(b"GET / H"),
            Err(WireError::BadMagic)
        ));
        assert!(matches!(
            StreamHello::parse(b"SPRT\0\x01\x09"),
            Err(WireError::UnknownKind(9))
        ));
    }

    #[tokio::test]
    async fn refusal_reaches_the_client_with_its_reason() {
        let reply = HelloReply::Refused {
            version: 1,
            reason: "protocol version 9 is not supported".into(),
        };
        let bytes = reply.to_bytes();
        let mut reader: &[u8] = &bytes;
        let mut sink = Vec::new();
        let err = client_handshake(&mut reader, &mut sink, StreamKind::Control)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
        assert_eq!(sink, StreamHello::new(StreamKind::Control).to_bytes());
    }

    #[test]
    fn messages_round_trip_through_the_codec() {
        let msg = AgentMessage::Heartbeat {
            node_id: "host-1234abcd".into(),
            facts: HostFacts {
                hostname: "host".into(),
                ips: vec!["198.18.0.11".into()],
                cpus: 2,
                ..Default::default()
            },
        };
        let body = crate::codec::encode(&msg).unwrap();
        assert_eq!(crate::codec::decode::<AgentMessage>(&body).unwrap(), msg);
    }
}
