//! The coordinator's persistent state in one redb database: join tokens
//! (hashes only), enrolled nodes, the certificate serial counter.
//!
//! Every change is one write transaction, so a token's use count and the
//! certificate it pays for are committed together or not at all. Values are
//! JSON so the file stays inspectable and fields can be added.
//!
//! redb locks the file: while `seaport coordinator serve` runs, the CLI goes
//! through the coordinator's admin API instead ([`StateError::Busy`]).

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use seaport_shared::pki::JoinToken;
use seaport_shared::wire::HostFacts;

const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const TOKENS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tokens");
const NODES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("nodes");
/// Image distribution assignments, by image name (see `crate::distribution`).
const ASSIGNMENTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("assignments");
/// Clusters and their runs, by cluster name (see `crate::runs`).
const CLUSTERS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("clusters");
/// The audit log, by sequence number.
const AUDIT: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("audit");
const NEXT_SERIAL: &str = "next_serial";

/// Errors of the state database.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("the state database {0} is in use by a running coordinator")]
    Busy(String),
    #[error("no coordinator state at {0}: run `seaport coordinator init` first")]
    Missing(String),
    #[error("state database: {0}")]
    Db(#[from] redb::Error),
    #[error("corrupt record {key} in table {table}: {source}")]
    Corrupt {
        table: &'static str,
        key: String,
        source: serde_json::Error,
    },
    #[error("join token is not valid")]
    TokenInvalid,
    #[error("join token {0} expired; create a new one with `seaport token create`")]
    TokenExpired(String),
    #[error("join token {0} has no uses left; create a new one with `seaport token create`")]
    TokenUsedUp(String),
    #[error("no node named {0}")]
    NoSuchNode(String),
    #[error("{0} matches several nodes ({1}); use the node id")]
    AmbiguousNode(String, String),
    #[error("node {0} is revoked; it must join again with a new token")]
    NodeRevoked(String),
    #[error("certificate serial {serial} of node {node} was superseded; the node must use its newest certificate or join again")]
    StaleCertificate { node: String, serial: u64 },
    #[error("could not issue certificate: {0}")]
    Issue(String),
}

macro_rules! db_err {
    ($e:expr) => {
        $e.map_err(|e| StateError::Db(e.into()))
    };
}

/// A stored join token (never the secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub secret_hash: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub uses_left: u32,
}

/// A stored node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    pub hostname: String,
    pub ips: Vec<String>,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_total: u64,
    pub machine_id: String,
    pub agent_version: String,
    pub enrolled_at: i64,
    pub cert_serial: u64,
    pub cert_expires: i64,
    /// Certificates of this node with a lower serial are refused (issued
    /// before its latest enrollment).
    pub min_serial: u64,
    pub revoked: bool,
    pub revoked_at: Option<i64>,
    pub last_seen: Option<i64>,
}

impl NodeRecord {
    /// Copies the slowly changing facts; returns whether anything changed.
    pub fn apply_facts(&mut self, f: &HostFacts) -> bool {
        let changed = self.hostname != f.hostname
            || self.ips != f.ips
            || self.os != f.os
            || self.kernel != f.kernel
            || self.arch != f.arch
            || self.cpus != f.cpus
            || self.memory_total != f.memory_total
            || self.machine_id != f.machine_id
            || self.agent_version != f.agent_version;
        if changed {
            self.hostname = f.hostname.clone();
            self.ips = f.ips.clone();
            self.os = f.os.clone();
            self.kernel = f.kernel.clone();
            self.arch = f.arch.clone();
            self.cpus = f.cpus;
            self.memory_total = f.memory_total;
            self.machine_id = f.machine_id.clone();
            self.agent_version = f.agent_version.clone();
        }
        changed
    }
}

/// A certificate just signed inside an enrollment or renewal transaction.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub expires: i64,
}

/// The state database.
pub struct Store {
    db: redb::Database,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("state records serialize")
}

/// Whether `token` may enroll now: its secret matches the stored hash, it
/// has not expired and it has uses left. Enrollment and the bootstrap
/// endpoint's check share this, so they cannot disagree.
fn usable_token(token: &JoinToken, rec: &TokenRecord, now: i64) -> Result<(), StateError> {
    if !token.matches_hash(&rec.secret_hash) {
        return Err(StateError::TokenInvalid);
    }
    if rec.expires_at <= now {
        return Err(StateError::TokenExpired(token.id.clone()));
    }
    if rec.uses_left == 0 {
        return Err(StateError::TokenUsedUp(token.id.clone()));
    }
    Ok(())
}

fn from_json<T: for<'de> Deserialize<'de>>(
    table: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StateError> {
    serde_json::from_slice(bytes).map_err(|source| StateError::Corrupt {
        table,
        key: key.to_string(),
        source,
    })
}

impl Store {
    /// Creates the database (or opens an existing one) and its tables.
    pub fn create(path: &Path) -> Result<Store, StateError> {
        let db = match redb::Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StateError::Busy(path.display().to_string()))
            }
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
        }
        db_err!(txn.commit())?;
        Ok(Store { db })
    }

    /// Opens an existing database.
    pub fn open(path: &Path) -> Result<Store, StateError> {
        if !path.exists() {
            return Err(StateError::Missing(path.display().to_string()));
        }
        Store::create(path)
    }

    /// Hands out the next certificate serial (starting at 1).
    pub fn next_serial(&self) -> Result<u64, StateError> {
        let txn = db_err!(self.db.begin_write())?;
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

    /// Stores a new token's hash.
    pub fn add_token(
        &self,
        token: &JoinToken,
        now: i64,
        ttl_secs: u64,
        uses: u32,
    ) -> Result<TokenRecord, StateError> {
        let rec = TokenRecord {
            secret_hash: token.secret_hash(),
            created_at: now,
            expires_at: now.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX)),
            uses_left: uses,
        };
        let txn = db_err!(self.db.begin_write())?;
        {
            let mut t = db_err!(txn.open_table(TOKENS))?;
            // Expired tokens are of no use to anyone: prune them here.
            let stale: Vec<String> = db_err!(t.iter())?
                .filter_map(Result::ok)
                .filter_map(|(k, v)| {
                    let r: TokenRecord = serde_json::from_slice(v.value()).ok()?;
                    (r.expires_at < now - 86_400).then(|| k.value().to_string())
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
    pub fn check_token(&self, token: &JoinToken, now: i64) -> Result<TokenRecord, StateError> {
        let txn = db_err!(self.db.begin_read())?;
        let tokens = db_err!(txn.open_table(TOKENS))?;
        let rec: TokenRecord = match db_err!(tokens.get(token.id.as_str()))? {
            Some(v) => from_json("tokens", &token.id, v.value())?,
            None => return Err(StateError::TokenInvalid),
        };
        usable_token(token, &rec, now)?;
        Ok(rec)
    }

    /// Spends one use of `token` and records the node it enrolls, atomically.
    /// `sign` gets the certificate serial and returns the signed certificate;
    /// if it fails, nothing is committed.
    pub fn enroll(
        &self,
        token: &JoinToken,
        node_id: &str,
        now: i64,
        sign: impl FnOnce(u64) -> Result<Issued, StateError>,
    ) -> Result<Issued, StateError> {
        let txn = db_err!(self.db.begin_write())?;
        let issued = {
            let mut tokens = db_err!(txn.open_table(TOKENS))?;
            let mut rec: TokenRecord = match db_err!(tokens.get(token.id.as_str()))? {
                Some(v) => from_json("tokens", &token.id, v.value())?,
                None => return Err(StateError::TokenInvalid),
            };
            usable_token(token, &rec, now)?;
            rec.uses_left -= 1;
            db_err!(tokens.insert(token.id.as_str(), to_json(&rec).as_slice()))?;

            let mut meta = db_err!(txn.open_table(META))?;
            let serial = db_err!(meta.get(NEXT_SERIAL))?
                .map(|v| v.value())
                .unwrap_or(1);
            db_err!(meta.insert(NEXT_SERIAL, serial + 1))?;

            let issued = sign(serial)?;
            let mut nodes = db_err!(txn.open_table(NODES))?;
            let mut node: NodeRecord = match db_err!(nodes.get(node_id))? {
                Some(v) => from_json("nodes", node_id, v.value())?,
                None => NodeRecord {
                    node_id: node_id.to_string(),
                    ..Default::default()
                },
            };
            node.enrolled_at = now;
            node.cert_serial = serial;
            node.cert_expires = issued.expires;
            node.min_serial = serial;
            node.revoked = false;
            node.revoked_at = None;
            db_err!(nodes.insert(node_id, to_json(&node).as_slice()))?;
            issued
        };
        db_err!(txn.commit())?;
        Ok(issued)
    }

    /// Issues a renewed certificate for a node that is still in good standing.
    pub fn renew(
        &self,
        node_id: &str,
        sign: impl FnOnce(u64) -> Result<Issued, StateError>,
    ) -> Result<Issued, StateError> {
        let txn = db_err!(self.db.begin_write())?;
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

    /// Whether a node certificate may be used: the node exists, is not
    /// revoked, and the certificate is not older than its latest enrollment.
    pub fn check_node_cert(&self, node_id: &str, serial: u64) -> Result<NodeRecord, StateError> {
        let node = self
            .node(node_id)?
            .ok_or_else(|| StateError::NoSuchNode(node_id.to_string()))?;
        if node.revoked {
            return Err(StateError::NodeRevoked(node_id.to_string()));
        }
        if serial < node.min_serial {
            return Err(StateError::StaleCertificate {
                node: node_id.to_string(),
                serial,
            });
        }
        Ok(node)
    }

    pub fn node(&self, node_id: &str) -> Result<Option<NodeRecord>, StateError> {
        let txn = db_err!(self.db.begin_read())?;
        let nodes = db_err!(txn.open_table(NODES))?;
        match db_err!(nodes.get(node_id))? {
            Some(v) => Ok(Some(from_json("nodes", node_id, v.value())?)),
            None => Ok(None),
        }
    }

    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StateError> {
        let txn = db_err!(self.db.begin_read())?;
        let nodes = db_err!(txn.open_table(NODES))?;
        let mut out = Vec::new();
        for entry in db_err!(nodes.iter())? {
            let (k, v) = db_err!(entry)?;
            out.push(from_json("nodes", k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Updates facts and last-seen times of several nodes in one transaction.
    pub fn update_nodes(
        &self,
        updates: &[(String, Option<HostFacts>, Option<i64>)],
    ) -> Result<(), StateError> {
        if updates.is_empty() {
            return Ok(());
        }
        let txn = db_err!(self.db.begin_write())?;
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

    /// Finds a node by id or (unique) hostname.
    pub fn resolve_node(&self, name: &str) -> Result<String, StateError> {
        let nodes = self.nodes()?;
        if nodes.iter().any(|n| n.node_id == name) {
            return Ok(name.to_string());
        }
        let by_host: Vec<&NodeRecord> = nodes.iter().filter(|n| n.hostname == name).collect();
        match by_host.as_slice() {
            [] => Err(StateError::NoSuchNode(name.to_string())),
            [one] => Ok(one.node_id.clone()),
            many => Err(StateError::AmbiguousNode(
                name.to_string(),
                many.iter()
                    .map(|n| n.node_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    /// Marks a node revoked; its certificates are refused from now on.
    pub fn revoke(&self, name: &str, now: i64) -> Result<String, StateError> {
        let node_id = self.resolve_node(name)?;
        let txn = db_err!(self.db.begin_write())?;
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
        Ok(node_id)
    }
}

/// Image assignments and clusters, kept as JSON values by name; their
/// shapes are `crate::distribution::Assignment` and `crate::runs::Cluster`.
impl Store {
    fn json_rows<T: for<'de> Deserialize<'de>>(
        &self,
        def: TableDefinition<'static, &'static str, &'static [u8]>,
        what: &'static str,
    ) -> Result<Vec<T>, StateError> {
        let txn = db_err!(self.db.begin_read())?;
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
        let txn = db_err!(self.db.begin_write())?;
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
        let txn = db_err!(self.db.begin_write())?;
        let existed = {
            let mut table = db_err!(txn.open_table(def))?;
            let old = db_err!(table.remove(key))?;
            old.is_some()
        };
        db_err!(txn.commit())?;
        Ok(existed)
    }

    /// Every stored assignment.
    pub fn assignments<T: for<'de> Deserialize<'de>>(&self) -> Result<Vec<T>, StateError> {
        self.json_rows(ASSIGNMENTS, "assignments")
    }

    /// Stores (replaces) an assignment.
    pub fn put_assignment<T: Serialize>(&self, image: &str, value: &T) -> Result<(), StateError> {
        self.put_json(ASSIGNMENTS, image, value)
    }

    /// Removes an assignment; returns whether there was one.
    pub fn remove_assignment(&self, image: &str) -> Result<bool, StateError> {
        self.remove_key(ASSIGNMENTS, image)
    }

    /// Every stored cluster.
    pub fn clusters<T: for<'de> Deserialize<'de>>(&self) -> Result<Vec<T>, StateError> {
        self.json_rows(CLUSTERS, "clusters")
    }

    /// Stores (replaces) a cluster: one committed transaction, so a crash
    /// leaves the previous or the new record, never half of one.
    pub fn put_cluster<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        self.put_json(CLUSTERS, name, value)
    }

    /// Removes a cluster; returns whether there was one.
    pub fn remove_cluster(&self, name: &str) -> Result<bool, StateError> {
        self.remove_key(CLUSTERS, name)
    }
}

/// The audit log: every operation asked of the coordinator, in order.
impl Store {
    /// Appends an entry; returns its sequence number.
    pub fn audit<T: Serialize>(&self, entry: &T) -> Result<u64, StateError> {
        let txn = db_err!(self.db.begin_write())?;
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
    pub fn audit_log<T: for<'de> Deserialize<'de>>(
        &self,
        limit: usize,
    ) -> Result<Vec<(u64, T)>, StateError> {
        let txn = db_err!(self.db.begin_read())?;
        let table = match txn.open_table(AUDIT) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(StateError::Db(e.into())),
        };
        let mut out = Vec::new();
        for row in db_err!(table.iter())?.rev().take(limit) {
            let (k, v) = db_err!(row)?;
            out.push((
                k.value(),
                from_json("audit", &k.value().to_string(), v.value())?,
            ));
        }
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(serial: u64) -> Result<Issued, StateError> {
        Ok(Issued {
            cert_pem: format!("cert {serial}"),
            expires: 1_000_000,
        })
    }

    #[test]
    fn token_uses_are_counted_and_expiry_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("state.redb")).unwrap();
        let token = JoinToken::generate();
        store.add_token(&token, 100, 60, 2).unwrap();
        store.enroll(&token, "a-1", 110, issued).unwrap();
        store.enroll(&token, "b-1", 110, issued).unwrap();
        assert!(matches!(
            store.enroll(&token, "c-1", 110, issued),
            Err(StateError::TokenUsedUp(_))
        ));
        let late = JoinToken::generate();
        store.add_token(&late, 100, 60, 5).unwrap();
        assert!(matches!(
            store.enroll(&late, "d-1", 160, issued),
            Err(StateError::TokenExpired(_))
        ));
        let forged = JoinToken {
            id: late.id.clone(),
            secret: "aaaaaaaaaaaaaaaa".into(),
        };
        assert!(matches!(
            store.enroll(&forged, "d-1", 110, issued),
            Err(StateError::TokenInvalid)
        ));
        // A failed signature leaves the token unspent.
        let one = JoinToken::generate();
        store.add_token(&one, 100, 60, 1).unwrap();
        assert!(store
            .enroll(&one, "e-1", 110, |_| Err(StateError::Issue("boom".into())))
            .is_err());
        store.enroll(&one, "e-1", 110, issued).unwrap();
        assert_eq!(store.nodes().unwrap().len(), 3);
    }

    #[test]
    fn revocation_and_reenrollment_follow_serials() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("state.redb")).unwrap();
        let token = JoinToken::generate();
        store.add_token(&token, 100, 60, 2).unwrap();
        store.enroll(&token, "a-1", 110, issued).unwrap();
        let first = store.node("a-1").unwrap().unwrap().cert_serial;
        store.check_node_cert("a-1", first).unwrap();
        store.revoke("a-1", 120).unwrap();
        assert!(matches!(
            store.check_node_cert("a-1", first),
            Err(StateError::NodeRevoked(_))
        ));
        store.enroll(&token, "a-1", 130, issued).unwrap();
        let second = store.node("a-1").unwrap().unwrap().cert_serial;
        store.check_node_cert("a-1", second).unwrap();
        assert!(matches!(
            store.check_node_cert("a-1", first),
            Err(StateError::StaleCertificate { .. })
        ));
    }
}
