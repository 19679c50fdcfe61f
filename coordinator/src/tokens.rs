//! Join tokens: creation (the only time a secret exists outside the agent
//! that uses it) and the grant shown to the operator.

use seaport_shared::pki::JoinToken;
use seaport_shared::wire::TokenGrant;

use crate::ca::{Ca, CaError};
use crate::state::{StateError, Store};

/// Longest token lifetime accepted: one year.
pub const MAX_TTL_SECS: u64 = 365 * 86_400;

/// Errors creating a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("--uses must be at least 1")]
    NoUses,
    #[error("--ttl must be between 1 second and 365 days")]
    BadTtl,
    #[error("{0}")]
    State(#[from] StateError),
    #[error("{0}")]
    Ca(#[from] CaError),
}

/// Creates a token valid for `ttl_secs` and `uses` enrollments; stores only
/// its hash.
pub fn create(store: &Store, ca: &Ca, ttl_secs: u64, uses: u32) -> Result<TokenGrant, TokenError> {
    if uses == 0 {
        return Err(TokenError::NoUses);
    }
    if ttl_secs == 0 || ttl_secs > MAX_TTL_SECS {
        return Err(TokenError::BadTtl);
    }
    let token = JoinToken::generate();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let rec = store.add_token(&token, now, ttl_secs, uses)?;
    Ok(TokenGrant {
        token: token.to_string(),
        ca_pin: ca.pin()?.to_string(),
        expires_at: rec.expires_at,
        uses,
    })
}
