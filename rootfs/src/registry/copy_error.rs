//! [`CopyError`]: why a push or pull failed (the image's signatures
//! included).

use seaport_shared::digest::DigestError;

use super::client::RegistryError;
use crate::store::StoreError;

/// Errors from push and pull.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Talking to the registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A manifest is not usable.
    #[error("{image}: {reason}")]
    Manifest {
        /// The image.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// An index has no manifest for the target platform.
    #[error("{image} has no manifest for platform {wanted} (it has: {available}); choose one with --platform")]
    NoPlatform {
        /// The image.
        image: String,
        /// The platform asked for.
        wanted: String,
        /// What the index offers.
        available: String,
    },
}

/// Maps a store write error to the digest error [`RegistryClient::download_blob`]
/// understands: mismatches stay mismatches, everything else is I/O.
pub(crate) fn store_to_digest_error(e: StoreError) -> DigestError {
    match e {
        StoreError::Verify { source, .. } => source,
        other => DigestError::Io(std::io::Error::other(other.to_string())),
    }
}
