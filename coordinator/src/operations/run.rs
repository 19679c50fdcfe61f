//! Running an operation: its stages one after another from the first
//! unfinished one, then how it ended, recorded and audited.

use tracing::{info, warn};

use seaport_shared::wire::RunState;

use super::drive::Driver;
use super::error::StageFailed;
use super::stages::run_stage;

/// How an operation ended.
pub(crate) enum Outcome {
    Succeeded,
    Deleted,
    Failed,
}

impl Driver {
    /// Runs the record's stages from the first unfinished one and records
    /// how the operation ended.
    pub(crate) async fn drive(&self) -> Outcome {
        let deleting = self.record.read(|c| c.state == RunState::Deleting);
        let outcome = self.run_stages().await;
        if deleting && outcome.is_ok() {
            let image = self.record.read(|c| c.image.clone());
            let agents = self.agents.clone();
            let _ = tokio::task::spawn_blocking(move || agents.release(&image)).await;
        }
        let now = seaport_shared::clock::now_unix();
        let ended = self.record.write(|c| {
            c.finished_at = Some(now);
            let kind = c.operation.map_or("operation", |k| k.as_str());
            let result = match (&outcome, deleting) {
                (Ok(()), true) => "deleted",
                (Ok(()), false) => "succeeded",
                (Err(_), _) => "failed",
            };
            crate::metrics::global().operation_ended(kind, result);
            match outcome {
                Ok(()) if deleting => {
                    c.state = RunState::Deleted;
                    c.join_data = None;
                    c.installed_digest = None;
                    c.installed_kube_version = None;
                    Outcome::Deleted
                }
                Ok(()) => {
                    c.state = RunState::Succeeded;
                    c.installed_digest = Some(c.manifest_digest);
                    c.installed_kube_version = c.kube_version.clone();
                    Outcome::Succeeded
                }
                Err(e) => {
                    warn!(error = %e, "operation failed");
                    c.state = RunState::Failed;
                    c.error = Some(e.to_string());
                    Outcome::Failed
                }
            }
        });
        self.save().await;
        let entry = self.record.read(|c| c.ended_entry(now));
        if let Err(e) = self.store.audit(&entry) {
            warn!(error = %e, "could not write the audit log");
        }
        info!(
            state = self.record.read(|c| c.state.as_str()),
            "operation ended"
        );
        ended
    }

    async fn run_stages(&self) -> Result<(), StageFailed> {
        loop {
            let (stage, done) = self
                .record
                .read(|c| (c.stages.get(c.stages_done).cloned(), c.stages_done));
            let Some(stage) = stage else { return Ok(()) };
            info!(stage = %stage.name, "stage starts");
            let started = std::time::Instant::now();
            let ran = run_stage(self, &stage).await;
            crate::metrics::global().stage_took(&stage.name, started.elapsed());
            ran.map_err(|source| StageFailed {
                stage: stage.name.clone(),
                source,
            })?;
            self.record.write(|c| c.stages_done = done + 1);
            self.save().await;
        }
    }
}
