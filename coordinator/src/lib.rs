//! Seaport's CLI and coordinator daemon.
//!
//! # Layout
//!
//! - [`cli`]: flag parsing (clap) and one module per group of subcommands;
//!   each subcommand is a thin call into the libraries.
//!   - `cli/images.rs`: build, images, inspect, tag, rmi, save, load
//!   - `cli/registry.rs`: login, logout, push, pull
//!   - `cli/coordinator.rs`, `cli/token.rs`, `cli/nodes.rs`, `cli/admins.rs`:
//!     coordinator state, join tokens, the node inventory (and host IP
//!     approvals), admin certificates
//! - [`ca`]: the cluster CA and the coordinator's files under `ROOT/coordinator/`.
//! - [`state`]: all the coordinator keeps behind the `StateStore` trait
//!   (token hashes, nodes and the evidence binding their IPs, admin
//!   certificates, serials, assignments, clusters, the audit log), redb
//!   the embedded backend, opened by the coordinator only.
//! - [`tokens`]: creating join tokens and admin certificates.
//! - [`daemon`]: `coordinator serve`: the QUIC endpoint, enrollment, node
//!   sessions, the admin API, per-source limits on unauthenticated
//!   connections (`daemon/limits.rs`, also used by the bootstrap endpoint).
//! - [`admin`]: the CLI's client for the admin API.
//! - [`plan`]: the install plan: hosts and roles to ordered per-node steps
//!   in sealer's order (pure), matching hosts to the nodes bound to their
//!   IPs by evidence, unique hostnames.
//! - [`distribution`]: layer distribution: assignments, piece tables, the
//!   piece tracker and seeding policy, `Blob` streams, progress
//!   (`cli/distribute.rs`: `seaport distribute`).
//! - [`bootstrap`]: the HTTPS bootstrap endpoint serving the agent to token
//!   holders, and the cloud-init user-data and script hosts run
//!   (`cli/bootstrap.rs`: `seaport bootstrap`).
//! - [`bundle`]: the one-file offline bundle (`seaport save --bundle`).
//! - [`clusterfile`]: sealer's Clusterfile, read and checked (pure).
//! - [`converge`]: from a cluster's state and a desired spec to the stages of
//!   one operation (pure).
//! - [`trust`]: the image signature policy (`--trusted-keys`,
//!   `--require-signed`, a Clusterfile's `spec.imagePolicy`): checked when
//!   an operation is planned, given to agents.
//! - [`operations`]: operations on clusters: the record, a pure `prepare`,
//!   `run` and `drive`, one file per kind of stage, over two traits (`Agents`,
//!   `ClusterStore`) (`cli/cluster.rs`: `seaport run`, `apply`, `join`,
//!   `delete`, `status`, `logs`, `audit`).
//! - [`metrics`]: Prometheus metrics (`coordinator serve --metrics-listen`).
//! - [`records`]: what is kept about nodes, tokens, admin certificates and
//!   image assignments (plain data).

pub mod admin;
pub mod bootstrap;
pub mod bundle;
pub mod ca;
pub mod cli;
pub mod clusterfile;
pub mod converge;
pub mod daemon;
pub mod distribution;
pub mod metrics;
pub mod operations;
pub mod plan;
pub mod records;
pub mod state;
pub mod tokens;
pub mod trust;
