//! The shared backend of the coordinator's state: etcd's v3 API, so that
//! several coordinators keep one state.
//!
//! Keys: everything of one site under one prefix ([`EtcdConfig::prefix`],
//! `/seaport/` unless told): `meta/format` (written by `coordinator init`),
//! `meta/next_serial`, `meta/audit_next`, `tokens/ID`, `nodes/ID`,
//! `assignments/IMAGE`, `clusters/NAME`, `audit/SEQ` and `admins/SERIAL`
//! (numbers as 20 digits, so keys sort as numbers). Values are the same
//! JSON as the redb backend's.
//!
//! Every method that is one redb write transaction is one etcd `Txn`
//! ([`EtcdStore::transact`]): each key the method read is compared on its
//! mod revision (0 for a key that was absent) and the writes happen only
//! if none of them changed meanwhile; otherwise the method reads again and
//! decides again, up to [`ATTEMPTS`] times. So two coordinators spending
//! the last use of one token, or drawing a certificate serial at the same
//! moment, end as they would one after the other: nothing is ever written
//! from a read without that guard. Two writes are deliberately split: the
//! facts and last-seen times of many nodes ([`StateStore::update_nodes`])
//! go in transactions of at most [`TXN_NODES`] nodes (etcd caps one
//! transaction at 128 operations), and the pruning of long-expired tokens
//! is its own transaction before a token is added.
//!
//! Lists are read in pages of [`PAGE`] keys, every page at the revision of
//! the first, so a list is one consistent snapshot and no response has to
//! hold the whole keyspace.
//!
//! The etcd client is asynchronous; the store's methods block (like
//! redb's) and are called off the async runtime. The store runs its
//! client on a runtime of its own (one thread), so a call works from any
//! thread.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KvClient,
    TlsOptions, Txn, TxnOp,
};
use serde::{Deserialize, Serialize};

use seaport_shared::cluster::ClusterName;
use seaport_shared::pki::JoinToken;
use seaport_shared::wire::HostFacts;

use super::error::StateError;
use super::leader::{self, Election, Fence, LeaderInfo, SharedFence};
use super::lock::CoordinatorLock;
use super::rules::{self, from_json, to_json, usable_token};
use super::seal::SiteKey;
use super::store::{SiteCa, StateStore};
use crate::operations::{AuditEntry, Cluster, ClusterStore, StoreError};
use crate::records::{AdminRecord, Assignment, Issued, NodeRecord, TokenRecord};

/// Keys read per request when listing.
pub const PAGE: i64 = 500;
/// How many times a transaction is decided again when other coordinators
/// changed what it read.
pub const ATTEMPTS: u32 = 64;
/// Nodes per transaction of [`StateStore::update_nodes`].
pub const TXN_NODES: usize = 60;
/// The prefix of a site's keys unless told otherwise.
pub const DEFAULT_PREFIX: &str = "/seaport/";

const FORMAT: &str = "meta/format";
/// A value sealed with the site key at initialisation: a coordinator with
/// another key is refused when it connects, before it reads anything.
const KEY_CHECK: &str = "meta/site_key_check";
/// Tables whose values hold secrets, sealed with the site key: a cluster
/// record carries the cluster's join data; `secrets/ca` is the site's CA
/// with its key.
const SEALED: &[&str] = &["clusters", "secrets"];
/// Counters, in `meta/`.
const NEXT_SERIAL: &str = "next_serial";
const AUDIT_NEXT: &str = "audit_next";
/// Written (never read in a transaction, so it adds no contention) with
/// every write that adds a node or changes its standing: its mod revision
/// is [`StateStore::standing_version`], one key read instead of every
/// node record, whichever coordinator wrote.
const STANDING: &str = "standing";
/// How many times a read is sent before its error is returned.
const READ_ATTEMPTS: u32 = 3;

/// Where the state is: etcd's client URLs, the site's prefix and the
/// client's TLS files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdConfig {
    /// Client URLs (`https://HOST:2379`, or `http://` on loopback).
    pub endpoints: Vec<String>,
    /// The prefix of every key of this site; ends with `/`.
    pub prefix: String,
    /// The CA that signed etcd's server certificates (PEM).
    pub ca: Option<PathBuf>,
    /// This coordinator's client certificate and key for etcd (PEM).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl EtcdConfig {
    /// Endpoints and the default prefix, no TLS files.
    pub fn new(endpoints: Vec<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: DEFAULT_PREFIX.to_string(),
            ca: None,
            cert: None,
            key: None,
        }
    }

    fn endpoints_text(&self) -> String {
        self.endpoints.join(",")
    }

    pub(crate) fn options(&self) -> Result<ConnectOptions, StateError> {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| StateError::EtcdFile {
                path: p.display().to_string(),
                source,
            })
        };
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(15))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let identity = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some(Identity::from_pem(read(c)?, read(k)?)),
            (Some(_), None) => return Err(StateError::EtcdHalfIdentity("--etcd-cert")),
            (None, Some(_)) => return Err(StateError::EtcdHalfIdentity("--etcd-key")),
            (None, None) => None,
        };
        if self.ca.is_some() || identity.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.ca {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let Some(id) = identity {
                tls = tls.identity(id);
            }
            opts = opts.with_tls(tls);
        }
        Ok(opts)
    }
}

/// The state in etcd, under one site's prefix.
pub struct EtcdStore {
    /// The client's runtime (taken on drop, see [`Drop`]).
    rt: Option<tokio::runtime::Runtime>,
    kv: KvClient,
    prefix: String,
    endpoints: String,
    page: i64,
    /// Seals and opens the values of [`SEALED`] tables.
    site_key: SiteKey,
    /// How it was reached (an election connects on its own).
    config: EtcdConfig,
    /// What fenced writes are checked against (`super::leader`).
    fence: SharedFence,
    /// A coordinator's lock, held while the store is open.
    _lock: Option<CoordinatorLock>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EtcdStore({} {})", self.endpoints, self.prefix)
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which async code may not do: the
        // store may be dropped there, so its runtime shuts down aside.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The end of the range of keys starting with `prefix`.
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn number(n: u64) -> String {
    format!("{n:020}")
}

impl EtcdStore {
    /// Connects to the site's state with the site's key (read from
    /// `key_path`); [`StateError::Missing`] when its keyspace was never
    /// initialised (`coordinator init --store etcd`),
    /// [`StateError::WrongSiteKey`] when the key is not the site's.
    pub fn connect(config: &EtcdConfig, key_path: &Path) -> Result<EtcdStore, StateError> {
        let site_key = SiteKey::load(key_path)?;
        let store = EtcdStore::dial(config, site_key)?;
        if store.get_raw(FORMAT)?.is_none() {
            return Err(StateError::Missing(format!(
                "{} on etcd {} (with --store etcd)",
                store.prefix, store.endpoints
            )));
        }
        store.check_key(key_path)?;
        Ok(store)
    }

    /// Initialises the site's keyspace (or connects to it when it was
    /// initialised already). The site key at `key_path` is made when there
    /// is none, and must be the site's when the site exists.
    pub fn init(config: &EtcdConfig, key_path: &Path) -> Result<EtcdStore, StateError> {
        let site_key = SiteKey::load_or_create(key_path)?;
        let store = EtcdStore::dial(config, site_key)?;
        let check = store.key(KEY_CHECK);
        let sealed = store.site_key.seal(KEY_CHECK, b"seaport site key");
        let format = store.key(FORMAT);
        let txn = Txn::new()
            .when([Compare::create_revision(
                format.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([
                TxnOp::put(format, "1", None),
                TxnOp::put(check, sealed, None),
            ]);
        let mut kv = store.kv.clone();
        store.call(async move { kv.txn(txn).await })?;
        store.check_key(key_path)?;
        Ok(store)
    }

    /// Whether the site key opens the site's check value.
    fn check_key(&self, key_path: &Path) -> Result<(), StateError> {
        let wrong = || StateError::WrongSiteKey(key_path.display().to_string());
        let (sealed, _) = self.get_raw(KEY_CHECK)?.ok_or_else(wrong)?;
        self.site_key
            .open(KEY_CHECK, &sealed)
            .map(drop)
            .map_err(|_| wrong())
    }

    /// A value as stored: JSON, opened first in a sealed table.
    fn decode<T: for<'de> Deserialize<'de>>(
        &self,
        table: &'static str,
        id: &str,
        bytes: &[u8],
    ) -> Result<T, StateError> {
        if SEALED.contains(&table) {
            let plain = self.site_key.open(&format!("{table}/{id}"), bytes)?;
            return from_json(table, id, &plain);
        }
        from_json(table, id, bytes)
    }

    /// A value to store: JSON, sealed in a sealed table.
    fn encode<T: Serialize>(&self, table: &'static str, id: &str, value: &T) -> Vec<u8> {
        let json = to_json(value);
        if SEALED.contains(&table) {
            return self.site_key.seal(&format!("{table}/{id}"), &json);
        }
        json
    }

    /// A value's bytes as etcd holds them (tests look for secrets in it).
    #[cfg(test)]
    pub(crate) fn raw(&self, rel: &str) -> Option<Vec<u8>> {
        self.get_raw(rel).unwrap().map(|(v, _)| v)
    }

    fn dial(config: &EtcdConfig, site_key: SiteKey) -> Result<EtcdStore, StateError> {
        let endpoints = config.endpoints_text();
        let opts = config.options()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("seaport-etcd")
            .enable_all()
            .build()
            .map_err(|source| StateError::EtcdFile {
                path: "the etcd client's runtime".into(),
                source,
            })?;
        let eps = config.endpoints.clone();
        let client = run_on(&rt, async move { Client::connect(eps, Some(opts)).await }).map_err(
            |source| StateError::Etcd {
                endpoints: endpoints.clone(),
                source,
            },
        )?;
        let mut prefix = config.prefix.clone();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(EtcdStore {
            kv: client.kv_client(),
            rt: Some(rt),
            prefix,
            endpoints,
            page: PAGE,
            site_key,
            config: config.clone(),
            fence: SharedFence::new(std::sync::Mutex::new(Fence::Open)),
            _lock: None,
        })
    }

    /// The store of a coordinator holding `lock` (released when the store
    /// is dropped).
    pub fn holding(mut self, lock: CoordinatorLock) -> EtcdStore {
        self._lock = Some(lock);
        self
    }

    /// The fence now (tests play a paused leader with it).
    #[cfg(test)]
    pub(crate) fn fence(&self) -> Fence {
        *self.fence.lock().unwrap()
    }

    #[cfg(test)]
    pub(crate) fn set_fence(&self, fence: Fence) {
        *self.fence.lock().unwrap() = fence;
    }

    /// Reads lists `page` keys at a time (tests use small pages).
    #[cfg(test)]
    pub(crate) fn with_page(mut self, page: i64) -> EtcdStore {
        self.page = page;
        self
    }

    /// Runs one request of the client and waits for it.
    fn call<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    ) -> Result<T, StateError> {
        let rt = self
            .rt
            .as_ref()
            .expect("the runtime lives as long as the store");
        run_on(rt, f).map_err(|source| StateError::Etcd {
            endpoints: self.endpoints.clone(),
            source,
        })
    }

    /// Runs one read of the client, made by `request`, and waits for it;
    /// a read that fails is sent again, up to [`READ_ATTEMPTS`] times in
    /// all. Reads change nothing, so sending one again is safe, and the
    /// client may route it to another member: a member that accepts
    /// connections and then drops them (stopped behind a proxy or a
    /// balancer) would otherwise fail a share of every coordinator's reads.
    /// Transactions are never sent again here: one that committed but whose
    /// answer was lost would be decided twice.
    fn read<T, Fut>(&self, request: impl Fn() -> Fut) -> Result<T, StateError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let mut attempt = 1;
        loop {
            match self.call(request()) {
                Err(e) if attempt < READ_ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "etcd read failed; asking again");
                    std::thread::sleep(Duration::from_millis(20 * u64::from(attempt)));
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    /// A key's value and mod revision.
    fn get_raw(&self, rel: &str) -> Result<Option<(Vec<u8>, i64)>, StateError> {
        let key = self.key(rel);
        let resp = self.read(|| {
            let (mut kv, key) = (self.kv.clone(), key.clone());
            async move { kv.get(key, None).await }
        })?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
    }

    /// The keys under `dir` from `from` on (relative), in key order, as
    /// (key relative to `dir`, value), read page by page at one revision.
    fn list_raw(
        &self,
        dir: &str,
        from: Option<&str>,
    ) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let base = self.key(dir);
        let end = range_end(&base);
        let mut start = format!("{base}{}", from.unwrap_or("")).into_bytes();
        let mut revision = 0;
        let mut out = Vec::new();
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(self.page);
            if revision != 0 {
                opts = opts.with_revision(revision);
            }
            let resp = self.read(|| {
                let (mut kv, key, opts) = (self.kv.clone(), start.clone(), opts.clone());
                async move { kv.get(key, Some(opts)).await }
            })?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            let kvs = resp.kvs();
            for kv in kvs {
                let key = String::from_utf8_lossy(kv.key());
                let rel = key.strip_prefix(base.as_str()).unwrap_or(&key).to_string();
                out.push((rel, kv.value().to_vec()));
            }
            match kvs.last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    fn rows<T: for<'de> Deserialize<'de>>(
        &self,
        table: &'static str,
    ) -> Result<Vec<T>, StateError> {
        self.list_raw(&format!("{table}/"), None)?
            .into_iter()
            .map(|(k, v)| self.decode(table, &k, &v))
            .collect()
    }

    /// Runs `decide` as one transaction: what it read must be unchanged
    /// when its writes are committed, or it runs again on what is there
    /// now. An error from `decide` commits nothing.
    fn transact<T>(
        &self,
        what: &'static str,
        decide: impl FnMut(&mut Tx<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        self.transact_with(what, false, decide)
    }

    /// [`EtcdStore::transact`] for a write that drives operations: with an
    /// election, it commits only while this coordinator's term is the
    /// leader key's (the fence, `super::leader`); refused at once on a
    /// coordinator that does not lead.
    fn transact_fenced<T>(
        &self,
        what: &'static str,
        decide: impl FnMut(&mut Tx<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        self.transact_with(what, true, decide)
    }

    /// The leader key's create revision: the current term, 0 for none.
    fn term(&self) -> Result<i64, StateError> {
        let key = self.key(leader::LEADER_KEY);
        let resp = self.read(|| {
            let (mut kv, key) = (self.kv.clone(), key.clone());
            async move { kv.get(key, None).await }
        })?;
        Ok(resp.kvs().first().map_or(0, |kv| kv.create_revision()))
    }

    fn transact_with<T>(
        &self,
        what: &'static str,
        fenced: bool,
        mut decide: impl FnMut(&mut Tx<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        for attempt in 0..ATTEMPTS {
            let term = match (fenced, *self.fence.lock().expect("fence lock")) {
                (false, _) | (true, Fence::Open) => None,
                (true, Fence::Follower) => return Err(StateError::NotLeader(what)),
                (true, Fence::Leader(term)) => Some(term),
            };
            let mut tx = Tx {
                store: self,
                read: BTreeMap::new(),
                writes: BTreeMap::new(),
            };
            let out = decide(&mut tx)?;
            if tx.writes.is_empty() {
                return Ok(out);
            }
            let mut compares: Vec<Compare> = tx
                .read
                .iter()
                .map(|(k, rev)| Compare::mod_revision(k.clone(), CompareOp::Equal, *rev))
                .collect();
            if let Some(term) = term {
                compares.push(Compare::create_revision(
                    self.key(leader::LEADER_KEY),
                    CompareOp::Equal,
                    term,
                ));
            }
            let ops: Vec<TxnOp> = tx
                .writes
                .into_iter()
                .map(|(k, v)| match v {
                    Some(v) => TxnOp::put(k, v, None),
                    None => TxnOp::delete(k, None),
                })
                .collect();
            let txn = Txn::new().when(compares).and_then(ops);
            let mut kv = self.kv.clone();
            if self.call(async move { kv.txn(txn).await })?.succeeded() {
                return Ok(out);
            }
            // A newer term (or none): this coordinator no longer leads,
            // whatever it believes.
            if term.is_some_and(|t| self.term().is_ok_and(|now| now != t)) {
                return Err(StateError::NotLeader(what));
            }
            // Another coordinator won the race: back off a little, more
            // each time, and decide again on what it wrote.
            let ms = rand::random::<u64>() % (2 + u64::from(attempt).min(20) * 5);
            std::thread::sleep(Duration::from_millis(ms));
        }
        Err(StateError::Contended {
            what,
            attempts: ATTEMPTS,
        })
    }
}

/// Runs `f` on `rt` and waits for it from this thread, whatever runtime
/// this thread belongs to.
fn run_on<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    f: impl Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv()
        .expect("the etcd client's runtime runs while the store lives")
}

/// One transaction being decided: what was read (key, mod revision; 0 for
/// absent) and what will be written (`None` deletes).
struct Tx<'a> {
    store: &'a EtcdStore,
    read: BTreeMap<String, i64>,
    writes: BTreeMap<String, Option<Vec<u8>>>,
}

impl Tx<'_> {
    fn get<T: for<'de> Deserialize<'de>>(
        &mut self,
        table: &'static str,
        id: &str,
    ) -> Result<Option<T>, StateError> {
        let rel = format!("{table}/{id}");
        let key = self.store.key(&rel);
        if let Some(w) = self.writes.get(&key) {
            return w
                .as_deref()
                .map(|b| self.store.decode(table, id, b))
                .transpose();
        }
        let got = self.store.get_raw(&rel)?;
        self.read
            .entry(key)
            .or_insert(got.as_ref().map_or(0, |(_, rev)| *rev));
        got.map(|(v, _)| self.store.decode(table, id, &v))
            .transpose()
    }

    fn put<T: Serialize>(&mut self, table: &'static str, id: &str, value: &T) {
        let key = self.store.key(&format!("{table}/{id}"));
        let bytes = self.store.encode(table, id, value);
        self.writes.insert(key, Some(bytes));
    }

    fn delete(&mut self, table: &'static str, id: &str) {
        let key = self.store.key(&format!("{table}/{id}"));
        self.writes.insert(key, None);
    }

    /// Hands out the next value of a counter in `meta/` (starting at 1).
    fn next(&mut self, counter: &str) -> Result<u64, StateError> {
        let n: u64 = self.get("meta", counter)?.unwrap_or(1);
        self.put("meta", counter, &(n + 1));
        Ok(n)
    }
}

impl StateStore for EtcdStore {
    fn next_serial(&self) -> Result<u64, StateError> {
        self.transact("next serial", |tx| tx.next(NEXT_SERIAL))
    }

    fn add_token(
        &self,
        token: &JoinToken,
        now: i64,
        ttl_secs: u64,
        uses: u32,
        node: Option<&str>,
    ) -> Result<TokenRecord, StateError> {
        // Expired tokens are of no use to anyone: prune them, each only
        // if it is still the record that was read.
        for (id, bytes) in self.list_raw("tokens/", None)? {
            let Ok(rec) = serde_json::from_slice::<TokenRecord>(&bytes) else {
                continue;
            };
            if rules::prunable(&rec, now) {
                self.transact("prune tokens", |tx| {
                    if let Some(r) = tx.get::<TokenRecord>("tokens", &id)? {
                        if rules::prunable(&r, now) {
                            tx.delete("tokens", &id);
                        }
                    }
                    Ok(())
                })?;
            }
        }
        let rec = rules::token_record(token, now, ttl_secs, uses, node);
        self.transact("add token", |tx| {
            if let Some(node) = node {
                if tx.get::<NodeRecord>("nodes", node)?.is_none() {
                    return Err(StateError::NoSuchNode(node.to_string()));
                }
            }
            tx.put("tokens", &token.id, &rec);
            Ok(rec.clone())
        })
    }

    fn check_token(&self, token: &JoinToken, now: i64) -> Result<TokenRecord, StateError> {
        let (bytes, _) = self
            .get_raw(&format!("tokens/{}", token.id))?
            .ok_or(StateError::TokenInvalid)?;
        let rec: TokenRecord = from_json("tokens", &token.id, &bytes)?;
        usable_token(token, &rec, now)?;
        Ok(rec)
    }

    fn enroll(
        &self,
        token: &JoinToken,
        requested: &str,
        now: i64,
        sign: &mut dyn FnMut(&str, u64) -> Result<Issued, StateError>,
    ) -> Result<(String, Issued), StateError> {
        self.transact("enroll", |tx| {
            let mut rec: TokenRecord = tx
                .get("tokens", &token.id)?
                .ok_or(StateError::TokenInvalid)?;
            usable_token(token, &rec, now)?;
            rec.uses_left -= 1;
            tx.put("tokens", &token.id, &rec);
            let (node_id, mut node) =
                rules::enrollee(&rec, requested, &mut |id| tx.get("nodes", id))?;
            let serial = tx.next(NEXT_SERIAL)?;
            let issued = sign(&node_id, serial)?;
            rules::enrolled(&mut node, serial, &issued, now);
            tx.put("nodes", &node_id, &node);
            tx.put("meta", STANDING, &now);
            Ok((node_id, issued))
        })
    }

    fn renew(
        &self,
        node_id: &str,
        sign: &mut dyn FnMut(u64) -> Result<Issued, StateError>,
    ) -> Result<Issued, StateError> {
        self.transact("renew", |tx| {
            let mut node: NodeRecord = tx
                .get("nodes", node_id)?
                .ok_or_else(|| StateError::NoSuchNode(node_id.to_string()))?;
            if node.revoked {
                return Err(StateError::NodeRevoked(node_id.to_string()));
            }
            let serial = tx.next(NEXT_SERIAL)?;
            let issued = sign(serial)?;
            node.cert_serial = serial;
            node.cert_expires = issued.expires;
            tx.put("nodes", node_id, &node);
            Ok(issued)
        })
    }

    fn node(&self, node_id: &str) -> Result<Option<NodeRecord>, StateError> {
        self.get_raw(&format!("nodes/{node_id}"))?
            .map(|(v, _)| from_json("nodes", node_id, &v))
            .transpose()
    }

    /// The mod revision of the standing key (0 before any node): etcd's
    /// revisions only grow, so a view built after reading it is current
    /// while it reads the same. `None` when etcd cannot be read: callers
    /// then read the nodes, and report etcd's error from there.
    fn standing_version(&self) -> Option<u64> {
        match self.get_raw(&format!("meta/{STANDING}")) {
            Ok(got) => Some(got.map_or(0, |(_, rev)| rev as u64)),
            Err(_) => None,
        }
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StateError> {
        self.rows("nodes")
    }

    fn update_nodes(
        &self,
        updates: &[(String, Option<HostFacts>, Option<i64>)],
    ) -> Result<(), StateError> {
        for batch in updates.chunks(TXN_NODES) {
            self.transact("update nodes", |tx| {
                for (node_id, facts, last_seen) in batch {
                    let Some(mut node) = tx.get::<NodeRecord>("nodes", node_id)? else {
                        continue;
                    };
                    if let Some(f) = facts {
                        node.apply_facts(f);
                    }
                    if last_seen.is_some() {
                        node.last_seen = *last_seen;
                    }
                    tx.put("nodes", node_id, &node);
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    fn revoke(&self, name: &str, now: i64) -> Result<String, StateError> {
        let node_id = self.resolve_node(name)?;
        self.transact("revoke", |tx| {
            let mut node: NodeRecord = tx
                .get("nodes", &node_id)?
                .ok_or_else(|| StateError::NoSuchNode(node_id.clone()))?;
            node.revoked = true;
            node.revoked_at = Some(now);
            tx.put("nodes", &node_id, &node);
            tx.put("meta", STANDING, &now);
            Ok(())
        })?;
        Ok(node_id)
    }

    fn change_node(
        &self,
        node_id: &str,
        change: &mut dyn FnMut(&mut NodeRecord),
    ) -> Result<(), StateError> {
        self.transact("change node", |tx| {
            let mut node: NodeRecord = tx
                .get("nodes", node_id)?
                .ok_or_else(|| StateError::NoSuchNode(node_id.to_string()))?;
            change(&mut node);
            tx.put("nodes", node_id, &node);
            Ok(())
        })
    }

    fn add_admin(&self, rec: &AdminRecord) -> Result<(), StateError> {
        self.transact("add admin", |tx| {
            tx.put("admins", &number(rec.serial), rec);
            Ok(())
        })
    }

    fn admins(&self) -> Result<Vec<AdminRecord>, StateError> {
        self.rows("admins")
    }

    fn admin(&self, serial: u64) -> Result<Option<AdminRecord>, StateError> {
        self.get_raw(&format!("admins/{}", number(serial)))?
            .map(|(v, _)| from_json("admins", serial, &v))
            .transpose()
    }

    fn revoke_admin(&self, serial: u64, now: i64) -> Result<AdminRecord, StateError> {
        self.transact("revoke admin", |tx| {
            let mut rec: AdminRecord = tx
                .get("admins", &number(serial))?
                .ok_or_else(|| StateError::NoSuchAdmin(serial.to_string()))?;
            rec.revoked_at.get_or_insert(now);
            tx.put("admins", &number(serial), &rec);
            Ok(rec)
        })
    }

    fn assignments(&self) -> Result<Vec<Assignment>, StateError> {
        self.rows("assignments")
    }

    fn put_assignment(&self, a: &Assignment) -> Result<(), StateError> {
        self.transact_fenced("assign image", |tx| {
            tx.put("assignments", &a.image, a);
            Ok(())
        })
    }

    fn remove_assignment(&self, image: &str) -> Result<bool, StateError> {
        self.remove("assignments", image, true)
    }

    fn elect(&self, me: LeaderInfo, ttl: Duration) -> Result<Option<Election>, StateError> {
        *self.fence.lock().expect("fence lock") = Fence::Follower;
        leader::start(&self.config, &self.prefix, me, ttl, self.fence.clone()).map(Some)
    }

    fn offer_ca(&self, cert_pem: &str, key_pem: &str) -> Result<Option<SiteCa>, StateError> {
        self.transact("site CA", |tx| {
            if let Some(ca) = tx.get::<SiteCa>("secrets", "ca")? {
                return Ok(Some(ca));
            }
            let ca = SiteCa {
                cert_pem: cert_pem.to_string(),
                key_pem: key_pem.to_string(),
            };
            tx.put("secrets", "ca", &ca);
            Ok(Some(ca))
        })
    }
}

/// Helpers of the keyspace.
impl EtcdStore {
    /// Removes a key; whether it was there.
    fn remove(&self, table: &'static str, id: &str, fenced: bool) -> Result<bool, StateError> {
        self.transact_with("remove", fenced, |tx| {
            let existed = tx.get::<serde_json::Value>(table, id)?.is_some();
            if existed {
                tx.delete(table, id);
            }
            Ok(existed)
        })
    }

    fn append_audit(&self, entry: &AuditEntry) -> Result<u64, StateError> {
        self.transact("audit", |tx| {
            let seq = tx.next(AUDIT_NEXT)?;
            tx.put("audit", &number(seq), entry);
            Ok(seq)
        })
    }

    fn read_audit(&self, limit: usize) -> Result<Vec<(u64, AuditEntry)>, StateError> {
        let next: u64 = match self.get_raw(&format!("meta/{AUDIT_NEXT}"))? {
            Some((v, _)) => from_json("meta", AUDIT_NEXT, &v)?,
            None => return Ok(Vec::new()),
        };
        let first = next.saturating_sub(limit as u64).max(1);
        let mut out = Vec::new();
        for (k, v) in self.list_raw("audit/", Some(&number(first)))? {
            let seq = k.parse::<u64>().unwrap_or(0);
            out.push((seq, from_json("audit", &k, &v)?));
        }
        // Entries appended after `audit_next` was read are not asked for.
        let skip = out.len().saturating_sub(limit);
        Ok(out.split_off(skip))
    }
}

/// Cluster records and the audit log, for [`crate::operations`]: every
/// save is one etcd transaction.
impl ClusterStore for EtcdStore {
    fn cluster(&self, name: &ClusterName) -> Result<Option<Cluster>, StoreError> {
        self.get_raw(&format!("clusters/{}", name.as_str()))
            .and_then(|got| {
                got.map(|(v, _)| self.decode("clusters", name.as_str(), &v))
                    .transpose()
            })
            .map_err(StoreError::new)
    }

    fn clusters(&self) -> Result<Vec<Cluster>, StoreError> {
        self.rows("clusters").map_err(StoreError::new)
    }

    fn save_cluster(&self, cluster: &Cluster) -> Result<(), StoreError> {
        self.transact_fenced("save cluster", |tx| {
            tx.put("clusters", cluster.name.as_str(), cluster);
            Ok(())
        })
        .map_err(StoreError::new)
    }

    fn remove_cluster(&self, name: &ClusterName) -> Result<bool, StoreError> {
        self.remove("clusters", name.as_str(), true)
            .map_err(StoreError::new)
    }

    fn audit(&self, entry: &AuditEntry) -> Result<u64, StoreError> {
        self.append_audit(entry).map_err(StoreError::new)
    }

    fn audit_log(&self, limit: usize) -> Result<Vec<(u64, AuditEntry)>, StoreError> {
        self.read_audit(limit).map_err(StoreError::new)
    }
}
