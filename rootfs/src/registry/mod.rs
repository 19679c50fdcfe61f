//! OCI distribution registries: client, authentication, credentials, push
//! and pull, and distribution's on-disk storage layout.
//!
//! # Layout
//!
//! - [`client`]: [`RegistryClient`], the HTTP client for one registry:
//!   manifests, blob HEAD/GET (resumed with `Range`), monolithic and chunked
//!   uploads (resumed from the offset the registry reports), retries, TLS
//!   with extra CAs, plain HTTP for `--insecure`.
//! - [`auth`]: `WWW-Authenticate` challenges (Basic, Docker token auth) and
//!   token scopes.
//! - [`credentials`]: the docker-compatible `config.json` that `login` writes.
//! - [`platform`]: target platforms and choosing a manifest from an index.
//! - [`copy`]: `push`/`pull` between the local store and a registry.
//! - [`signatures`]: an image's signature image (`sha256-<hex>.sig`) moving
//!   with it on push and pull.
//! - [`layout`]: distribution's `docker/registry/v2` storage tree, written
//!   directly at build time (see `crate::imagecache`).
//! - [`progress`]: progress bars for long transfers.

pub mod auth;
pub mod client;
pub mod copy;
mod copy_error;
pub mod credentials;
pub mod layout;
pub mod platform;
pub mod progress;
pub mod signatures;

pub use client::{ClientOptions, RegistryClient, RegistryError};
pub use copy::{pull_image, push_image, CopyError, CopyReport};
pub use credentials::{CredentialStore, Credentials, CredentialsError};
pub use layout::RegistryStorage;
