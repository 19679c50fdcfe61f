//! Files the agent changes on the host, always journaled first so a reset
//! puts back exactly what was there: created files and directories are
//! removed, replaced files restored from a backup copy, appended lines taken
//! out again.
//!
//! Hooks (the image's scripts, kubeadm) write files the agent does not
//! choose; [`HostFiles::tracked`] snapshots the tracked trees (`/etc`,
//! `/usr`, `/opt`) before and after such a command, copies `/etc` first so
//! changed and removed files there can be restored, and journals the
//! difference. The "before" snapshot is kept on disk until the command
//! finishes, so a hook interrupted by a crash is still accounted for.
//!
//! Every change under the host root goes through
//! [`seaport_shared::confined`]: paths are resolved beneath the root without
//! following a symlink in any component (a planted link is an error naming
//! it), temporary files are created with `O_EXCL | O_NOFOLLOW`, modes are
//! set on the open handle, and a symlink at a file's own path is replaced,
//! never written through.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use seaport_shared::confined::{self, ConfinedError, Dir, Entry, Kind};
use serde::{Deserialize, Serialize};

use super::journal::{Change, Journal, JournalError};

/// Trees a hook's changes are tracked in.
pub const TRACKED_TREES: &[&str] = &["/etc", "/usr", "/opt"];
/// Trees copied before a hook runs, so changes there can be undone.
pub const BACKED_UP_TREES: &[&str] = &["/etc"];
/// Files larger than this are not copied before a hook.
const MAX_BACKUP_FILE: u64 = 8 << 20;

/// Errors from host file changes.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A filesystem operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The journal could not be written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A path under the host root is refused or could not be changed.
    #[error(transparent)]
    Confined(#[from] ConfinedError),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FilesError {
    let path = path.to_path_buf();
    move |source| FilesError::Io {
        action,
        path,
        source,
    }
}

/// Writes files under a host root (`/`, or a temporary directory in tests).
#[derive(Clone, Debug)]
pub struct HostFiles {
    root: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stat {
    kind: char,
    size: u64,
    mtime: i64,
    mtime_ns: i64,
    ino: u64,
    mode: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

impl HostFiles {
    /// Files under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The host root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the absolute host path `abs` is.
    pub fn host(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// The host root, opened: everything below is resolved without
    /// following symlinks.
    fn dir(&self) -> Result<Dir, FilesError> {
        Ok(Dir::open(&self.root)?)
    }

    /// Creates `abs` and missing parents, journaling the ones created.
    pub fn ensure_dir(&self, j: &mut Journal, abs: &str) -> Result<(), FilesError> {
        let root = self.dir()?;
        for rel in root.missing_dirs(Path::new(abs))? {
            let dir = format!("/{}", rel.display());
            if !j.knows_path(&dir) {
                j.record(Change::CreatedDir { path: dir })?;
            }
        }
        root.create_dirs(Path::new(abs))?;
        Ok(())
    }

    /// Writes `bytes` to `abs` with `mode`, journaling what was there.
    /// Returns false when the file already had exactly this content and mode.
    pub fn install(
        &self,
        j: &mut Journal,
        abs: &str,
        bytes: &[u8],
        mode: u32,
    ) -> Result<bool, FilesError> {
        let root = self.dir()?;
        let rel = Path::new(abs);
        let existing = root.read_entry(rel)?;
        if let Some(Entry::File {
            bytes: old,
            mode: m,
        }) = &existing
        {
            if *m == mode && old.as_slice() == bytes {
                note_installed(j, abs, bytes)?;
                return Ok(false);
            }
        }
        if let Some(parent) = rel.parent() {
            self.ensure_dir(j, &parent.to_string_lossy())?;
        }
        if !j.knows_path(abs) {
            match existing {
                None => j.record(Change::CreatedFile {
                    path: abs.to_string(),
                })?,
                Some(Entry::Dir) => {
                    return Err(FilesError::Io {
                        action: "replacing",
                        path: self.host(abs),
                        source: std::io::Error::other(
                            "a directory is there; move it away or remove it first",
                        ),
                    })
                }
                Some(entry) => {
                    let backup = j.backup_path()?;
                    save_copy(&entry, &self.host(abs), &backup)?;
                    j.record(Change::ReplacedFile {
                        path: abs.to_string(),
                        backup: backup.to_string_lossy().into_owned(),
                    })?;
                }
            }
        }
        root.write_atomic(rel, bytes, mode)?;
        note_installed(j, abs, bytes)?;
        Ok(true)
    }

    /// Appends `line` to `abs` unless a line equal to it is there.
    pub fn append_line(&self, j: &mut Journal, abs: &str, line: &str) -> Result<bool, FilesError> {
        let root = self.dir()?;
        let (text, mode) = match root.read_entry(Path::new(abs))? {
            None => {
                self.install(j, abs, format!("{line}\n").as_bytes(), 0o644)?;
                return Ok(true);
            }
            Some(Entry::File { bytes, mode }) => {
                (String::from_utf8_lossy(&bytes).into_owned(), mode)
            }
            Some(_) => {
                return Err(FilesError::Io {
                    action: "appending to",
                    path: self.host(abs),
                    source: std::io::Error::other("it is not a regular file"),
                })
            }
        };
        if text.lines().any(|l| l == line) {
            return Ok(false);
        }
        j.record(Change::AppendedLine {
            path: abs.to_string(),
            line: line.to_string(),
        })?;
        let mut new = text;
        if !new.is_empty() && !new.ends_with('\n') {
            new.push('\n');
        }
        new.push_str(line);
        new.push('\n');
        root.write_atomic(Path::new(abs), new.as_bytes(), mode)?;
        if j.state().installed.contains_key(abs) {
            note_installed(j, abs, new.as_bytes())?;
        }
        Ok(true)
    }

    /// Removes a line [`HostFiles::append_line`] appended to `abs` (its
    /// first copy) and the journal's note of it: the install no longer
    /// owns it, so neither a reset nor a drift check looks for it.
    pub fn remove_line(&self, j: &mut Journal, abs: &str, line: &str) -> Result<(), FilesError> {
        let root = self.dir()?;
        if let Some(Entry::File { bytes, mode }) = root.read_entry(Path::new(abs))? {
            let text = String::from_utf8_lossy(&bytes);
            if text.lines().any(|l| l == line) {
                let mut removed = false;
                let mut new: String = text
                    .lines()
                    .filter(|l| {
                        let drop = !removed && *l == line;
                        removed |= drop;
                        !drop
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                if !new.is_empty() {
                    new.push('\n');
                }
                root.write_atomic(Path::new(abs), new.as_bytes(), mode)?;
                if j.state().installed.contains_key(abs) {
                    note_installed(j, abs, new.as_bytes())?;
                }
            }
        }
        j.update(|s| {
            s.changes.retain(
                |c| !matches!(c, Change::AppendedLine { path, line: l } if path == abs && l == line),
            )
        })?;
        Ok(())
    }

    /// Runs `f` (a hook) and journals what it changed in the tracked trees.
    /// `key` names the tracking directory, so an interrupted run reuses its
    /// "before" snapshot.
    pub fn tracked<T>(
        &self,
        j: &mut Journal,
        key: &str,
        f: impl FnOnce() -> T,
    ) -> Result<T, FilesError> {
        let track_dir = j.dir().join("track").join(key);
        let before_file = track_dir.join("before.json");
        let root = self.dir()?;
        let before: BTreeMap<String, Stat> = match fs::read(&before_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => {
                let _ = fs::remove_dir_all(&track_dir);
                fs::create_dir_all(&track_dir).map_err(io("creating", &track_dir))?;
                let snap = self.snapshot();
                for (abs, st) in &snap {
                    if st.kind == 'f'
                        && st.size <= MAX_BACKUP_FILE
                        && BACKED_UP_TREES.iter().any(|t| under(abs, t))
                    {
                        let dest = track_dir.join("files").join(abs.trim_start_matches('/'));
                        if let Some(p) = dest.parent() {
                            fs::create_dir_all(p).map_err(io("creating", p))?;
                        }
                        if let Some(entry) = root.read_entry(Path::new(abs))? {
                            save_copy(&entry, &self.host(abs), &dest)?;
                        }
                    }
                }
                let bytes = serde_json::to_vec(&snap).expect("snapshots serialize");
                confined::write_atomic(&before_file, &bytes, 0o600)?;
                snap
            }
        };
        let out = f();
        let after = self.snapshot();
        for (abs, st) in &after {
            // A hook that rewrites a file the engine installed (an image's
            // containerd.sh writing its own hosts.toml) leaves the file as
            // the install made it: drift is measured from the hook's bytes.
            if st.kind == 'f'
                && j.state().installed.contains_key(abs)
                && before.get(abs).is_none_or(|old| changed(old, st))
            {
                if let Some(Entry::File { bytes, .. }) = root.read_entry(Path::new(abs))? {
                    note_installed(j, abs, &bytes)?;
                }
            }
            if j.knows_path(abs) {
                continue;
            }
            match before.get(abs) {
                None => j.record(if st.kind == 'd' {
                    Change::CreatedDir { path: abs.clone() }
                } else {
                    Change::CreatedFile { path: abs.clone() }
                })?,
                Some(old) if changed(old, st) => {
                    let saved = track_dir.join("files").join(abs.trim_start_matches('/'));
                    if saved.is_file() {
                        let backup = j.backup_path()?;
                        fs::rename(&saved, &backup).map_err(io("keeping", &saved))?;
                        j.record(Change::ReplacedFile {
                            path: abs.clone(),
                            backup: backup.to_string_lossy().into_owned(),
                        })?;
                    } else {
                        j.record(Change::ChangedUnrestorable { path: abs.clone() })?;
                    }
                }
                Some(_) => {}
            }
        }
        for (abs, st) in &before {
            if after.contains_key(abs) || j.knows_path(abs) || st.kind == 'd' {
                continue;
            }
            let saved = track_dir.join("files").join(abs.trim_start_matches('/'));
            if saved.is_file() {
                let backup = j.backup_path()?;
                fs::rename(&saved, &backup).map_err(io("keeping", &saved))?;
                j.record(Change::RemovedFile {
                    path: abs.clone(),
                    backup: backup.to_string_lossy().into_owned(),
                })?;
            } else {
                j.record(Change::ChangedUnrestorable { path: abs.clone() })?;
            }
        }
        fs::remove_dir_all(&track_dir).map_err(io("removing", &track_dir))?;
        Ok(out)
    }

    fn snapshot(&self) -> BTreeMap<String, Stat> {
        let mut out = BTreeMap::new();
        for tree in TRACKED_TREES {
            let base = self.host(tree);
            for entry in walkdir::WalkDir::new(&base).into_iter().flatten() {
                let Ok(m) = entry.metadata() else { continue };
                let rel = entry
                    .path()
                    .strip_prefix(&self.root)
                    .unwrap_or(entry.path());
                let abs = format!("/{}", rel.to_string_lossy());
                let ft = m.file_type();
                let kind = if ft.is_dir() {
                    'd'
                } else if ft.is_symlink() {
                    'l'
                } else if ft.is_file() {
                    'f'
                } else {
                    'o'
                };
                let target = ft
                    .is_symlink()
                    .then(|| fs::read_link(entry.path()).ok())
                    .flatten()
                    .map(|t| t.to_string_lossy().into_owned());
                out.insert(
                    abs,
                    Stat {
                        kind,
                        size: m.len(),
                        mtime: m.mtime(),
                        mtime_ns: m.mtime_nsec(),
                        ino: m.ino(),
                        mode: m.mode(),
                        target,
                    },
                );
            }
        }
        out
    }

    /// Undoes the journaled file changes, newest first. Returns warnings
    /// (what could not be put back).
    pub fn restore(&self, changes: &[Change]) -> Vec<String> {
        let mut warnings = Vec::new();
        let root = match self.dir() {
            Ok(r) => r,
            Err(e) => return vec![e.to_string()],
        };
        for c in changes.iter().rev() {
            let r: Result<(), RestoreWarning> = match c {
                Change::CreatedFile { path } => remove_created(&root, path, Created::File),
                Change::CreatedTree { path } => remove_created(&root, path, Created::Tree),
                Change::CreatedDir { path } => remove_created(&root, path, Created::Dir),
                Change::ReplacedFile { path, backup } | Change::RemovedFile { path, backup } => {
                    restore_copy(&root, path, Path::new(backup)).map_err(RestoreWarning::from)
                }
                Change::AppendedLine { path, line } => match root.read_entry(Path::new(path)) {
                    Ok(Some(Entry::File { bytes, mode })) => {
                        let text = String::from_utf8_lossy(&bytes);
                        let mut removed = false;
                        let kept: Vec<&str> = text
                            .lines()
                            .filter(|l| {
                                if !removed && *l == line {
                                    removed = true;
                                    false
                                } else {
                                    true
                                }
                            })
                            .collect();
                        let mut new = kept.join("\n");
                        if !new.is_empty() {
                            new.push('\n');
                        }
                        root.write_atomic(Path::new(path), new.as_bytes(), mode)
                            .map_err(RestoreWarning::from)
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.into()),
                },
                Change::ChangedUnrestorable { path } => {
                    Err(RestoreWarning::Unrestorable(path.clone()))
                }
                Change::UnitEnabled { .. }
                | Change::Mounted { .. }
                | Change::CreatedLink { .. } => Ok(()),
            };
            if let Err(w) = r {
                warnings.push(w.to_string());
            }
        }
        warnings
    }
}

/// Removes what the install created at `abs`, never through a symlink.
/// What the install created at a path, for removing it again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Created {
    /// A file (or anything: whatever is there now goes).
    File,
    /// An empty directory: removed only while it stays empty.
    Dir,
    /// A directory the install owns with everything in it.
    Tree,
}

/// What a restore could not put back, as the reset reports it.
#[derive(Debug, thiserror::Error)]
enum RestoreWarning {
    #[error("removing {path}: {source}")]
    Remove { path: String, source: ConfinedError },
    #[error(
        "{path} was created by the install and is kept: {source} (something else put files there)"
    )]
    NotEmpty { path: String, source: ConfinedError },
    #[error("{0} was created by the install as a directory and is no longer one: kept")]
    NoLongerADirectory(String),
    #[error("{0} was changed by a hook outside the backed-up trees and is left as it is")]
    Unrestorable(String),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(transparent)]
    Confined(#[from] ConfinedError),
}

fn remove_created(root: &Dir, abs: &str, created: Created) -> Result<(), RestoreWarning> {
    let removing = |source| RestoreWarning::Remove {
        path: abs.to_string(),
        source,
    };
    let (parent, name) = match root.parent_of(Path::new(abs), false) {
        Ok(p) => p,
        Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => return Ok(()),
        Err(ConfinedError::NotADirectory { .. }) => return Ok(()),
        Err(e) => return Err(removing(e)),
    };
    if created == Created::Dir {
        return match parent.rmdir(name) {
            Ok(()) => Ok(()),
            Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => Ok(()),
            Err(source) => Err(RestoreWarning::NotEmpty {
                path: abs.to_string(),
                source,
            }),
        };
    }
    match parent.stat(name) {
        Ok(None) => Ok(()),
        Ok(Some(m)) if created == Created::Tree && m.kind != Kind::Dir => {
            Err(RestoreWarning::NoLongerADirectory(abs.to_string()))
        }
        Ok(Some(_)) => parent.remove_all(name).map_err(removing),
        Err(e) => Err(removing(e)),
    }
}

/// Puts the backup copy `backup` back at `abs` under the host root.
fn restore_copy(root: &Dir, abs: &str, backup: &Path) -> Result<(), FilesError> {
    let (parent, name) = root.parent_of(Path::new(abs), true)?;
    if parent.stat(name)?.is_some_and(|m| m.kind == Kind::Dir) {
        parent.remove_all(name)?;
    }
    let m = fs::symlink_metadata(backup).map_err(io("reading", backup))?;
    if m.file_type().is_symlink() {
        let target = fs::read_link(backup).map_err(io("reading", backup))?;
        parent.replace_with_symlink(target.as_os_str(), name)?;
    } else {
        let bytes = fs::read(backup).map_err(io("reading", backup))?;
        parent.write_file(name, &bytes, m.permissions().mode() & 0o7777)?;
    }
    Ok(())
}

/// Keeps a copy of `entry` (read from `from` on the host) at `to`, in the
/// agent's own directories.
fn save_copy(entry: &Entry, from: &Path, to: &Path) -> Result<(), FilesError> {
    if let Some(p) = to.parent() {
        fs::create_dir_all(p).map_err(io("creating", p))?;
    }
    match entry {
        Entry::File { bytes, mode } => Ok(confined::write_atomic(to, bytes, *mode)?),
        Entry::Symlink { target } => {
            let _ = fs::remove_file(to);
            std::os::unix::fs::symlink(target, to).map_err(io("copying", from))
        }
        Entry::Dir | Entry::Other => Err(FilesError::Io {
            action: "copying",
            path: from.to_path_buf(),
            source: std::io::Error::other("it is not a regular file or symlink"),
        }),
    }
}

/// Journals the sha256 of what the engine wrote at `abs` (for drift checks).
fn note_installed(j: &mut Journal, abs: &str, bytes: &[u8]) -> Result<(), JournalError> {
    let sha = seaport_shared::digest::Digest::of(bytes).hex();
    if j.state().installed.get(abs) == Some(&sha) {
        return Ok(());
    }
    j.update(|s| {
        s.installed.insert(abs.to_string(), sha);
    })
}

fn under(abs: &str, tree: &str) -> bool {
    abs == tree || abs.starts_with(&format!("{tree}/"))
}

fn changed(a: &Stat, b: &Stat) -> bool {
    if a.kind != b.kind {
        return true;
    }
    match a.kind {
        'd' => false,
        'l' => a.target != b.target,
        _ => a.size != b.size || a.mtime != b.mtime || a.mtime_ns != b.mtime_ns || a.ino != b.ino,
    }
}
