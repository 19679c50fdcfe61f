//! Layer distribution, the coordinator's side (docs/distribution.md).
//!
//! - `assignments.rs`: [`Distribution`]: assignments (image to nodes, kept in the state
//!   database), piece tables of the store's blobs (cached under
//!   `ROOT/coordinator/pieces/`), the tracker, progress.
//! - `tracker.rs`: who holds which pieces; what the coordinator seeds.
//! - `serve.rs`: `Blob` streams of node sessions: syncs and piece sends.
//!
//! A node may fetch a blob only while an image containing it is assigned to
//! it, and only over its own mTLS session (revoked nodes have none). For a
//! multi-platform image each node is assigned the index and the blobs of its
//! own platform's manifest, from the architecture its agent reports.

mod assignments;
mod serve;
pub mod tracker;

pub use crate::records::Assignment;
pub use assignments::{DistError, Distribution};
/// Re-exported for the piece scheme's constants in messages.
pub use seaport_shared::distribution::DEFAULT_PEER_PORT;
pub(crate) use serve::handle_blob_stream;
