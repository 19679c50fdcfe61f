//! Errors of operations: refusing a request, and a stage failing.

use seaport_shared::cluster::ClusterName;

use super::agents::AgentsError;
use super::store::StoreError;
use crate::clusterfile::ClusterfileError;
use crate::converge::ConvergeError;
use crate::plan::PlanError;

/// Why a request on a cluster is refused.
#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    /// The Clusterfile does not parse or resolve.
    #[error("Clusterfile: {0}")]
    Clusterfile(#[from] ClusterfileError),
    /// The local registry's certificate could not be made.
    #[error("the local registry's certificate: {0}")]
    RegistryCert(seaport_shared::registry_cert::RegistryCertError),
    /// `seaport join` on a cluster that is not installed.
    #[error("no cluster named {0}: install it with `seaport run` or `seaport apply` first")]
    NotInstalled(ClusterName),
    /// No such cluster.
    #[error("no cluster named {0}")]
    NoSuchCluster(ClusterName),
    /// `seaport delete` of no such cluster.
    #[error("no cluster named {0} (see `seaport status`)")]
    NothingToDelete(ClusterName),
    /// A host to add is in the cluster.
    #[error("{ip} is already a host of cluster {cluster}")]
    AlreadyAHost {
        /// The host.
        ip: String,
        /// The cluster.
        cluster: ClusterName,
    },
    /// A host to remove is not in the cluster.
    #[error("{ip} is not a host of cluster {cluster}")]
    NotAHost {
        /// The host.
        ip: String,
        /// The cluster.
        cluster: ClusterName,
    },
    /// The cluster is being deleted.
    #[error("cluster {0} is being deleted; wait for it (`seaport status`)")]
    BeingDeleted(ClusterName),
    /// The coordinator's image store cannot be opened.
    #[error("the image store: {0}")]
    ImageStore(seaport_rootfs::store::StoreError),
    /// The image is not in the coordinator's store (or unusable).
    #[error(transparent)]
    Image(seaport_rootfs::store::StoreError),
    /// The image's signatures cannot be checked, or the policy refuses it.
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    /// The hosts cannot be planned.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The operation cannot be planned.
    #[error(transparent)]
    Converge(#[from] ConvergeError),
    /// The records cannot be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The agents cannot be asked.
    #[error(transparent)]
    Agents(#[from] AgentsError),
    /// A `--ignore-preflight` name that is no check.
    #[error(transparent)]
    Ignore(#[from] seaport_shared::preflight::UnknownCheck),
    /// A background task of the coordinator failed.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why join data a first master reported is not used.
#[derive(Debug, thiserror::Error)]
pub enum JoinDataRefusal {
    /// Not JSON of join data.
    #[error("it is not join data: {0}")]
    NotJoinData(serde_json::Error),
    /// Of the wrong shape, or naming another master.
    #[error(transparent)]
    Shape(#[from] seaport_rootfs::kubeadm::JoinDataError),
}

/// Why a host's task has no answer.
#[derive(Debug, thiserror::Error)]
pub enum HostTaskError {
    /// The IP is not in the record.
    #[error("{0} is not a host of the cluster")]
    NotAHost(String),
    /// The node stayed away.
    #[error("node {node} has been offline for {minutes} minutes")]
    Offline {
        /// The node.
        node: String,
        /// For how long.
        minutes: u64,
    },
    /// The node was offline and the operation went on without it
    /// (`delete --force`).
    #[error("node {node} was offline: left out (--force)")]
    LeftOut {
        /// The node.
        node: String,
    },
    /// A background task of the coordinator failed.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A stage that failed, as the record keeps it.
#[derive(Debug, thiserror::Error)]
#[error("{stage} failed: {source}")]
pub struct StageFailed {
    /// The stage.
    pub stage: String,
    /// Why.
    pub source: StageError,
}

/// Why a stage failed; recorded with the operation and shown by
/// `seaport status`.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The cluster env's address of the workers' API balancer is unusable.
    #[error("the workers' API balancer: {0}")]
    Balancer(#[from] seaport_rootfs::kubeadm::BalancerAddrError),
    /// Hosts reported failures (each names its host).
    #[error("{}", .0.iter().map(|(ip, e)| format!("{ip}: {e}")).collect::<Vec<_>>().join("; "))]
    Hosts(Vec<(String, String)>),
    /// Preflight checks found errors (each names its host and checks).
    #[error("{}; fix them and run again, or skip checks with --ignore-preflight CHECK,... (`seaport check` shows every host's table)", .0.iter().map(|(ip, e)| format!("{ip}: {e}")).collect::<Vec<_>>().join("; "))]
    Preflight(Vec<(String, String)>),
    /// The image could not be assigned to the hosts.
    #[error("distributing {image}: {source}")]
    Distribute {
        /// The image.
        image: String,
        /// Why.
        source: AgentsError,
    },
    /// The image's assignment went away while fetching.
    #[error("the assignment of {0} disappeared (cancelled?)")]
    AssignmentGone(String),
    /// Fetching stalled.
    #[error("fetching {image}: no progress for {minutes} minutes")]
    FetchStalled {
        /// The image.
        image: String,
        /// For how long.
        minutes: u64,
    },
    /// The first master's join data is refused.
    #[error("{ip}: the join data kubeadm init reported is refused: {source}")]
    JoinData {
        /// The first master.
        ip: String,
        /// Why.
        source: JoinDataRefusal,
    },
    /// A plugin failed.
    #[error("plugin {name} at {phase}: {source}")]
    Plugin {
        /// The plugin.
        name: String,
        /// Its phase.
        phase: String,
        /// What failed.
        source: Box<StageError>,
    },
    /// The cluster's Clusterfile, stored with it, no longer parses.
    #[error("Clusterfile: {0}")]
    Clusterfile(ClusterfileError),
    /// The image's signatures cannot be read, or the cluster's policy
    /// does not parse.
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    /// The image's `plugins/` do not parse.
    #[error("the image's plugins/: {0}")]
    ImagePlugins(ClusterfileError),
    /// The image's `plugins/` cannot be read from the coordinator's copy.
    #[error("reading the image's plugins/: {0}")]
    ReadPlugins(seaport_rootfs::contents::ContentsError),
    /// The coordinator's image store cannot be opened.
    #[error("the image store: {0}")]
    ImageStore(seaport_rootfs::store::StoreError),
    /// A Config document cannot be rendered.
    #[error(transparent)]
    Config(crate::clusterfile::ConfigError),
    /// The agents cannot be asked.
    #[error(transparent)]
    Agents(#[from] AgentsError),
    /// A background task of the coordinator failed.
    #[error("internal error: {0}")]
    Internal(String),
}
