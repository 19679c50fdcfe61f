//! Removing what a run left behind (`down --all`, and the start of every
//! lab), and nothing of a live lab (one whose slot lock is held):
//! nspawn processes found by their recorded pids or by command lines naming
//! our run directories, mounts and directories under the runs directory,
//! and interfaces carrying the lab prefix. Nothing else is touched.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::cgroups;
use crate::lock;
use crate::mounts::{self, MountError};
use crate::names::{LabPaths, RunId, Slot, PREFIX};
use crate::net::{self, NetError};
use crate::procs;
use crate::state::{self, RunRecord};

/// Errors of cleaning up.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Net(#[from] NetError),
}

/// What a cleanup removed, for the user.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Processes stopped, with their command lines.
    pub processes: Vec<String>,
    /// Run directories removed.
    pub runs: Vec<String>,
    /// Interfaces deleted.
    pub interfaces: Vec<String>,
}

impl Removed {
    /// Adds what `other` removed.
    pub fn absorb(&mut self, other: Removed) {
        self.processes.extend(other.processes);
        self.runs.extend(other.runs);
        self.interfaces.extend(other.interfaces);
    }

    /// True when nothing was left over.
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty() && self.runs.is_empty() && self.interfaces.is_empty()
    }
}

/// All nspawn processes whose command line names a directory under `runs`.
fn nspawn_processes_under(runs: &Path) -> Vec<u32> {
    let needle = procs::path_text(runs);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| procs::is_ours(*pid, &["systemd-nspawn", &needle]))
        .collect()
}

fn stop_nspawn(pid: u32, removed: &mut Removed) {
    if let Some(line) = procs::cmdline(pid) {
        removed.processes.push(line);
    }
    if let Some(leader) = procs::container_leader(pid) {
        procs::signal(leader, Signal::SIGKILL);
    }
    procs::terminate(pid, Duration::from_secs(5));
}

/// Stops and removes one run: its processes, mounts, directory and bridge.
pub fn remove_run(paths: &LabPaths, id: &RunId, removed: &mut Removed) -> Result<(), CleanupError> {
    let dir = paths.run_dir(id);
    let record = RunRecord::load(&dir).ok();
    if let Some(rec) = &record {
        if let Some(c) = &rec.coordinator {
            let root = procs::path_text(&c.root);
            if procs::is_ours(c.pid, &["coordinator", "serve", &root]) {
                removed
                    .processes
                    .push(procs::cmdline(c.pid).unwrap_or_default());
                procs::terminate(c.pid, Duration::from_secs(10));
            }
        }
        for h in &rec.hosts {
            if let Some(pid) = h.nspawn_pid {
                if procs::is_ours(pid, &["systemd-nspawn", &procs::path_text(&h.root)]) {
                    stop_nspawn(pid, removed);
                }
            }
        }
    }
    for pid in nspawn_processes_under(&dir) {
        stop_nspawn(pid, removed);
    }
    if let Some(rec) = &record {
        for h in &rec.hosts {
            for g in cgroups::host_cgroups(&h.name) {
                cgroups::remove(&g);
            }
        }
    }
    if dir.exists() {
        mounts::remove_tree(&dir)?;
        removed.runs.push(id.to_string());
    }
    // The log of a killed keeper goes with its run.
    let _ = std::fs::remove_file(paths.keeper_log(id));
    let bridge = id.bridge();
    if net::lab_bridges()?.contains(&bridge) {
        for port in net::ports_of(&bridge)? {
            net::delete_link(&port)?;
            removed.interfaces.push(port);
        }
        net::delete_link(&bridge)?;
        removed.interfaces.push(bridge);
    }
    Ok(())
}

/// The run id a lab name starts with: `spl-1a2b3c` of `spl-1a2b3c-h2`.
fn run_of(name: &str) -> Option<RunId> {
    name.get(..RUN_ID_LEN).and_then(|id| RunId::parse(id).ok())
}

/// Length of a run id, `spl-` and 6 hex digits.
const RUN_ID_LEN: usize = PREFIX.len() + 6;

/// Removes what dead runs left behind, and nothing of a live lab.
///
/// A run is live while some process holds the lock of its slot. `held` is
/// the slot this process has locked and not yet made a run in: runs
/// recorded there are leftovers. Every other free slot is locked here for
/// the whole cleanup, so no lab can start in it meanwhile; runs recorded in
/// a slot someone else holds are left alone, and so are their bridges,
/// nspawn processes and cgroups. A bridge, process or cgroup whose run has
/// no record any more is a leftover (a lab writes its record before it
/// creates any of them).
pub fn remove_leftovers(paths: &LabPaths, held: Option<Slot>) -> Result<Removed, CleanupError> {
    let mut ours: Vec<Slot> = held.into_iter().collect();
    let mut guards = Vec::new();
    for slot in Slot::all().filter(|s| Some(*s) != held) {
        if let Ok(Some(g)) = lock::try_exclusive(&paths.slot_lock(slot)) {
            guards.push(g);
            ours.push(slot);
        }
    }
    // A run may go when its record is gone or names a slot held here.
    let removable = |id: &RunId| match RunRecord::load(&paths.run_dir(id)) {
        Ok(rec) => ours.contains(&rec.slot),
        Err(_) => true,
    };
    let mut removed = Removed::default();
    for (id, _) in state::run_dirs(paths) {
        if removable(&id) {
            remove_run(paths, &id, &mut removed)?;
        }
    }
    // nspawn processes of runs whose directory is already gone.
    for pid in nspawn_processes_under(&paths.runs) {
        let line = procs::cmdline(pid).unwrap_or_default();
        let run = line.split('/').find_map(|part| RunId::parse(part).ok());
        if run.as_ref().is_none_or(&removable) {
            stop_nspawn(pid, &mut removed);
        }
    }
    for g in cgroups::lab_cgroups() {
        let name = g.file_name().map(|n| n.to_string_lossy().into_owned());
        if name
            .as_deref()
            .and_then(run_of)
            .as_ref()
            .is_none_or(&removable)
        {
            cgroups::remove(&g);
        }
    }
    for iface in net::lab_bridges()? {
        if run_of(&iface).as_ref().is_some_and(|r| !removable(r)) {
            continue;
        }
        for port in net::ports_of(&iface)? {
            net::delete_link(&port)?;
            removed.interfaces.push(port);
        }
        net::delete_link(&iface)?;
        removed.interfaces.push(iface);
    }
    drop(guards);
    Ok(removed)
}
