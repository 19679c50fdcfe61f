//! The install steps, one file each, behind [`HostStep`]. Each is
//! idempotent: run again with the same inputs it changes nothing, and run
//! after an interruption it completes the work.
//!
//! - `context.rs`: [`StepContext`], what every step works with (the
//!   options, the effects, the image, the journal, the computed env) and
//!   the helpers they share (units, files, reading the image's files).
//! - `rootfs.rs`, `render.rs`, `runtime.rs`, `registry.rs`,
//!   `registry_access.rs`, `kube_binaries.rs`, `hooks.rs` (`hook-init`,
//!   `hook-init-kube`), `kubeadm.rs`, `launch.rs`: the steps.
//!
//! Adding a step: a variant of [`seaport_shared::cluster::Step`] (and its
//! place in a [`seaport_shared::cluster::Phase`]), a file here with a
//! [`HostStep`], and its line in [`host_step`].

mod context;
mod hooks;
mod kube_binaries;
mod kubeadm;
mod launch;
mod registry;
mod registry_access;
mod render;
mod rootfs;
mod runtime;

use std::path::PathBuf;
use std::time::Duration;

use seaport_shared::cluster::Step;
use seaport_shared::confined::ConfinedError;
use seaport_shared::safetar::SafeTarError;

pub(crate) use context::StepContext;

use super::effects::EffectsError;
use super::files::FilesError;
use super::image::ImageError;
use super::images_load::LoadError;
use super::join_data::JoinDataError;
use super::journal::JournalError;
use super::runtime::RuntimeError;

/// Where binaries from `bin/` and `cri/` go: the units of sealer's images
/// (`kubelet.service`, `containerd.service`) start them from there.
pub(crate) const BIN_DIR: &str = "/usr/bin";
/// Where units go.
pub(crate) const UNIT_DIR: &str = "/etc/systemd/system";
/// The local registry's unit.
pub(crate) const REGISTRY_UNIT: &str = "seaport-registry.service";
/// Where a replaced rootfs waits while the registry still serves from it.
const PREVIOUS_ROOTFS: &str = "rootfs.previous";
/// Where the image's registry binary may be.
const REGISTRY_BINARIES: &[&str] = &[
    "bin/registry",
    "bin/docker-registry",
    "cri/registry",
    "cri/docker-registry",
];

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A command ran out of time.
    #[error("{what} timed out after {} s; last output:\n{output}", .timeout.as_secs())]
    TimedOut {
        /// The command.
        what: String,
        /// Its limit.
        timeout: Duration,
        /// Its last lines.
        output: String,
    },
    /// A command failed.
    #[error("{what} exited with {status}; last output:\n{output}")]
    Exited {
        /// The command.
        what: String,
        /// Its exit code, or `a signal`.
        status: String,
        /// Its last lines.
        output: String,
    },
    /// `systemctl` failed.
    #[error("systemctl {args} exited with {code:?}: {output}")]
    Systemctl {
        /// Its arguments.
        args: String,
        /// Its exit code.
        code: Option<i32>,
        /// Its last lines.
        output: String,
    },
    /// A service did not come up.
    #[error("{what} did not answer within {} s", .limit.as_secs())]
    NoAnswer {
        /// The service and how it was asked.
        what: String,
        /// How long it was given.
        limit: Duration,
    },
    /// A file operation failed.
    #[error("{action} {}: {source}", .path.display())]
    Io {
        /// What was done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file of the image links out of it.
    #[error("{} resolves to {}, outside {} (through a symlink); refusing to read it", .path.display(), .resolved.display(), .root.display())]
    Outside {
        /// The file.
        path: PathBuf,
        /// Where it leads.
        resolved: PathBuf,
        /// What it must stay in.
        root: PathBuf,
    },
    /// An archive in `cri/` is unusable.
    #[error("{archive}: {source}")]
    Archive {
        /// The archive.
        archive: String,
        /// Why.
        source: std::io::Error,
    },
    /// An archive in `cri/` holds something refused.
    #[error("{archive}: {source}")]
    ArchiveEntry {
        /// The archive.
        archive: String,
        /// The refusal.
        source: SafeTarError,
    },
    /// The local registry's binary is missing.
    #[error("the image ships no registry binary (looked for {})", REGISTRY_BINARIES.join(", "))]
    NoRegistryBinary,
    /// kubeadm init left no CA.
    #[error("kubeadm init left no CA certificate at {}: {source}", .path.display())]
    NoCaCertificate {
        /// Where it should be.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A joining host's kubeadm step without join data.
    #[error("no join data")]
    NoJoinData,
    /// LAUNCH names an application the image lacks.
    #[error("LAUNCH names application {0:?}, which the image does not declare")]
    UnknownApplication(String),
    /// An application with no way to launch it.
    #[error("application {name}: type {kind:?} and no APPCMDS: nothing says how to launch it")]
    NoLaunch {
        /// The application.
        name: String,
        /// Its type.
        kind: String,
    },
    /// The host runs the other container runtime.
    #[error("cluster {cluster} runs {current} on this host; this image gets {wanted} ({reason}): reset the cluster first to change its container runtime")]
    RuntimeSwitch {
        /// The cluster.
        cluster: String,
        /// The runtime installed.
        current: &'static str,
        /// The runtime the image gets.
        wanted: &'static str,
        /// What chose it.
        reason: String,
    },
    /// docker chosen but no dockerd.
    #[error("the container runtime is docker ({reason}), but neither the image's cri/ nor this host has {BIN_DIR}/dockerd")]
    NoDockerd {
        /// What chose docker.
        reason: String,
    },
    /// Commands and mounts.
    #[error(transparent)]
    Effects(#[from] EffectsError),
    /// Journaled host files.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// The journal.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The image.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Rendering templates.
    #[error(transparent)]
    Render(#[from] seaport_rootfs::render::RenderError),
    /// The kubeadm configuration.
    #[error(transparent)]
    Kubeadm(#[from] seaport_rootfs::kubeadm::KubeadmError),
    /// Loading `images/` into the registry.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A path beneath a root.
    #[error(transparent)]
    Confined(#[from] ConfinedError),
    /// The container runtime's configuration.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The first master's join data.
    #[error(transparent)]
    JoinData(#[from] JoinDataError),
}

/// One step of the engine.
pub(crate) trait HostStep: Sync {
    /// Which step it is.
    fn step(&self) -> Step;

    /// Runs the step; returns what it did, in a few words.
    fn run(&self, cx: &mut StepContext<'_>) -> Result<String, StepError>;

    /// Whether a done step runs again when its inputs changed (kubeadm does
    /// not: a host joins once).
    fn reruns_on_change(&self) -> bool {
        true
    }
}

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
