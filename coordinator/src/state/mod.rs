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
//! - [`lock`]: the coordinator's lock, holders named from `/proc/locks`.
//! - [`redb`](mod@redb): the redb backend; [`etcd`]: the etcd backend.
//! - `tests.rs`: the behaviour every backend must show, run on both.

mod error;
pub mod etcd;
pub mod lock;
pub mod redb;
mod rules;
mod store;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Duration;

pub use self::error::StateError;
pub use self::etcd::{EtcdConfig, EtcdStore};
pub use self::redb::RedbStore;
pub use self::rules::canonical_ip;
pub use self::store::StateStore;
pub use crate::records::{same_ip, AdminRecord, Assignment, Issued, NodeRecord, TokenRecord};
use lock::CoordinatorLock;

/// How long a starting coordinator waits for the store (a predecessor
/// exiting, a CLI finishing its request).
pub const STORE_WAIT: Duration = Duration::from_secs(10);

/// The lock file and database of the coordinator whose files are in `dir`
/// (`ROOT/coordinator`).
fn files(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    (dir.join("coordinator.lock"), dir.join("state.redb"))
}

/// Opens the state for a coordinator: its lock first (a predecessor still
/// exiting is waited for), then the store (a CLI reading it for a moment
/// is waited for), each up to `wait`. An error names who holds them.
pub fn open_for_coordinator(dir: &Path, wait: Duration) -> Result<RedbStore, StateError> {
    let (lock_file, db) = files(dir);
    if !db.exists() {
        return Err(StateError::Missing(db.display().to_string()));
    }
    let lock = CoordinatorLock::acquire(&lock_file, wait)?;
    RedbStore::open_for_coordinator(&db, lock, wait)
}

/// Whether a coordinator runs (or is starting) on the state in `dir`.
pub fn coordinator_running(dir: &Path) -> bool {
    lock::held(&files(dir).0)
}

/// The state for one request of the CLI while no coordinator runs: opened
/// read-only (or, to change it, for writing) and closed when dropped.
/// [`StateError::Busy`] when a coordinator took it meanwhile: ask that one.
pub fn offline(dir: &Path, write: bool) -> Result<RedbStore, StateError> {
    let (lock_file, db) = files(dir);
    if lock::held(&lock_file) {
        return Err(StateError::Busy {
            path: db.display().to_string(),
            holders: lock::holders(&lock_file),
        });
    }
    if write {
        RedbStore::open(&db)
    } else {
        RedbStore::open_read_only(&db)
    }
}

/// Creates the state (or opens it) for `coordinator init`; refused while a
/// coordinator runs.
pub fn create(dir: &Path) -> Result<RedbStore, StateError> {
    let (lock_file, db) = files(dir);
    if lock::held(&lock_file) {
        return Err(StateError::Busy {
            path: db.display().to_string(),
            holders: lock::holders(&lock_file),
        });
    }
    RedbStore::create(&db)
}
