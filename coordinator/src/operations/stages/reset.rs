//! `reset`: every host's install undone by its agent.

use seaport_shared::wire::{ResetTask, TaskRequest};

use super::super::drive::{check, Driver};
use super::super::error::StageError;

pub(super) async fn run(
    driver: &Driver,
    stage: &str,
    hosts: &[String],
    prune: bool,
) -> Result<(), StageError> {
    let cluster = driver.record.read(|c| c.name.clone());
    let reqs = hosts
        .iter()
        .map(|ip| {
            (
                ip.clone(),
                TaskRequest::Reset(ResetTask {
                    cluster: cluster.clone(),
                    prune,
                }),
            )
        })
        .collect();
    check(driver.on_hosts(stage, reqs).await)
}
