//! Removing what a run left behind (`down --all`, and the start of every
//! lab, which holds the machine lock and so knows no other lab is live):
//! nspawn processes found by their recorded pids or by command lines naming
//! our run directories, mounts and directories under the runs directory,
//! and interfaces carrying the lab prefix. Nothing else is touched.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::cgroups;
use crate::mounts::{self, MountError};
use crate::names::{LabPaths, RunId, PREFIX};
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

/// Removes every run and every lab interface except the run `keep`. Call it
/// only while holding the machine lock, or after stopping live runs' owners.
pub fn remove_leftovers(paths: &LabPaths, keep: Option<&RunId>) -> Result<Removed, CleanupError> {
    let mut removed = Removed::default();
    for (id, _) in state::run_dirs(paths) {
        if Some(&id) != keep {
            remove_run(paths, &id, &mut removed)?;
        }
    }
    // nspawn processes of runs whose directory is already gone.
    for pid in nspawn_processes_under(&paths.runs) {
        let line = procs::cmdline(pid).unwrap_or_default();
        if keep.is_some_and(|k| line.contains(&format!("/{k}/"))) {
            continue;
        }
        stop_nspawn(pid, &mut removed);
    }
    for g in cgroups::lab_cgroups() {
        if keep.is_some_and(|k| g.to_string_lossy().contains(k.as_str())) {
            continue;
        }
        cgroups::remove(&g);
    }
    for iface in net::lab_bridges()? {
        if keep.is_some_and(|k| iface == k.bridge()) {
            continue;
        }
        if iface.starts_with(PREFIX) {
            for port in net::ports_of(&iface)? {
                net::delete_link(&port)?;
                removed.interfaces.push(port);
            }
            net::delete_link(&iface)?;
            removed.interfaces.push(iface);
        }
    }
    Ok(removed)
}
