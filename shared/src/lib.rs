//! Code shared by the Seaport coordinator, CLI and agent.
//!
//! # Layout
//!
//! - [`bench`]: what every benchmark prints about its run (machine, load,
//!   CPU time, min / median / max).
//! - [`digest`]: sha256 digests (`sha256:<hex>`), verifying readers and writers.
//! - [`codec`], [`wire`]: the framed, versioned wire protocol (bincode 2.0.1).
//! - [`pki`]: roles, CA pins, join tokens, node ids, certificate inspection,
//!   keys and CSRs, private files.
//! - [`tls`]: rustls and quinn configurations (pinned enrollment, mTLS).
//! - [`confined`]: files beneath a root, never through a symlink (the one
//!   writer for places an image or another party may have planted links).
//! - [`safetar`]: tar unpacking confined to a target root.
//! - [`transfer`]: layer distribution: pieces, piece tables, `Blob` stream messages.

pub mod bench;
pub mod codec;
pub mod confined;
pub mod digest;
pub mod pki;
pub mod safetar;
pub mod tls;
pub mod transfer;
pub mod wire;
