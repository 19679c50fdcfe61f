//! Files beneath a root directory, never through a symlink: the one writer
//! for everything Seaport writes where an image (or anyone else) may have
//! planted links.
//!
//! A [`Dir`] is an open directory handle. Paths given to it are relative to
//! it (a leading `/` is ignored, `.` skipped, `..` refused) and resolved one
//! component at a time with `openat(O_NOFOLLOW | O_DIRECTORY)`: a symlink in
//! any component is an error naming it, never followed, so nothing resolved
//! through a `Dir` can leave it. Files are created with
//! `O_CREAT | O_EXCL | O_NOFOLLOW` (a planted symlink at a temporary name
//! makes the creation fail instead of redirecting it), modes and owners are
//! set on the open handle (`fchmod`, `fchown`), and atomic writes rename a
//! temporary file of a random name over the destination (`renameat`
//! replaces a symlink there, it does not write through it).
//!
//! [`write_atomic`] is the same writer for a path whose directory the caller
//! trusts (the agent's and coordinator's own directories).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

/// Errors of confined file operations.
#[derive(Debug, thiserror::Error)]
pub enum ConfinedError {
    /// A path component is a symlink: following it could leave the root.
    #[error("{path} is a symlink; refusing to go through it (it could lead outside {root})")]
    Symlink {
        /// The symlink.
        path: PathBuf,
        /// The directory everything must stay beneath.
        root: PathBuf,
    },
    /// A path component is not a directory.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The component.
        path: PathBuf,
    },
    /// The path itself is unusable (`..`, empty).
    #[error("refusing path {path:?}: {reason}")]
    Refused {
        /// The path as given.
        path: String,
        /// Why.
        reason: String,
    },
    /// A filesystem operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl ConfinedError {
    /// The OS error behind an I/O failure, if that is what it is.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            ConfinedError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

fn io_at(action: &'static str, path: PathBuf) -> impl FnOnce(Errno) -> ConfinedError {
    move |e| ConfinedError::Io {
        action,
        path,
        source: io::Error::from(e),
    }
}

/// The components of `path` below a directory: a leading `/` and `.` are
/// dropped, `..` is refused. An empty result names the directory itself.
pub fn components(path: &Path) -> Result<Vec<&OsStr>, ConfinedError> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                return Err(ConfinedError::Refused {
                    path: path.display().to_string(),
                    reason: "it contains '..'".into(),
                })
            }
            Component::Prefix(_) => {
                return Err(ConfinedError::Refused {
                    path: path.display().to_string(),
                    reason: "it has a prefix".into(),
                })
            }
        }
    }
    Ok(out)
}

/// What a name in a directory is, without following a symlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symlink.
    Symlink,
    /// A device node, FIFO or socket.
    Other,
}

/// The metadata of a name, without following a symlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// What it is.
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Device and inode: the identity of the file.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl Meta {
    fn of(st: &FileStat) -> Meta {
        let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        let kind = if fmt == SFlag::S_IFDIR {
            Kind::Dir
        } else if fmt == SFlag::S_IFREG {
            Kind::File
        } else if fmt == SFlag::S_IFLNK {
            Kind::Symlink
        } else {
            Kind::Other
        };
        Meta {
            kind,
            mode: st.st_mode & 0o7777,
            size: st.st_size as u64,
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// What [`Dir::read_entry`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A regular file.
    File {
        /// Its bytes.
        bytes: Vec<u8>,
        /// Its permission bits.
        mode: u32,
    },
    /// A symlink.
    Symlink {
        /// Where it points (not followed).
        target: OsString,
    },
    /// A directory.
    Dir,
    /// A device node, FIFO or socket.
    Other,
}

/// An open directory; everything resolved through it stays beneath it.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
    root: PathBuf,
}

const DIR_FLAGS: OFlag = OFlag::O_PATH
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

impl Dir {
    /// Opens `path`, the root: it is trusted as given (symlinks in it are
    /// followed, as the caller chose it).
    pub fn open(path: &Path) -> Result<Dir, ConfinedError> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_at("opening", path.to_path_buf()))?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
            root: path.to_path_buf(),
        })
    }

    /// Where it is (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn at(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A second handle on the same directory.
    pub fn try_clone(&self) -> Result<Dir, ConfinedError> {
        Ok(Dir {
            fd: self.fd.try_clone().map_err(|source| ConfinedError::Io {
                action: "duplicating the handle of",
                path: self.path.clone(),
                source,
            })?,
            path: self.path.clone(),
            root: self.root.clone(),
        })
    }

    /// The metadata of `name` (one component), `None` when it is missing.
    pub fn stat(&self, name: &OsStr) -> Result<Option<Meta>, ConfinedError> {
        match fstatat(self.fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Meta::of(&st))),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(io_at("reading the metadata of", self.at(name))(e)),
        }
    }

    /// The metadata of the directory itself.
    pub fn meta(&self) -> Result<Meta, ConfinedError> {
        fstat(self.fd())
            .map(|st| Meta::of(&st))
            .map_err(io_at("reading the metadata of", self.path.clone()))
    }

    /// The subdirectory `name` (one component), refusing a symlink.
    pub fn subdir(&self, name: &OsStr) -> Result<Dir, ConfinedError> {
        match openat(self.fd(), name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(Dir {
                fd,
                path: self.at(name),
                root: self.root.clone(),
            }),
            Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => match self.stat(name)?.map(|m| m.kind) {
                Some(Kind::Symlink) => Err(ConfinedError::Symlink {
                    path: self.at(name),
                    root: self.root.clone(),
                }),
                Some(Kind::Dir) => Err(io_at("opening", self.at(name))(e)),
                _ => Err(ConfinedError::NotADirectory {
                    path: self.at(name),
                }),
            },
            Err(e) => Err(io_at("opening", self.at(name))(e)),
        }
    }

    /// The directory `rel` beneath this one, which must exist.
    pub fn open_dir(&self, rel: &Path) -> Result<Dir, ConfinedError> {
        let mut cur = self.try_clone()?;
        for c in components(rel)? {
            cur = cur.subdir(c)?;
        }
        Ok(cur)
    }

    /// The directory `rel` beneath this one, creating missing components
    /// (mode 0755 before the umask).
    pub fn create_dirs(&self, rel: &Path) -> Result<Dir, ConfinedError> {
        let mut cur = self.try_clone()?;
        for c in components(rel)? {
            if cur.stat(c)?.is_none() {
                cur.mkdir(c, 0o755)?;
            }
            cur = cur.subdir(c)?;
        }
        Ok(cur)
    }

    /// The components of `rel` that do not exist yet, shallowest first, as
    /// paths relative to this directory. Fails as [`Dir::create_dirs`]
    /// would on a symlink or file in the way.
    pub fn missing_dirs(&self, rel: &Path) -> Result<Vec<PathBuf>, ConfinedError> {
        let comps = components(rel)?;
        let mut cur = self.try_clone()?;
        let mut prefix = PathBuf::new();
        for (i, c) in comps.iter().enumerate() {
            prefix.push(c);
            if cur.stat(c)?.is_none() {
                let mut out = vec![prefix.clone()];
                for rest in &comps[i + 1..] {
                    prefix.push(rest);
                    out.push(prefix.clone());
                }
                return Ok(out);
            }
            cur = cur.subdir(c)?;
        }
        Ok(Vec::new())
    }

    /// The parent directory of `rel` (resolved, created when `create`) and
    /// its last component.
    pub fn parent_of<'p>(
        &self,
        rel: &'p Path,
        create: bool,
    ) -> Result<(Dir, &'p OsStr), ConfinedError> {
        let comps = components(rel)?;
        let Some((name, parents)) = comps.split_last() else {
            return Err(ConfinedError::Refused {
                path: rel.display().to_string(),
                reason: "it names the directory itself, not an entry in it".into(),
            });
        };
        let parent: PathBuf = parents.iter().collect();
        let dir = if create {
            self.create_dirs(&parent)?
        } else {
            self.open_dir(&parent)?
        };
        Ok((dir, name))
    }

    /// Creates the directory `name` with `mode` (before the umask).
    pub fn mkdir(&self, name: &OsStr, mode: u32) -> Result<(), ConfinedError> {
        mkdirat(self.fd(), name, Mode::from_bits_truncate(mode))
            .map_err(io_at("creating", self.at(name)))
    }

    /// Creates the new file `name` for writing, with exactly `mode`; fails
    /// if anything (a symlink included) is there.
    pub fn create_new(&self, name: &OsStr, mode: u32) -> Result<File, ConfinedError> {
        let fd = openat(
            self.fd(),
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(io_at("creating", self.at(name)))?;
        fchmod(&fd, Mode::from_bits_truncate(mode & 0o7777))
            .map_err(io_at("setting the mode of", self.at(name)))?;
        Ok(File::from(fd))
    }

    /// A new temporary file in this directory, of a random name starting
    /// with `.{prefix}.`; returns it and its name.
    pub fn create_temp(&self, prefix: &str, mode: u32) -> Result<(File, OsString), ConfinedError> {
        for _ in 0..16 {
            let name = OsString::from(format!(".{prefix}.{:016x}.tmp", rand::random::<u64>()));
            match self.create_new(&name, mode) {
                Ok(f) => return Ok((f, name)),
                Err(e) if e.io_kind() == Some(io::ErrorKind::AlreadyExists) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ConfinedError::Io {
            action: "creating a temporary file in",
            path: self.path.clone(),
            source: io::Error::from(io::ErrorKind::AlreadyExists),
        })
    }

    /// Opens the regular file `name` for reading, refusing a symlink.
    pub fn open_file(&self, name: &OsStr) -> Result<File, ConfinedError> {
        let fd = openat(
            self.fd(),
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::ELOOP => ConfinedError::Symlink {
                path: self.at(name),
                root: self.root.clone(),
            },
            e => io_at("opening", self.at(name))(e),
        })?;
        Ok(File::from(fd))
    }

    /// The bytes of the regular file `rel`, `None` when it is missing.
    pub fn read(&self, rel: &Path) -> Result<Option<Vec<u8>>, ConfinedError> {
        let (dir, name) = match self.parent_of(rel, false) {
            Ok(p) => p,
            Err(ConfinedError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        match dir.stat(name)? {
            None => Ok(None),
            Some(m) if m.kind == Kind::File => {
                let mut f = dir.open_file(name)?;
                let mut out = Vec::with_capacity(m.size as usize);
                io::Read::read_to_end(&mut f, &mut out).map_err(|source| ConfinedError::Io {
                    action: "reading",
                    path: dir.at(name),
                    source,
                })?;
                Ok(Some(out))
            }
            Some(m) if m.kind == Kind::Symlink => Err(ConfinedError::Symlink {
                path: dir.at(name),
                root: self.root.clone(),
            }),
            Some(_) => Err(ConfinedError::Refused {
                path: dir.at(name).display().to_string(),
                reason: "it is not a regular file".into(),
            }),
        }
    }

    /// What `rel` is, read without following symlinks: a regular file's
    /// bytes and mode, a symlink's target; `None` when it is missing.
    pub fn read_entry(&self, rel: &Path) -> Result<Option<Entry>, ConfinedError> {
        let (dir, name) = match self.parent_of(rel, false) {
            Ok(p) => p,
            Err(e) if e.io_kind() == Some(io::ErrorKind::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(meta) = dir.stat(name)? else {
            return Ok(None);
        };
        Ok(Some(match meta.kind {
            Kind::File => {
                let mut f = dir.open_file(name)?;
                let mut bytes = Vec::with_capacity(meta.size as usize);
                io::Read::read_to_end(&mut f, &mut bytes).map_err(|source| ConfinedError::Io {
                    action: "reading",
                    path: dir.at(name),
                    source,
                })?;
                Entry::File {
                    bytes,
                    mode: meta.mode,
                }
            }
            Kind::Symlink => Entry::Symlink {
                target: dir.read_link(name)?,
            },
            Kind::Dir => Entry::Dir,
            Kind::Other => Entry::Other,
        }))
    }

    /// Sets the mode of the directory `rel` when it is still the directory
    /// `expect` (device and inode) and no component is a symlink; anything
    /// else is left alone. Returns whether it was set.
    pub fn set_dir_mode_if(
        &self,
        rel: &Path,
        expect: (u64, u64),
        mode: u32,
    ) -> Result<bool, ConfinedError> {
        let target = match self.open_dir(rel) {
            Ok(d) => d,
            Err(ConfinedError::Symlink { .. } | ConfinedError::NotADirectory { .. }) => {
                return Ok(false)
            }
            Err(e) if e.io_kind() == Some(io::ErrorKind::NotFound) => return Ok(false),
            Err(e) => return Err(e),
        };
        let fd = openat(
            target.fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_at("opening", target.path.clone()))?;
        let st = fstat(&fd).map_err(io_at("reading the metadata of", target.path.clone()))?;
        if (st.st_dev, st.st_ino) != expect {
            return Ok(false);
        }
        fchmod(&fd, Mode::from_bits_truncate(mode & 0o7777))
            .map_err(io_at("setting the mode of", target.path.clone()))?;
        Ok(true)
    }

    /// Sets the owner of `name` without following a symlink.
    pub fn chown(&self, name: &OsStr, uid: u32, gid: u32) -> Result<(), ConfinedError> {
        fchownat(
            self.fd(),
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io_at("changing the owner of", self.at(name)))
    }

    /// Creates the symlink `name` pointing at `target` (stored as is).
    pub fn symlink(&self, target: &OsStr, name: &OsStr) -> Result<(), ConfinedError> {
        symlinkat(target, self.fd(), name).map_err(io_at("creating the symlink", self.at(name)))
    }

    /// Replaces `name` with a symlink to `target` atomically (created at a
    /// random temporary name, renamed over `name`).
    pub fn replace_with_symlink(&self, target: &OsStr, name: &OsStr) -> Result<(), ConfinedError> {
        for _ in 0..16 {
            let tmp = OsString::from(format!(
                ".{}.{:016x}.tmp",
                temp_prefix(name),
                rand::random::<u64>()
            ));
            match symlinkat(target, self.fd(), tmp.as_os_str()) {
                Ok(()) => {
                    let r = self.rename(&tmp, name);
                    if r.is_err() {
                        let _ = self.unlink(&tmp);
                    }
                    return r;
                }
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(io_at("creating the symlink", self.at(&tmp))(e)),
            }
        }
        Err(ConfinedError::Io {
            action: "creating a temporary symlink in",
            path: self.path.clone(),
            source: io::Error::from(io::ErrorKind::AlreadyExists),
        })
    }

    /// The target of the symlink `name`.
    pub fn read_link(&self, name: &OsStr) -> Result<OsString, ConfinedError> {
        nix::fcntl::readlinkat(self.fd(), name).map_err(io_at("reading the symlink", self.at(name)))
    }

    /// Hard-links `src_name` of `src` as `name` here (a symlink is linked
    /// as itself, never followed).
    pub fn hard_link(
        &self,
        src: &Dir,
        src_name: &OsStr,
        name: &OsStr,
    ) -> Result<(), ConfinedError> {
        linkat(src.fd(), src_name, self.fd(), name, AtFlags::empty())
            .map_err(io_at("linking", self.at(name)))
    }

    /// Renames `from` to `to` within this directory (replacing what `to`
    /// names, a symlink included, without following it).
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> Result<(), ConfinedError> {
        renameat(self.fd(), from, self.fd(), to).map_err(io_at("renaming into", self.at(to)))
    }

    /// Removes the non-directory `name`.
    pub fn unlink(&self, name: &OsStr) -> Result<(), ConfinedError> {
        unlinkat(self.fd(), name, UnlinkatFlags::NoRemoveDir)
            .map_err(io_at("removing", self.at(name)))
    }

    /// Removes the empty directory `name`.
    pub fn rmdir(&self, name: &OsStr) -> Result<(), ConfinedError> {
        unlinkat(self.fd(), name, UnlinkatFlags::RemoveDir)
            .map_err(io_at("removing", self.at(name)))
    }

    /// Removes `name` whatever it is (a directory with everything in it);
    /// a missing name is not an error. Symlinks are removed, not followed.
    pub fn remove_all(&self, name: &OsStr) -> Result<(), ConfinedError> {
        match self.stat(name)? {
            None => Ok(()),
            Some(m) if m.kind == Kind::Dir => {
                let sub = self.subdir(name)?;
                for child in sub.list()? {
                    sub.remove_all(&child)?;
                }
                self.rmdir(name)
            }
            Some(_) => self.unlink(name),
        }
    }

    /// The names in this directory (without `.` and `..`), sorted.
    pub fn list(&self) -> Result<Vec<OsString>, ConfinedError> {
        let fd = openat(
            self.fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_at("listing", self.path.clone()))?;
        let mut d = nix::dir::Dir::from_fd(fd).map_err(io_at("listing", self.path.clone()))?;
        let mut out = Vec::new();
        for entry in d.iter() {
            let entry = entry.map_err(io_at("listing", self.path.clone()))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name != "." && name != ".." {
                out.push(name.to_os_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Writes `bytes` to `name` here atomically with exactly `mode`: a new
    /// temporary file (`O_EXCL | O_NOFOLLOW`), fsync, rename over `name`.
    pub fn write_file(&self, name: &OsStr, bytes: &[u8], mode: u32) -> Result<(), ConfinedError> {
        let (mut f, tmp) = self.create_temp(&temp_prefix(name), mode)?;
        let result = (|| {
            f.write_all(bytes).map_err(|source| ConfinedError::Io {
                action: "writing",
                path: self.at(&tmp),
                source,
            })?;
            f.sync_all().map_err(|source| ConfinedError::Io {
                action: "syncing",
                path: self.at(&tmp),
                source,
            })?;
            drop(f);
            self.rename(&tmp, name)
        })();
        if result.is_err() {
            let _ = self.unlink(&tmp);
        }
        result?;
        self.sync();
        Ok(())
    }

    /// [`Dir::write_file`] at `rel` beneath this directory, creating
    /// missing parent directories.
    pub fn write_atomic(&self, rel: &Path, bytes: &[u8], mode: u32) -> Result<(), ConfinedError> {
        let (dir, name) = self.parent_of(rel, true)?;
        if dir.stat(name)?.is_some_and(|m| m.kind == Kind::Dir) {
            return Err(ConfinedError::Refused {
                path: dir.at(name).display().to_string(),
                reason: "a directory is there".into(),
            });
        }
        dir.write_file(name, bytes, mode)
    }

    /// Sets the owner of an open file (after writing it, before its mode).
    pub fn chown_file(file: &File, uid: u32, gid: u32) -> io::Result<()> {
        fchown(file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(io::Error::from)
    }

    fn sync(&self) {
        // Best effort: some filesystems refuse fsync on directories.
        if let Ok(fd) = openat(
            self.fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            let _ = File::from(fd).sync_all();
        }
    }
}

/// The start of a temporary name for `name`: short enough that the whole
/// name stays within the 255 bytes a file name may have.
fn temp_prefix(name: &OsStr) -> String {
    name.to_string_lossy().chars().take(64).collect()
}

/// Writes `bytes` to `path` atomically with exactly `mode`, in a directory
/// the caller trusts: the temporary file beside it is created with
/// `O_EXCL | O_NOFOLLOW` and renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ConfinedError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = Dir::open(dir.unwrap_or(Path::new(".")))?;
    let name = path.file_name().ok_or_else(|| ConfinedError::Refused {
        path: path.display().to_string(),
        reason: "it has no file name".into(),
    })?;
    if dir.stat(name)?.is_some_and(|m| m.kind == Kind::Dir) {
        return Err(ConfinedError::Refused {
            path: path.display().to_string(),
            reason: "a directory is there".into(),
        });
    }
    dir.write_file(name, bytes, mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn writes_beneath_the_root_and_never_through_a_symlink() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::write(outside.path().join("victim"), "victim\n").unwrap();
        symlink(outside.path(), r.join("up")).unwrap();
        symlink(outside.path().join("victim"), r.join("file")).unwrap();
        let dir = Dir::open(r).unwrap();

        dir.write_atomic(Path::new("/a/b/c.txt"), b"c", 0o640)
            .unwrap();
        assert_eq!(fs::read(r.join("a/b/c.txt")).unwrap(), b"c");
        assert_eq!(mode(&r.join("a/b/c.txt")), 0o640);

        let err = dir
            .write_atomic(Path::new("up/victim"), b"x", 0o644)
            .unwrap_err();
        assert!(matches!(err, ConfinedError::Symlink { .. }), "{err}");
        assert!(err.to_string().contains("up is a symlink"), "{err}");
        let err = dir
            .write_atomic(Path::new("../x"), b"x", 0o644)
            .unwrap_err();
        assert!(err.to_string().contains("'..'"), "{err}");
        // A symlink at the name itself is replaced, not written through.
        dir.write_atomic(Path::new("file"), b"mine", 0o644).unwrap();
        assert_eq!(fs::read(r.join("file")).unwrap(), b"mine");
        assert_eq!(
            fs::read_to_string(outside.path().join("victim")).unwrap(),
            "victim\n"
        );
        // Reading refuses symlinks too.
        symlink(outside.path().join("victim"), r.join("link")).unwrap();
        assert!(matches!(
            dir.read(Path::new("link")),
            Err(ConfinedError::Symlink { .. })
        ));
        assert!(dir.read(Path::new("up/victim")).is_err());
        assert_eq!(dir.read(Path::new("missing/x")).unwrap(), None);
        let leftovers: Vec<_> = fs::read_dir(r)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn temporary_files_are_never_created_through_a_planted_symlink() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let dir = Dir::open(root.path()).unwrap();
        let target = outside.path().join("planted");
        symlink(&target, root.path().join("x")).unwrap();
        let err = dir.create_new(OsStr::new("x"), 0o644).unwrap_err();
        assert_eq!(err.io_kind(), Some(io::ErrorKind::AlreadyExists), "{err}");
        assert!(!target.exists());
    }

    #[test]
    fn modes_are_set_on_handles_and_only_on_the_directory_that_was_there() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let sentinel = outside.path().join("sentinel");
        fs::create_dir(&sentinel).unwrap();
        fs::set_permissions(&sentinel, fs::Permissions::from_mode(0o700)).unwrap();
        let dir = Dir::open(r).unwrap();
        dir.mkdir(OsStr::new("d"), 0o755).unwrap();
        let m = dir.stat(OsStr::new("d")).unwrap().unwrap();
        // The directory is replaced by a symlink to the sentinel.
        fs::remove_dir(r.join("d")).unwrap();
        symlink(&sentinel, r.join("d")).unwrap();
        assert!(!dir
            .set_dir_mode_if(Path::new("d"), (m.dev, m.ino), 0o777)
            .unwrap());
        assert_eq!(mode(&sentinel), 0o700);
        // A directory recreated at the same path is another inode.
        fs::remove_file(r.join("d")).unwrap();
        fs::create_dir(r.join("d")).unwrap();
        let now = dir.stat(OsStr::new("d")).unwrap().unwrap();
        assert!(dir
            .set_dir_mode_if(Path::new("d"), (now.dev, now.ino), 0o751)
            .unwrap());
        assert_eq!(mode(&r.join("d")), 0o751);
    }

    #[test]
    fn remove_all_removes_links_not_their_targets() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("keep"), "k").unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("t/sub")).unwrap();
        fs::write(r.join("t/sub/f"), "f").unwrap();
        symlink(outside.path(), r.join("t/out")).unwrap();
        let dir = Dir::open(r).unwrap();
        dir.remove_all(OsStr::new("t")).unwrap();
        assert!(!r.join("t").exists());
        assert!(outside.path().join("keep").exists());
        assert_eq!(
            dir.missing_dirs(Path::new("x/y")).unwrap(),
            vec![PathBuf::from("x"), PathBuf::from("x/y")]
        );
    }
}
