//! `seaport-agent run` as a library call: the session (enrollment's
//! identity, heartbeats, renewal), the distribution service (content syncs,
//! piece fetching, the peer server) and the task server, started together
//! and stopped together.
//!
//! The binary calls [`run`] with the host's facts and a shutdown signal
//! wired to SIGTERM and SIGINT; anything that runs agents in-process (the
//! many-agents benchmark, tests) calls the same function, so it runs the
//! same code as the service on a host.

use std::path::PathBuf;

use tokio::sync::watch;
use tracing::Instrument;

use crate::distribution::{DistributionOptions, DistributionService};
use crate::facts::FactsSource;
use crate::session;
use crate::tasks::{self, TaskSettings};
use crate::trust::LocalTrust;

/// What `seaport-agent run` is given (its flags).
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// The agent's state directory (identity, blob store, journals).
    pub state_dir: PathBuf,
    /// Layer distribution: peer port, rate caps, concurrency.
    pub distribution: DistributionOptions,
    /// Root of cluster data (each cluster's rootfs is unpacked under it).
    pub data_root: PathBuf,
    /// What this host asks of images beside the coordinator's policy.
    pub trust: LocalTrust,
}

/// Runs the agent service until `shutdown` turns true: the session to the
/// coordinator, and over each session's connection the distribution
/// service and the task server. A blob store that cannot be opened
/// disables distribution (logged), as it always has; the session and the
/// tasks still run.
pub async fn run(settings: RunSettings, facts: impl FactsSource, shutdown: watch::Receiver<bool>) {
    let (link, link_rx) = watch::channel(None);
    let distribution =
        match DistributionService::open(&settings.state_dir, settings.distribution.clone()) {
            Ok(service) => Some(tokio::spawn(
                service
                    .run(link_rx, shutdown.clone())
                    .instrument(tracing::info_span!("distribution")),
            )),
            Err(e) => {
                tracing::warn!(error = %e, "layer distribution disabled");
                None
            }
        };
    let task_server = tokio::spawn(
        tasks::serve(
            TaskSettings {
                state_dir: settings.state_dir.clone(),
                data_root: settings.data_root.clone(),
                trust: settings.trust.clone(),
            },
            link.subscribe(),
            shutdown.clone(),
        )
        .instrument(tracing::info_span!("tasks")),
    );
    session::run_linked(&settings.state_dir, facts, shutdown, Some(link)).await;
    if let Some(task) = distribution {
        let _ = task.await;
    }
    task_server.abort();
}
