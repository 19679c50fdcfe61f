//! The record of a run (`state.json` in its run directory): what was
//! created and which processes run it, so the CLI's `status`, `exec` and
//! `down`, and `down --all` after a killed run, find everything again.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::names::{LabPaths, RunId};

/// File name of the record inside a run directory.
pub const STATE_FILE: &str = "state.json";

/// Errors of reading and writing run records.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid lab run record: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// One host of a run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostRecord {
    /// Host name, also the container's machine name: `spl-1a2b3c-h1`.
    pub name: String,
    /// Address on the lab bridge.
    pub ip: Ipv4Addr,
    /// The host's directory (upper and work dirs, root, console log).
    pub dir: PathBuf,
    /// The root the container boots from (overlay mount or a copy).
    pub root: PathBuf,
    /// True when `root` is an overlay mount over the base.
    pub overlay: bool,
    /// The current systemd-nspawn process, while the host runs.
    pub nspawn_pid: Option<u32>,
    /// How many times the host has booted.
    pub boots: u32,
}

/// A coordinator the run owns (CLI runs with agents).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CoordinatorRecord {
    /// `--root` of the coordinator.
    pub root: PathBuf,
    /// Address it listens on.
    pub listen: String,
    /// Its process id.
    pub pid: u32,
}

/// Everything one run created.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    /// The run id, also the bridge name.
    pub id: RunId,
    /// The process that owns the run (a test, or `seaport-lab keep`).
    pub owner_pid: u32,
    /// Bridge on the machine side.
    pub bridge: String,
    /// The slot of 198.18.0.0/24 the run holds (records of older runs have
    /// none: slot 0).
    #[serde(default)]
    pub slot: crate::names::Slot,
    /// Address of the bridge.
    pub gateway: Ipv4Addr,
    /// The cached base the hosts boot from.
    pub base: PathBuf,
    /// Hosts in order.
    pub hosts: Vec<HostRecord>,
    /// A coordinator started for the run, if any.
    pub coordinator: Option<CoordinatorRecord>,
}

impl RunRecord {
    /// Writes the record atomically into `run_dir` (temp file, fsync, rename).
    pub fn save(&self, run_dir: &Path) -> Result<(), StateError> {
        let path = run_dir.join(STATE_FILE);
        let tmp = run_dir.join(format!(".{STATE_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(self).expect("record serializes"))?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|source| StateError::Write { path, source })
    }

    /// Reads the record of the run in `run_dir`.
    pub fn load(run_dir: &Path) -> Result<Self, StateError> {
        let path = run_dir.join(STATE_FILE);
        let bytes = std::fs::read(&path).map_err(|source| StateError::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| StateError::Parse { path, source })
    }

    /// The host named `name`, or numbered like `h2` (or `2`).
    pub fn find_host(&self, name: &str) -> Option<&HostRecord> {
        self.hosts.iter().find(|h| {
            h.name == name
                || h.name.rsplit('-').next() == Some(name)
                || h.name.rsplit('-').next() == Some(&format!("h{name}"))
        })
    }
}

/// Run directories present under `paths.runs` whose names are run ids.
pub fn run_dirs(paths: &LabPaths) -> Vec<(RunId, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(&paths.runs) else {
        return Vec::new();
    };
    let mut runs: Vec<(RunId, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let id = RunId::parse(e.file_name().to_str()?).ok()?;
            Some((id, e.path()))
        })
        .collect();
    runs.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> RunRecord {
        let id = RunId::parse("spl-abcdef").unwrap();
        RunRecord {
            owner_pid: 42,
            bridge: id.bridge(),
            slot: crate::names::Slot::default(),
            gateway: crate::names::Slot::default().gateway(),
            base: PathBuf::from("/var/cache/seaport-lab/base-x"),
            hosts: (0..2)
                .map(|i| HostRecord {
                    name: id.host_name(i),
                    ip: crate::names::Slot::default().host_ip(i),
                    dir: PathBuf::from(format!("/r/h{}", i + 1)),
                    root: PathBuf::from(format!("/r/h{}/root", i + 1)),
                    overlay: true,
                    nspawn_pid: Some(100 + i as u32),
                    boots: 1,
                })
                .collect(),
            coordinator: None,
            id,
        }
    }

    #[test]
    fn records_round_trip_through_the_run_dir() {
        let dir = tempfile::tempdir().unwrap();
        let rec = record();
        rec.save(dir.path()).unwrap();
        assert_eq!(RunRecord::load(dir.path()).unwrap(), rec);
    }

    #[test]
    fn a_corrupt_record_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
        let err = RunRecord::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("state.json"), "{err}");
    }

    #[test]
    fn hosts_are_found_by_full_or_short_name() {
        let rec = record();
        assert_eq!(
            rec.find_host("spl-abcdef-h2").unwrap().name,
            "spl-abcdef-h2"
        );
        assert_eq!(rec.find_host("h1").unwrap().name, "spl-abcdef-h1");
        assert_eq!(rec.find_host("2").unwrap().name, "spl-abcdef-h2");
        assert!(rec.find_host("h3").is_none());
    }
}
