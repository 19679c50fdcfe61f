//! Work the coordinator gives this host: install and upgrade steps, resets,
//! shell steps (plugins), reading and writing files of a cluster's rootfs,
//! drift checks and preflight checks.
//!
//! The coordinator opens a `Task` stream on the agent's own session (the
//! connection the agent made and verified against the CA pin), sends one
//! [`TaskRequest`] and reads [`TaskEvent`]s until the task's last event.
//! Tasks run one at a time. The apply engine journals every step on the
//! host, so when a session drops in the middle of a task the work goes on
//! here, and the coordinator simply sends the task again on the next
//! session: what finished is skipped, what was interrupted is redone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Mutex};
use tracing::{debug, info, info_span, warn, Instrument};

use seaport_shared::codec;
use seaport_shared::digest::Digest;
use seaport_shared::wire::{
    self, ApplyTask, BalancerTask, DriftTask, ReadFilesTask, ResetTask, ShellTask, StepState,
    StreamKind, TaskEvent, TaskRequest, WriteFilesTask, TASK_FRAME_LIMIT,
};

use crate::apply::{
    self, ApplyOptions, ImageSource, ResetOptions, ShellOptions, StepEvent, SystemEffects, Timeouts,
};
use crate::distribution::store::{BlobStore, BlobStoreError};

/// How long an apply waits for the image's blobs to be complete in the
/// blob store (the fetch phase finishes just before).
const BLOB_WAIT: Duration = Duration::from_secs(120);

/// Where tasks run.
#[derive(Clone, Debug)]
pub struct TaskSettings {
    /// The agent's state directory (journals, blob store).
    pub state_dir: PathBuf,
    /// Root of cluster data.
    pub data_root: PathBuf,
    /// What this host asks of images beside the coordinator's policy.
    pub trust: crate::trust::LocalTrust,
    /// The node-local API balancer (none: balancer tasks fail).
    pub balancer: Option<Arc<crate::balancer::host::HostBalancer>>,
}

/// Accepts task streams on every session the agent has, until shutdown.
pub async fn serve(
    settings: TaskSettings,
    mut link: watch::Receiver<Option<quinn::Connection>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let one_at_a_time = Arc::new(Mutex::new(()));
    loop {
        let conn = link.borrow_and_update().clone();
        if let Some(conn) = conn {
            let (settings, lock) = (settings.clone(), one_at_a_time.clone());
            tokio::spawn(accept_loop(conn, settings, lock).instrument(info_span!("tasks")));
        }
        tokio::select! {
            changed = link.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

async fn accept_loop(conn: quinn::Connection, settings: TaskSettings, lock: Arc<Mutex<()>>) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (settings, lock) = (settings.clone(), lock.clone());
        tokio::spawn(handle(send, recv, settings, lock).instrument(info_span!("task")));
    }
}

async fn handle(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    settings: TaskSettings,
    lock: Arc<Mutex<()>>,
) {
    let hello = match wire::read_hello(&mut recv).await {
        Ok(h) => h,
        Err(e) => return debug!(error = %e, "bad stream from the coordinator"),
    };
    let refusal = match (hello.check_version(), hello.kind) {
        (Err(e), _) => Some(e.to_string()),
        (Ok(()), StreamKind::Task) => None,
        (Ok(()), other) => Some(format!("an agent accepts only task streams, not {other:?}")),
    };
    if let Some(reason) = refusal {
        let _ = wire::refuse_hello(&mut send, &reason).await;
        let _ = send.finish();
        return;
    }
    if wire::accept_hello(&mut send).await.is_err() {
        return;
    }
    let req: TaskRequest = match codec::read_msg(&mut recv, TASK_FRAME_LIMIT).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => return warn!(error = %e, "unreadable task"),
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<TaskEvent>();
    let work = tokio::spawn(async move {
        let _turn = lock.lock().await;
        match req {
            TaskRequest::Apply(task) => run_apply(task, settings, tx).await,
            TaskRequest::Reset(task) => run_reset(task, settings, tx).await,
            TaskRequest::ReadFiles(task) => run_read_files(task, settings, tx).await,
            TaskRequest::WriteFiles(task) => run_write_files(task, settings, tx).await,
            TaskRequest::Shell(task) => run_shell(task, settings, tx).await,
            TaskRequest::Drift(task) => run_drift(task, settings, tx).await,
            TaskRequest::Preflight(task) => run_preflight(task, settings, tx).await,
            TaskRequest::Balancer(task) => run_balancer(task, settings, tx).await,
        }
    });
    // Forward events while the coordinator listens; the work goes on when
    // it stops listening (a dropped session), and the journal keeps it.
    let mut listening = true;
    while let Some(event) = rx.recv().await {
        if listening && codec::write_msg(&mut send, &event).await.is_err() {
            listening = false;
            info!("the coordinator stopped listening; the task goes on");
        }
    }
    let _ = work.await;
    if listening {
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    }
}

fn step_state(e: &StepEvent) -> (String, StepState) {
    match e {
        StepEvent::Started { step, attempt } => {
            (step.clone(), StepState::Running { attempt: *attempt })
        }
        StepEvent::Skipped { step } => (step.clone(), StepState::Skipped),
        StepEvent::Done {
            step,
            summary,
            elapsed,
        } => (
            step.clone(),
            StepState::Done {
                summary: summary.clone(),
                elapsed_ms: elapsed.as_millis() as u64,
            },
        ),
        StepEvent::Failed { step, error } => (
            step.clone(),
            StepState::Failed {
                error: error.clone(),
            },
        ),
    }
}

type Events = mpsc::UnboundedSender<TaskEvent>;

/// Why a task's work did not succeed.
#[derive(Debug, thiserror::Error)]
enum WorkError<E> {
    #[error(transparent)]
    Failed(E),
    #[error("the {what} task failed: {source}")]
    Panicked {
        what: &'static str,
        source: tokio::task::JoinError,
    },
}

/// Runs `work` on a blocking thread and sends the event `event` makes of
/// its outcome (as the agent reports it: the error's text).
async fn finish_blocking<T, E>(
    tx: &Events,
    what: &'static str,
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
    event: impl FnOnce(Result<T, WorkError<E>>) -> TaskEvent,
) where
    T: Send + 'static,
    E: std::error::Error + Send + 'static,
{
    let outcome = match tokio::task::spawn_blocking(work).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(WorkError::Failed(e)),
        Err(source) => Err(WorkError::Panicked { what, source }),
    };
    let _ = tx.send(event(outcome));
}

/// A progress callback that sends each step event on `tx`.
fn forward(tx: Events) -> impl FnMut(&StepEvent) {
    move |e: &StepEvent| {
        let (step, state) = step_state(e);
        let _ = tx.send(TaskEvent::Step { step, state });
    }
}

/// Why an apply task cannot start.
#[derive(Debug, thiserror::Error)]
enum TaskError {
    #[error("the blob store: {0}")]
    Store(#[from] BlobStoreError),
    #[error("the image's blobs {} are not on this host; distribute the image first", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))]
    MissingBlobs(Vec<Digest>),
    #[error(transparent)]
    Image(#[from] apply::image::ImageError),
    #[error("the join data is not usable: {0}")]
    JoinData(serde_json::Error),
}

/// Waits until every blob of the image is verified in the blob store.
async fn wait_for_blobs(store: &BlobStore, manifest: &Digest) -> Result<(), TaskError> {
    let started = Instant::now();
    loop {
        let missing = missing_blobs(store, manifest);
        match missing {
            Ok(m) if m.is_empty() => return Ok(()),
            Ok(m) if started.elapsed() > BLOB_WAIT => return Err(TaskError::MissingBlobs(m)),
            Err(e) if started.elapsed() > BLOB_WAIT => return Err(e),
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// The blobs of the image `manifest` (a manifest, or a multi-platform
/// index: then its manifest for this host) not yet on this host.
fn missing_blobs(store: &BlobStore, manifest: &Digest) -> Result<Vec<Digest>, TaskError> {
    if !store.has(manifest) {
        return Ok(vec![*manifest]);
    }
    let blobs = store.dir().join("sha256");
    let platform = crate::facts::host_platform();
    let own =
        apply::image::LayoutImage::platform_manifest(store.dir(), &blobs, manifest, &platform)?;
    if !store.has(&own) {
        return Ok(vec![own]);
    }
    let img = apply::image::LayoutImage::from_blobs_for(store.dir(), &blobs, &own, &platform)?;
    Ok(img
        .manifest
        .layers
        .iter()
        .map(|l| l.digest)
        .filter(|d| !store.has(d))
        .collect())
}

fn apply_options(
    task: &ApplyTask,
    settings: &TaskSettings,
    blobs: &Path,
) -> Result<ApplyOptions, TaskError> {
    let join_data = match &task.join_data {
        Some(text) => Some(serde_json::from_str(text).map_err(TaskError::JoinData)?),
        None => None,
    };
    Ok(ApplyOptions {
        image: ImageSource::Blobs {
            dir: blobs.to_path_buf(),
            manifest: task.manifest_digest.digest(),
        },
        only: Some(task.steps.clone()),
        master0_ip: Some(task.master0_ip.clone()),
        cluster: task.cluster.clone(),
        role: task.role,
        host_ip: Some(task.host_ip.clone()),
        registry_ip: Some(task.registry_ip.clone()),
        master_ips: task.master_ips.clone(),
        env: task.env.clone(),
        host_env: task.host_env.clone(),
        kubeadm_config: task.kubeadm_config.clone(),
        join_data,
        join_data_out: None,
        registry_auth: task.registry_auth.clone(),
        registry_tls: task.registry_tls.clone(),
        state_dir: settings.state_dir.clone(),
        data_root: settings.data_root.clone(),
        host_root: PathBuf::from("/"),
        allow_devices: false,
        allow_setuid: false,
        timeouts: Timeouts::default(),
        upgrade: task.upgrade,
    })
}

/// The name under which the signature check is reported.
pub const SIGNATURE_STEP: &str = "signature";

/// Checks the task's image against this host's policy; reports the signer.
fn check_signature(
    task: &ApplyTask,
    settings: &TaskSettings,
    tx: &Events,
) -> Result<(), crate::trust::ImageRefused> {
    let sigs = match &task.signatures {
        Some(docs) => Some(crate::trust::signatures_of(docs).map_err(|source| {
            crate::trust::ImageRefused::Unreadable {
                image: task.image.clone(),
                digest: task.manifest_digest.digest(),
                source: Box::new(source),
            }
        })?),
        None => None,
    };
    let accepted = crate::trust::check(
        &settings.state_dir,
        &settings.trust,
        &task.cluster_trust,
        &task.image,
        &task.manifest_digest.digest(),
        sigs.as_ref(),
    )?;
    info!(image = %task.image, "{accepted}");
    if accepted != seaport_rootfs::signing::Accepted::NotChecked {
        let _ = tx.send(TaskEvent::Step {
            step: SIGNATURE_STEP.into(),
            state: StepState::Done {
                summary: accepted.to_string(),
                elapsed_ms: 0,
            },
        });
    }
    Ok(())
}

async fn run_apply(task: ApplyTask, settings: TaskSettings, tx: Events) {
    info!(cluster = %task.cluster, steps = ?task.steps, "apply task");
    let failed = |error: String| TaskEvent::Finished {
        ok: false,
        error: Some(error),
        join_data: None,
    };
    // The signature check comes before anything else: a refused image
    // leaves the host as it was.
    if let Err(e) = check_signature(&task, &settings, &tx) {
        let e = e.to_string();
        let _ = tx.send(TaskEvent::Step {
            step: SIGNATURE_STEP.into(),
            state: StepState::Failed { error: e.clone() },
        });
        let _ = tx.send(failed(e));
        return;
    }
    let prepared = async {
        let store = BlobStore::open(&settings.state_dir)?;
        wait_for_blobs(&store, &task.manifest_digest.digest()).await?;
        apply_options(&task, &settings, &store.dir().join("sha256"))
    };
    let opts = match prepared.await {
        Ok(o) => o,
        Err(e) => {
            let _ = tx.send(failed(e.to_string()));
            return;
        }
    };
    let mut progress = forward(tx.clone());
    let work = move || apply::apply(&opts, &SystemEffects, &mut progress);
    finish_blocking(&tx, "apply", work, |r| match r {
        Ok(report) => TaskEvent::Finished {
            ok: true,
            error: None,
            join_data: report
                .join_data
                .map(|j| serde_json::to_string(&j).expect("join data serializes")),
        },
        Err(e) => failed(e.to_string()),
    })
    .await;
}

async fn run_balancer(task: BalancerTask, settings: TaskSettings, tx: Events) {
    info!(cluster = %task.cluster, listen = %task.listen_ip, port = task.port, backends = ?task.backends, "API balancer task");
    let event = match &settings.balancer {
        None => TaskEvent::Balancer {
            facts: None,
            error: Some("this agent runs no API balancer".into()),
        },
        Some(b) => match b.apply(&task).await {
            Ok(facts) => TaskEvent::Balancer { facts, error: None },
            Err(e) => TaskEvent::Balancer {
                facts: None,
                error: Some(e.to_string()),
            },
        },
    };
    let _ = tx.send(event);
}

async fn run_reset(task: ResetTask, settings: TaskSettings, tx: Events) {
    info!(cluster = %task.cluster, prune = task.prune, "reset task");
    // The balancer goes first: the host stops serving the cluster's API
    // before its install is undone.
    if let Some(b) = &settings.balancer {
        b.stop(&task.cluster).await;
    }
    let opts = ResetOptions {
        cluster: task.cluster.clone(),
        prune: task.prune,
        state_dir: settings.state_dir.clone(),
        data_root: settings.data_root.clone(),
        host_root: PathBuf::from("/"),
        timeout: Duration::from_secs(300),
    };
    let work = move || apply::reset(&opts, &SystemEffects);
    finish_blocking(&tx, "reset", work, |r| match r {
        Ok(r) => TaskEvent::ResetDone {
            had_install: r.had_journal,
            actions: r.actions,
            warnings: r.warnings,
            error: None,
        },
        Err(e) => TaskEvent::ResetDone {
            had_install: true,
            actions: vec![],
            warnings: vec![],
            error: Some(e.to_string()),
        },
    })
    .await;
}

async fn run_read_files(task: ReadFilesTask, settings: TaskSettings, tx: Events) {
    info!(cluster = %task.cluster, paths = task.paths.len(), dirs = ?task.dirs, "read files task");
    let work = move || {
        apply::rootfs_files::read_files(&settings.data_root, &task.cluster, &task.paths, &task.dirs)
    };
    finish_blocking(&tx, "read files", work, |r| match r {
        Ok(files) => TaskEvent::Files { files, error: None },
        Err(e) => TaskEvent::Files {
            files: vec![],
            error: Some(e.to_string()),
        },
    })
    .await;
}

async fn run_write_files(task: WriteFilesTask, settings: TaskSettings, tx: Events) {
    info!(cluster = %task.cluster, files = task.files.len(), "write files task");
    let work =
        move || apply::rootfs_files::write_files(&settings.data_root, &task.cluster, &task.files);
    finish_blocking(&tx, "write files", work, |r| TaskEvent::Written {
        error: r.err().map(|e| e.to_string()),
    })
    .await;
}

/// Longest a shell step may run when the task gives no timeout.
const SHELL_DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

async fn run_shell(task: ShellTask, settings: TaskSettings, tx: Events) {
    info!(cluster = %task.cluster, step = %task.step, always = task.always, "shell task");
    let opts = ShellOptions {
        cluster: task.cluster,
        step: task.step,
        script: task.script,
        env: task.env,
        host_ip: task.host_ip,
        timeout: match task.timeout_secs {
            0 => SHELL_DEFAULT_TIMEOUT,
            s => Duration::from_secs(s),
        },
        always: task.always,
        state_dir: settings.state_dir.clone(),
        data_root: settings.data_root.clone(),
        host_root: PathBuf::from("/"),
    };
    let mut progress = forward(tx.clone());
    let work = move || apply::run_shell(&opts, &SystemEffects, &mut progress);
    finish_blocking(&tx, "shell", work, |r| {
        let error = r.err().map(|e| e.to_string());
        TaskEvent::Finished {
            ok: error.is_none(),
            error,
            join_data: None,
        }
    })
    .await;
}

async fn run_drift(task: DriftTask, settings: TaskSettings, tx: Events) {
    info!(cluster = %task.cluster, "drift task");
    let work = move || apply::drift(&settings.state_dir, Path::new("/"), &task.cluster);
    finish_blocking(&tx, "drift", work, |r| match r {
        Ok(r) => TaskEvent::Drift {
            modified: r.modified,
            missing: r.missing,
            checked: r.checked,
            error: None,
        },
        Err(e) => TaskEvent::Drift {
            modified: vec![],
            missing: vec![],
            checked: 0,
            error: Some(e.to_string()),
        },
    })
    .await;
}

async fn run_preflight(
    task: seaport_shared::preflight::PreflightTask,
    settings: TaskSettings,
    tx: Events,
) {
    info!(cluster = %task.cluster, role = %task.role, "preflight task");
    let work = move || {
        let host = crate::preflight::gather(&settings.data_root);
        let installed =
            crate::preflight::Installed::read(&settings.state_dir, task.cluster.as_str());
        let checks = crate::preflight::evaluate(&task, &host, &installed);
        Ok::<_, std::convert::Infallible>((host.hostname, checks))
    };
    finish_blocking(&tx, "preflight", work, |r| match r {
        Ok((hostname, checks)) => TaskEvent::Preflight { hostname, checks },
        Err(e) => TaskEvent::Preflight {
            hostname: String::new(),
            checks: vec![seaport_shared::preflight::CheckResult::new(
                "agent",
                seaport_shared::preflight::Level::Error,
                e.to_string(),
            )],
        },
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use seaport_rootfs::signing::{sign, SigningKey};
    use seaport_shared::wire::{ImageSignatures, ImageTrust};

    fn task(subject: Digest, signatures: Option<ImageSignatures>) -> ApplyTask {
        ApplyTask {
            cluster: seaport_shared::cluster::ClusterName::parse("c1").unwrap(),
            image: "site/kube:v1".into(),
            manifest_digest: subject.into(),
            role: seaport_shared::cluster::Role::Master0,
            steps: vec![seaport_shared::cluster::Step::Rootfs],
            host_ip: "198.18.0.11".into(),
            master0_ip: "198.18.0.11".into(),
            registry_ip: "198.18.0.11".into(),
            master_ips: vec!["198.18.0.11".into()],
            env: vec![],
            host_env: vec![],
            kubeadm_config: None,
            join_data: None,
            upgrade: false,
            signatures,
            cluster_trust: ImageTrust::default(),
            registry_auth: None,
            registry_tls: None,
        }
    }

    async fn events(task: ApplyTask, settings: TaskSettings) -> Vec<TaskEvent> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        run_apply(task, settings, tx).await;
        let mut out = Vec::new();
        while let Some(e) = rx.recv().await {
            out.push(e);
        }
        out
    }

    #[tokio::test]
    async fn an_image_the_policy_refuses_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let settings = TaskSettings {
            state_dir: dir.path().join("state"),
            data_root: dir.path().join("data"),
            trust: Default::default(),
            balancer: None,
        };
        let key = SigningKey::generate().unwrap();
        let fp = key.public_key().fingerprint();
        crate::trust::store(
            &settings.state_dir,
            &ImageTrust {
                keys: vec![key.public_key().to_pem()],
                require_signed: true,
            },
        )
        .unwrap();
        let signed = Digest::of(b"the manifest that was signed");
        let changed = Digest::of(b"the manifest changed after signing");
        let sigs = sign(&key, "site/kube", &signed, None).unwrap();
        let docs = ImageSignatures {
            manifest: sigs.manifest_bytes.clone(),
            blobs: sigs.blobs().into_iter().map(<[u8]>::to_vec).collect(),
        };
        for (subject, signatures, reason) in [
            (changed, Some(docs), "changed after it was signed"),
            (signed, None, "no signature"),
        ] {
            let got = events(task(subject, signatures), settings.clone()).await;
            let Some(TaskEvent::Finished {
                ok: false,
                error: Some(error),
                ..
            }) = got.last()
            else {
                panic!("not refused: {got:?}")
            };
            for part in ["site/kube:v1", &subject.to_string(), &fp, reason] {
                assert!(error.contains(part), "{part:?} missing from: {error}");
            }
            assert!(got.iter().any(|e| matches!(
                e,
                TaskEvent::Step { step, state: StepState::Failed { .. } } if step == SIGNATURE_STEP
            )));
            // Nothing written: no rootfs, no journal, not even the blob store.
            assert!(!settings.data_root.exists());
            assert!(!settings.state_dir.join("journal").exists());
            assert!(!settings.state_dir.join("content").exists());
        }
    }
}
