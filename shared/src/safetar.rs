//! Unpacking tar layers confined to a target root.
//!
//! Layers come from images built elsewhere, so every entry is treated as
//! hostile: absolute paths are made relative, `..` components are refused,
//! names that are not UTF-8 are refused (by name, escaped), and nothing is
//! ever written through a symlink: every entry is resolved beneath the root
//! one component at a time without following symlinks
//! ([`crate::confined`]); a symlink met on the way to an entry is an error,
//! and an existing symlink at the entry's own path is replaced, not
//! followed. Files are created with `O_EXCL | O_NOFOLLOW` and get their
//! owner and mode on the open handle. Hard links must point at a regular
//! file inside the root. OCI whiteouts are applied: `.wh.NAME` removes
//! `NAME` from what lower layers left, `.wh..wh..opq` empties its
//! directory. Device nodes and FIFOs are skipped, or refused with
//! [`UnpackOptions::refuse_devices`]; setuid and setgid files are refused
//! with [`UnpackOptions::refuse_setuid`] (what an agent unpacking onto a
//! host asks for). Ownership is kept only when asked (agents running as
//! root).
//!
//! Directory modes are applied last (so a read-only directory does not stop
//! its children from being written), each on a handle opened without
//! following symlinks, and only while the path still names the very
//! directory the unpack created or met (device and inode): a later entry
//! that replaced it with a symlink gets nothing chmod-ed through it.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use crate::confined::{self, ConfinedError, Dir, Kind};

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
        /// The entry's path as stored in the archive (bytes that are not
        /// UTF-8 shown escaped).
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

/// Why an entry path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EntryPathError {
    /// It climbs out.
    #[error("the path contains '..'")]
    ParentDir,
    /// A Windows prefix.
    #[error("the path has a prefix")]
    Prefix,
}

/// Normalizes an entry path to a relative path without `.` components.
/// Refuses `..` and empty results are reported as `None` (the root itself).
pub fn normalize_entry_path(path: &Path) -> Result<Option<PathBuf>, EntryPathError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => return Err(EntryPathError::ParentDir),
            Component::Prefix(_) => return Err(EntryPathError::Prefix),
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

/// `bytes` as text: UTF-8 as is, anything else escaped (`\xff`).
fn shown(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

/// A directory the unpack created or met, to get its mode at the end.
struct DirMode {
    rel: PathBuf,
    dev: u64,
    ino: u64,
    mode: u32,
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
    let top = Dir::open(root).map_err(|e| confined_err("", root, e))?;
    let mut archive = tar::Archive::new(reader);
    let mut report = UnpackReport::default();
    let mut dir_modes: Vec<DirMode> = Vec::new();
    // The parent of the previous entry, reused while entries share it.
    let mut cached: Option<(PathBuf, Dir)> = None;
    for entry in archive.entries().map_err(io_err(""))? {
        let mut entry = entry.map_err(io_err(""))?;
        let raw_bytes = entry.path_bytes().into_owned();
        let shown = shown(&raw_bytes);
        let unsafe_err = |reason: String| SafeTarError::Unsafe {
            path: shown.clone(),
            reason,
        };
        if std::str::from_utf8(&raw_bytes).is_err() {
            return Err(unsafe_err(
                "the name is not valid UTF-8; such names are not allowed in layers".into(),
            ));
        }
        let raw = entry.path().map_err(io_err(&shown))?.into_owned();
        let Some(rel) = normalize_entry_path(&raw).map_err(|e| unsafe_err(e.to_string()))? else {
            // The root directory itself: only its mode matters, skip it.
            continue;
        };
        let name = rel.file_name().expect("normalized paths end in a name");
        let file_name = name.to_str().expect("checked UTF-8").to_string();
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let parent = match cached.take() {
            Some((p, d)) if p == parent_rel => d,
            _ => ensure_parent_dirs(&top, &parent_rel).map_err(|e| match e {
                ConfinedError::Symlink { path, .. } => unsafe_err(format!(
                    "its parent {} is a symlink; writing through it could leave the root",
                    path.display()
                )),
                e => confined_err(&shown, root, e),
            })?,
        };
        let cerr = |e: ConfinedError| confined_err(&shown, root, e);
        if file_name == WHITEOUT_OPAQUE {
            for child in parent.list().map_err(cerr)? {
                parent.remove_all(&child).map_err(cerr)?;
            }
            report.whiteouts += 1;
            cached = Some((parent_rel, parent));
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
                return Err(unsafe_err("malformed whiteout".into()));
            }
            parent.remove_all(OsStr::new(hidden)).map_err(cerr)?;
            report.whiteouts += 1;
            cached = Some((parent_rel, parent));
            continue;
        }
        let kind = entry.header().entry_type();
        let existing = parent.stat(name).map_err(cerr)?;
        match kind {
            tar::EntryType::Directory => {
                match existing {
                    Some(m) if m.kind == Kind::Dir => {}
                    Some(_) => {
                        parent.unlink(name).map_err(cerr)?;
                        parent.mkdir(name, 0o755).map_err(cerr)?;
                    }
                    None => parent.mkdir(name, 0o755).map_err(cerr)?,
                }
                let mode = entry.header().mode().map_err(io_err(&shown))?;
                let made = parent
                    .stat(name)
                    .map_err(cerr)?
                    .filter(|m| m.kind == Kind::Dir)
                    .ok_or_else(|| unsafe_err("the directory vanished while unpacking".into()))?;
                dir_modes.push(DirMode {
                    rel: rel.clone(),
                    dev: made.dev,
                    ino: made.ino,
                    mode: mode & 0o7777,
                });
                if options.preserve_ownership {
                    let (uid, gid) = owner(&entry).map_err(io_err(&shown))?;
                    parent.chown(name, uid, gid).map_err(cerr)?;
                }
                report.entries += 1;
            }
            tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::GNUSparse
            | tar::EntryType::Symlink => {
                let mode = entry.header().mode().map_err(io_err(&shown))? & 0o7777;
                if options.refuse_setuid && kind != tar::EntryType::Symlink && mode & 0o6000 != 0 {
                    return Err(unsafe_err(format!(
                        "it is setuid or setgid (mode {mode:o}); such files are not allowed here"
                    )));
                }
                if existing.is_some() {
                    parent.remove_all(name).map_err(cerr)?;
                }
                if kind == tar::EntryType::Symlink {
                    let target = entry
                        .link_name_bytes()
                        .ok_or_else(|| unsafe_err("symlink without a target".into()))?
                        .into_owned();
                    parent
                        .symlink(std::os::unix::ffi::OsStrExt::from_bytes(&target[..]), name)
                        .map_err(cerr)?;
                    if options.preserve_ownership {
                        let (uid, gid) = owner(&entry).map_err(io_err(&shown))?;
                        parent.chown(name, uid, gid).map_err(cerr)?;
                    }
                } else {
                    let mut f = parent.create_new(name, 0o600).map_err(cerr)?;
                    io::copy(&mut entry, &mut f).map_err(io_err(&shown))?;
                    if options.preserve_ownership {
                        let (uid, gid) = owner(&entry).map_err(io_err(&shown))?;
                        Dir::chown_file(&f, uid, gid).map_err(io_err(&shown))?;
                    }
                    // After the owner: chown clears setuid bits.
                    use std::os::unix::fs::PermissionsExt;
                    f.set_permissions(std::fs::Permissions::from_mode(mode))
                        .map_err(io_err(&shown))?;
                    if let Ok(mtime) = entry.header().mtime() {
                        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
                        let _ = f.set_times(std::fs::FileTimes::new().set_modified(t));
                    }
                }
                report.entries += 1;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_err("hard link without a target".into()))?
                    .into_owned();
                let link = std::str::from_utf8(&link).map_err(|_| {
                    unsafe_err(format!(
                        "hard link target {} is not valid UTF-8",
                        link.escape_ascii()
                    ))
                })?;
                let link_rel = normalize_entry_path(Path::new(link))
                    .map_err(|r| unsafe_err(format!("hard link target: {r}")))?
                    .ok_or_else(|| unsafe_err("hard link to the root".into()))?;
                let (src_dir, src_name) = top.parent_of(&link_rel, false).map_err(|e| {
                    unsafe_err(format!(
                        "hard link target: {}",
                        match e {
                            ConfinedError::Io { path, .. } =>
                                format!("{} is not a directory inside the root", path.display()),
                            e => e.to_string(),
                        }
                    ))
                })?;
                match src_dir.stat(src_name).map_err(cerr)? {
                    Some(m) if m.kind == Kind::File => {}
                    Some(_) => {
                        return Err(unsafe_err("hard link target is not a regular file".into()))
                    }
                    None => {
                        return Err(confined_err(
                            &shown,
                            root,
                            ConfinedError::Io {
                                action: "linking to",
                                path: src_dir.path().join(src_name),
                                source: io::Error::from(io::ErrorKind::NotFound),
                            },
                        ))
                    }
                }
                if existing.is_some() {
                    parent.remove_all(name).map_err(cerr)?;
                }
                parent.hard_link(&src_dir, src_name, name).map_err(cerr)?;
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
        cached = Some((parent_rel, parent));
    }
    drop(cached);
    // Directory modes last, deepest entries first; the last mode an archive
    // gives a directory wins. Only the directory that was made or met gets
    // it: a path that now goes through a symlink, or names another file,
    // is left alone.
    let mut done: HashSet<(u64, u64)> = HashSet::new();
    for d in dir_modes.into_iter().rev() {
        if !done.insert((d.dev, d.ino)) {
            continue;
        }
        top.set_dir_mode_if(&d.rel, (d.dev, d.ino), d.mode)
            .map_err(|e| confined_err(&d.rel.display().to_string(), root, e))?;
    }
    Ok(report)
}

fn confined_err(path: &str, root: &Path, e: ConfinedError) -> SafeTarError {
    match e {
        ConfinedError::Io { source, .. } => SafeTarError::Io {
            path: path.to_string(),
            root: root.to_path_buf(),
            source,
        },
        e => SafeTarError::Unsafe {
            path: path.to_string(),
            reason: e.to_string(),
        },
    }
}

/// Creates the directories of `rel` under `top`, refusing symlinks on the
/// way; a file where a directory is needed is replaced by one.
fn ensure_parent_dirs(top: &Dir, rel: &Path) -> Result<Dir, ConfinedError> {
    let mut cur = top.try_clone()?;
    for c in confined::components(rel)? {
        match cur.stat(c)? {
            Some(m) if m.kind == Kind::Symlink => {
                return Err(ConfinedError::Symlink {
                    path: cur.path().join(c),
                    root: top.path().to_path_buf(),
                })
            }
            Some(m) if m.kind == Kind::Dir => {}
            Some(_) => {
                // A file where a directory is needed: the layer replaces it.
                cur.unlink(c)?;
                cur.mkdir(c, 0o755)?;
            }
            None => cur.mkdir(c, 0o755)?,
        }
        cur = cur.subdir(c)?;
    }
    Ok(cur)
}

fn owner<R: Read>(entry: &tar::Entry<'_, R>) -> io::Result<(u32, u32)> {
    let uid = entry.header().uid()?;
    let gid = entry.header().gid()?;
    let uid = u32::try_from(uid).map_err(|_| io::Error::other("uid out of range"))?;
    let gid = u32::try_from(gid).map_err(|_| io::Error::other("gid out of range"))?;
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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

    /// A tar of raw entries: (name bytes, kind, mode, link target).
    fn raw_tar(entries: &[(&[u8], tar::EntryType, u32, Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, mode, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            let data: &[u8] = if *kind == F { b"data" } else { b"" };
            h.set_size(data.len() as u64);
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn mode_of(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_directory_replaced_by_a_symlink_gives_its_mode_to_nothing_outside() {
        use std::os::unix::fs::PermissionsExt;
        let outside = tempfile::tempdir().unwrap();
        let sentinel = outside.path().join("sentinel");
        fs::create_dir(&sentinel).unwrap();
        fs::write(sentinel.join("f"), "f").unwrap();
        fs::set_permissions(&sentinel, fs::Permissions::from_mode(0o700)).unwrap();
        let root = tempfile::tempdir().unwrap();
        let target = sentinel.display().to_string();
        for mode in [0o4755, 0o777] {
            // Directory x with a mode, then x replaced by a symlink out.
            let evil = raw_tar(&[(b"x", D, mode, None), (b"x", S, 0o777, Some(&target))]);
            unpack(&evil[..], root.path(), &UnpackOptions::default()).unwrap();
            assert_eq!(mode_of(&sentinel), 0o700, "mode {mode:o} went through x");
            // Nested: a/b with a mode, a replaced by a symlink to the
            // sentinel's parent, which has its own b.
            fs::create_dir_all(outside.path().join("b")).unwrap();
            fs::set_permissions(outside.path().join("b"), fs::Permissions::from_mode(0o700))
                .unwrap();
            let outer = outside.path().display().to_string();
            let evil = raw_tar(&[
                (b"a/", D, 0o755, None),
                (b"a/b/", D, mode, None),
                (b"a", S, 0o777, Some(&outer)),
            ]);
            unpack(&evil[..], root.path(), &UnpackOptions::default()).unwrap();
            assert_eq!(mode_of(&outside.path().join("b")), 0o700);
            fs::remove_file(root.path().join("a")).unwrap();
        }
        assert_eq!(fs::read_to_string(sentinel.join("f")).unwrap(), "f");
        // A directory named twice gets the last mode.
        let twice = raw_tar(&[(b"d/", D, 0o700, None), (b"d/", D, 0o751, None)]);
        unpack(&twice[..], root.path(), &UnpackOptions::default()).unwrap();
        assert_eq!(mode_of(&root.path().join("d")), 0o751);
    }

    #[test]
    fn names_that_are_not_utf8_are_refused_and_the_root_is_left_alone() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("keep"), "keep").unwrap();
        fs::create_dir(root.path().join("etc")).unwrap();
        fs::write(root.path().join("etc/keep"), "keep").unwrap();
        for (name, kind) in [
            (&b"\xff"[..], F),
            (&b"\xfe\xff"[..], D),
            (&b"etc/\xff"[..], F),
            (&b"./\xc3"[..], S),
        ] {
            let evil = raw_tar(&[(name, kind, 0o644, Some("x"))]);
            let err = unpack(&evil[..], root.path(), &UnpackOptions::default()).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("not valid UTF-8"), "{msg}");
            assert!(msg.contains("\\xff") || msg.contains("\\xc3"), "{msg}");
        }
        assert_eq!(
            fs::read_to_string(root.path().join("keep")).unwrap(),
            "keep"
        );
        assert_eq!(
            fs::read_to_string(root.path().join("etc/keep")).unwrap(),
            "keep"
        );
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
