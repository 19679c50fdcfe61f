//! Code shared by the Seaport coordinator, CLI and agent.
//!
//! # Layout
//!
//! - [`aligned`]: byte buffers aligned for direct I/O.
//! - [`bench`]: what every benchmark prints about its run (machine, load,
//!   CPU time, min / median / max).
//! - [`clock`]: Unix seconds and RFC 3339.
//! - [`cluster`]: the vocabulary of an install: roles, steps, phases,
//!   [`cluster::steps_for`], cluster names (one rule), operation kinds, image
//!   digests.
//! - [`digest`]: sha256 digests (`sha256:<hex>`), verifying readers and writers.
//! - [`codec`], [`wire`]: the framed, versioned wire protocol (bincode 2.0.1).
//! - [`env`]: `KEY=VALUE` pairs of the command lines.
//! - [`logging`]: the binaries' log output.
//! - [`pki`]: roles, CA pins, join tokens, node ids, certificate inspection,
//!   keys and CSRs, private files.
//! - [`registry_cert`]: the local registry's TLS certificate: generated
//!   once per cluster or given, and checked (key, chain, domain, validity).
//! - [`tls`]: rustls and quinn configurations (pinned enrollment, mTLS).
//! - [`preflight`]: preflight checks: results, the agent's task, ports by
//!   role, `--ignore-preflight`.
//! - [`confined`]: files beneath a root, never through a symlink (the one
//!   writer for places an image or another party may have planted links).
//! - [`safetar`]: tar unpacking confined to a target root.
//! - [`shell`]: quoting for POSIX shell scripts.
//! - [`distribution`]: layer distribution on the wire: pieces, piece tables, `Blob` stream messages.
//! - [`cli_docs`]: version and commit, shell completions and man pages of
//!   both binaries.

pub mod aligned;
pub mod bench;
pub mod cli_docs;
pub mod clock;
pub mod cluster;
pub mod codec;
pub mod confined;
pub mod digest;
pub mod distribution;
pub mod env;
pub mod logging;
pub mod pki;
pub mod preflight;
pub mod registry_cert;
pub mod safetar;
pub mod shell;
pub mod tls;
pub mod wire;
