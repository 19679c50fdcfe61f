//! Machine-wide exclusive locks (flock), held for as long as the returned
//! guard lives: one for the lab network, one per cached base being built.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Errors of taking a lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open lock file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock {path}: {errno}")]
    Lock { path: PathBuf, errno: nix::Error },
    #[error("gave up after {waited:?} waiting for {what} (lock {path}){holder}")]
    TimedOut {
        path: PathBuf,
        what: String,
        waited: std::time::Duration,
        holder: String,
    },
}

/// An exclusive flock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct LockGuard {
    _lock: Flock<File>,
    path: PathBuf,
}

impl LockGuard {
    /// The locked file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes an exclusive lock on `path` (created if missing), waiting for it.
/// `what` says in the waiting message what the lock protects.
pub fn exclusive(path: &Path, what: &str) -> Result<LockGuard, LockError> {
    match try_exclusive(path)? {
        Some(guard) => Ok(guard),
        None => {
            eprintln!(
                "seaport-lab: waiting for {what} (lock {} is held by another process)",
                path.display()
            );
            let file = open(path)?;
            let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| {
                LockError::Lock {
                    path: path.to_path_buf(),
                    errno,
                }
            })?;
            Ok(LockGuard {
                _lock: lock,
                path: path.to_path_buf(),
            })
        }
    }
}

/// Like [`exclusive`], but gives up after `timeout`; `holder` is called then
/// to say who holds the lock.
pub fn exclusive_within(
    path: &Path,
    what: &str,
    timeout: std::time::Duration,
    holder: impl Fn() -> String,
) -> Result<LockGuard, LockError> {
    within(path, what, timeout, holder, FlockArg::LockExclusiveNonblock)
}

/// A shared lock on `path` (any number of shared holders, no exclusive
/// one), waiting at most `timeout` for an exclusive holder to let go.
pub fn shared_within(
    path: &Path,
    what: &str,
    timeout: std::time::Duration,
    holder: impl Fn() -> String,
) -> Result<LockGuard, LockError> {
    within(path, what, timeout, holder, FlockArg::LockSharedNonblock)
}

fn within(
    path: &Path,
    what: &str,
    timeout: std::time::Duration,
    holder: impl Fn() -> String,
    kind: FlockArg,
) -> Result<LockGuard, LockError> {
    let started = std::time::Instant::now();
    let mut announced = false;
    loop {
        if let Some(guard) = try_lock(path, kind)? {
            return Ok(guard);
        }
        if !announced {
            eprintln!(
                "seaport-lab: waiting for {what} (lock {} is held{})",
                path.display(),
                holder()
            );
            announced = true;
        }
        if started.elapsed() >= timeout {
            return Err(LockError::TimedOut {
                path: path.to_path_buf(),
                what: what.to_string(),
                waited: timeout,
                holder: holder(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// Takes an exclusive lock on `path` if nobody holds it; `None` otherwise.
pub fn try_exclusive(path: &Path) -> Result<Option<LockGuard>, LockError> {
    try_lock(path, FlockArg::LockExclusiveNonblock)
}

fn try_lock(path: &Path, kind: FlockArg) -> Result<Option<LockGuard>, LockError> {
    let file = open(path)?;
    match Flock::lock(file, kind) {
        Ok(lock) => Ok(Some(LockGuard {
            _lock: lock,
            path: path.to_path_buf(),
        })),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(LockError::Lock {
            path: path.to_path_buf(),
            errno,
        }),
    }
}

fn open(path: &Path) -> Result<File, LockError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| LockError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| LockError::Open {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_not_granted_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = try_exclusive(&path).unwrap().expect("free lock");
        assert!(try_exclusive(&path).unwrap().is_none());
        let err = exclusive_within(
            &path,
            "the test lock",
            std::time::Duration::from_millis(50),
            || " by the test".into(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("the test lock") && err.contains("by the test"),
            "{err}"
        );
        drop(first);
        assert!(try_exclusive(&path).unwrap().is_some());
    }

    #[test]
    fn shared_locks_coexist_and_keep_an_exclusive_one_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let short = std::time::Duration::from_millis(50);
        let a = shared_within(&path, "a", short, String::new).unwrap();
        let b = shared_within(&path, "b", short, String::new).unwrap();
        assert!(try_exclusive(&path).unwrap().is_none());
        drop((a, b));
        let only = try_exclusive(&path).unwrap().expect("free again");
        assert!(shared_within(&path, "c", short, String::new).is_err());
        drop(only);
    }
}
