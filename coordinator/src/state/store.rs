//! [`StateStore`]: everything the coordinator keeps, whatever the backend.

use seaport_shared::pki::JoinToken;
use seaport_shared::wire::HostFacts;

use super::error::StateError;
use super::rules::{self, canonical_ip};
use crate::operations::ClusterStore;
use crate::records::{AdminRecord, Assignment, Issued, NodeRecord, TokenRecord};

/// A site's CA as a shared store keeps it (the key sealed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SiteCa {
    pub cert_pem: String,
    pub key_pem: String,
}

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
    fn check_node_cert(&self, node_id: &str, serial: u64) -> Result<NodeRecord, StateError> {
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

    fn node(&self, node_id: &str) -> Result<Option<NodeRecord>, StateError>;

    fn nodes(&self) -> Result<Vec<NodeRecord>, StateError>;

    /// A number that changes after every write that adds a node or changes
    /// its standing (`revoked`, `min_serial`), when the backend can tell
    /// without reading the nodes; `None` when it cannot, and callers that
    /// keep a view of the nodes' standing must then read them again. Read
    /// it before the nodes: a view is current while the number is the one
    /// read before it was built.
    fn standing_version(&self) -> Option<u64> {
        None
    }

    /// Updates facts and last-seen times of several nodes in one transaction.
    fn update_nodes(
        &self,
        updates: &[(String, Option<HostFacts>, Option<i64>)],
    ) -> Result<(), StateError>;

    /// Finds a node by id or (unique) hostname.
    fn resolve_node(&self, name: &str) -> Result<String, StateError> {
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
    fn revoke(&self, name: &str, now: i64) -> Result<String, StateError>;

    /// Changes one node record in a transaction of its own
    /// (`NoSuchNode` when there is none; the change may run again if the
    /// backend retries the transaction).
    fn change_node(
        &self,
        node_id: &str,
        change: &mut dyn FnMut(&mut NodeRecord),
    ) -> Result<(), StateError>;

    /// Records the source address of a node's new authenticated connection.
    fn observe(&self, node_id: &str, ip: &str, now: i64) -> Result<(), StateError> {
        let ip = canonical_ip(ip)?;
        self.change_node(node_id, &mut |n| {
            n.observed_ip = Some(ip.clone());
            n.observed_at = Some(now);
        })
    }

    /// Adds (or with `approve == false` withdraws) admin approvals of host
    /// IPs for a node named by id or hostname; returns the node id and its
    /// approved IPs.
    fn approve_ips(
        &self,
        name: &str,
        ips: &[String],
        approve: bool,
    ) -> Result<(String, Vec<String>), StateError> {
        let ips: Vec<String> = ips
            .iter()
            .map(|ip| canonical_ip(ip))
            .collect::<Result<_, _>>()?;
        let node_id = self.resolve_node(name)?;
        let mut approved = Vec::new();
        self.change_node(&node_id, &mut |n| {
            approved = rules::approve(n, &ips, approve);
        })?;
        Ok((node_id, approved))
    }

    /// Records an admin certificate just issued.
    fn add_admin(&self, rec: &AdminRecord) -> Result<(), StateError>;

    /// Every admin certificate issued, by serial.
    fn admins(&self) -> Result<Vec<AdminRecord>, StateError>;

    fn admin(&self, serial: u64) -> Result<Option<AdminRecord>, StateError>;

    /// Whether an admin certificate may be used: issued by this coordinator
    /// (recorded) and not revoked.
    fn check_admin(&self, serial: u64) -> Result<AdminRecord, StateError> {
        let rec = self
            .admin(serial)?
            .ok_or(StateError::UnknownAdmin(serial))?;
        if rec.revoked_at.is_some() {
            return Err(StateError::AdminRevoked {
                serial,
                name: rec.name,
            });
        }
        Ok(rec)
    }

    /// Finds an admin certificate by serial, or by a name only one
    /// unrevoked certificate carries.
    fn resolve_admin(&self, cert: &str) -> Result<AdminRecord, StateError> {
        let all = self.admins()?;
        if let Ok(serial) = cert.parse::<u64>() {
            if let Some(r) = all.iter().find(|r| r.serial == serial) {
                return Ok(r.clone());
            }
        }
        let named: Vec<&AdminRecord> = all
            .iter()
            .filter(|r| r.name == cert && r.revoked_at.is_none())
            .collect();
        match named.as_slice() {
            [] => Err(StateError::NoSuchAdmin(cert.to_string())),
            [one] => Ok((*one).clone()),
            many => Err(StateError::AmbiguousAdmin(
                cert.to_string(),
                many.iter()
                    .map(|r| r.serial.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    /// Marks an admin certificate revoked (kept revoked if it was).
    fn revoke_admin(&self, serial: u64, now: i64) -> Result<AdminRecord, StateError>;

    /// Every image assignment.
    fn assignments(&self) -> Result<Vec<Assignment>, StateError>;

    /// Stores (replaces) an assignment.
    fn put_assignment(&self, a: &Assignment) -> Result<(), StateError>;

    /// Removes an assignment; returns whether there was one.
    fn remove_assignment(&self, image: &str) -> Result<bool, StateError>;

    /// Starts this coordinator's campaign to lead the site, in a store
    /// several coordinators share (`super::leader`); from then on its
    /// writes that drive operations are fenced by its term. `None` from a
    /// store of one coordinator, which always leads.
    fn elect(
        &self,
        _me: super::leader::LeaderInfo,
        _ttl: std::time::Duration,
    ) -> Result<Option<super::leader::Election>, StateError> {
        Ok(None)
    }

    /// Offers this coordinator's CA (certificate and key, PEM) as the
    /// site's, in a store several coordinators share: kept when the site
    /// has none yet. Returns the site's CA, the one offered or the one
    /// there before; `None` from a store of one coordinator, whose CA stays
    /// its own files.
    fn offer_ca(&self, _cert_pem: &str, _key_pem: &str) -> Result<Option<SiteCa>, StateError> {
        Ok(None)
    }
}
