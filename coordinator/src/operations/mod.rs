//! Operations on clusters: the coordinator drives every host's agent
//! through the stages of an install, scale up or down, upgrade or delete
//! ([`crate::converge`]), one stage after another.
//!
//! An operation is a [`Cluster`] record, written after every step event in
//! one committed transaction. It holds the desired spec, the stages and how
//! many are finished, every host's steps and the first master's join data.
//! Stages: `fetch` (the image to the hosts through layer distribution),
//! apply phases (each host's part sent on a `Task` stream of its session),
//! plugins (the Clusterfile's and the image's, at the phases sealer runs
//! them; the image's read from the coordinator's own copy of it), Config
//! files into the rootfs, labels and taints, node deletion, resets. The
//! record ends `succeeded`, or `failed` with the failing stage, host, step
//! and output tail.
//!
//! The coordinator restarted in the middle resumes every running record at
//! its first unfinished stage; agents skip the steps their journals say are
//! done. A task whose session drops is sent again when the node is back.
//! Deleting resets every host, then drops the image's assignment so agents
//! collect its blobs.
//!
//! Operations reach the rest of the coordinator through two traits:
//! [`Agents`] (the nodes, a task on a node's session and its events, the
//! image's blobs to the nodes) and [`ClusterStore`] (records and the audit
//! log). The daemon implements the first over its sessions, the state store
//! the second.
//!
//! # Layout
//!
//! - `agents.rs`, `store.rs`: the two traits.
//! - `record.rs`: the record ([`Cluster`]) and the audit entry.
//! - `prepare.rs`: from a request to an operation and its record, pure.
//! - `run.rs`: the stages in order, and how the operation ended.
//! - `drive.rs`: what stages work with: tasks to hosts and their events.
//! - `stages/`: one file per kind of stage.
//! - `service.rs`: [`Operations`], what the daemon calls.
//! - `error.rs`: [`OperationError`], [`StageError`].

mod agents;
mod drive;
mod error;
mod prepare;
mod record;
mod run;
mod service;
mod stages;
mod store;

pub use agents::{Agents, AgentsError, Fetched, TaskEvents};
pub use error::{HostTaskError, JoinDataRefusal, OperationError, StageError, StageFailed};
pub use prepare::{
    desired, prepare, spec_of_clusterfile, Desired, Operation, PrepareInput, Prepared,
    ResolvedImage, Want,
};
pub use record::{AuditEntry, Cluster, HostRecord, LEFT_OUT};
pub use service::Operations;
pub use store::{ClusterStore, StoreError};
#[cfg(test)]
mod tests;
