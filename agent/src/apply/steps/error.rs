//! [`StepError`]: why a step failed.

use std::path::PathBuf;
use std::time::Duration;

use seaport_shared::confined::ConfinedError;
use seaport_shared::safetar::SafeTarError;

use super::super::effects::EffectsError;
use super::super::files::FilesError;
use super::super::image::ImageError;
use super::super::images_load::LoadError;
use super::super::join_data::JoinDataError;
use super::super::journal::JournalError;
use super::super::runtime::RuntimeError;
use super::paths::{BIN_DIR, REGISTRY_BINARIES};

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The local registry's TLS material is unusable.
    #[error("the local registry's TLS: {0}")]
    RegistryTls(String),
    /// The cluster env's address of the workers' API balancer is unusable.
    #[error("the API balancer's address: {0}")]
    ApiBalancer(seaport_rootfs::kubeadm::BalancerAddrError),
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
    /// kubeadm did not write the admin kubeconfig on a master.
    #[error("kubeadm wrote no admin kubeconfig at {}: {source}", .path.display())]
    NoAdminKubeconfig {
        /// Where it should be.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Hashing the local registry's password for its htpasswd failed.
    #[error("hashing the local registry's password (localRegistry.password): {0}")]
    Htpasswd(#[from] bcrypt::BcryptError),
    /// A docker-style credentials file on the host is not one.
    #[error(transparent)]
    Credentials(#[from] seaport_rootfs::registry::credentials::CredentialsError),
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
