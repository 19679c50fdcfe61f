//! The coordinator's state behind one trait, [`StateStore`]: join tokens
//! (hashes only), enrolled nodes and the evidence binding their IPs, admin
//! certificates, the certificate serial counter, image assignments, and
//! (through [`ClusterStore`]) the cluster records and the audit log.
//!
//! Every change that must be atomic is one call, and one transaction in
//! the backend: a token's use count and the certificate it pays for, a
//! node's renewal and its serial, a cluster record. [`redb::RedbStore`] is
//! the embedded backend; [`etcd::EtcdStore`] keeps the same state in etcd,
//! shared by several coordinators, each call one etcd transaction guarded
//! by the revisions of what it read.
//!
//! Which backend a coordinator uses is chosen by `coordinator init` (or
//! `serve`) and recorded in `store.json` beside the lock ([`Backend`]).
//!
//! Only the coordinator keeps the store open. It takes
//! `coordinator/coordinator.lock` first ([`lock`]); the CLI asks the
//! running coordinator, and opens the store itself, read-only and for one
//! request, only while no coordinator holds that lock ([`offline`]). A
//! starting coordinator that finds the store open waits a bounded time for
//! it ([`open_for_coordinator`]) and names the holder if it has to give up.
//!
//! # Layout
//!
//! - `error.rs`: [`StateError`]; `store.rs`: the [`StateStore`] trait.
//! - `rules.rs`: what every backend decides the same way (tokens,
//!   enrollment, approvals, the records' JSON).
//! - [`seal`]: the site key that seals secrets in a shared store.
//! - [`lock`]: the coordinator's lock, holders named from `/proc/locks`.
//! - [`redb`](mod@redb): the redb backend; [`etcd`]: the etcd backend.
//! - [`leader`]: which coordinator of a site on etcd drives operations
//!   (a lease, a campaign transaction, the fence on its term).
//! - `tests.rs`: the behaviour every backend must show, run on both;
//!   `local_etcd.rs`: an etcd member on loopback for tests.

mod error;
pub mod etcd;
pub mod leader;
#[cfg(test)]
mod local_etcd;
pub mod lock;
pub mod redb;
mod rules;
pub mod seal;
mod store;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use self::error::StateError;
pub use self::etcd::{EtcdConfig, EtcdStore};
pub use self::leader::{Election, LeaderInfo, Leadership};
pub use self::redb::RedbStore;
pub use self::rules::canonical_ip;
pub use self::seal::SiteKey;
pub use self::store::{SiteCa, StateStore};
pub use crate::records::{same_ip, AdminRecord, Assignment, Issued, NodeRecord, TokenRecord};
use lock::CoordinatorLock;

/// How long a starting coordinator waits for the store (a predecessor
/// exiting, a CLI finishing its request).
pub const STORE_WAIT: Duration = Duration::from_secs(10);

/// The lock file and database of the coordinator whose files are in `dir`
/// (`ROOT/coordinator`).
fn files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("coordinator.lock"), dir.join("state.redb"))
}

/// Which store keeps a coordinator's state: redb (a file under ROOT, the
/// default) or etcd, shared by several coordinators. Recorded in
/// `ROOT/coordinator/store.json` when it is etcd; no record is redb.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "store", rename_all = "lowercase")]
pub enum Backend {
    Redb,
    Etcd(EtcdConfig),
}

fn backend_file(dir: &Path) -> PathBuf {
    dir.join("store.json")
}

/// The backend recorded for the coordinator whose files are in `dir`.
pub fn backend(dir: &Path) -> Result<Backend, StateError> {
    let path = backend_file(dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::BadRecord {
            path: path.display().to_string(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Backend::Redb),
        Err(source) => Err(StateError::EtcdFile {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// The backend to use: `chosen` (from the command line) or the recorded
/// one. Moving a coordinator that has state in redb to etcd is refused:
/// its state would be left behind.
fn choose(dir: &Path, chosen: Option<Backend>) -> Result<Backend, StateError> {
    let recorded = backend(dir)?;
    let Some(chosen) = chosen else {
        return Ok(recorded);
    };
    let db = files(dir).1;
    if matches!(chosen, Backend::Etcd(_)) && db.exists() {
        return Err(StateError::HasRedbState(db.display().to_string()));
    }
    if matches!(chosen, Backend::Redb) && matches!(recorded, Backend::Etcd(_)) {
        return Err(StateError::KeptInEtcd(
            backend_file(dir).display().to_string(),
        ));
    }
    Ok(chosen)
}

/// Records the backend a coordinator opened (owner-only: it names this
/// coordinator's etcd client key).
fn record(dir: &Path, backend: &Backend) -> Result<(), StateError> {
    if let Backend::Etcd(_) = backend {
        let path = backend_file(dir);
        let mut json = serde_json::to_vec_pretty(backend).expect("the backend serializes");
        json.push(b'\n');
        seaport_shared::confined::write_atomic(&path, &json, 0o600).map_err(|e| {
            StateError::EtcdFile {
                path: path.display().to_string(),
                source: std::io::Error::other(e),
            }
        })?;
    }
    Ok(())
}

/// Opens the state for a coordinator: its lock first (a predecessor still
/// exiting is waited for), then the store, `chosen` or the recorded one
/// (a CLI reading a redb file for a moment is waited for), each up to
/// `wait`. An error names who holds them. A chosen backend that opened is
/// recorded.
pub fn open_for_coordinator(
    dir: &Path,
    wait: Duration,
    chosen: Option<Backend>,
) -> Result<Box<dyn StateStore>, StateError> {
    let (lock_file, db) = files(dir);
    let backend = choose(dir, chosen)?;
    let store: Box<dyn StateStore> = match &backend {
        Backend::Redb => {
            if !db.exists() {
                return Err(StateError::Missing(db.display().to_string()));
            }
            let lock = CoordinatorLock::acquire(&lock_file, wait)?;
            Box::new(RedbStore::open_for_coordinator(&db, lock, wait)?)
        }
        Backend::Etcd(config) => {
            let lock = CoordinatorLock::acquire(&lock_file, wait)?;
            Box::new(EtcdStore::connect(config, &SiteKey::path(dir))?.holding(lock))
        }
    };
    record(dir, &backend)?;
    Ok(store)
}

/// Whether a coordinator runs (or is starting) on the state in `dir`.
pub fn coordinator_running(dir: &Path) -> bool {
    lock::held(&files(dir).0)
}

/// The state for one request of the CLI while no coordinator runs: opened
/// read-only (or, to change it, for writing) and closed when dropped.
/// [`StateError::Busy`] when a coordinator took it meanwhile: ask that one.
pub fn offline(dir: &Path, write: bool) -> Result<Box<dyn StateStore>, StateError> {
    let (lock_file, db) = files(dir);
    if lock::held(&lock_file) {
        return Err(StateError::Busy {
            path: db.display().to_string(),
            holders: lock::holders(&lock_file),
        });
    }
    Ok(match backend(dir)? {
        Backend::Etcd(config) => Box::new(EtcdStore::connect(&config, &SiteKey::path(dir))?),
        Backend::Redb if write => Box::new(RedbStore::open(&db)?),
        Backend::Redb => Box::new(RedbStore::open_read_only(&db)?),
    })
}

/// Creates the state (or opens it) for `coordinator init`, in `chosen` or
/// the recorded backend (etcd: its keyspace is initialised); refused while
/// a coordinator runs.
pub fn create(dir: &Path, chosen: Option<Backend>) -> Result<Box<dyn StateStore>, StateError> {
    let (lock_file, db) = files(dir);
    if lock::held(&lock_file) {
        return Err(StateError::Busy {
            path: db.display().to_string(),
            holders: lock::holders(&lock_file),
        });
    }
    let backend = choose(dir, chosen)?;
    let store: Box<dyn StateStore> = match &backend {
        Backend::Redb => Box::new(RedbStore::create(&db)?),
        Backend::Etcd(config) => Box::new(EtcdStore::init(config, &SiteKey::path(dir))?),
    };
    record(dir, &backend)?;
    Ok(store)
}
