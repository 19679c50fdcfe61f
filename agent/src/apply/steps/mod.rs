//! The install steps, one file each, behind [`HostStep`]. Each is
//! idempotent: run again with the same inputs it changes nothing, and run
//! after an interruption it completes the work.
//!
//! - `error.rs`: [`StepError`]; `paths.rs`: where steps put things.
//! - `context.rs`: [`StepContext`], what every step works with (the
//!   options, the effects, the image, the journal, the computed env) and
//!   the helpers they share (units, files, reading the image's files), and
//!   the [`HostStep`] trait.
//! - `rootfs.rs`, `render.rs`, `runtime.rs`, `registry.rs`,
//!   `registry_access.rs`, `kube_binaries.rs`, `hooks.rs` (`hook-init`,
//!   `hook-init-kube`), `kubeadm.rs`, `launch.rs`: the steps.
//!
//! Adding a step: a variant of [`seaport_shared::cluster::Step`] (and its
//! place in a [`seaport_shared::cluster::Phase`]), a file here with a
//! [`HostStep`], and its line in [`host_step`].

mod context;
pub(crate) mod error;
mod hooks;
mod kube_binaries;
mod kubeadm;
mod launch;
mod paths;
mod registry;
mod registry_access;
mod render;
mod rootfs;
mod runtime;

use seaport_shared::cluster::Step;

pub(crate) use context::{HostStep, StepContext};
pub use error::StepError;
pub(crate) use paths::{BIN_DIR, ROOT_HOME, UNIT_DIR};

/// The implementation of `step`.
pub(crate) fn host_step(step: Step) -> &'static dyn HostStep {
    match step {
        Step::Rootfs => &rootfs::Rootfs,
        Step::Render => &render::Render,
        Step::Runtime => &runtime::RuntimeStep,
        Step::Registry => &registry::Registry,
        Step::RegistryAccess => &registry_access::RegistryAccess,
        Step::KubeBinaries => &kube_binaries::KubeBinaries,
        Step::HookInit => &hooks::HOOK_INIT,
        Step::HookInitKube => &hooks::HOOK_INIT_KUBE,
        Step::Kubeadm => &kubeadm::Kubeadm,
        Step::Launch => &launch::Launch,
    }
}

/// The first master's join data as its kubeadm step left it.
pub(crate) use kubeadm::written_join_data;
