//! The Seaport host agent.
//!
//! It enrolls with the coordinator once (`seaport-agent join`), then keeps one
//! mTLS QUIC session to it (`seaport-agent run`), heartbeating host facts and
//! renewing its certificate before it expires. It dials out, so it works
//! behind NAT; it never listens for the coordinator.
//!
//! # Layout
//!
//! - [`identity`]: key, certificate, CA and coordinator address on disk.
//! - [`facts`]: machine-id, hostname and the host facts of heartbeats (sysinfo).
//! - [`join`]: enrollment against a pinned CA, with a join token and a CSR.
//! - [`session`]: the service loop: session, heartbeats, renewal, backoff.
//! - [`service`]: `seaport-agent run` as one call: the session, the
//!   distribution service and the task server together.
//! - [`distribution`]: layer distribution: the blob store, the piece fetcher
//!   (peers first, the coordinator where it grants), the peer server.
//! - [`apply`]: the apply engine: journaled, idempotent steps that install a
//!   cluster image on this host natively, and reset.
//! - [`cli_apply`]: `seaport-agent apply` and `seaport-agent reset` (local runs).
//! - [`preflight`]: the checks of this host before an install changes it.
//! - [`tasks`]: install and reset tasks the coordinator sends on the session.
//! - [`trust`]: which images this host accepts (trusted keys, signatures
//!   required) and the signature check before every apply.

pub mod apply;
pub mod cli_apply;
pub mod distribution;
pub mod facts;
pub mod identity;
pub mod join;
pub mod preflight;
pub mod service;
pub mod session;
pub mod tasks;
pub mod trust;

pub use facts::{FactsSource, HostIdentity, SystemFacts};
pub use identity::Identity;
pub use join::{join, JoinOptions, Joined};

/// Default agent state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/seaport-agent";
