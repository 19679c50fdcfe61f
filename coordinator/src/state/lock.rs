//! Who holds the coordinator's state: the lock a coordinator takes for its
//! whole life (`coordinator/coordinator.lock`), and the processes holding a
//! file's locks, read from `/proc/locks`, to name them in errors.
//!
//! The rules (docs/architecture.md, "Coordinator state"):
//!
//! - a coordinator takes the lock before it opens the store and keeps it
//!   until it exits; one held by another coordinator (a restart overlapping
//!   its predecessor's exit) is waited for, a bounded time;
//! - the CLI never takes it: it looks whether it is held ([`held`]); if so a
//!   coordinator is running or starting and the CLI asks it, otherwise it
//!   opens the store briefly itself;
//! - a CLI that looked just before a coordinator took the lock holds the
//!   store for the few milliseconds of its request: the starting
//!   coordinator waits for it (a bounded time) instead of failing.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fs4::fs_std::FileExt;

/// How often a waiting coordinator tries again.
const RETRY_EVERY: Duration = Duration::from_millis(20);

/// The lock of a running coordinator, released when it is dropped (or the
/// process exits).
#[derive(Debug)]
pub struct CoordinatorLock {
    _file: File,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Opening or locking the file failed.
    #[error("locking {}: {source}", .path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Another process kept it for the whole wait.
    #[error("another coordinator holds {} ({}) and did not let go within {} s", .path.display(), .holders, .waited.as_secs())]
    Held {
        /// The lock file.
        path: PathBuf,
        /// Who holds it.
        holders: String,
        /// How long it was waited for.
        waited: Duration,
    },
}

fn open(path: &Path) -> Result<File, LockError> {
    File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| LockError::Io {
            path: path.to_path_buf(),
            source,
        })
}

impl CoordinatorLock {
    /// Takes the lock at `path`, waiting up to `wait` for another holder.
    pub fn acquire(path: &Path, wait: Duration) -> Result<CoordinatorLock, LockError> {
        let file = open(path)?;
        let started = Instant::now();
        loop {
            match FileExt::try_lock_exclusive(&file) {
                Ok(true) => return Ok(CoordinatorLock { _file: file }),
                Ok(false) if started.elapsed() < wait => std::thread::sleep(RETRY_EVERY),
                Ok(false) => {
                    return Err(LockError::Held {
                        path: path.to_path_buf(),
                        holders: holders(path),
                        waited: wait,
                    })
                }
                Err(source) => {
                    return Err(LockError::Io {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        }
    }
}

/// Whether a coordinator holds the lock at `path` now (it runs, or is
/// starting). Does not take it.
pub fn held(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    match FileExt::try_lock_shared(&file) {
        Ok(true) => {
            let _ = FileExt::unlock(&file);
            false
        }
        Ok(false) => true,
        Err(_) => false,
    }
}

/// Retries `f` while it fails with what `busy` recognizes, up to `wait`;
/// the last error otherwise.
pub fn retry_while<T, E>(
    wait: Duration,
    busy: impl Fn(&E) -> bool,
    mut f: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let started = Instant::now();
    loop {
        match f() {
            Err(e) if busy(&e) && started.elapsed() < wait => std::thread::sleep(RETRY_EVERY),
            other => return other,
        }
    }
}

/// The processes holding locks on `path`, as `pid N (command line)`, from
/// `/proc/locks` (flock and POSIX locks name their process; open file
/// description locks do not).
pub fn holders(path: &Path) -> String {
    let found = lock_holders(path);
    if found.is_empty() {
        return "a process /proc/locks does not name".to_string();
    }
    found
        .into_iter()
        .map(|pid| match command_line(pid) {
            Some(cmd) => format!("pid {pid} ({cmd})"),
            None => format!("pid {pid}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn lock_holders(path: &Path) -> Vec<u32> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let dev = meta.dev();
    // /proc/locks names a file as MAJOR:MINOR:INODE, in hex for the device.
    let (major, minor) = (
        (dev >> 8) & 0xfff | ((dev >> 32) & !0xfff),
        (dev & 0xff) | ((dev >> 12) & !0xff),
    );
    let wanted = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let Ok(text) = std::fs::read_to_string("/proc/locks") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = text
        .lines()
        // Waiters are marked `->` and hold nothing.
        .filter(|l| !l.contains("->"))
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let at = fields.iter().position(|f| *f == wanted)?;
            fields.get(at.checked_sub(1)?)?.parse::<u32>().ok()
        })
        .filter(|&pid| pid != std::process::id())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn command_line(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let words: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_is_held_once_and_its_holder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.lock");
        assert!(!held(&path));
        let first = CoordinatorLock::acquire(&path, Duration::ZERO).unwrap();
        // Another open file description: as another process would see it.
        let other = File::open(&path).unwrap();
        assert!(!FileExt::try_lock_exclusive(&other).unwrap());
        drop(other);
        let err = CoordinatorLock::acquire(&path, Duration::from_millis(50)).unwrap_err();
        assert!(
            matches!(&err, LockError::Held { waited, .. } if *waited == Duration::from_millis(50)),
            "{err}"
        );
        drop(first);
        let again = CoordinatorLock::acquire(&path, Duration::ZERO).unwrap();
        drop(again);
        assert!(!held(&path));
    }

    #[test]
    fn a_holder_in_another_process_is_named_by_pid_and_command() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held");
        std::fs::write(&path, b"").unwrap();
        let mut child = std::process::Command::new("flock")
            .arg("--close")
            .arg(&path)
            .args(["sleep", "30"])
            .spawn()
            .unwrap();
        let started = Instant::now();
        while !held(&path) && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let named = holders(&path);
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            named.contains(&format!("pid {}", child.id())) && named.contains("flock"),
            "{named}"
        );
    }
}
