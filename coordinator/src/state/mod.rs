//! The coordinator's state behind one trait, [`StateStore`]: join tokens
//! (hashes only), enrolled nodes and the evidence binding their IPs, admin
//! certificates, the certificate serial counter, image assignments, and
//! (through [`ClusterStore`]) the cluster records and the audit log.
//!
//! Every change that must be atomic is one call, and one transaction in
//! the backend: a token's use count and the certificate it pays for, a
//! node's renewal and its serial, a cluster record. [`redb::RedbStore`] is
//! the embedded backend; another backend (etcd, shared by several
//! coordinators) implements the same trait.
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
//! - `error.rs`: [`StateError`].
//! - [`lock`]: the coordinator's lock, holders named from `/proc/locks`.
//! - [`redb`](mod@redb): the redb backend.

mod error;
pub mod lock;
pub mod redb;

use std::path::Path;
use std::time::Duration;

use seaport_shared::pki::JoinToken;
use seaport_shared::wire::HostFacts;

pub use self::error::StateError;
pub use self::redb::{canonical_ip, RedbStore};
use crate::operations::ClusterStore;
pub use crate::records::{same_ip, AdminRecord, Assignment, Issued, NodeRecord, TokenRecord};
use lock::CoordinatorLock;

/// How long a starting coordinator waits for the store (a predecessor
/// exiting, a CLI finishing its request).
pub const STORE_WAIT: Duration = Duration::from_secs(10);

/// Everything the coordinator keeps. Methods may block (disk, network):
/// call them off the async runtime.
pub trait StateStore: ClusterStore {
    /// Hands out the next certificate serial (starting at 1).
    fn next_serial(&self) -> Result<u64, StateError>;

    /// Stores a new token's hash. With `node` (an existing node id), the
    /// token re-enrolls exactly that node.
    fn add_token(
        &self,
        token: &JoinToken,
        now: i64,
        ttl_secs: u64,
        uses: u32,
        node: Option<&str>,
    ) -> Result<TokenRecord, StateError>;

    /// Checks a token as enrollment would (known, secret matches, not
    /// expired, uses left) without spending a use.
    fn check_token(&self, token: &JoinToken, now: i64) -> Result<TokenRecord, StateError>;

    /// Spends one use of `token` and records the node it enrolls, in one
    /// transaction; `sign` gets the node id and certificate serial and
    /// returns the signed certificate; if anything fails, nothing is
    /// committed. See [`RedbStore`] for how node ids are drawn.
    fn enroll(
        &self,
        token: &JoinToken,
        requested: &str,
        now: i64,
        sign: &mut dyn FnMut(&str, u64) -> Result<Issued, StateError>,
    ) -> Result<(String, Issued), StateError>;

    /// Issues a renewed certificate for a node still in good standing, in
    /// one transaction with its serial.
    fn renew(
        &self,
        node_id: &str,
        sign: &mut dyn FnMut(u64) -> Result<Issued, StateError>,
    ) -> Result<Issued, StateError>;

    /// Whether a node certificate may be used: the node exists, is not
    /// revoked, and the certificate is not older than its latest enrollment.
    fn check_node_cert(&self, node_id: &str, serial: u64) -> Result<NodeRecord, StateError>;

    fn node(&self, node_id: &str) -> Result<Option<NodeRecord>, StateError>;

    fn nodes(&self) -> Result<Vec<NodeRecord>, StateError>;

    /// Updates facts and last-seen times of several nodes in one transaction.
    fn update_nodes(
        &self,
        updates: &[(String, Option<HostFacts>, Option<i64>)],
    ) -> Result<(), StateError>;

    /// Finds a node by id or (unique) hostname.
    fn resolve_node(&self, name: &str) -> Result<String, StateError>;

    /// Marks a node revoked; its certificates are refused from now on.
    fn revoke(&self, name: &str, now: i64) -> Result<String, StateError>;

    /// Records the source address of a node's new authenticated connection.
    fn observe(&self, node_id: &str, ip: &str, now: i64) -> Result<(), StateError>;

    /// Adds (or with `approve == false` withdraws) admin approvals of host
    /// IPs for a node named by id or hostname; returns the node id and its
    /// approved IPs.
    fn approve_ips(
        &self,
        name: &str,
        ips: &[String],
        approve: bool,
    ) -> Result<(String, Vec<String>), StateError>;

    /// Records an admin certificate just issued.
    fn add_admin(&self, rec: &AdminRecord) -> Result<(), StateError>;

    /// Every admin certificate issued, by serial.
    fn admins(&self) -> Result<Vec<AdminRecord>, StateError>;

    fn admin(&self, serial: u64) -> Result<Option<AdminRecord>, StateError>;

    /// Whether an admin certificate may be used: issued by this coordinator
    /// (recorded) and not revoked.
    fn check_admin(&self, serial: u64) -> Result<AdminRecord, StateError>;

    /// Finds an admin certificate by serial, or by a name only one
    /// unrevoked certificate carries.
    fn resolve_admin(&self, cert: &str) -> Result<AdminRecord, StateError>;

    /// Marks an admin certificate revoked (kept revoked if it was).
    fn revoke_admin(&self, serial: u64, now: i64) -> Result<AdminRecord, StateError>;

    /// Every image assignment.
    fn assignments(&self) -> Result<Vec<Assignment>, StateError>;

    /// Stores (replaces) an assignment.
    fn put_assignment(&self, a: &Assignment) -> Result<(), StateError>;

    /// Removes an assignment; returns whether there was one.
    fn remove_assignment(&self, image: &str) -> Result<bool, StateError>;
}

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
