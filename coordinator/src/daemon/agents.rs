//! [`Agents`] over the nodes' sessions: a task goes to a node on a `Task`
//! stream of the connection the node made, its events come back on it; the
//! image's blobs go through [`Distribution`].

use std::sync::Arc;

use tracing::{info_span, Instrument};

use seaport_shared::clock::now_unix;
use seaport_shared::cluster::ImageDigest;
use seaport_shared::codec;
use seaport_shared::wire::{
    self, BalancerFacts, StreamKind, TaskEvent, TaskRequest, OFFLINE_AFTER, TASK_FRAME_LIMIT,
};

use super::live::LiveSessions;
use crate::distribution::Distribution;
use crate::operations::{Agents, AgentsError, Fetched, TaskEvents};
use crate::records::NodeRecord;
use crate::state::StateStore;

/// The agents of this coordinator's nodes.
pub(crate) struct SessionAgents {
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) live: Arc<LiveSessions>,
    pub(crate) dist: Arc<Distribution>,
}

impl Agents for SessionAgents {
    fn nodes(&self) -> Result<Vec<NodeRecord>, AgentsError> {
        self.store.nodes().map_err(AgentsError::backend)
    }

    fn online(&self, node_id: &str) -> bool {
        self.live
            .get(node_id)
            .and_then(|v| v.last_seen)
            .is_some_and(|t| now_unix() - t <= OFFLINE_AFTER.as_secs() as i64)
    }

    fn balancer(&self, node_id: &str) -> Option<BalancerFacts> {
        self.live.get(node_id)?.facts?.balancer
    }

    fn run_task(&self, node_id: &str, task: TaskRequest) -> Result<TaskEvents, AgentsError> {
        let conn = self
            .live
            .connection(node_id)
            .ok_or_else(|| AgentsError::NotConnected(node_id.to_string()))?;
        let (tx, events) = TaskEvents::channel();
        tokio::spawn(
            async move {
                let stream = |e: &dyn std::fmt::Display| Err(AgentsError::Stream(e.to_string()));
                let (mut send, mut recv) = match conn.open_bi().await {
                    Ok(s) => s,
                    Err(e) => return drop(tx.send(stream(&e)).await),
                };
                if let Err(e) = wire::client_handshake(&mut recv, &mut send, StreamKind::Task).await
                {
                    return drop(tx.send(stream(&e)).await);
                }
                if let Err(e) = codec::write_msg(&mut send, &task).await {
                    return drop(tx.send(stream(&e)).await);
                }
                loop {
                    let event =
                        match codec::read_msg::<_, TaskEvent>(&mut recv, TASK_FRAME_LIMIT).await {
                            Ok(Some(e)) => e,
                            Ok(None) => return drop(tx.send(Err(AgentsError::EndedEarly)).await),
                            Err(e) => return drop(tx.send(stream(&e)).await),
                        };
                    let last = !matches!(event, TaskEvent::Step { .. });
                    if tx.send(Ok(event)).await.is_err() || last {
                        return;
                    }
                }
            }
            .instrument(info_span!("task", node = %node_id)),
        );
        Ok(events)
    }

    fn distribute(
        &self,
        image: &str,
        digest: ImageDigest,
        nodes: &[String],
    ) -> Result<(), AgentsError> {
        self.dist
            .assign(image, digest, nodes, now_unix())
            .map(|_| ())
            .map_err(AgentsError::backend)
    }

    fn fetch_progress(
        &self,
        image: &str,
        digest: ImageDigest,
    ) -> Result<Option<Vec<Fetched>>, AgentsError> {
        let status = self.dist.status().map_err(AgentsError::backend)?;
        Ok(status
            .images
            .iter()
            .find(|i| i.image == image && i.manifest_digest == digest.digest())
            .map(|i| i.nodes.iter().map(Fetched::from).collect()))
    }

    fn release(&self, image: &str) -> Result<(), AgentsError> {
        self.dist.cancel(image).map_err(AgentsError::backend)
    }
}
