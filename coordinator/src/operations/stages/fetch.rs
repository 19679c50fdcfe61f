//! `fetch`: the image to its hosts through layer distribution, by the
//! digest it resolved to when the operation was planned; progress is
//! written to the record while it goes.

use std::time::{Duration, Instant};

use super::super::drive::Driver;
use super::super::error::StageError;

/// How long the fetch phase may go without progress before it fails.
const FETCH_STALL_LIMIT: Duration = Duration::from_secs(15 * 60);

pub(super) async fn run(driver: &Driver, hosts: &[String]) -> Result<(), StageError> {
    let (image, digest, nodes) = driver.record.read(|c| {
        (
            c.image.clone(),
            c.manifest_digest,
            c.hosts
                .iter()
                .filter(|h| hosts.contains(&h.ip))
                .map(|h| h.node_id.clone())
                .collect::<Vec<_>>(),
        )
    });
    {
        let agents = driver.agents.clone();
        let (image2, nodes) = (image.clone(), nodes.clone());
        tokio::task::spawn_blocking(move || agents.distribute(&image2, digest, &nodes))
            .await
            .map_err(|e| StageError::Internal(e.to_string()))?
            .map_err(|source| StageError::Distribute {
                image: image.clone(),
                source,
            })?;
    }
    let mut last_progress = (0u64, Instant::now());
    let mut last_save = Instant::now();
    loop {
        let agents = driver.agents.clone();
        let image2 = image.clone();
        let progress = tokio::task::spawn_blocking(move || agents.fetch_progress(&image2, digest))
            .await
            .map_err(|e| StageError::Internal(e.to_string()))??;
        let Some(progress) = progress else {
            return Err(StageError::AssignmentGone(image));
        };
        let (sum, all) = driver.record.write(|c| {
            let mut all = true;
            let mut sum = 0;
            for n in progress.iter().filter(|n| nodes.contains(&n.node_id)) {
                if let Some(h) = c.hosts.iter_mut().find(|h| h.node_id == n.node_id) {
                    h.fetched_bytes = n.done_bytes;
                    h.total_bytes = n.total_bytes;
                    h.phase = if n.complete { "fetched" } else { "fetch" }.into();
                    sum += n.done_bytes;
                    all &= n.complete;
                }
            }
            (sum, all)
        });
        if all {
            return Ok(());
        }
        if sum > last_progress.0 {
            last_progress = (sum, Instant::now());
        } else if last_progress.1.elapsed() > FETCH_STALL_LIMIT {
            return Err(StageError::FetchStalled {
                image,
                minutes: FETCH_STALL_LIMIT.as_secs() / 60,
            });
        }
        if last_save.elapsed() > Duration::from_secs(5) {
            driver.save().await;
            last_save = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
