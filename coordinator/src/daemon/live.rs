//! Sessions currently connected, kept in memory: heartbeats are far too
//! frequent to commit each one; they are flushed to the state database every
//! minute, when a session ends and at shutdown.

use std::collections::HashMap;
use std::sync::Mutex;

/// Open admin connections by certificate serial, so revoking a
/// certificate closes the connections that use it.
#[derive(Default)]
pub(crate) struct AdminSessions {
    inner: Mutex<HashMap<u64, Vec<quinn::Connection>>>,
}

impl AdminSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<quinn::Connection>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn register(&self, serial: u64, conn: &quinn::Connection) {
        self.lock().entry(serial).or_default().push(conn.clone());
    }

    pub(crate) fn unregister(&self, serial: u64, conn: &quinn::Connection) {
        let mut inner = self.lock();
        if let Some(list) = inner.get_mut(&serial) {
            list.retain(|c| c.stable_id() != conn.stable_id());
            if list.is_empty() {
                inner.remove(&serial);
            }
        }
    }

    /// Closes every connection of a certificate; returns how many.
    pub(crate) fn close(&self, serial: u64, code: u32, reason: &str) -> usize {
        let conns = self.lock().remove(&serial).unwrap_or_default();
        for c in &conns {
            c.close(code.into(), reason.as_bytes());
        }
        conns.len()
    }
}

use seaport_shared::wire::HostFacts;

struct LiveEntry {
    conn: quinn::Connection,
    last_seen: Option<i64>,
    facts: Option<HostFacts>,
    cert_expires: i64,
    facts_dirty: bool,
    seen_dirty: bool,
}

/// What the listing needs from a live session.
#[derive(Debug, Clone)]
pub struct LiveView {
    pub last_seen: Option<i64>,
    pub facts: Option<HostFacts>,
    pub cert_expires: i64,
}

type Update = (String, Option<HostFacts>, Option<i64>);

/// The node sessions of a running coordinator, by node id.
#[derive(Default)]
pub struct LiveSessions {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, LiveEntry>,
    /// Final state of sessions that ended, not yet written.
    ended: Vec<Update>,
}

fn stable(f: &HostFacts) -> impl PartialEq + '_ {
    (
        &f.hostname,
        &f.ips,
        &f.os,
        &f.kernel,
        &f.arch,
        f.cpus,
        f.memory_total,
        &f.machine_id,
        &f.agent_version,
    )
}

impl LiveSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a node's new session; returns the one it replaces.
    pub(crate) fn register(
        &self,
        node_id: &str,
        conn: quinn::Connection,
        cert_expires: i64,
    ) -> Option<quinn::Connection> {
        let entry = LiveEntry {
            conn,
            last_seen: None,
            facts: None,
            cert_expires,
            facts_dirty: false,
            seen_dirty: false,
        };
        let mut inner = self.lock();
        let old = inner.sessions.insert(node_id.to_string(), entry)?;
        if old.facts_dirty || old.seen_dirty {
            let update = (
                node_id.to_string(),
                old.facts.clone().filter(|_| old.facts_dirty),
                old.last_seen,
            );
            inner.ended.push(update);
        }
        Some(old.conn)
    }

    /// Removes a session if it is still the registered one.
    pub(crate) fn unregister(&self, node_id: &str, conn: &quinn::Connection) {
        let mut inner = self.lock();
        let same = inner
            .sessions
            .get(node_id)
            .is_some_and(|e| e.conn.stable_id() == conn.stable_id());
        if same {
            if let Some(old) = inner.sessions.remove(node_id) {
                let update = (
                    node_id.to_string(),
                    old.facts.filter(|_| old.facts_dirty),
                    old.last_seen,
                );
                inner.ended.push(update);
            }
        }
    }

    /// Records a heartbeat. Returns the facts if they are new or their
    /// slowly changing part changed (the caller writes them at once).
    pub(crate) fn heartbeat(
        &self,
        node_id: &str,
        conn: &quinn::Connection,
        facts: HostFacts,
        now: i64,
    ) -> Option<HostFacts> {
        let mut inner = self.lock();
        let e = inner.sessions.get_mut(node_id)?;
        if e.conn.stable_id() != conn.stable_id() {
            return None;
        }
        let changed = e
            .facts
            .as_ref()
            .is_none_or(|old| stable(old) != stable(&facts));
        e.last_seen = Some(now);
        e.seen_dirty = true;
        e.facts = Some(facts);
        if changed {
            e.facts.clone()
        } else {
            None
        }
    }

    pub(crate) fn set_cert_expires(&self, node_id: &str, expires: i64) {
        if let Some(e) = self.lock().sessions.get_mut(node_id) {
            e.cert_expires = expires;
        }
    }

    /// When the certificate of the node's live session expires.
    pub(crate) fn cert_expires(&self, node_id: &str) -> Option<i64> {
        self.lock().sessions.get(node_id).map(|e| e.cert_expires)
    }

    pub fn get(&self, node_id: &str) -> Option<LiveView> {
        self.lock().sessions.get(node_id).map(|e| LiveView {
            last_seen: e.last_seen,
            facts: e.facts.clone(),
            cert_expires: e.cert_expires,
        })
    }

    /// The connection of a node's live session, to open task streams on.
    pub(crate) fn connection(&self, node_id: &str) -> Option<quinn::Connection> {
        let conn = self.lock().sessions.get(node_id).map(|e| e.conn.clone())?;
        conn.close_reason().is_none().then_some(conn)
    }

    /// Number of connected node sessions.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes a node's session, if any.
    pub(crate) fn close(&self, node_id: &str, code: u32, reason: &str) -> bool {
        let conn = self.lock().sessions.get(node_id).map(|e| e.conn.clone());
        match conn {
            Some(c) => {
                c.close(code.into(), reason.as_bytes());
                true
            }
            None => false,
        }
    }

    /// Closes every node session (a coordinator that does not lead sends
    /// its agents to the one that does).
    pub(crate) fn close_all(&self, code: u32, reason: &str) -> usize {
        let conns: Vec<quinn::Connection> = self
            .lock()
            .sessions
            .values()
            .map(|e| e.conn.clone())
            .collect();
        for c in &conns {
            c.close(code.into(), reason.as_bytes());
        }
        conns.len()
    }

    /// Everything not yet written to the state database.
    pub(crate) fn take_dirty(&self) -> Vec<Update> {
        let mut inner = self.lock();
        let mut out = std::mem::take(&mut inner.ended);
        for (id, e) in inner.sessions.iter_mut() {
            if e.facts_dirty || e.seen_dirty {
                out.push((
                    id.clone(),
                    e.facts.clone().filter(|_| e.facts_dirty),
                    e.last_seen,
                ));
                e.facts_dirty = false;
                e.seen_dirty = false;
            }
        }
        out
    }
}
