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

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

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

    /// Creates `abs` and missing parents, journaling the ones created.
    pub fn ensure_dir(&self, j: &mut Journal, abs: &str) -> Result<(), FilesError> {
        let mut missing = Vec::new();
        let mut cur = Path::new(abs);
        while !self.host(&cur.to_string_lossy()).exists() {
            missing.push(cur.to_string_lossy().into_owned());
            match cur.parent() {
                Some(p) => cur = p,
                None => break,
            }
        }
        for dir in missing.into_iter().rev() {
            if !j.knows_path(&dir) {
                j.record(Change::CreatedDir { path: dir.clone() })?;
            }
            let p = self.host(&dir);
            match fs::create_dir(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io("creating", &p)(e)),
            }
        }
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
        let path = self.host(abs);
        let existing = fs::symlink_metadata(&path).ok();
        if let Some(m) = &existing {
            if m.is_file()
                && m.permissions().mode() & 0o7777 == mode
                && fs::read(&path).ok().as_deref() == Some(bytes)
            {
                note_installed(j, abs, bytes)?;
                return Ok(false);
            }
        }
        if let Some(parent) = Path::new(abs).parent() {
            self.ensure_dir(j, &parent.to_string_lossy())?;
        }
        if !j.knows_path(abs) {
            match &existing {
                None => j.record(Change::CreatedFile {
                    path: abs.to_string(),
                })?,
                Some(m) if m.is_dir() => {
                    return Err(FilesError::Io {
                        action: "replacing",
                        path,
                        source: std::io::Error::other(
                            "a directory is there; move it away or remove it first",
                        ),
                    })
                }
                Some(_) => {
                    let backup = j.backup_path()?;
                    copy_preserving(&path, &backup)?;
                    j.record(Change::ReplacedFile {
                        path: abs.to_string(),
                        backup: backup.to_string_lossy().into_owned(),
                    })?;
                }
            }
        }
        write_atomic(&path, bytes, mode)?;
        note_installed(j, abs, bytes)?;
        Ok(true)
    }

    /// Appends `line` to `abs` unless a line equal to it is there.
    pub fn append_line(&self, j: &mut Journal, abs: &str, line: &str) -> Result<bool, FilesError> {
        let path = self.host(abs);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.install(j, abs, format!("{line}\n").as_bytes(), 0o644)?;
                return Ok(true);
            }
            Err(e) => return Err(io("reading", &path)(e)),
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
        let mode = fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644);
        write_atomic(&path, new.as_bytes(), mode)?;
        if j.state().installed.contains_key(abs) {
            note_installed(j, abs, new.as_bytes())?;
        }
        Ok(true)
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
                        copy_preserving(&self.host(abs), &dest)?;
                    }
                }
                let bytes = serde_json::to_vec(&snap).expect("snapshots serialize");
                write_atomic(&before_file, &bytes, 0o600)?;
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
                let p = self.host(abs);
                let bytes = fs::read(&p).map_err(io("reading", &p))?;
                note_installed(j, abs, &bytes)?;
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
        for c in changes.iter().rev() {
            let r: Result<(), String> = match c {
                Change::CreatedFile { path } => {
                    let p = self.host(path);
                    match fs::symlink_metadata(&p) {
                        Ok(m) if !m.is_dir() => {
                            fs::remove_file(&p).map_err(|e| format!("removing {path}: {e}"))
                        }
                        Ok(_) => {
                            fs::remove_dir_all(&p).map_err(|e| format!("removing {path}: {e}"))
                        }
                        Err(_) => Ok(()),
                    }
                }
                Change::CreatedTree { path } => {
                    let p = self.host(path);
                    match fs::symlink_metadata(&p) {
                        Ok(m) if m.is_dir() => {
                            fs::remove_dir_all(&p).map_err(|e| format!("removing {path}: {e}"))
                        }
                        Ok(_) => Err(format!(
                            "{path} was created by the install as a directory and is no longer one: kept"
                        )),
                        Err(_) => Ok(()),
                    }
                }
                Change::CreatedDir { path } => {
                    let p = self.host(path);
                    match fs::remove_dir(&p) {
                        Ok(()) => Ok(()),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                        Err(e) => Err(format!(
                            "{path} was created by the install and is kept: {e} (something else put files there)"
                        )),
                    }
                }
                Change::ReplacedFile { path, backup } | Change::RemovedFile { path, backup } => {
                    let p = self.host(path);
                    (|| -> Result<(), FilesError> {
                        if let Some(parent) = p.parent() {
                            fs::create_dir_all(parent).map_err(io("creating", parent))?;
                        }
                        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                            fs::remove_dir_all(&p).map_err(io("removing", &p))?;
                        }
                        let tmp = p.with_extension("seaport-restore");
                        copy_preserving(Path::new(backup), &tmp)?;
                        fs::rename(&tmp, &p).map_err(io("restoring", &p))
                    })()
                    .map_err(|e| e.to_string())
                }
                Change::AppendedLine { path, line } => {
                    let p = self.host(path);
                    match fs::read_to_string(&p) {
                        Ok(text) => {
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
                            let mode = fs::metadata(&p)
                                .map(|m| m.permissions().mode() & 0o7777)
                                .unwrap_or(0o644);
                            write_atomic(&p, new.as_bytes(), mode).map_err(|e| e.to_string())
                        }
                        Err(_) => Ok(()),
                    }
                }
                Change::ChangedUnrestorable { path } => Err(format!(
                    "{path} was changed by a hook outside the backed-up trees and is left as it is"
                )),
                Change::UnitEnabled { .. }
                | Change::Mounted { .. }
                | Change::CreatedLink { .. } => Ok(()),
            };
            if let Err(w) = r {
                warnings.push(w);
            }
        }
        warnings
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

fn copy_preserving(from: &Path, to: &Path) -> Result<(), FilesError> {
    let m = fs::symlink_metadata(from).map_err(io("reading", from))?;
    if m.file_type().is_symlink() {
        let target = fs::read_link(from).map_err(io("reading", from))?;
        let _ = fs::remove_file(to);
        std::os::unix::fs::symlink(target, to).map_err(io("copying", to))?;
    } else {
        fs::copy(from, to).map_err(io("copying", from))?;
    }
    Ok(())
}

/// Writes a file atomically: temporary file beside it, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FilesError> {
    let tmp = path.with_extension(format!(
        "{}seaport-tmp",
        path.extension()
            .map(|e| format!("{}.", e.to_string_lossy()))
            .unwrap_or_default()
    ));
    let mut f = fs::File::create(&tmp).map_err(io("writing", &tmp))?;
    f.write_all(bytes).map_err(io("writing", &tmp))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    drop(f);
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink()) {
        fs::remove_file(path).map_err(io("replacing", path))?;
    }
    fs::rename(&tmp, path).map_err(io("renaming", path))?;
    Ok(())
}
