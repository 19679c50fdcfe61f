//! The rules of the state that every backend applies the same way: which
//! token may enroll, how a node id is drawn and what an enrollment writes,
//! how approvals change, and the JSON of the records. Backends keep the
//! transactions; these functions decide what goes in them.

use serde::{Deserialize, Serialize};

use seaport_shared::pki::{self, JoinToken};

use super::error::StateError;
use crate::records::{same_ip, Issued, NodeRecord, TokenRecord};

/// An IP in its canonical text (IPv4-mapped IPv6 as IPv4).
pub fn canonical_ip(s: &str) -> Result<String, StateError> {
    s.trim()
        .parse::<std::net::IpAddr>()
        .map(|ip| ip.to_canonical().to_string())
        .map_err(|_| StateError::BadIp(s.to_string()))
}

pub(super) fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("state records serialize")
}

pub(super) fn from_json<T: for<'de> Deserialize<'de>>(
    table: &'static str,
    key: impl std::fmt::Display,
    bytes: &[u8],
) -> Result<T, StateError> {
    serde_json::from_slice(bytes).map_err(|source| StateError::Corrupt {
        table,
        key: key.to_string(),
        source,
    })
}

/// A new token's record.
pub(super) fn token_record(
    token: &JoinToken,
    now: i64,
    ttl_secs: u64,
    uses: u32,
    node: Option<&str>,
) -> TokenRecord {
    TokenRecord {
        secret_hash: token.secret_hash(),
        created_at: now,
        expires_at: now.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX)),
        uses_left: uses,
        node_id: node.map(str::to_string),
    }
}

/// Whether a token expired long enough ago to be pruned.
pub(super) fn prunable(rec: &TokenRecord, now: i64) -> bool {
    rec.expires_at < now - 86_400
}

/// Whether `token` may enroll now: its secret matches the stored hash, it
/// has not expired and it has uses left. Enrollment and the bootstrap
/// endpoint's check share this, so they cannot disagree.
pub(super) fn usable_token(
    token: &JoinToken,
    rec: &TokenRecord,
    now: i64,
) -> Result<(), StateError> {
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

/// The node a token enrolls and its record before the enrollment: the
/// node it is bound to, or a new node named `requested` (the host's label)
/// with a suffix drawn here, never an existing one. `existing` reads a
/// node inside the enrollment's transaction.
pub(super) fn enrollee(
    rec: &TokenRecord,
    requested: &str,
    existing: &mut dyn FnMut(&str) -> Result<Option<NodeRecord>, StateError>,
) -> Result<(String, NodeRecord), StateError> {
    if let Some(bound) = &rec.node_id {
        return match existing(bound)? {
            Some(node) => Ok((bound.clone(), node)),
            None => Err(StateError::BoundNodeGone(bound.clone())),
        };
    }
    if existing(requested)?.is_some() {
        return Err(StateError::NodeExists(requested.to_string()));
    }
    let label = requested.get(..pki::NODE_LABEL_MAX).unwrap_or(requested);
    let label = label.trim_end_matches('-');
    for _ in 0..32 {
        let candidate = format!("{label}-{:08x}", rand::random::<u32>());
        if existing(&candidate)?.is_none() {
            let node = NodeRecord {
                node_id: candidate.clone(),
                ..Default::default()
            };
            return Ok((candidate, node));
        }
    }
    Err(StateError::Issue(format!("no free node id for {label}")))
}

/// What an enrollment writes into the node's record.
pub(super) fn enrolled(node: &mut NodeRecord, serial: u64, issued: &Issued, now: i64) {
    node.enrolled_at = now;
    node.cert_serial = serial;
    node.cert_expires = issued.expires;
    node.min_serial = serial;
    node.revoked = false;
    node.revoked_at = None;
    // A new key on a host that may have moved: the address is seen again
    // when it connects.
    node.observed_ip = None;
    node.observed_at = None;
}

/// Adds (or withdraws) approvals of canonical `ips`; returns the approved
/// IPs after the change.
pub(super) fn approve(node: &mut NodeRecord, ips: &[String], approve: bool) -> Vec<String> {
    for ip in ips {
        let has = node.approved_ips.iter().any(|a| same_ip(a, ip));
        if approve && !has {
            node.approved_ips.push(ip.clone());
        } else if !approve {
            node.approved_ips.retain(|a| !same_ip(a, ip));
        }
    }
    node.approved_ips.clone()
}
