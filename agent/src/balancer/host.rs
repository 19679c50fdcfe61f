//! The balancer as the agent runs it on its host for a cluster: started,
//! updated and stopped by the coordinator's tasks ([`BalancerTask`]), with
//! its listening IP on the loopback link, and kept on the host
//! (`<state>/balancer.json`, written atomically, 0600) so that an agent that
//! restarts serves the same list again at once, before any coordinator
//! speaks to it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tracing::{info, warn};

use seaport_shared::cluster::ClusterName;
use seaport_shared::wire::{BackendFacts, BalancerFacts, BalancerTask};

use super::{Balancer, BalancerError, Options};
use crate::apply::{CommandSpec, Effects};

/// The file the last task is kept in, under the agent's state directory.
pub const STATE_FILE: &str = "balancer.json";
/// Where kubeadm puts the cluster's CA on every host it joins.
pub const CA_FILE: &str = "/etc/kubernetes/pki/ca.crt";

/// Why a balancer task could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum HostBalancerError {
    /// A field of the task is not usable.
    #[error("the API balancer's {field} {value:?}: {why}")]
    Bad {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The host runs the balancer for another cluster.
    #[error("this host runs the API balancer of cluster {0}; reset that cluster first")]
    OtherCluster(ClusterName),
    /// Adding the address to the loopback link failed.
    #[error("adding {ip} to the loopback link: {output}")]
    Address {
        /// The address.
        ip: Ipv4Addr,
        /// What `ip` said.
        output: String,
    },
    /// Listening failed.
    #[error(transparent)]
    Start(#[from] BalancerError),
    /// Keeping the task on the host failed.
    #[error("writing {path}: {source}")]
    Save {
        /// The file.
        path: PathBuf,
        /// The error.
        source: seaport_shared::confined::ConfinedError,
    },
}

struct Running {
    task: BalancerTask,
    balancer: Balancer,
    /// The port forwarding to the local registries.
    registry: Option<Balancer>,
    /// The registries' CA and domain it checks them with (TLS), if any.
    registry_tls: Option<(String, String)>,
}

/// What heartbeats read: each listener's address and pool.
type Listeners = (
    SocketAddr,
    Arc<super::pool::Pool>,
    Option<(SocketAddr, Arc<super::pool::Pool>)>,
);

/// The host's balancer (at most one: a host belongs to one cluster).
pub struct HostBalancer {
    state_dir: PathBuf,
    ca_file: PathBuf,
    fx: Arc<dyn Effects + Send + Sync>,
    running: tokio::sync::Mutex<Option<Running>>,
    /// What heartbeats report, kept apart so a synchronous reader never
    /// waits for a task.
    facts: Mutex<Option<Listeners>>,
}

impl std::fmt::Debug for HostBalancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBalancer")
            .field("state_dir", &self.state_dir)
            .field("running", &self.facts())
            .finish_non_exhaustive()
    }
}

static GLOBAL: OnceLock<Arc<HostBalancer>> = OnceLock::new();

/// The agent process's balancer, once [`HostBalancer::install`] set it.
pub fn global() -> Option<&'static Arc<HostBalancer>> {
    GLOBAL.get()
}

impl HostBalancer {
    /// A balancer keeping its task under `state_dir`, checking against the
    /// CA at `ca_file`, changing links through `fx`.
    pub fn new(
        state_dir: impl Into<PathBuf>,
        ca_file: impl Into<PathBuf>,
        fx: Arc<dyn Effects + Send + Sync>,
    ) -> Self {
        HostBalancer {
            state_dir: state_dir.into(),
            ca_file: ca_file.into(),
            fx,
            running: tokio::sync::Mutex::new(None),
            facts: Mutex::new(None),
        }
    }

    /// Makes `b` the process's balancer (heartbeats report it).
    pub fn install(b: Arc<HostBalancer>) -> Arc<HostBalancer> {
        GLOBAL.get_or_init(|| b).clone()
    }

    fn state_file(&self) -> PathBuf {
        self.state_dir.join(STATE_FILE)
    }

    /// Starts the balancer the host kept, if any (the agent's start).
    pub async fn restore(&self) -> Result<Option<BalancerFacts>, HostBalancerError> {
        let Ok(bytes) = std::fs::read(self.state_file()) else {
            return Ok(None);
        };
        let task: BalancerTask = match serde_json::from_slice(&bytes) {
            Ok(t) => t,
            Err(e) => {
                warn!(file = %self.state_file().display(), error = %e, "API balancer: unreadable kept list; not started");
                return Ok(None);
            }
        };
        info!(listen = %format!("{}:{}", task.listen_ip, task.port), backends = task.backends.len(), "API balancer: starting the kept list");
        self.apply(&task).await
    }

    /// Carries out a task: the list kept on the host first, then the
    /// running balancer started, moved or given the new list; an empty list
    /// stops it. Returns what runs now.
    pub async fn apply(
        &self,
        task: &BalancerTask,
    ) -> Result<Option<BalancerFacts>, HostBalancerError> {
        let ip: Ipv4Addr = task.listen_ip.parse().map_err(|_| HostBalancerError::Bad {
            field: "listen address",
            value: task.listen_ip.clone(),
            why: "not an IPv4 address",
        })?;
        if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
            return Err(HostBalancerError::Bad {
                field: "listen address",
                value: task.listen_ip.clone(),
                why: "not a unicast address",
            });
        }
        if task.port == 0 {
            return Err(HostBalancerError::Bad {
                field: "port",
                value: "0".into(),
                why: "not a port",
            });
        }
        let backends = addrs(&task.backends, "backend")?;
        let registry_backends = addrs(&task.registry_backends, "registry backend")?;
        let registry_listen = match task.registry_port {
            Some(p) if p == 0 || p == task.port => {
                return Err(HostBalancerError::Bad {
                    field: "registry port",
                    value: p.to_string(),
                    why: "not a port, or the API's own",
                })
            }
            Some(p) if !registry_backends.is_empty() => Some(SocketAddr::from((ip, p))),
            _ => None,
        };
        let mut running = self.running.lock().await;
        if let Some(r) = running.as_ref() {
            if r.task.cluster != task.cluster {
                return Err(HostBalancerError::OtherCluster(r.task.cluster.clone()));
            }
        }
        if backends.is_empty() {
            drop(running);
            self.stop(&task.cluster).await;
            return Ok(None);
        }
        let listen = SocketAddr::from((ip, task.port));
        if let Some(r) = running.as_mut() {
            if r.balancer.local_addr() == listen {
                self.save(task)?;
                r.balancer.set_backends(&backends);
                r.task = task.clone();
                settle_registry(r, registry_listen, &registry_backends, registry_tls(task)).await?;
                let l = listeners(r);
                let facts = facts_of(&l);
                *self.lock_facts() = Some(l);
                return Ok(Some(facts));
            }
        }
        // New, or moved to another address: the old one goes first.
        if let Some(old) = running.take() {
            self.unlisten(old).await;
        }
        self.save(task)?;
        if !ip.is_loopback() {
            let spec = CommandSpec::new(
                "ip",
                &["-4", "addr", "replace", &format!("{ip}/32"), "dev", "lo"],
                Duration::from_secs(10),
            );
            let out = self.fx.run(&spec).map_err(|e| HostBalancerError::Address {
                ip,
                output: e.to_string(),
            })?;
            if !out.success() {
                return Err(HostBalancerError::Address {
                    ip,
                    output: out.last_lines(5),
                });
            }
        }
        let mut o = Options::unverified(listen, backends);
        o.ca_file = Some(self.ca_file.clone());
        let balancer = Balancer::start(o).await?;
        let r = running.insert(Running {
            task: task.clone(),
            balancer,
            registry: None,
            registry_tls: None,
        });
        settle_registry(r, registry_listen, &registry_backends, registry_tls(task)).await?;
        let l = listeners(r);
        let facts = facts_of(&l);
        *self.lock_facts() = Some(l);
        Ok(Some(facts))
    }

    /// Stops `cluster`'s balancer, takes its address off the loopback link
    /// and forgets the kept list (a reset of the cluster on this host).
    /// Returns whether one ran or was kept.
    pub async fn stop(&self, cluster: &ClusterName) -> bool {
        let mut running = self.running.lock().await;
        let kept = std::fs::read(self.state_file())
            .ok()
            .and_then(|b| serde_json::from_slice::<BalancerTask>(&b).ok());
        let ours = running.as_ref().is_some_and(|r| r.task.cluster == *cluster)
            || kept.as_ref().is_some_and(|t| t.cluster == *cluster);
        if !ours {
            return false;
        }
        if let Some(old) = running.take() {
            self.unlisten(old).await;
        } else if let Some(t) = &kept {
            self.del_address(&t.listen_ip);
        }
        if let Err(e) = std::fs::remove_file(self.state_file()) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(error = %e, "API balancer: could not remove the kept list");
            }
        }
        info!(cluster = %cluster, "API balancer stopped");
        true
    }

    async fn unlisten(&self, old: Running) {
        *self.lock_facts() = None;
        if let Some(r) = old.registry {
            r.stop().await;
        }
        old.balancer.stop().await;
        self.del_address(&old.task.listen_ip);
    }

    fn del_address(&self, ip: &str) {
        let Ok(ip) = ip.parse::<Ipv4Addr>() else {
            return;
        };
        if ip.is_loopback() {
            return;
        }
        let spec = CommandSpec::new(
            "ip",
            &["-4", "addr", "del", &format!("{ip}/32"), "dev", "lo"],
            Duration::from_secs(10),
        );
        match self.fx.run(&spec) {
            Ok(o) if o.success() => {}
            Ok(o) => warn!(%ip, output = %o.last_lines(3), "API balancer: address not removed"),
            Err(e) => warn!(%ip, error = %e, "API balancer: address not removed"),
        }
    }

    fn save(&self, task: &BalancerTask) -> Result<(), HostBalancerError> {
        let path = self.state_file();
        let bytes = serde_json::to_vec_pretty(task).expect("a task serializes");
        seaport_shared::confined::write_atomic(&path, &bytes, 0o600)
            .map_err(|source| HostBalancerError::Save { path, source })
    }

    fn lock_facts(&self) -> std::sync::MutexGuard<'_, Option<Listeners>> {
        self.facts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What runs now (heartbeats, status).
    pub fn facts(&self) -> Option<BalancerFacts> {
        self.lock_facts().as_ref().map(facts_of)
    }

    /// The kept list's file (tests, docs).
    pub fn kept_file(&self) -> PathBuf {
        self.state_file()
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

/// `IP:PORT` addresses of a task's field.
fn addrs(list: &[String], field: &'static str) -> Result<Vec<SocketAddr>, HostBalancerError> {
    list.iter()
        .map(|b| {
            b.parse::<SocketAddr>().map_err(|_| HostBalancerError::Bad {
                field,
                value: b.clone(),
                why: "not IP:PORT",
            })
        })
        .collect()
}

/// The registries' CA and domain when they serve TLS.
fn registry_tls(task: &BalancerTask) -> Option<(String, String)> {
    task.registry_ca.clone().zip(task.registry_domain.clone())
}

/// The registry port as the task wants it: started, moved (or restarted
/// for another CA), given the new list or stopped. The registries are
/// checked by `GET /v2/`, over TLS against their CA for their domain when
/// they serve TLS.
async fn settle_registry(
    r: &mut Running,
    listen: Option<SocketAddr>,
    backends: &[SocketAddr],
    tls: Option<(String, String)>,
) -> Result<(), HostBalancerError> {
    match (&r.registry, listen) {
        (Some(b), Some(l)) if b.local_addr() == l && r.registry_tls == tls => {
            b.set_backends(backends);
            return Ok(());
        }
        (None, None) => return Ok(()),
        _ => {}
    }
    if let Some(old) = r.registry.take() {
        old.stop().await;
    }
    if let Some(l) = listen {
        let check = match &tls {
            None => None,
            Some((ca, domain)) => {
                let der = seaport_shared::pki::certs_from_pem(ca, "the registry CA")
                    .map_err(|e| BalancerError::Ca(e.to_string()))?
                    .remove(0);
                Some((super::check_tls(der)?, domain.clone()))
            }
        };
        r.registry = Some(Balancer::start(Options::registry(l, backends.to_vec(), check)).await?);
    }
    r.registry_tls = tls;
    Ok(())
}

fn listeners(r: &Running) -> Listeners {
    (
        r.balancer.local_addr(),
        r.balancer.pool.clone(),
        r.registry
            .as_ref()
            .map(|b| (b.local_addr(), b.pool.clone())),
    )
}

fn facts_of(l: &Listeners) -> BalancerFacts {
    let list = |pool: &super::pool::Pool| -> Vec<BackendFacts> {
        pool.status()
            .into_iter()
            .map(|b| BackendFacts {
                addr: b.addr.to_string(),
                healthy: b.healthy,
                reason: b.reason,
                forwarded: b.forwarded,
                failed_dials: b.failed_dials,
            })
            .collect()
    };
    BalancerFacts {
        listen: l.0.to_string(),
        backends: list(&l.1),
        registry_listen: l.2.as_ref().map(|(a, _)| a.to_string()),
        registry: l.2.as_ref().map(|(_, p)| list(p)).unwrap_or_default(),
    }
}
