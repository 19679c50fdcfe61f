//! What an apply reports: the events of its steps, its report, its errors.

use std::time::Duration;

use seaport_rootfs::kubeadm::JoinData;
use seaport_shared::cluster::{ClusterName, Role, Step};

use super::image::ImageError;
use super::journal::JournalError;
use super::steps::error::StepError;

/// Longest step name accepted.
pub(crate) const MAX_STEP_NAME: usize = 200;

/// Errors from applying.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A step failed.
    #[error("step {step} failed: {error}")]
    Step {
        /// The step (an install step, or a shell step's name).
        step: String,
        /// What went wrong, with the output tail of a failed command.
        error: Box<StepError>,
    },
    /// The image could not be opened.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The journal could not be read or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The cluster is installed here from another image.
    #[error("cluster {cluster} is installed from image {installed} on this host; reset it first to install {image}, or apply {image} as an upgrade")]
    OtherImage {
        /// The cluster.
        cluster: ClusterName,
        /// The image installed.
        installed: String,
        /// The image asked for.
        image: String,
    },
    /// The cluster has no journal here.
    #[error("cluster {0} is not installed on this host (it has no journal)")]
    NotInstalled(ClusterName),
    /// A joining host without join data.
    #[error(
        "a {0} joins an existing cluster: give the first master's join data with --join-data FILE"
    )]
    NoJoinData(Role),
    /// A joining host without the first master's address.
    #[error("a {0} needs the first master's address: its join data or --master0-ip")]
    NoMaster0(Role),
    /// A step asked for that this host's role does not have.
    #[error("step {:?} is not a step of a {role} here (its steps: {})", .step.as_str(), .steps.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))]
    NotAStep {
        /// The step asked for.
        step: Step,
        /// This host's role.
        role: Role,
        /// Its steps.
        steps: Vec<Step>,
    },
    /// A step asked for whose earlier steps have not run.
    #[error("step {step} has not run on this host yet; it comes before {}", .asked.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))]
    NotYetRun {
        /// The earlier step.
        step: Step,
        /// The steps asked for.
        asked: Vec<Step>,
    },
    /// No address to install with.
    #[error("this host has no IPv4 address; give --host-ip")]
    NoIpv4,
    /// The registry's domain and port do not name a registry.
    #[error("registry_domain and registry_port (from the image's ENV or the cluster env): {0}")]
    Registry(String),
    /// A shell step's name is unusable.
    #[error("shell step name {0:?} must be 1 to {max} printable characters", max = MAX_STEP_NAME)]
    ShellStepName(String),
    /// A shell step named like an install step.
    #[error("shell step name {0:?} is the name of an install step; name it differently (e.g. plugin:NAME@PHASE)")]
    ShellStepReserved(String),
}

/// What happened to a step, as reported while applying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepEvent {
    /// It starts (attempt number).
    Started {
        /// The step.
        step: String,
        /// 1-based attempt (more than 1 after an interruption).
        attempt: u32,
    },
    /// It was done already with the same inputs.
    Skipped {
        /// The step.
        step: String,
    },
    /// It finished.
    Done {
        /// The step.
        step: String,
        /// What it did, in a few words.
        summary: String,
        /// How long it took.
        elapsed: Duration,
    },
    /// It failed.
    Failed {
        /// The step.
        step: String,
        /// The error with the output tail.
        error: String,
    },
}

/// What an apply did.
#[derive(Clone, Debug, Default)]
pub struct ApplyReport {
    /// Steps run.
    pub ran: Vec<Step>,
    /// Steps skipped as done.
    pub skipped: Vec<Step>,
    /// Join data written by the first master.
    pub join_data: Option<JoinData>,
}
