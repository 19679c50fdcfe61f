//! Unpacking tar layers confined to a target root.
//!
//! Layers come from images built elsewhere, so every entry is treated as
//! hostile: absolute paths are made relative, `..` components are refused,
//! nothing is ever written through a symlink (a symlink met on the way to an
//! entry is an error, and an existing symlink at the entry's own path is
//! replaced, not followed), and hard links must point inside the root. OCI
//! whiteouts are applied: `.wh.NAME` removes `NAME` from what lower layers
//! left, `.wh..wh..opq` empties its directory. Device nodes and FIFOs are
//! skipped, or refused with [`UnpackOptions::refuse_devices`]; setuid and
//! setgid files are refused with [`UnpackOptions::refuse_setuid`] (what an
//! agent unpacking onto a host asks for). Ownership is kept only when asked
//! (agents running as root).

use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

/// Prefix of an OCI whiteout entry's file name.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// File name of an OCI opaque-directory whiteout.
pub const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";

/// Errors from unpacking.
#[derive(Debug, thiserror::Error)]
pub enum SafeTarError {
    /// An entry's path leaves the root or is otherwise unusable.
    #[error("refusing tar entry {path:?}: {reason}")]
    Unsafe {
        /// The entry's path as stored in the archive.
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// Reading the archive or writing a file failed.
    #[error("unpacking tar entry {path:?} into {root}: {source}")]
    Io {
        /// The entry (empty when reading the archive itself failed).
        path: String,
        /// The target root.
        root: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// How to unpack.
#[derive(Clone, Debug, Default)]
pub struct UnpackOptions {
    /// Apply uid/gid from the archive (needs root).
    pub preserve_ownership: bool,
    /// Refuse device nodes and FIFOs instead of skipping them.
    pub refuse_devices: bool,
    /// Refuse regular files with the setuid or setgid bit.
    pub refuse_setuid: bool,
}

/// What an unpack did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackReport {
    /// Files, directories and links written.
    pub entries: u64,
    /// Whiteouts applied.
    pub whiteouts: u64,
    /// Device nodes, FIFOs and other entries skipped.
    pub skipped: u64,
}

/// Normalizes an entry path to a relative path without `.` components.
/// Refuses `..` and empty results are reported as `None` (the root itself).
pub fn normalize_entry_path(path: &Path) -> Result<Option<PathBuf>, String> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => return Err("the path contains '..'".into()),
            Component::Prefix(_) => return Err("the path has a prefix".into()),
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

/// Unpacks the (uncompressed) tar stream `reader` into `root`, applying
/// whiteouts. `root` must exist.
pub fn unpack(
    reader: impl Read,
    root: &Path,
    options: &UnpackOptions,
) -> Result<UnpackReport, SafeTarError> {
    let io_err = |path: &str| {
        let path = path.to_string();
        move |source| SafeTarError::Io {
            path,
            root: root.to_path_buf(),
            source,
        }
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(options.preserve_ownership);
    archive.set_unpack_xattrs(false);
    let mut report = UnpackReport::default();
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    for entry in archive.entries().map_err(io_err(""))? {
        let mut entry = entry.map_err(io_err(""))?;
        let raw = entry.path().map_err(io_err(""))?.into_owned();
        let shown = raw.display().to_string();
        let unsafe_err = |reason: String| SafeTarError::Unsafe {
            path: shown.clone(),
            reason,
        };
        let Some(rel) = normalize_entry_path(&raw).map_err(unsafe_err)? else {
            // The root directory itself: only its mode matters, skip it.
            continue;
        };
        let file_name = rel
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let parent = ensure_parent_dirs(root, parent_rel).map_err(|e| match e {
            ParentError::Symlink(p) => unsafe_err(format!(
                "its parent {} is a symlink; writing through it could leave the root",
                p.display()
            )),
            ParentError::Io(source) => SafeTarError::Io {
                path: shown.clone(),
                root: root.to_path_buf(),
                source,
            },
        })?;
        if file_name == WHITEOUT_OPAQUE {
            for child in fs::read_dir(&parent).map_err(io_err(&shown))? {
                let child = child.map_err(io_err(&shown))?;
                remove_any(&child.path()).map_err(io_err(&shown))?;
            }
            report.whiteouts += 1;
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(unsafe_err("malformed whiteout".into()));
            }
            remove_any(&parent.join(hidden)).map_err(io_err(&shown))?;
            report.whiteouts += 1;
            continue;
        }
        let target = parent.join(&file_name);
        let kind = entry.header().entry_type();
        let existing = fs::symlink_metadata(&target).ok();
        match kind {
            tar::EntryType::Directory => {
                if let Some(m) = &existing {
                    if !m.is_dir() {
                        fs::remove_file(&target).map_err(io_err(&shown))?;
                    }
                }
                if !target.is_dir() {
                    fs::create_dir(&target).map_err(io_err(&shown))?;
                }
                let mode = entry.header().mode().map_err(io_err(&shown))?;
                dir_modes.push((target.clone(), mode & 0o7777));
                if options.preserve_ownership {
                    set_owner(&target, &entry).map_err(io_err(&shown))?;
                }
                report.entries += 1;
            }
            tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::GNUSparse
            | tar::EntryType::Symlink => {
                let mode = entry.header().mode().map_err(io_err(&shown))?;
                if options.refuse_setuid && kind != tar::EntryType::Symlink && mode & 0o6000 != 0 {
                    return Err(unsafe_err(format!(
                        "it is setuid or setgid (mode {mode:o}); such files are not allowed here"
                    )));
                }
                if let Some(m) = &existing {
                    if m.is_dir() && !m.file_type().is_symlink() {
                        fs::remove_dir_all(&target).map_err(io_err(&shown))?;
                    } else {
                        fs::remove_file(&target).map_err(io_err(&shown))?;
                    }
                }
                entry.unpack(&target).map_err(io_err(&shown))?;
                report.entries += 1;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(io_err(&shown))?
                    .ok_or_else(|| unsafe_err("hard link without a target".into()))?
                    .into_owned();
                let link_rel = normalize_entry_path(&link)
                    .map_err(|r| unsafe_err(format!("hard link target: {r}")))?
                    .ok_or_else(|| unsafe_err("hard link to the root".into()))?;
                let link_parent = ensure_existing_parent(root, &link_rel)
                    .map_err(|r| unsafe_err(format!("hard link target: {r}")))?;
                let source = link_parent.join(link_rel.file_name().expect("normalized"));
                let meta = fs::symlink_metadata(&source).map_err(io_err(&shown))?;
                if !meta.is_file() {
                    return Err(unsafe_err("hard link target is not a regular file".into()));
                }
                if let Some(m) = &existing {
                    if m.is_dir() && !m.file_type().is_symlink() {
                        fs::remove_dir_all(&target).map_err(io_err(&shown))?;
                    } else {
                        fs::remove_file(&target).map_err(io_err(&shown))?;
                    }
                }
                fs::hard_link(&source, &target).map_err(io_err(&shown))?;
                report.entries += 1;
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo
                if options.refuse_devices =>
            {
                return Err(unsafe_err(
                    "it is a device node or FIFO; such entries are not allowed here".into(),
                ));
            }
            _ => report.skipped += 1,
        }
    }
    // Directory modes last, so a read-only directory does not stop its
    // children from being written.
    for (dir, mode) in dir_modes.into_iter().rev() {
        set_mode(&dir, mode).map_err(|source| SafeTarError::Io {
            path: dir.display().to_string(),
            root: root.to_path_buf(),
            source,
        })?;
    }
    Ok(report)
}

enum ParentError {
    Symlink(PathBuf),
    Io(io::Error),
}

/// Creates the directories of `rel` under `root`, refusing symlinks on the way.
fn ensure_parent_dirs(root: &Path, rel: &Path) -> Result<PathBuf, ParentError> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return Err(ParentError::Symlink(cur)),
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                // A file where a directory is needed: the layer replaces it.
                fs::remove_file(&cur).map_err(ParentError::Io)?;
                fs::create_dir(&cur).map_err(ParentError::Io)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur).map_err(ParentError::Io)?;
            }
            Err(e) => return Err(ParentError::Io(e)),
        }
    }
    Ok(cur)
}

/// The parent of `rel` under `root`, which must exist without symlinks.
fn ensure_existing_parent(root: &Path, rel: &Path) -> Result<PathBuf, String> {
    let mut cur = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() && !m.file_type().is_symlink() => {}
                _ => {
                    return Err(format!(
                        "{} is not a directory inside the root",
                        cur.display()
                    ))
                }
            }
        }
    }
    Ok(cur)
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

fn set_owner<R: Read>(path: &Path, entry: &tar::Entry<'_, R>) -> io::Result<()> {
    let uid = entry.header().uid()?;
    let gid = entry.header().gid()?;
    let uid = u32::try_from(uid).map_err(|_| io::Error::other("uid out of range"))?;
    let gid = u32::try_from(gid).map_err(|_| io::Error::other("gid out of range"))?;
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_size(data.len() as u64);
            // Write the raw name so hostile paths reach the unpacker as is.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as S};

    #[test]
    fn unpacks_files_dirs_links_and_whiteouts() {
        let root = tempfile::tempdir().unwrap();
        let lower = tar_of(&[
            ("etc/", D, b"", None),
            ("etc/a", F, b"A", None),
            ("etc/b", F, b"B", None),
            ("opq/x", F, b"X", None),
        ]);
        unpack(&lower[..], root.path(), &UnpackOptions::default()).unwrap();
        let upper = tar_of(&[
            ("/etc/.wh.a", F, b"", None),
            ("./etc/c", S, b"", Some("b")),
            ("etc/d", H, b"", Some("etc/b")),
            ("opq/.wh..wh..opq", F, b"", None),
            ("opq/y", F, b"Y", None),
        ]);
        let r = unpack(&upper[..], root.path(), &UnpackOptions::default()).unwrap();
        assert_eq!(r.whiteouts, 2);
        let p = root.path();
        assert!(!p.join("etc/a").exists());
        assert_eq!(fs::read_link(p.join("etc/c")).unwrap(), Path::new("b"));
        assert_eq!(fs::read(p.join("etc/d")).unwrap(), b"B");
        assert!(!p.join("opq/x").exists());
        assert_eq!(fs::read(p.join("opq/y")).unwrap(), b"Y");
    }

    #[test]
    fn refuses_dotdot_and_writing_through_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let evil = tar_of(&[("../escape", F, b"x", None)]);
        let err = unpack(&evil[..], root.path(), &UnpackOptions::default()).unwrap_err();
        assert!(err.to_string().contains("'..'"), "{err}");

        let link = format!("{}", outside.path().display());
        let evil = tar_of(&[("l", S, b"", Some(&link)), ("l/pwned", F, b"x", None)]);
        let err = unpack(&evil[..], root.path(), &UnpackOptions::default()).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(!outside.path().join("pwned").exists());

        // A symlink at the entry's own path is replaced, not followed.
        std::os::unix::fs::symlink(outside.path().join("target"), root.path().join("f")).unwrap();
        let over = tar_of(&[("f", F, b"data", None)]);
        unpack(&over[..], root.path(), &UnpackOptions::default()).unwrap();
        assert!(!outside.path().join("target").exists());
        assert_eq!(fs::read(root.path().join("f")).unwrap(), b"data");

        let evil = tar_of(&[("h", H, b"", Some("../../etc/passwd"))]);
        assert!(unpack(&evil[..], root.path(), &UnpackOptions::default()).is_err());
    }

    #[test]
    fn refuses_devices_and_setuid_when_asked() {
        let strict = UnpackOptions {
            refuse_devices: true,
            refuse_setuid: true,
            ..UnpackOptions::default()
        };
        let root = tempfile::tempdir().unwrap();
        let dev = tar_of(&[("dev/null", tar::EntryType::Char, b"", None)]);
        let r = unpack(&dev[..], root.path(), &UnpackOptions::default()).unwrap();
        assert_eq!(r.skipped, 1);
        let err = unpack(&dev[..], root.path(), &strict).unwrap_err();
        assert!(err.to_string().contains("device node"), "{err}");

        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_path("bin/su").unwrap();
        h.set_mode(0o4755);
        h.set_size(1);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let suid = b.into_inner().unwrap();
        let err = unpack(&suid[..], root.path(), &strict).unwrap_err();
        assert!(err.to_string().contains("setuid"), "{err}");
        assert!(!root.path().join("bin/su").exists());
    }
}
