//! [`Operations`]: the operations this coordinator drives. It accepts a
//! request (plans it with [`super::prepare`], records it, starts driving
//! it), answers what `seaport status`, `logs`, `audit` and `--drift` ask,
//! and resumes every unfinished record after a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, info_span, warn, Instrument};

use seaport_rootfs::signing::Policy;

use seaport_shared::clock::now_unix;
use seaport_shared::cluster::ClusterName;
use seaport_shared::preflight::{HostChecks, Ignore};
use seaport_shared::wire::{
    AuditView, ClusterView, DriftTask, HostDrift, PlannedApply, TaskEvent, TaskRequest,
};

use super::agents::Agents;
use super::drive::Driver;
use super::error::OperationError;
use super::prepare::{self, PrepareInput, Prepared, ResolvedImage, Want};
use super::record::{AuditEntry, Cluster, LiveRecord};
use super::run::Outcome;
use super::stages::preflight;
use super::store::ClusterStore;

struct Active {
    generation: u64,
    record: LiveRecord,
    handle: tokio::task::AbortHandle,
}

/// The operations of one coordinator.
pub struct Operations {
    agents: Arc<dyn Agents>,
    store: Arc<dyn ClusterStore>,
    /// The Seaport root of the coordinator's image store.
    image_root: PathBuf,
    /// The coordinator's image signature policy (`crate::trust`).
    trust: Policy,
    active: Mutex<HashMap<ClusterName, Active>>,
}

/// Runs blocking work (the store, the image store, the inventory) off the
/// async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, OperationError> + Send + 'static,
) -> Result<T, OperationError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OperationError::Internal(e.to_string()))?
}

/// What the audit log says of an accepted operation, in words.
pub(super) fn accepted_words(p: &Prepared) -> String {
    format!(
        "{} of cluster {}, operation {}",
        p.operation.kind.as_str(),
        p.cluster.name,
        p.cluster.generation
    )
}

impl Operations {
    /// Operations on the agents `agents`, recorded in `store`, with images
    /// from the store under `image_root`, checked against `trust`.
    pub fn new(
        agents: Arc<dyn Agents>,
        store: Arc<dyn ClusterStore>,
        image_root: PathBuf,
        trust: Policy,
    ) -> Arc<Operations> {
        Arc::new(Operations {
            agents,
            store,
            image_root,
            trust,
            active: Mutex::new(HashMap::new()),
        })
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<ClusterName, Active>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The freshest record of `name`: the active run's, else the stored one.
    fn previous(&self, name: &ClusterName) -> Result<Option<Cluster>, OperationError> {
        if let Some(a) = self.active().get(name) {
            return Ok(Some(a.record.snapshot()));
        }
        Ok(self.store.cluster(name)?)
    }

    /// Records a request and how it was taken (`accepted: ...`,
    /// `refused: ...`).
    fn audit(&self, who: &str, what: String, result: Result<String, String>) {
        let entry = AuditEntry {
            at: now_unix(),
            who: who.to_string(),
            what,
            result: match result {
                Ok(v) => format!("accepted: {v}"),
                Err(e) => format!("refused: {e}"),
            },
        };
        if let Err(e) = self.store.audit(&entry) {
            warn!(error = %e, "could not write the audit log");
        }
    }

    /// Reads what [`prepare::prepare`] needs and plans `want`, preflight
    /// checks first. Blocking.
    fn plan(&self, want: Want, ignore: &Ignore, dry_run: bool) -> Result<Prepared, OperationError> {
        let mut prepared = self.prepare(want, dry_run)?;
        preflight::prepend(&mut prepared.cluster.stages, ignore);
        Ok(prepared)
    }

    fn prepare(&self, want: Want, dry_run: bool) -> Result<Prepared, OperationError> {
        // Removing hosts installs nothing: no image to check.
        let installs = !matches!(want, Want::Remove { .. });
        let previous = match want.existing_cluster() {
            Some(name) => self.previous(name)?,
            None => None,
        };
        let mut desired = prepare::desired(want, previous.as_ref())?;
        let previous = match &previous {
            Some(p) if p.name == desired.name => previous,
            _ => self.previous(&desired.name)?,
        };
        let images = seaport_rootfs::store::Store::open(&self.image_root)
            .map_err(OperationError::ImageStore)?;
        let stored = images
            .image(&desired.spec.image)
            .map_err(OperationError::Image)?;
        if installs {
            // The image signature policy, before anything is recorded.
            let policy = self.trust.union(&crate::trust::cluster_policy(
                desired.spec.clusterfile.as_deref(),
            )?);
            let (name, digest) = (&desired.spec.image, stored.digest());
            match crate::trust::check(&self.image_root, &policy, name, &digest) {
                Ok(accepted) => info!(image = %name, "{accepted}"),
                Err(e) if dry_run => desired.warnings.push(e.to_string()),
                Err(e) => return Err(e.into()),
            }
        }
        let image = ResolvedImage::new(&desired.spec.image, stored);
        let nodes = self.agents.nodes()?;
        prepare::prepare(PrepareInput {
            desired,
            previous: previous.as_ref(),
            nodes: &nodes,
            image,
            dry_run,
            now: now_unix(),
        })
    }

    /// Accepts a request that changes a cluster: plans, records and starts
    /// it. Returns the cluster and the operation's generation.
    pub async fn accept(
        self: &Arc<Self>,
        who: &str,
        want: Want,
    ) -> Result<(ClusterName, u64), OperationError> {
        self.accept_ignoring(who, want, &[]).await
    }

    /// [`Operations::accept`], with the preflight checks whose errors are
    /// ignored (`--ignore-preflight`).
    pub async fn accept_ignoring(
        self: &Arc<Self>,
        who: &str,
        want: Want,
        ignore: &[String],
    ) -> Result<(ClusterName, u64), OperationError> {
        let mut what = want.describe();
        if !ignore.is_empty() {
            what.push_str(&format!(" ignoring preflight {}", ignore.join(",")));
        }
        let result = match Ignore::parse(ignore) {
            Ok(ignore) => {
                let me = self.clone();
                blocking(move || me.plan(want, &ignore, false)).await
            }
            Err(e) => Err(e.into()),
        };
        self.audit(
            who,
            what,
            match &result {
                Ok(p) => Ok(accepted_words(p)),
                Err(e) => Err(e.to_string()),
            },
        );
        let mut cluster = result?.cluster;
        cluster.started_by = who.to_string();
        self.store.save_cluster(&cluster)?;
        let out = (cluster.name.clone(), cluster.generation);
        info!(cluster = %out.0, generation = out.1, op = ?cluster.operation, "operation accepted");
        self.activate(cluster);
        Ok(out)
    }

    /// What a Clusterfile would do, changing nothing.
    pub async fn dry_run(self: &Arc<Self>, text: String) -> Result<PlannedApply, OperationError> {
        let me = self.clone();
        let p =
            blocking(move || me.plan(Want::Clusterfile(text), &Ignore::default(), true)).await?;
        Ok(p.planned())
    }

    /// Accepts `seaport delete`: every named cluster (all when `None`) is
    /// reset on its hosts.
    pub async fn delete(
        self: &Arc<Self>,
        who: &str,
        name: Option<ClusterName>,
        prune: bool,
    ) -> Result<Vec<(ClusterName, u64)>, OperationError> {
        let what = format!(
            "delete {}{}",
            name.as_ref()
                .map_or("all clusters".to_string(), |n| n.to_string()),
            if prune { " --prune" } else { "" }
        );
        let result = {
            let (me, who) = (self.clone(), who.to_string());
            blocking(move || me.mark_deleting(name, prune, &who)).await
        };
        self.audit(
            who,
            what,
            match &result {
                Ok(cs) => Ok(match cs.as_slice() {
                    [] => "no clusters to delete".to_string(),
                    cs => format!(
                        "deleting {}",
                        cs.iter()
                            .map(|c| format!("cluster {}, operation {}", c.name, c.generation))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                }),
                Err(e) => Err(e.to_string()),
            },
        );
        let clusters = result?;
        let out = clusters
            .iter()
            .map(|c| (c.name.clone(), c.generation))
            .collect();
        for c in clusters {
            self.activate(c);
        }
        Ok(out)
    }

    fn mark_deleting(
        &self,
        name: Option<ClusterName>,
        prune: bool,
        who: &str,
    ) -> Result<Vec<Cluster>, OperationError> {
        let mut chosen = Vec::new();
        for c in self.store.clusters()? {
            if name.as_ref().is_none_or(|n| *n == c.name) {
                // The freshest state is the active run's.
                let c = self.previous(&c.name)?.unwrap_or(c);
                chosen.push(c);
            }
        }
        if let (Some(n), true) = (&name, chosen.is_empty()) {
            return Err(OperationError::NothingToDelete(n.clone()));
        }
        let mut out = Vec::new();
        for c in chosen {
            let c = prepare::deleting(c, prune, who, now_unix());
            self.store.save_cluster(&c)?;
            out.push(c);
        }
        Ok(out)
    }

    /// Every cluster, the active runs' records fresher than the stored ones.
    pub fn views(&self) -> Result<Vec<ClusterView>, OperationError> {
        let stored = self.store.clusters()?;
        let active = self.active();
        let mut out: Vec<ClusterView> = stored
            .into_iter()
            .map(|c| {
                let c = active.get(&c.name).map_or(c, |a| a.record.snapshot());
                c.view(|node| self.agents.online(node))
            })
            .collect();
        out.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        Ok(out)
    }

    /// Asks every host of a cluster for drift.
    pub async fn drift(&self, cluster: &ClusterName) -> Result<Vec<HostDrift>, OperationError> {
        let c = self
            .previous(cluster)?
            .ok_or_else(|| OperationError::NoSuchCluster(cluster.clone()))?;
        let reqs = c
            .hosts
            .iter()
            .map(|h| {
                (
                    h.ip.clone(),
                    TaskRequest::Drift(DriftTask {
                        cluster: c.name.clone(),
                    }),
                )
            })
            .collect();
        let driver = Driver {
            agents: self.agents.clone(),
            store: self.store.clone(),
            image_root: self.image_root.clone(),
            record: LiveRecord::new(c),
        };
        let failed = |ip, error| HostDrift {
            ip,
            modified: vec![],
            missing: vec![],
            checked: 0,
            error: Some(error),
        };
        let mut out: Vec<HostDrift> = driver
            .on_hosts("drift", reqs)
            .await
            .into_iter()
            .map(|(ip, r)| match r {
                Ok(TaskEvent::Drift {
                    modified,
                    missing,
                    checked,
                    error,
                }) => HostDrift {
                    ip,
                    modified,
                    missing,
                    checked,
                    error,
                },
                Ok(other) => failed(ip, format!("unexpected answer {other:?}")),
                Err(e) => failed(ip, e.to_string()),
            })
            .collect();
        out.sort_by(|a, b| a.ip.cmp(&b.ip));
        Ok(out)
    }

    /// `seaport check`: the preflight checks of the hosts `req` names,
    /// changing nothing.
    pub async fn check(
        self: &Arc<Self>,
        req: seaport_shared::wire::CheckRequest,
    ) -> Result<Vec<HostChecks>, OperationError> {
        let ignore = Ignore::parse(&req.ignore_preflight)?;
        let me = self.clone();
        let (targets, plan) = blocking(move || me.check_targets(req, ignore)).await?;
        Ok(preflight::check_hosts(self.agents.clone(), targets, &plan).await)
    }

    /// The hosts of a check, bound to their nodes, and what they share.
    /// Blocking.
    fn check_targets(
        &self,
        req: seaport_shared::wire::CheckRequest,
        ignore: Ignore,
    ) -> Result<(Vec<preflight::Target>, preflight::CheckPlan), OperationError> {
        let name = match &req.clusterfile {
            Some(text) => prepare::spec_of_clusterfile(text)?.name,
            None => req.cluster.clone(),
        };
        let previous = self.previous(&name)?;
        let nodes = self.agents.nodes()?;
        preflight::check_targets(req, ignore, previous.as_ref(), &nodes, &self.image_root)
    }

    /// The audit log, newest last.
    pub fn audit_log(&self, limit: u32) -> Result<Vec<AuditView>, OperationError> {
        Ok(self
            .store
            .audit_log(limit as usize)?
            .into_iter()
            .map(|(seq, e)| AuditView {
                seq,
                at: e.at,
                who: e.who,
                what: e.what,
                result: e.result,
            })
            .collect())
    }

    /// Starts driving every stored run that had not finished (after a
    /// restart).
    pub fn resume_all(self: &Arc<Self>) {
        let stored = match self.store.clusters() {
            Ok(c) => c,
            Err(e) => return warn!(error = %e, "could not read clusters to resume"),
        };
        for c in stored {
            if !c.state.is_final() {
                info!(cluster = %c.name, state = c.state.as_str(), phase = %c.current_phase(), "resuming");
                self.activate(c);
            }
        }
    }

    /// Stops driving every operation (a coordinator that no longer leads
    /// its site); what they recorded stays for the next leader to resume.
    pub fn stop_all(&self) {
        for (name, a) in self.active().drain() {
            info!(cluster = %name, generation = a.generation, "stopped driving");
            a.handle.abort();
        }
    }

    /// Makes `cluster` the active run of its name (stopping an older one)
    /// and drives it.
    fn activate(self: &Arc<Self>, cluster: Cluster) {
        let name = cluster.name.clone();
        let generation = cluster.generation;
        let record = LiveRecord::new(cluster);
        let driver = Driver {
            agents: self.agents.clone(),
            store: self.store.clone(),
            image_root: self.image_root.clone(),
            record: record.clone(),
        };
        let mut active = self.active();
        if let Some(old) = active.remove(&name) {
            old.handle.abort();
        }
        let me = self.clone();
        let span = info_span!("run", cluster = %name, generation);
        let task = tokio::spawn(
            async move {
                let outcome = driver.drive().await;
                me.finished(driver, outcome).await;
            }
            .instrument(span),
        );
        active.insert(
            name,
            Active {
                generation,
                record,
                handle: task.abort_handle(),
            },
        );
    }

    /// Forgets a run that ended (a deleted cluster's record a while later,
    /// so `seaport delete` sees it finish).
    async fn finished(&self, driver: Driver, outcome: Outcome) {
        let deleted = matches!(outcome, Outcome::Deleted);
        if deleted {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        let (name, generation) = driver.record.read(|c| (c.name.clone(), c.generation));
        let mut active = self.active();
        if active
            .get(&name)
            .is_some_and(|a| a.generation == generation)
        {
            active.remove(&name);
            if deleted {
                let _ = self.store.remove_cluster(&name);
            }
        }
    }
}
