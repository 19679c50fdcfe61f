//! The Seaport lab: real hosts on one machine, for end-to-end tests, demos
//! and benchmarks.
//!
//! A host is a systemd-nspawn container booted with real systemd from a
//! Debian base made by debootstrap, on a bridge of its lab. Each lab holds
//! one of 4 slots of 198.18.0.0/24 (a /26 block), so up to 4 labs of
//! different processes run side by side: in slot 0 the machine side of the
//! bridge is 198.18.0.1 (where a coordinator listens) and hosts are
//! 198.18.0.11, .12, ...; in slot 1 they are .65 and .75, .76, ... Everything the lab creates carries the `spl-` prefix
//! and a per-run id, and is removed when the [`Lab`] guard is dropped (also
//! while a test panics) or by `seaport-lab down --all` after a killed run.
//! See docs/lab.md for the decisions behind it.
//!
//! ```no_run
//! let lab = seaport_lab::Lab::up(3)?;
//! let out = lab.host(0).exec(&["systemctl", "is-system-running"])?;
//! assert_eq!(out.stdout.trim(), "running");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layout
//!
//! - [`lab`]: `Lab::up` / `Lab::builder()`, the guard, the machine lock, preflight checks.
//! - [`host`]: one host: root overlay, nspawn and its supervisor (reboots),
//!   exec, copy in, journal, link cut and shaping.
//! - [`cgroups`]: a cgroup of its own for each host's nspawn.
//! - [`base`]: the debootstrap base, cached under /var/cache/seaport-lab by package list.
//! - [`net`]: the bridge, veths, `ip link` and `tc tbf`.
//! - [`cleanup`]: removing leftovers of killed runs (`down --all`).
//! - [`state`]: the run record (`state.json`) that the CLI and cleanup read.
//! - [`runs`]: runs seen from the CLI: status, exec, down, down --all, the agents demo.
//! - [`seaport`]: the Seaport side: built binaries, a coordinator process,
//!   agent installation the way an operator does it, `nodes --json`.
//! - [`testimage`]: the test cluster image (rootfs/base, Debian's containerd
//!   and docker-registry, the kubeadm double, one image in images/ and one in
//!   manifests/imageList).
//! - [`names`], [`lock`], [`mounts`], [`procs`], [`cmd`], [`wait`]: naming and
//!   paths, flocks, mount handling, our processes, machine commands, polling.
//! - `main.rs`: the `seaport-lab` CLI (`up`, `status`, `exec`, `down`).
//! - `tests/tests/`: the end-to-end tests (`lab_operations.rs` for the lab
//!   itself, `agents_online.rs` for enrollment and reconnection).
#![forbid(unsafe_code)]

pub mod base;
pub mod cgroups;
pub mod checks;
pub mod cleanup;
pub mod cmd;
pub mod host;
pub mod lab;
pub mod lock;
pub mod mounts;
pub mod names;
pub mod net;
pub mod procs;
pub mod runs;
pub mod seaport;
pub mod state;
pub mod testimage;
pub mod wait;

pub use cmd::ExecOutput;
pub use host::{Host, HostOptions};
pub use lab::{Lab, LabBuilder, LabError};
pub use net::Shape;
