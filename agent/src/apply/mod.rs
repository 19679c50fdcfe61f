//! The apply engine: turns a cluster image into a running host, natively and
//! step by step, and undoes it on reset.
//!
//! Steps, in sealer's order (per host; the coordinator orders hosts):
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
//!
//! Each step is journaled ([`journal`]) with a fingerprint of its inputs: a
//! rerun skips what is done and repeats what was interrupted, so an agent
//! killed at any point (or a reboot) continues where it stopped. Every file
//! written outside the agent's own directories goes through [`files`], which
//! journals what was there before; hooks run under a before/after snapshot of
//! `/etc`, `/usr` and `/opt`. [`reset`] undoes it all.
//!
//! # Layout
//!
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
pub mod files;
pub mod image;
pub mod images_load;
pub mod journal;
pub mod reset;
pub mod rootfs_files;
pub mod runtime;
pub mod shell;
mod steps;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use drift::{drift, DriftReport};
pub use effects::{CommandOutput, CommandSpec, Effects, RecordingEffects, SystemEffects};
pub use journal::{Change, Journal, StepStatus};
pub use reset::{reset, ResetOptions, ResetReport};
pub use seaport_rootfs::kubeadm::JoinData;
pub use shell::{run_shell, ShellOptions, ShellReport};

/// Default root of cluster data on a host.
pub const DEFAULT_DATA_ROOT: &str = "/var/lib/seaport/data";
/// The local registry's default domain.
pub const DEFAULT_REGISTRY_DOMAIN: &str = "sea.hub";
/// The local registry's default port.
pub const DEFAULT_REGISTRY_PORT: &str = "5000";

/// Errors from applying.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A step failed.
    #[error("step {step} failed: {reason}")]
    Step {
        /// The step.
        step: String,
        /// What went wrong, with the output tail of a failed command.
        reason: String,
    },
    /// The inputs are not usable.
    #[error("{0}")]
    Input(String),
    /// The journal could not be read or written.
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
}

/// A host's role in the cluster.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The first master: `kubeadm init`, and the registry by default.
    Master0,
    /// Another master: `kubeadm join` as a control-plane node.
    Master,
    /// A worker: `kubeadm join`.
    Node,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "master0" => Ok(Role::Master0),
            "master" => Ok(Role::Master),
            "node" => Ok(Role::Node),
            _ => Err(format!("unknown role {s:?} (master0, master or node)")),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Master0 => "master0",
            Role::Master => "master",
            Role::Node => "node",
        })
    }
}

/// Timeouts of the long-running parts.
#[derive(Clone, Debug)]
pub struct Timeouts {
    /// Each hook script.
    pub hook: Duration,
    /// `kubeadm init`/`join`/`reset`.
    pub kubeadm: Duration,
    /// A service answering after start (containerd, the registry).
    pub service: Duration,
    /// A `systemctl` call.
    pub systemctl: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            hook: Duration::from_secs(300),
            kubeadm: Duration::from_secs(600),
            service: Duration::from_secs(60),
            systemctl: Duration::from_secs(90),
        }
    }
}

/// Where the image comes from.
#[derive(Clone, Debug)]
pub enum ImageSource {
    /// An OCI image layout directory and the image's name in it.
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// The image's name (or manifest digest) in it.
        name: String,
    },
    /// The agent's content store (blobs by hex digest) and the manifest.
    Blobs {
        /// The directory of blobs.
        dir: PathBuf,
        /// The manifest digest.
        manifest: seaport_shared::digest::Digest,
    },
}

impl ImageSource {
    fn open(&self) -> Result<image::LayoutImage, image::ImageError> {
        match self {
            ImageSource::Layout { dir, name } => image::LayoutImage::open(dir, name),
            ImageSource::Blobs { dir, manifest } => {
                image::LayoutImage::from_blobs(dir, dir, manifest)
            }
        }
    }
}

/// Everything one host's apply needs.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// The image.
    pub image: ImageSource,
    /// Only these steps (in the role's order); the steps before them must be
    /// done. `None`: every step.
    pub only: Option<Vec<String>>,
    /// The first master's IP (default: this host for master0, else from the
    /// join data).
    pub master0_ip: Option<String>,
    /// The cluster name.
    pub cluster: String,
    /// This host's role.
    pub role: Role,
    /// This host's IP (default: its first non-loopback IPv4).
    pub host_ip: Option<String>,
    /// The registry host's IP (default: this host for master0, else the
    /// first master from the join data).
    pub registry_ip: Option<String>,
    /// Every master's IP (for the certificate SANs).
    pub master_ips: Vec<String>,
    /// Cluster env (Clusterfile `env`, `-e`).
    pub env: Vec<(String, String)>,
    /// This host's own env (Clusterfile host `env`).
    pub host_env: Vec<(String, String)>,
    /// kubeadm documents from the Clusterfile.
    pub kubeadm_config: Option<String>,
    /// Join data from the first master (masters and nodes).
    pub join_data: Option<JoinData>,
    /// Where the first master writes join data (besides the data dir).
    pub join_data_out: Option<PathBuf>,
    /// The agent's state directory (the journal lives here).
    pub state_dir: PathBuf,
    /// Root of cluster data (`/var/lib/seaport/data`).
    pub data_root: PathBuf,
    /// The host root (`/`; a temporary directory in unit tests).
    pub host_root: PathBuf,
    /// Allow device nodes in layers.
    pub allow_devices: bool,
    /// Allow setuid/setgid files in layers.
    pub allow_setuid: bool,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Move a cluster installed here from another image to this one: the
    /// steps whose inputs changed run again (kubeadm never does). Without
    /// it another image is refused.
    pub upgrade: bool,
}

impl ApplyOptions {
    /// `<data-root>/<cluster>`.
    pub fn cluster_dir(&self) -> PathBuf {
        self.data_root.join(&self.cluster)
    }

    /// `<data-root>/<cluster>/rootfs`.
    pub fn rootfs(&self) -> PathBuf {
        self.cluster_dir().join("rootfs")
    }
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
    pub ran: Vec<String>,
    /// Steps skipped as done.
    pub skipped: Vec<String>,
    /// Join data written by the first master.
    pub join_data: Option<JoinData>,
}

/// The steps of a role, in order. `launch` runs on the first master when
/// the image has something to launch.
pub fn steps_for(role: Role, registry_host: bool) -> Vec<&'static str> {
    let mut s = vec!["rootfs", "render", "runtime"];
    if registry_host {
        s.push("registry");
    }
    s.extend([
        "registry-access",
        "kube-binaries",
        "hook-init",
        "hook-init-kube",
        "kubeadm",
    ]);
    if role == Role::Master0 {
        s.push("launch");
    }
    s
}

/// Applies the image on this host. `progress` sees every step event.
pub fn apply(
    opts: &ApplyOptions,
    fx: &dyn Effects,
    progress: &mut dyn FnMut(&StepEvent),
) -> Result<ApplyReport, ApplyError> {
    check_cluster_name(&opts.cluster).map_err(ApplyError::Input)?;
    let img = opts
        .image
        .open()
        .map_err(|e| ApplyError::Input(e.to_string()))?;
    let mut journal = Journal::open(&opts.state_dir, &opts.cluster)?;
    let installed = journal.state().image.clone();
    if !installed.is_empty() && installed != img.digest.to_string() && !opts.upgrade {
        return Err(ApplyError::Input(format!(
            "cluster {} is installed from image {installed} on this host; reset it first to install {}, or apply {} as an upgrade",
            opts.cluster, img.digest, img.digest
        )));
    }
    let digest = img.digest.to_string();
    let role = opts.role.to_string();
    journal.update(|s| {
        s.image = digest;
        s.roles = vec![role];
    })?;
    let all_steps = |registry_host| steps_for(opts.role, registry_host);
    let runs_kubeadm = opts
        .only
        .as_ref()
        .is_none_or(|only| only.iter().any(|s| s == "kubeadm"));
    if opts.role != Role::Master0 && opts.join_data.is_none() && runs_kubeadm {
        return Err(ApplyError::Input(format!(
            "a {} joins an existing cluster: give the first master's join data with --join-data FILE",
            opts.role
        )));
    }
    if opts.role != Role::Master0 && opts.join_data.is_none() && opts.master0_ip.is_none() {
        return Err(ApplyError::Input(format!(
            "a {} needs the first master's address: its join data or --master0-ip",
            opts.role
        )));
    }
    let mut ctx = steps::Context::new(opts, fx, img, journal)?;
    let registry_host = ctx.registry_ip == ctx.host_ip;
    let steps = all_steps(registry_host);
    if let Some(only) = &opts.only {
        if let Some(unknown) = only.iter().find(|s| !steps.contains(&s.as_str())) {
            return Err(ApplyError::Input(format!(
                "step {unknown:?} is not a step of a {} here (its steps: {})",
                opts.role,
                steps.join(", ")
            )));
        }
    }
    let mut report = ApplyReport::default();
    for &step in &steps {
        let fingerprint = ctx.fingerprint(step);
        let prev = ctx.journal.state().steps.get(step).cloned();
        let done_before = prev.as_ref().is_some_and(|p| {
            p.status == StepStatus::Done && (p.fingerprint == fingerprint || step == "kubeadm")
        });
        if let Some(only) = &opts.only {
            if !only.iter().any(|s| s == step) {
                // A step of an earlier phase must be done before this one runs.
                let later = only
                    .iter()
                    .filter_map(|s| steps.iter().position(|x| x == s))
                    .min()
                    .is_some_and(|first| steps.iter().position(|x| *x == step) < Some(first));
                if later && !done_before {
                    return Err(ApplyError::Input(format!(
                        "step {step} has not run on this host yet; it comes before {}",
                        only.join(", ")
                    )));
                }
                continue;
            }
        }
        if done_before {
            progress(&StepEvent::Skipped {
                step: step.to_string(),
            });
            report.skipped.push(step.to_string());
            continue;
        }
        let interrupted = prev
            .as_ref()
            .is_some_and(|p| p.status == StepStatus::Running);
        let attempt = prev.as_ref().map_or(0, |p| p.attempts) + 1;
        ctx.journal.update(|s| {
            s.steps.insert(
                step.to_string(),
                journal::StepRecord {
                    status: StepStatus::Running,
                    fingerprint: fingerprint.clone(),
                    attempts: attempt,
                    message: String::new(),
                },
            );
        })?;
        progress(&StepEvent::Started {
            step: step.to_string(),
            attempt,
        });
        let started = Instant::now();
        let result = ctx.run_step(step, interrupted, prev.is_some());
        let (status, message) = match &result {
            Ok(summary) => (StepStatus::Done, summary.clone()),
            Err(e) => (StepStatus::Failed, e.clone()),
        };
        ctx.journal.update(|s| {
            if let Some(r) = s.steps.get_mut(step) {
                r.status = status;
                r.message = message.clone();
            }
        })?;
        match result {
            Ok(summary) => {
                progress(&StepEvent::Done {
                    step: step.to_string(),
                    summary,
                    elapsed: started.elapsed(),
                });
                report.ran.push(step.to_string());
            }
            Err(error) => {
                progress(&StepEvent::Failed {
                    step: step.to_string(),
                    error: error.clone(),
                });
                return Err(ApplyError::Step {
                    step: step.to_string(),
                    reason: error,
                });
            }
        }
    }
    report.join_data = ctx.read_join_data();
    Ok(report)
}

/// A cluster name names a directory: letters, digits, `-`, `_` or `.`, not
/// starting with `.`.
pub fn check_cluster_name(cluster: &str) -> Result<(), String> {
    if cluster.is_empty()
        || !cluster
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        || cluster.starts_with('.')
    {
        return Err(format!(
            "cluster name {cluster:?} must be letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// `K=V` pairs into a map, later ones winning.
pub fn env_map<'a>(
    layers: impl IntoIterator<Item = &'a [(String, String)]>,
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for layer in layers {
        for (k, v) in layer {
            m.insert(k.clone(), v.clone());
        }
    }
    m
}

/// The `sha256:HEX` kubeadm discovery hash of a PEM CA certificate.
pub fn ca_cert_hash(pem: &[u8]) -> Result<String, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not PEM: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not a certificate: {e}"))?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    Ok(format!(
        "sha256:{}",
        seaport_shared::digest::Digest::of(spki).hex()
    ))
}

/// Reads join data written by the first master.
pub fn read_join_data(path: &Path) -> Result<JoinData, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: not join data: {e}", path.display()))
}
