//! Seaport's CLI and coordinator daemon.
//!
//! # Layout
//!
//! - [`cli`]: flag parsing (clap) and one module per group of subcommands;
//!   each subcommand is a thin call into the libraries.
//!   - `cli/images.rs`: build, images, inspect, tag, rmi, save, load
//!   - `cli/registry.rs`: login, logout, push, pull
//!   - `cli/coordinator.rs`, `cli/token.rs`, `cli/nodes.rs`: coordinator
//!     state, join tokens and the node inventory

pub mod cli;
