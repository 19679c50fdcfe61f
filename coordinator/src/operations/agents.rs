//! [`Agents`]: what operations ask of the hosts' agents. The daemon
//! implements it over the nodes' sessions and the distribution tracker;
//! tests implement it with recording doubles.

use tokio::sync::mpsc;

use seaport_shared::cluster::ImageDigest;
use seaport_shared::distribution::NodeProgress;
use seaport_shared::wire::{BalancerFacts, TaskEvent, TaskRequest};

use crate::records::NodeRecord;

/// Why a task could not be followed, or the agents could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
    /// The node has no session now.
    #[error("node {0} is not connected")]
    NotConnected(String),
    /// The task stream broke (connection, handshake, framing).
    #[error("{0}")]
    Stream(String),
    /// The task stream ended before the task's last event.
    #[error("the task stream ended early")]
    EndedEarly,
    /// The implementation's own error (the inventory, distribution).
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

impl AgentsError {
    /// Wraps an implementation's error.
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        AgentsError::Backend(Box::new(e))
    }
}

/// The events of one task, as its agent sends them; the last one is the
/// task's answer (`Finished`, `ResetDone`, `Files`, `Written`, `Drift`).
pub struct TaskEvents {
    rx: mpsc::Receiver<Result<TaskEvent, AgentsError>>,
}

impl TaskEvents {
    /// A pair: what the implementation sends events into, and the events.
    pub fn channel() -> (mpsc::Sender<Result<TaskEvent, AgentsError>>, TaskEvents) {
        let (tx, rx) = mpsc::channel(64);
        (tx, TaskEvents { rx })
    }

    /// The next event; [`AgentsError::EndedEarly`] when the stream ends
    /// without one.
    pub async fn next(&mut self) -> Result<TaskEvent, AgentsError> {
        self.rx.recv().await.unwrap_or(Err(AgentsError::EndedEarly))
    }
}

/// One node's progress fetching an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The node.
    pub node_id: String,
    /// Bytes on the node and in all.
    pub done_bytes: u64,
    /// Bytes in all.
    pub total_bytes: u64,
    /// Every blob verified on the node.
    pub complete: bool,
}

impl From<&NodeProgress> for Fetched {
    fn from(n: &NodeProgress) -> Self {
        Fetched {
            node_id: n.node_id.clone(),
            done_bytes: n.done_bytes,
            total_bytes: n.total_bytes,
            complete: n.complete,
        }
    }
}

/// The agents of the enrolled nodes, as operations use them. The methods
/// without `async` may block (the inventory, hashing blobs): call them off
/// the async runtime.
pub trait Agents: Send + Sync {
    /// Every enrolled node (hosts are placed on nodes bound to their IPs).
    fn nodes(&self) -> Result<Vec<NodeRecord>, AgentsError>;

    /// Whether the node is connected now.
    fn online(&self, node_id: &str) -> bool;

    /// The node's API balancer as its last heartbeat reported it.
    fn balancer(&self, _node_id: &str) -> Option<BalancerFacts> {
        None
    }

    /// Sends `task` to the node on its own session and returns its events.
    /// [`AgentsError::NotConnected`] when the node has no session now.
    fn run_task(&self, node_id: &str, task: TaskRequest) -> Result<TaskEvents, AgentsError>;

    /// Has `nodes` fetch the image `image` resolved to `digest` (added to
    /// the nodes it is assigned to already).
    fn distribute(
        &self,
        image: &str,
        digest: ImageDigest,
        nodes: &[String],
    ) -> Result<(), AgentsError>;

    /// How far each node is with `image` at `digest`; `None` when it is
    /// not assigned (any more) at that digest.
    fn fetch_progress(
        &self,
        image: &str,
        digest: ImageDigest,
    ) -> Result<Option<Vec<Fetched>>, AgentsError>;

    /// Drops the image's assignment: agents collect its blobs.
    fn release(&self, image: &str) -> Result<(), AgentsError>;
}
