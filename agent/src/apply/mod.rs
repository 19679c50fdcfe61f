//! The apply engine: turns a cluster image into a running host, natively and
//! step by step, and undoes it on reset.
//!
//! Steps, in sealer's order (per host; the coordinator orders hosts), as
//! [`seaport_shared::cluster::steps_for`] lists them:
//!
//! | step | roles | what |
//! | --- | --- | --- |
//! | `rootfs` | all | verify and unpack the layers into `<data>/<cluster>/rootfs` |
//! | `render` | all | render `*.tmpl` and `statics/` with the cluster env |
//! | `runtime` | all | the registry's and API server's names in `/etc/hosts` (before the runtime starts), containerd or docker ([`runtime`] chooses) from `cri/`, its config with the registry mirrors (docker) and unit; wait for `ctr version` / `docker version` |
//! | `registry` | registry host | bind-mount `registry/`, run the image's registry binary as a unit, load `images/*.tar` |
//! | `registry-access` | all | `/etc/hosts` names, containerd `hosts.toml` mirrors for every cached domain |
//! | `kube-binaries` | all | `bin/` into `/usr/bin`, the kubelet unit and drop-in, enable kubelet |
//! | `hook-init` | all | `scripts/init.sh` |
//! | `hook-init-kube` | all | `scripts/init-kube.sh` |
//! | `kubeadm` | all | merged config, `kubeadm init` (first master) or `kubeadm join` |
//! | `launch` | first master | the image's CMDS and launched applications |
//!
//! Each step is journaled ([`journal`]) with a fingerprint of its inputs: a
//! rerun skips what is done and repeats what was interrupted, so an agent
//! killed at any point (or a reboot) continues where it stopped. Every file
//! written outside the agent's own directories goes through [`files`], which
//! journals what was there before; hooks run under a before/after snapshot of
//! `/etc`, `/usr` and `/opt`. [`reset`](mod@reset) undoes it all.
//!
//! # Layout
//!
//! - [`engine`]: [`apply`], the steps in order, journaled.
//! - `steps/`: one file per step behind the `HostStep` trait, failures as
//!   [`StepError`]; where to add a step.
//! - [`options`]: what an apply is given ([`ApplyOptions`]).
//! - [`outcome`]: what it reports ([`StepEvent`], [`ApplyReport`],
//!   [`ApplyError`]).
//! - [`join_data`]: the first master's join data.
//! - [`drift`]: the host's files against what the install wrote.
//! - [`effects`]: commands and mounts behind a trait (real and recording).
//! - [`journal`]: steps and changes on disk.
//! - [`files`]: journaled file changes, tracked hooks, restore.
//! - [`image`]: the image from an OCI layout; safe, atomic unpack.
//! - [`images_load`]: `images/*.tar` into the local registry.
//! - [`reset`](mod@reset): undoing an install.
//! - [`rootfs_files`]: files of the unpacked rootfs, read and written for
//!   the coordinator.
//! - [`runtime`]: which container runtime, its mirrors, the CRI socket.
//! - [`shell`]: shell steps (plugins, commands) on an installed host.

pub mod drift;
pub mod effects;
pub mod engine;
pub mod files;
pub mod image;
pub mod images_load;
pub mod join_data;
pub mod journal;
pub mod options;
pub mod outcome;
pub mod reset;
pub mod rootfs_files;
pub mod runtime;
pub mod shell;
mod steps;
#[cfg(test)]
mod tests;

pub use drift::{drift, DriftReport};
pub use effects::{CommandOutput, CommandSpec, Effects, RecordingEffects, SystemEffects};
pub use engine::apply;
pub use join_data::{ca_cert_hash, read_join_data};
pub use journal::{Change, Journal, StepStatus};
pub use options::{
    env_map, ApplyOptions, ImageSource, Timeouts, DEFAULT_DATA_ROOT, DEFAULT_REGISTRY_DOMAIN,
    DEFAULT_REGISTRY_PORT,
};
pub use outcome::{ApplyError, ApplyReport, StepEvent};
pub use reset::{reset, ResetOptions, ResetReport};
pub use seaport_rootfs::kubeadm::JoinData;
pub use shell::{run_shell, ShellOptions, ShellReport};
pub use steps::StepError;
