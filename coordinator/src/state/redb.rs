//! The embedded backend of the coordinator's state: one redb database.
//!
//! Every change is one write transaction, so a token's use count and the
//! certificate it pays for are committed together or not at all. Values are
//! JSON so the file stays inspectable and fields can be added.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

#[cfg(test)]
use seaport_shared::pki;
use seaport_shared::pki::JoinToken;
use seaport_shared::wire::HostFacts;

use seaport_shared::cluster::ClusterName;

use super::error::StateError;
use super::lock::{self, CoordinatorLock};
use super::rules::{self, from_json, to_json, usable_token};
use super::store::StateStore;
use crate::operations::{AuditEntry, Cluster, ClusterStore, StoreError};
use crate::records::{AdminRecord, Assignment, Issued, NodeRecord, TokenRecord};

const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const TOKENS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tokens");
const NODES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("nodes");
/// Image distribution assignments, by image name (see `crate::distribution`).
const ASSIGNMENTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("assignments");
/// Clusters and their operations, by cluster name (see `crate::operations`).
const CLUSTERS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("clusters");
/// The audit log, by sequence number.
const AUDIT: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("audit");
/// Admin certificates issued, by serial.
const ADMINS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("admins");
const NEXT_SERIAL: &str = "next_serial";

macro_rules! db_err {
    ($e:expr) => {
        $e.map_err(|e| StateError::Db(e.into()))
    };
}

/// The database, as this process opened it.
enum Db {
    ReadWrite(redb::Database),
    ReadOnly(redb::ReadOnlyDatabase),
}

/// The state in a redb database.
pub struct RedbStore {
    db: Db,
    path: PathBuf,
    /// A coordinator's lock, held while the store is open (released after
    /// the database, fields drop in order).
    _lock: Option<CoordinatorLock>,
    /// Bumped after each committed write that adds a node or changes its
    /// standing ([`StateStore::standing_version`]). The database is open in
    /// one process only (its file lock), so every such write is seen here.
    standing: AtomicU64,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedbStore({})", self.path.display())
    }
}

impl RedbStore {
    fn begin_read(&self) -> Result<redb::ReadTransaction, StateError> {
        match &self.db {
            Db::ReadWrite(db) => db_err!(db.begin_read()),
            Db::ReadOnly(db) => db_err!(db.begin_read()),
        }
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StateError> {
        match &self.db {
            Db::ReadWrite(db) => db_err!(db.begin_write()),
            Db::ReadOnly(_) => Err(StateError::ReadOnly(self.path.display().to_string())),
        }
    }

    fn busy(path: &Path) -> StateError {
        StateError::Busy {
            path: path.display().to_string(),
            holders: lock::holders(path),
        }
    }

    /// Creates the database (or opens an existing one) and its tables, for
    /// this process alone.
    pub fn create(path: &Path) -> Result<RedbStore, StateError> {
        let db = match redb::Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(Self::busy(path)),
            Err(e) => return Err(StateError::Db(e.into())),
        };
        let txn = db_err!(db.begin_write())?;
        {
            db_err!(txn.open_table(META))?;
            db_err!(txn.open_table(TOKENS))?;
            db_err!(txn.open_table(NODES))?;
            db_err!(txn.open_table(ASSIGNMENTS))?;
            db_err!(txn.open_table(CLUSTERS))?;
            db_err!(txn.open_table(AUDIT))?;
            db_err!(txn.open_table(ADMINS))?;
        }
        db_err!(txn.commit())?;
        Ok(RedbStore {
            db: Db::ReadWrite(db),
            path: path.to_path_buf(),
            _lock: None,
            standing: AtomicU64::new(0),
        })
    }

    /// Opens an existing database for this process alone.
    pub fn open(path: &Path) -> Result<RedbStore, StateError> {
        if !path.exists() {
            return Err(StateError::Missing(path.display().to_string()));
        }
        RedbStore::create(path)
    }

    /// Opens the database for a coordinator holding `lock`: a CLI that
    /// has it open for a moment is waited for, up to `wait`; past that the
    /// error names the processes holding it.
    pub fn open_for_coordinator(
        path: &Path,
        lock: CoordinatorLock,
        wait: Duration,
    ) -> Result<RedbStore, StateError> {
        let mut store = lock::retry_while(
            wait,
            |e| matches!(e, StateError::Busy { .. }),
            || RedbStore::open(path),
        )?;
        store._lock = Some(lock);
        Ok(store)
    }

    /// Opens the database to read it, beside other readers; one that was
    /// not closed cleanly (its coordinator was killed) is opened for
    /// writing instead, which repairs it.
    pub fn open_read_only(path: &Path) -> Result<RedbStore, StateError> {
        if !path.exists() {
            return Err(StateError::Missing(path.display().to_string()));
        }
        match redb::ReadOnlyDatabase::open(path) {
            Ok(db) => Ok(RedbStore {
                db: Db::ReadOnly(db),
                path: path.to_path_buf(),
                _lock: None,
                standing: AtomicU64::new(0),
            }),
            Err(redb::DatabaseError::RepairAborted) => RedbStore::open(path),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(Self::busy(path)),
            Err(e) => Err(StateError::Db(e.into())),
        }
    }
}

impl StateStore for RedbStore {
    /// Hands out the next certificate serial (starting at 1).
    fn next_serial(&self) -> Result<u64, StateError> {
        let txn = self.begin_write()?;
        let serial = {
            let mut meta = db_err!(txn.open_table(META))?;
            let serial = db_err!(meta.get(NEXT_SERIAL))?
                .map(|v| v.value())
                .unwrap_or(1);
            db_err!(meta.insert(NEXT_SERIAL, serial + 1))?;
            serial
        };
        db_err!(txn.commit())?;
        Ok(serial)
    }

    /// Stores a new token's hash. With `node` (an existing node id), the
    /// token re-enrolls exactly that node.
    fn add_token(
        &self,
        token: &JoinToken,
        now: i64,
        ttl_secs: u64,
        uses: u32,
        node: Option<&str>,
    ) -> Result<TokenRecord, StateError> {
        let rec = rules::token_record(token, now, ttl_secs, uses, node);
        let txn = self.begin_write()?;
        {
            if let Some(node) = node {
                let nodes = db_err!(txn.open_table(NODES))?;
                if db_err!(nodes.get(node))?.is_none() {
                    return Err(StateError::NoSuchNode(node.to_string()));
                }
            }
            let mut t = db_err!(txn.open_table(TOKENS))?;
            // Expired tokens are of no use to anyone: prune them here.
            let stale: Vec<String> = db_err!(t.iter())?
                .filter_map(Result::ok)
                .filter_map(|(k, v)| {
                    let r: TokenRecord = serde_json::from_slice(v.value()).ok()?;
                    rules::prunable(&r, now).then(|| k.value().to_string())
                })
                .collect();
            for k in stale {
                db_err!(t.remove(k.as_str()))?;
            }
            db_err!(t.insert(token.id.as_str(), to_json(&rec).as_slice()))?;
        }
        db_err!(txn.commit())?;
        Ok(rec)
    }

    /// Checks a token as enrollment would (known, secret matches, not
    /// expired, uses left) without spending a use: the bootstrap endpoint
    /// serves the agent only to holders of a token that can still enroll.
    fn check_token(&self, token: &JoinToken, now: i64) -> Result<TokenRecord, StateError> {
        let txn = self.begin_read()?;
        let tokens = db_err!(txn.open_table(TOKENS))?;
        let rec: TokenRecord = match db_err!(tokens.get(token.id.as_str()))? {
            Some(v) => from_json("tokens", &token.id, v.value())?,
            None => return Err(StateError::TokenInvalid),
        };
        usable_token(token, &rec, now)?;
        Ok(rec)
    }

    /// Spends one use of `token` and records the node it enrolls, atomically;
    /// returns the node id and the certificate.
    ///
    /// The node id is the coordinator's: a token bound to a node
    /// (`token create --node`) enrolls exactly that node again (a new key,
    /// older certificates refused, a revoked node restored); any other token
    /// enrolls a new node named `requested` (the host's label) and a suffix
    /// drawn here, never an existing one. A request naming an existing node
    /// id with an ordinary token is refused, so no token takes over a node.
    /// `sign` gets the node id and certificate serial and returns the signed
    /// certificate; if anything fails, nothing is committed.
    fn enroll(
        &self,
        token: &JoinToken,
        requested: &str,
        now: i64,
        sign: &mut dyn FnMut(&str, u64) -> Result<Issued, StateError>,
    ) -> Result<(String, Issued), StateError> {
        let txn = self.begin_write()?;
        let out = {
            let mut tokens = db_err!(txn.open_table(TOKENS))?;
            let mut rec: TokenRecord = match db_err!(tokens.get(token.id.as_str()))? {
                Some(v) => from_json("tokens", &token.id, v.value())?,
                None => return Err(StateError::TokenInvalid),
            };
            usable_token(token, &rec, now)?;
            rec.uses_left -= 1;
            db_err!(tokens.insert(token.id.as_str(), to_json(&rec).as_slice()))?;

            let mut nodes = db_err!(txn.open_table(NODES))?;
            let (node_id, mut node) =
                rules::enrollee(&rec, requested, &mut |id| match db_err!(nodes.get(id))? {
                    Some(v) => Ok(Some(from_json("nodes", id, v.value())?)),
                    None => Ok(None),
                })?;

            let mut meta = db_err!(txn.open_table(META))?;
            let serial = db_err!(meta.get(NEXT_SERIAL))?
                .map(|v| v.value())
                .unwrap_or(1);
            db_err!(meta.insert(NEXT_SERIAL, serial + 1))?;

            let issued = sign(&node_id, serial)?;
            rules::enrolled(&mut node, serial, &issued, now);
            db_err!(nodes.insert(node_id.as_str(), to_json(&node).as_slice()))?;
            (node_id, issued)
        };
        db_err!(txn.commit())?;
        self.standing.fetch_add(1, Ordering::SeqCst);
        Ok(out)
    }

    /// Issues a renewed certificate for a node that is still in good standing.
    fn renew(
        &self,
        node_id: &str,
        sign: &mut dyn FnMut(u64) -> Result<Issued, StateError>,
    ) -> Result<Issued, StateError> {
        let txn = self.begin_write()?;
        let issued = {
            let mut nodes = db_err!(txn.open_table(NODES))?;
            let mut node: NodeRecord = match db_err!(nodes.get(node_id))? {
                Some(v) => from_json("nodes", node_id, v.value())?,
                None => return Err(StateError::NoSuchNode(node_id.to_string())),
            };
            if node.revoked {
                return Err(StateError::NodeRevoked(node_id.to_string()));
            }
            let mut meta = db_err!(txn.open_table(META))?;
            let serial = db_err!(meta.get(NEXT_SERIAL))?
                .map(|v| v.value())
                .unwrap_or(1);
            db_err!(meta.insert(NEXT_SERIAL, serial + 1))?;
            let issued = sign(serial)?;
            node.cert_serial = serial;
            node.cert_expires = issued.expires;
            db_err!(nodes.insert(node_id, to_json(&node).as_slice()))?;
            issued
        };
        db_err!(txn.commit())?;
        Ok(issued)
    }

    fn node(&self, node_id: &str) -> Result<Option<NodeRecord>, StateError> {
        let txn = self.begin_read()?;
        let nodes = db_err!(txn.open_table(NODES))?;
        match db_err!(nodes.get(node_id))? {
            Some(v) => Ok(Some(from_json("nodes", node_id, v.value())?)),
            None => Ok(None),
        }
    }

    /// `None` when open read-only: whoever writes is then another process.
    fn standing_version(&self) -> Option<u64> {
        match self.db {
            Db::ReadWrite(_) => Some(self.standing.load(Ordering::SeqCst)),
            Db::ReadOnly(_) => None,
        }
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StateError> {
        let txn = self.begin_read()?;
        let nodes = db_err!(txn.open_table(NODES))?;
        let mut out = Vec::new();
        for entry in db_err!(nodes.iter())? {
            let (k, v) = db_err!(entry)?;
            out.push(from_json("nodes", k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Updates facts and last-seen times of several nodes in one transaction.
    fn update_nodes(
        &self,
        updates: &[(String, Option<HostFacts>, Option<i64>)],
    ) -> Result<(), StateError> {
        if updates.is_empty() {
            return Ok(());
        }
        let txn = self.begin_write()?;
        {
            let mut nodes = db_err!(txn.open_table(NODES))?;
            for (node_id, facts, last_seen) in updates {
                let mut node: NodeRecord = match db_err!(nodes.get(node_id.as_str()))? {
                    Some(v) => from_json("nodes", node_id, v.value())?,
                    None => continue,
                };
                if let Some(f) = facts {
                    node.apply_facts(f);
                }
                if last_seen.is_some() {
                    node.last_seen = *last_seen;
                }
                db_err!(nodes.insert(node_id.as_str(), to_json(&node).as_slice()))?;
            }
        }
        db_err!(txn.commit())?;
        Ok(())
    }

    /// Marks a node revoked; its certificates are refused from now on.
    fn revoke(&self, name: &str, now: i64) -> Result<String, StateError> {
        let node_id = self.resolve_node(name)?;
        let txn = self.begin_write()?;
        {
            let mut nodes = db_err!(txn.open_table(NODES))?;
            let mut node: NodeRecord = match db_err!(nodes.get(node_id.as_str()))? {
                Some(v) => from_json("nodes", &node_id, v.value())?,
                None => return Err(StateError::NoSuchNode(name.to_string())),
            };
            node.revoked = true;
            node.revoked_at = Some(now);
            db_err!(nodes.insert(node_id.as_str(), to_json(&node).as_slice()))?;
        }
        db_err!(txn.commit())?;
        self.standing.fetch_add(1, Ordering::SeqCst);
        Ok(node_id)
    }

    fn change_node(
        &self,
        node_id: &str,
        change: &mut dyn FnMut(&mut NodeRecord),
    ) -> Result<(), StateError> {
        let txn = self.begin_write()?;
        {
            let mut nodes = db_err!(txn.open_table(NODES))?;
            let mut node: NodeRecord = match db_err!(nodes.get(node_id))? {
                Some(v) => from_json("nodes", node_id, v.value())?,
                None => return Err(StateError::NoSuchNode(node_id.to_string())),
            };
            change(&mut node);
            db_err!(nodes.insert(node_id, to_json(&node).as_slice()))?;
        }
        db_err!(txn.commit())?;
        Ok(())
    }

    /// Records an admin certificate just issued.
    fn add_admin(&self, rec: &AdminRecord) -> Result<(), StateError> {
        let txn = self.begin_write()?;
        {
            let mut t = db_err!(txn.open_table(ADMINS))?;
            db_err!(t.insert(rec.serial, to_json(rec).as_slice()))?;
        }
        db_err!(txn.commit())?;
        Ok(())
    }

    /// Every admin certificate issued, by serial.
    fn admins(&self) -> Result<Vec<AdminRecord>, StateError> {
        self.json_rows(ADMINS, "admins")
    }

    fn admin(&self, serial: u64) -> Result<Option<AdminRecord>, StateError> {
        let txn = self.begin_read()?;
        let table = match txn.open_table(ADMINS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(StateError::Db(e.into())),
        };
        match db_err!(table.get(serial))? {
            Some(v) => Ok(Some(from_json("admins", serial, v.value())?)),
            None => Ok(None),
        }
    }

    /// Marks an admin certificate revoked (kept revoked if it was).
    fn revoke_admin(&self, serial: u64, now: i64) -> Result<AdminRecord, StateError> {
        let txn = self.begin_write()?;
        let rec = {
            let mut t = db_err!(txn.open_table(ADMINS))?;
            let mut rec: AdminRecord = match db_err!(t.get(serial))? {
                Some(v) => from_json("admins", serial, v.value())?,
                None => return Err(StateError::NoSuchAdmin(serial.to_string())),
            };
            rec.revoked_at.get_or_insert(now);
            db_err!(t.insert(serial, to_json(&rec).as_slice()))?;
            rec
        };
        db_err!(txn.commit())?;
        Ok(rec)
    }

    /// Every stored assignment.
    fn assignments(&self) -> Result<Vec<Assignment>, StateError> {
        self.json_rows(ASSIGNMENTS, "assignments")
    }

    /// Stores (replaces) an assignment.
    fn put_assignment(&self, a: &Assignment) -> Result<(), StateError> {
        self.put_json(ASSIGNMENTS, &a.image, a)
    }

    /// Removes an assignment; returns whether there was one.
    fn remove_assignment(&self, image: &str) -> Result<bool, StateError> {
        self.remove_key(ASSIGNMENTS, image)
    }
}

/// Helpers of the tables.
impl RedbStore {
    fn json_rows<K, T>(
        &self,
        def: TableDefinition<'static, K, &'static [u8]>,
        what: &'static str,
    ) -> Result<Vec<T>, StateError>
    where
        K: redb::Key + 'static,
        for<'a> K::SelfType<'a>: std::fmt::Display,
        T: for<'de> Deserialize<'de>,
    {
        let txn = self.begin_read()?;
        let table = match txn.open_table(def) {
            Ok(t) => t,
            // A database from before the table existed.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(StateError::Db(e.into())),
        };
        let mut out = Vec::new();
        for row in db_err!(table.iter())? {
            let (k, v) = db_err!(row)?;
            out.push(from_json(what, k.value(), v.value())?);
        }
        Ok(out)
    }

    fn put_json<T: Serialize>(
        &self,
        def: TableDefinition<'static, &'static str, &'static [u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), StateError> {
        let txn = self.begin_write()?;
        {
            let mut table = db_err!(txn.open_table(def))?;
            db_err!(table.insert(key, to_json(value).as_slice()))?;
        }
        db_err!(txn.commit())?;
        Ok(())
    }

    fn remove_key(
        &self,
        def: TableDefinition<'static, &'static str, &'static [u8]>,
        key: &str,
    ) -> Result<bool, StateError> {
        let txn = self.begin_write()?;
        let existed = {
            let mut table = db_err!(txn.open_table(def))?;
            let old = db_err!(table.remove(key))?;
            old.is_some()
        };
        db_err!(txn.commit())?;
        Ok(existed)
    }

    /// Appends an entry; returns its sequence number.
    fn append_audit(&self, entry: &AuditEntry) -> Result<u64, StateError> {
        let txn = self.begin_write()?;
        let seq = {
            let mut table = db_err!(txn.open_table(AUDIT))?;
            let next = db_err!(table.last())?.map_or(1, |(k, _)| k.value() + 1);
            db_err!(table.insert(next, to_json(entry).as_slice()))?;
            next
        };
        db_err!(txn.commit())?;
        Ok(seq)
    }

    /// The last `limit` entries, oldest first.
    fn read_audit(&self, limit: usize) -> Result<Vec<(u64, AuditEntry)>, StateError> {
        let txn = self.begin_read()?;
        let table = match txn.open_table(AUDIT) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(StateError::Db(e.into())),
        };
        let mut out = Vec::new();
        for row in db_err!(table.iter())?.rev().take(limit) {
            let (k, v) = db_err!(row)?;
            out.push((k.value(), from_json("audit", k.value(), v.value())?));
        }
        out.reverse();
        Ok(out)
    }
}

/// Cluster records and the audit log, for [`crate::operations`]: every
/// save is one committed transaction.
impl ClusterStore for RedbStore {
    fn cluster(&self, name: &ClusterName) -> Result<Option<Cluster>, StoreError> {
        let txn = self.begin_read().map_err(StoreError::new)?;
        let table = match txn.open_table(CLUSTERS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(StoreError::new(StateError::Db(e.into()))),
        };
        match db_err!(table.get(name.as_str())).map_err(StoreError::new)? {
            Some(v) => Ok(Some(
                from_json("clusters", name.as_str(), v.value()).map_err(StoreError::new)?,
            )),
            None => Ok(None),
        }
    }

    fn clusters(&self) -> Result<Vec<Cluster>, StoreError> {
        self.json_rows(CLUSTERS, "clusters")
            .map_err(StoreError::new)
    }

    fn save_cluster(&self, cluster: &Cluster) -> Result<(), StoreError> {
        self.put_json(CLUSTERS, cluster.name.as_str(), cluster)
            .map_err(StoreError::new)
    }

    fn remove_cluster(&self, name: &ClusterName) -> Result<bool, StoreError> {
        self.remove_key(CLUSTERS, name.as_str())
            .map_err(StoreError::new)
    }

    fn audit(&self, entry: &AuditEntry) -> Result<u64, StoreError> {
        self.append_audit(entry).map_err(StoreError::new)
    }

    fn audit_log(&self, limit: usize) -> Result<Vec<(u64, AuditEntry)>, StoreError> {
        self.read_audit(limit).map_err(StoreError::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateStore;

    fn issued(_node: &str, serial: u64) -> Result<Issued, StateError> {
        Ok(Issued {
            cert_pem: format!("cert {serial}"),
            expires: 1_000_000,
        })
    }

    #[test]
    fn node_ids_are_drawn_by_the_coordinator_and_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::create(&dir.path().join("state.redb")).unwrap();
        let token = JoinToken::generate();
        store.add_token(&token, 100, 600, 10, None).unwrap();
        let (a, _) = store.enroll(&token, "web", 110, &mut issued).unwrap();
        let (b, _) = store.enroll(&token, "web", 110, &mut issued).unwrap();
        assert!(a.starts_with("web-") && b.starts_with("web-"), "{a} {b}");
        assert_eq!(a.len(), "web-".len() + 8);
        assert_ne!(a, b, "one name asked twice is two nodes");
        assert!(pki::is_valid_node_id(&a));
        // Asking for an existing id with an ordinary token: refused, and
        // the node is as it was.
        let before = store.node(&a).unwrap().unwrap();
        assert!(matches!(
            store.enroll(&token, &a, 120, &mut issued),
            Err(StateError::NodeExists(_))
        ));
        let after = store.node(&a).unwrap().unwrap();
        assert_eq!(after.cert_serial, before.cert_serial);
        assert_eq!(after.min_serial, before.min_serial);
        assert_eq!(after.enrolled_at, before.enrolled_at);
    }

    #[test]
    fn revoked_nodes_come_back_only_with_a_token_made_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::create(&dir.path().join("state.redb")).unwrap();
        let token = JoinToken::generate();
        store.add_token(&token, 100, 600, 5, None).unwrap();
        let (a, _) = store.enroll(&token, "a", 110, &mut issued).unwrap();
        let first = store.node(&a).unwrap().unwrap().cert_serial;
        store.check_node_cert(&a, first).unwrap();
        store.observe(&a, "10.0.0.1", 111).unwrap();
        store.revoke(&a, 120).unwrap();
        assert!(matches!(
            store.check_node_cert(&a, first),
            Err(StateError::NodeRevoked(_))
        ));
        // The multi-use token cannot bring it back under its id.
        assert!(matches!(
            store.enroll(&token, &a, 125, &mut issued),
            Err(StateError::NodeExists(_))
        ));
        assert!(store.node(&a).unwrap().unwrap().revoked);
        // A token bound to a node that does not exist cannot be made.
        assert!(matches!(
            store.add_token(&JoinToken::generate(), 100, 60, 1, Some("ghost-00000000")),
            Err(StateError::NoSuchNode(_))
        ));
        // The admin's token for exactly that node does, whatever name the
        // host asks for.
        let bound = JoinToken::generate();
        store.add_token(&bound, 100, 600, 1, Some(&a)).unwrap();
        let (again, _) = store.enroll(&bound, "anything", 130, &mut issued).unwrap();
        assert_eq!(again, a);
        let node = store.node(&a).unwrap().unwrap();
        assert!(!node.revoked);
        assert_eq!(node.observed_ip, None, "the new key's address is seen anew");
        let second = node.cert_serial;
        store.check_node_cert(&a, second).unwrap();
        assert!(matches!(
            store.check_node_cert(&a, first),
            Err(StateError::StaleCertificate { .. })
        ));
        assert!(matches!(
            store.enroll(&bound, "anything", 131, &mut issued),
            Err(StateError::TokenUsedUp(_))
        ));
    }

    #[test]
    fn approvals_are_stored_canonical_and_withdrawn() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::create(&dir.path().join("state.redb")).unwrap();
        let token = JoinToken::generate();
        store.add_token(&token, 100, 600, 1, None).unwrap();
        let (a, _) = store.enroll(&token, "a", 110, &mut issued).unwrap();
        let (_, ips) = store
            .approve_ips(&a, &["::ffff:10.0.0.5".into(), "10.0.0.6".into()], true)
            .unwrap();
        assert_eq!(ips, ["10.0.0.5", "10.0.0.6"]);
        assert!(matches!(
            store.approve_ips(&a, &["10.0.0.300".into()], true),
            Err(StateError::BadIp(_))
        ));
        let (_, ips) = store.approve_ips(&a, &["10.0.0.5".into()], false).unwrap();
        assert_eq!(ips, ["10.0.0.6"]);
    }

    #[test]
    fn admin_certificates_are_checked_against_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::create(&dir.path().join("state.redb")).unwrap();
        for (serial, name) in [(7, "alice"), (8, "bob")] {
            store
                .add_admin(&AdminRecord {
                    serial,
                    name: name.into(),
                    issued_at: 1,
                    expires_at: 2,
                    revoked_at: None,
                    local: false,
                })
                .unwrap();
        }
        store.check_admin(7).unwrap();
        assert!(matches!(
            store.check_admin(9),
            Err(StateError::UnknownAdmin(9))
        ));
        let r = store.resolve_admin("bob").unwrap();
        store.revoke_admin(r.serial, 50).unwrap();
        assert!(matches!(
            store.check_admin(8),
            Err(StateError::AdminRevoked { serial: 8, .. })
        ));
        store.check_admin(7).unwrap();
        assert!(matches!(
            store.resolve_admin("bob"),
            Err(StateError::NoSuchAdmin(_))
        ));
        assert_eq!(store.resolve_admin("8").unwrap().revoked_at, Some(50));
    }
}
