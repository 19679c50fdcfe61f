//! Join tokens and admin certificates: creation (the only time a token's
//! secret exists outside the agent that uses it) and what is shown to the
//! operator.

use seaport_shared::clock::now_unix;
use std::time::Duration;

use seaport_shared::pki::JoinToken;
use seaport_shared::wire::{AdminCertInfo, TokenGrant};

use crate::ca::{Ca, CaError, ADMIN_CERT_MAX_TTL};
use crate::state::{AdminRecord, StateError, StateStore};

/// Longest token lifetime accepted: one year.
pub const MAX_TTL_SECS: u64 = 365 * 86_400;

/// Errors creating a token or an admin certificate.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("--uses must be at least 1")]
    NoUses,
    #[error("a token made for one node (--node) enrolls it once: leave --uses at 1")]
    BoundUses,
    #[error("--ttl must be between 1 second and 365 days")]
    BadTtl,
    #[error("{0}")]
    State(#[from] StateError),
    #[error("{0}")]
    Ca(#[from] CaError),
}

/// Creates a token valid for `ttl_secs` and `uses` enrollments; stores only
/// its hash. With `node` (an existing node id or a hostname naming one),
/// the token re-enrolls exactly that node, once.
pub fn create(
    store: &dyn StateStore,
    ca: &Ca,
    ttl_secs: u64,
    uses: u32,
    node: Option<&str>,
) -> Result<TokenGrant, TokenError> {
    if uses == 0 {
        return Err(TokenError::NoUses);
    }
    if node.is_some() && uses != 1 {
        return Err(TokenError::BoundUses);
    }
    if ttl_secs == 0 || ttl_secs > MAX_TTL_SECS {
        return Err(TokenError::BadTtl);
    }
    let node = node.map(|n| store.resolve_node(n)).transpose()?;
    let token = JoinToken::generate();
    let rec = store.add_token(&token, now_unix(), ttl_secs, uses, node.as_deref())?;
    Ok(TokenGrant {
        token: token.to_string(),
        ca_pin: ca.pin()?.to_string(),
        expires_at: rec.expires_at,
        uses,
        node,
    })
}

/// Signs and records an admin certificate named `name` for the key of
/// `csr_der`, valid `ttl_secs` (at most 365 days).
pub fn issue_admin(
    store: &dyn StateStore,
    ca: &Ca,
    name: &str,
    csr_der: &[u8],
    ttl_secs: u64,
) -> Result<(AdminCertInfo, String), TokenError> {
    let lifetime = Duration::from_secs(ttl_secs);
    if lifetime.is_zero() || lifetime > ADMIN_CERT_MAX_TTL {
        return Err(TokenError::BadTtl);
    }
    let serial = store.next_serial()?;
    let (pem, expires) = ca.issue_admin_for_csr(csr_der, name, serial, lifetime)?;
    let rec = AdminRecord {
        serial,
        name: name.to_string(),
        issued_at: now_unix(),
        expires_at: expires,
        revoked_at: None,
        local: false,
    };
    store.add_admin(&rec)?;
    Ok((rec.info(), pem))
}
