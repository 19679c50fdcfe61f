//! The per-cluster journal on the host: which steps are done (with the
//! fingerprint of their inputs) and every change made outside the agent's
//! own directories, in order, with what was there before.
//!
//! `<state-dir>/journal/<cluster>/journal.json` is rewritten atomically
//! (temporary file, fsync, rename) after every change, and a change is
//! journaled before it is made, so an agent killed at any point leaves a
//! journal that a rerun continues from and a reset can undo.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors from the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing it failed.
    #[error("{action} the journal {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// It is not valid JSON.
    #[error("the journal {path} is damaged ({reason}); move it away and run `seaport-agent reset` by hand")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
}

/// A step's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    /// Started and not finished: interrupted, or running now.
    Running,
    /// Finished successfully.
    Done,
    /// Finished with an error.
    Failed,
}

/// One step in the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Its state.
    pub status: StepStatus,
    /// Fingerprint of the inputs it ran with.
    pub fingerprint: String,
    /// How many times it was started.
    pub attempts: u32,
    /// Last error or note.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// One change made on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A file or symlink that did not exist.
    CreatedFile {
        /// Absolute host path.
        path: String,
    },
    /// A directory that did not exist.
    CreatedDir {
        /// Absolute host path.
        path: String,
    },
    /// A file that existed and was replaced; `backup` holds the old one.
    ReplacedFile {
        /// Absolute host path.
        path: String,
        /// The copy of what was there, in the journal directory.
        backup: String,
    },
    /// A file that existed and was removed (by a hook); `backup` holds it.
    RemovedFile {
        /// Absolute host path.
        path: String,
        /// The copy of what was there.
        backup: String,
    },
    /// A file outside the backed-up trees that a hook changed: reported,
    /// cannot be restored.
    ChangedUnrestorable {
        /// Absolute host path.
        path: String,
    },
    /// A line appended to a file (`/etc/hosts`).
    AppendedLine {
        /// Absolute host path.
        path: String,
        /// The line, without newline.
        line: String,
    },
    /// A unit enabled (and started) by the agent.
    UnitEnabled {
        /// e.g. `containerd.service`.
        unit: String,
        /// Whether it was enabled before.
        was_enabled: bool,
    },
    /// A bind mount.
    Mounted {
        /// The mount point.
        target: String,
    },
    /// A directory that did not exist and whose whole contents the install
    /// owns (a container runtime's data root): removed with its contents.
    CreatedTree {
        /// Absolute host path.
        path: String,
    },
    /// A network link a service of the install created (docker's bridge).
    CreatedLink {
        /// The link's name.
        name: String,
    },
}

impl Change {
    /// The host path it is about, if any.
    pub fn path(&self) -> Option<&str> {
        match self {
            Change::CreatedFile { path }
            | Change::CreatedDir { path }
            | Change::ReplacedFile { path, .. }
            | Change::RemovedFile { path, .. }
            | Change::ChangedUnrestorable { path }
            | Change::AppendedLine { path, .. }
            | Change::CreatedTree { path } => Some(path),
            Change::UnitEnabled { .. } | Change::Mounted { .. } | Change::CreatedLink { .. } => {
                None
            }
        }
    }
}

/// What is journaled for one cluster on this host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalState {
    /// The cluster.
    pub cluster: String,
    /// The image's manifest digest.
    pub image: String,
    /// The host's roles.
    pub roles: Vec<String>,
    /// Steps by name.
    pub steps: BTreeMap<String, StepRecord>,
    /// Changes, oldest first.
    pub changes: Vec<Change>,
    /// Counter for backup file names.
    pub next_backup: u64,
    /// The sha256 (hex) of every file the engine itself wrote outside its
    /// own directories, as it wrote it (hooks' files are not here: the
    /// user owns those). A drift check compares the host with it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub installed: BTreeMap<String, String>,
    /// The container runtime the `runtime` step set up (absent in journals
    /// of agents that installed only containerd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<super::runtime::RuntimeRecord>,
}

/// The journal of one cluster.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    state: JournalState,
}

impl Journal {
    /// `<state-dir>/journal/<cluster>`.
    pub fn dir_for(state_dir: &Path, cluster: &str) -> PathBuf {
        state_dir.join("journal").join(cluster)
    }

    /// Opens (or starts) the journal of `cluster`.
    pub fn open(state_dir: &Path, cluster: &str) -> Result<Self, JournalError> {
        let dir = Self::dir_for(state_dir, cluster);
        let path = dir.join("journal.json");
        let state = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| JournalError::Damaged {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => JournalState {
                cluster: cluster.to_string(),
                ..JournalState::default()
            },
            Err(source) => {
                return Err(JournalError::Io {
                    action: "reading",
                    path,
                    source,
                })
            }
        };
        Ok(Self { dir, state })
    }

    /// Whether a journal file exists for `cluster`.
    pub fn exists(state_dir: &Path, cluster: &str) -> bool {
        Self::dir_for(state_dir, cluster)
            .join("journal.json")
            .is_file()
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state.
    pub fn state(&self) -> &JournalState {
        &self.state
    }

    /// Changes the state and saves it.
    pub fn update(&mut self, f: impl FnOnce(&mut JournalState)) -> Result<(), JournalError> {
        f(&mut self.state);
        self.save()
    }

    /// Appends a change and saves.
    pub fn record(&mut self, change: Change) -> Result<(), JournalError> {
        self.update(|s| s.changes.push(change))
    }

    /// Whether `path` was already changed by this install.
    pub fn knows_path(&self, path: &str) -> bool {
        self.state.changes.iter().any(|c| c.path() == Some(path))
    }

    /// A fresh path for a backup copy.
    pub fn backup_path(&mut self) -> Result<PathBuf, JournalError> {
        let n = self.state.next_backup;
        self.update(|s| s.next_backup += 1)?;
        let dir = self.dir.join("backup");
        fs::create_dir_all(&dir).map_err(|source| JournalError::Io {
            action: "creating",
            path: dir.clone(),
            source,
        })?;
        Ok(dir.join(format!("{n:06}")))
    }

    fn save(&self) -> Result<(), JournalError> {
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| JournalError::Io {
                action,
                path,
                source,
            }
        };
        fs::create_dir_all(&self.dir).map_err(io("creating", &self.dir))?;
        let path = self.dir.join("journal.json");
        let tmp = self.dir.join("journal.json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.state).expect("the journal serializes");
        let mut f = fs::File::create(&tmp).map_err(io("writing", &tmp))?;
        f.write_all(&bytes).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        fs::rename(&tmp, &path).map_err(io("renaming", &path))?;
        Ok(())
    }

    /// Removes the journal directory (after a reset).
    pub fn remove(self) -> Result<(), JournalError> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(JournalError::Io {
                action: "removing",
                path: self.dir,
                source,
            }),
        }
    }
}
