//! Drift: whether the files an install wrote on this host are still as it
//! wrote them.
//!
//! The journal keeps the sha256 of every file the engine wrote outside its
//! own directories (binaries, units, drop-ins, containerd's configuration,
//! registry mirrors: [`super::journal::JournalState::installed`]) and every
//! line it appended (`/etc/hosts`). A check hashes each file again: one
//! whose bytes differ, or that lost an appended line, is modified; one that
//! is gone is missing. Files hooks and plugins wrote are the user's and are
//! not checked.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use super::files::HostFiles;
use super::journal::{Change, Journal};
use seaport_shared::cluster::ClusterName;

use super::outcome::ApplyError;

/// What a drift check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriftReport {
    /// Host paths whose content differs from what the install wrote.
    pub modified: Vec<String>,
    /// Host paths the install wrote that are gone.
    pub missing: Vec<String>,
    /// How many paths were checked.
    pub checked: u64,
}

/// Checks the files `cluster`'s install wrote under `host_root`.
pub fn drift(
    state_dir: &Path,
    host_root: &Path,
    cluster: &ClusterName,
) -> Result<DriftReport, ApplyError> {
    if !Journal::exists(state_dir, cluster.as_str()) {
        return Err(ApplyError::NotInstalled(cluster.clone()));
    }
    let journal = Journal::open(state_dir, cluster.as_str())?;
    let files = HostFiles::new(host_root);
    let mut modified = BTreeSet::new();
    let mut missing = BTreeSet::new();
    let mut checked = BTreeSet::new();
    for (abs, sha) in &journal.state().installed {
        checked.insert(abs.clone());
        let p = files.host(abs);
        match fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing.insert(abs.clone());
            }
            Ok(m) if m.is_file() => {
                let same = fs::File::open(&p)
                    .and_then(seaport_shared::digest::Digest::of_reader)
                    .is_ok_and(|(d, _)| d.hex() == *sha);
                if !same {
                    modified.insert(abs.clone());
                }
            }
            // Replaced by a directory or a link, or unreadable.
            _ => {
                modified.insert(abs.clone());
            }
        }
    }
    for c in &journal.state().changes {
        let Change::AppendedLine { path, line } = c else {
            continue;
        };
        if journal.state().installed.contains_key(path) {
            continue;
        }
        checked.insert(path.clone());
        match fs::read_to_string(files.host(path)) {
            Ok(text) => {
                if !text.lines().any(|l| l == line) {
                    modified.insert(path.clone());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing.insert(path.clone());
            }
            Err(_) => {
                modified.insert(path.clone());
            }
        }
    }
    Ok(DriftReport {
        modified: modified.into_iter().collect(),
        missing: missing.into_iter().collect(),
        checked: checked.len() as u64,
    })
}
