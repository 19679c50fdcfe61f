//! Runs seen from outside the process that owns them: what the CLI's
//! `status`, `exec`, `down` and `down --all` do, working from the run
//! records alone; and the demo setup that `seaport-lab up --agents` runs.

use std::path::Path;
use std::time::Duration;

use crate::cleanup::{self, CleanupError, Removed};
use crate::cmd::ExecOutput;
use crate::host::{self, HostError};
use crate::lab::Lab;
use crate::lock::{self, LockError};
use crate::names::{LabPaths, RunId};
use crate::procs;
use crate::seaport::{self, Binaries, Coordinator, Node, SeaportError, COORDINATOR_PORT};
use crate::state::{self, CoordinatorRecord, RunRecord, StateError};

/// Errors of working with recorded runs.
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    #[error("no lab is running (nothing under {0}); start one with `seaport-lab up`")]
    NoRuns(String),
    #[error("several labs are running ({0}); say which one")]
    Ambiguous(String),
    #[error("no lab run {0}; `seaport-lab status` lists them")]
    NoSuchRun(String),
    #[error("no host {host} in the running labs; hosts: {known}")]
    NoSuchHost { host: String, known: String },
    #[error("host {0} is not running")]
    HostDown(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Cleanup(#[from] CleanupError),
    #[error(transparent)]
    Lock(#[from] LockError),
}

/// A run and whether its owner and hosts are alive.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunStatus {
    pub record: RunRecord,
    /// The owning process is alive.
    pub owner_alive: bool,
    /// Per host: name, address, running.
    pub hosts: Vec<HostStatus>,
}

/// One host as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostStatus {
    pub name: String,
    pub ip: String,
    pub running: bool,
    /// `systemctl is-system-running` inside, when running.
    pub system_state: Option<String>,
}

/// The records of all runs on the machine.
pub fn status(paths: &LabPaths) -> Vec<RunStatus> {
    state::run_dirs(paths)
        .into_iter()
        .filter_map(|(_, dir)| RunRecord::load(&dir).ok())
        .map(|record| {
            let hosts = record
                .hosts
                .iter()
                .map(|h| {
                    let leader = host::leader_of(h);
                    let system_state = leader.and_then(|l| {
                        host::exec_in(l, &["systemctl", "is-system-running"], None)
                            .ok()
                            .map(|o| o.stdout.trim().to_string())
                    });
                    HostStatus {
                        name: h.name.clone(),
                        ip: h.ip.to_string(),
                        running: leader.is_some(),
                        system_state,
                    }
                })
                .collect();
            RunStatus {
                owner_alive: procs::alive(record.owner_pid),
                hosts,
                record,
            }
        })
        .collect()
}

/// The run named `id`; without one, the only run, or else the only one
/// kept by `seaport-lab up` (the test suite's labs run beside it).
pub fn find_run(paths: &LabPaths, id: Option<&str>) -> Result<RunRecord, RunsError> {
    let runs = state::run_dirs(paths);
    match id {
        Some(id) => {
            let (_, dir) = runs
                .iter()
                .find(|(r, _)| r.as_str() == id)
                .ok_or_else(|| RunsError::NoSuchRun(id.to_string()))?;
            Ok(RunRecord::load(dir)?)
        }
        None => {
            let records: Vec<RunRecord> = runs
                .iter()
                .filter_map(|(_, dir)| RunRecord::load(dir).ok())
                .collect();
            let kept: Vec<&RunRecord> = records
                .iter()
                .filter(|r| is_keeper(r.owner_pid, &r.id))
                .collect();
            if runs.is_empty() {
                return Err(RunsError::NoRuns(paths.runs.display().to_string()));
            }
            match (records.as_slice(), kept.as_slice()) {
                ([only], _) => Ok(only.clone()),
                (_, [only]) => Ok((*only).clone()),
                _ => Err(RunsError::Ambiguous(
                    runs.iter()
                        .map(|(r, _)| r.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                )),
            }
        }
    }
}

/// Runs `argv` in the host named `host` (full name, or `h2` when only one
/// lab runs).
pub fn exec(paths: &LabPaths, host: &str, argv: &[String]) -> Result<ExecOutput, RunsError> {
    let records: Vec<RunRecord> = state::run_dirs(paths)
        .into_iter()
        .filter_map(|(_, d)| RunRecord::load(&d).ok())
        .collect();
    let exact = records
        .iter()
        .flat_map(|r| r.hosts.iter())
        .find(|h| h.name == host);
    let found = match exact {
        Some(h) => Some(h.clone()),
        None => find_run(paths, None)
            .ok()
            .and_then(|r| r.find_host(host).cloned()),
    };
    let Some(h) = found else {
        return Err(RunsError::NoSuchHost {
            host: host.to_string(),
            known: records
                .iter()
                .flat_map(|r| r.hosts.iter().map(|h| h.name.clone()))
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let leader = host::leader_of(&h).ok_or_else(|| RunsError::HostDown(h.name.clone()))?;
    Ok(host::exec_in(leader, argv, None)?)
}

/// The log file of the process keeping run `id` (`seaport-lab up`).
pub fn keeper_log(paths: &LabPaths, id: &RunId) -> std::path::PathBuf {
    paths.runs.join(format!("{id}.log"))
}

/// True when `pid` is the `seaport-lab keep` process of run `id`.
pub fn is_keeper(pid: u32, id: &RunId) -> bool {
    procs::is_ours(pid, &["seaport-lab", "keep", id.as_str()])
}

/// Takes run `id` down: asks its keeper to tear it down (SIGTERM) and waits,
/// then removes whatever is still there.
pub fn down(paths: &LabPaths, id: &RunId) -> Result<Removed, RunsError> {
    let mut removed = Removed::default();
    if let Ok(rec) = RunRecord::load(&paths.run_dir(id)) {
        if is_keeper(rec.owner_pid, id) {
            procs::terminate(rec.owner_pid, Duration::from_secs(90));
            removed.runs.push(id.to_string());
        }
    }
    cleanup::remove_run(paths, id, &mut removed)?;
    let _ = std::fs::remove_file(keeper_log(paths, id));
    Ok(removed)
}

/// Takes every lab down: the kept ones through their keepers, then every
/// leftover of a killed run. Labs of running processes (tests) are left
/// alone: they hold their slots and clean up after themselves.
pub fn down_all(paths: &LabPaths) -> Result<Removed, RunsError> {
    let mut removed = Removed::default();
    for (id, dir) in state::run_dirs(paths) {
        if let Ok(rec) = RunRecord::load(&dir) {
            if is_keeper(rec.owner_pid, &id) {
                removed.absorb(down(paths, &id)?);
            }
        }
    }
    removed.absorb(down_leftovers(paths)?);
    if let Ok(entries) = std::fs::read_dir(&paths.runs) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".log") {
                if RunId::parse(stem).is_ok() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    Ok(removed)
}

/// Removes what killed runs left behind; labs that are live (kept by `up`
/// or run by a test) are left alone.
pub fn down_leftovers(paths: &LabPaths) -> Result<Removed, RunsError> {
    let _network = lock::shared_within(
        &paths.network_lock(),
        "a lab of an older seaport-lab, which takes the whole network, to finish",
        Duration::from_secs(30 * 60),
        String::new,
    )?;
    Ok(cleanup::remove_leftovers(paths, None)?)
}

/// A coordinator on the bridge and the agent enrolled in every host of
/// `lab`, all online: what the README's quick start shows.
pub fn enroll_all(
    lab: &Lab,
    bins: &Binaries,
    coordinator_root: &Path,
) -> Result<(Coordinator, Vec<Node>), SeaportError> {
    enroll_all_with(lab, bins, coordinator_root, &[])
}

/// As [`enroll_all`], with more `coordinator serve` flags.
pub fn enroll_all_with(
    lab: &Lab,
    bins: &Binaries,
    coordinator_root: &Path,
    serve_args: &[&str],
) -> Result<(Coordinator, Vec<Node>), SeaportError> {
    Coordinator::init(bins, coordinator_root)?;
    let listen = format!("{}:{COORDINATOR_PORT}", lab.gateway());
    let coordinator = Coordinator::start_with(bins, coordinator_root, &listen, serve_args)?;
    lab.record_coordinator(Some(CoordinatorRecord {
        root: coordinator_root.to_path_buf(),
        listen: listen.clone(),
        pid: coordinator.pid().unwrap_or_default(),
    }));
    let token = seaport::create_token(bins, coordinator_root, "1h", lab.hosts().len() as u32)?;
    for h in lab.hosts() {
        seaport::install_agent(h, bins, &listen, &token)?;
    }
    let names: Vec<String> = lab.hosts().iter().map(|h| h.name().to_string()).collect();
    let nodes = seaport::wait_for_nodes(
        bins,
        coordinator_root,
        "every agent online",
        Duration::from_secs(90),
        |n| {
            names
                .iter()
                .all(|h| seaport::status_of(n, h) == Some("online"))
        },
    )?;
    Ok((coordinator, nodes))
}
