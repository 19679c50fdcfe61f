//! An image's signatures in a registry: cosign's signature image, tagged
//! `sha256-<hex>.sig` in the image's repository (see `crate::signing`).
//!
//! A push sends the image's signatures merged with those the registry has
//! under that tag already (signatures accumulate, as cosign's do); a pull
//! fetches them into the store, merged with those the store has. Blobs are
//! verified against their digests like every other blob.

use seaport_shared::digest::Digest;

use super::client::{RegistryClient, RegistryError};
use super::copy_error::{store_to_digest_error, CopyError};
use crate::oci::{Manifest, MEDIA_TYPE_MANIFEST};
use crate::signing::{self, Signatures};
use crate::store::Store;

/// Largest signature blob fetched (payloads and configs are a few hundred
/// bytes).
const MAX_SIGNATURE_BLOB: u64 = 1 << 20;

/// The signature image of `subject` in `repo`, its blobs fetched into
/// `store` (verified); `None` when the registry has none.
pub fn fetch(
    store: &Store,
    client: &RegistryClient,
    repo: &str,
    subject: &Digest,
) -> Result<Option<Signatures>, CopyError> {
    let tag = signing::signature_tag(subject);
    let bytes = match client.get_manifest(repo, &tag) {
        Ok((bytes, _, _)) => bytes,
        Err(RegistryError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let what = format!("{}/{repo}:{tag}", client.host());
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| CopyError::Manifest {
        image: what.clone(),
        reason: format!("its manifest does not parse: {e}"),
    })?;
    for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
        if d.media_type != signing::MEDIA_TYPE_SIMPLE_SIGNING && d.digest != manifest.config.digest
        {
            continue;
        }
        if d.size > MAX_SIGNATURE_BLOB {
            return Err(CopyError::Manifest {
                image: what,
                reason: format!(
                    "blob {} is {} bytes, too large for a signature",
                    d.digest, d.size
                ),
            });
        }
        if store.has_blob(&d.digest) {
            continue;
        }
        client.download_blob(repo, &d.digest, Some(d.size), &mut |reader| {
            store
                .write_blob_verified(&d.digest, reader)
                .map_err(store_to_digest_error)
        })?;
    }
    let sigs = Signatures::parse(&what, &bytes, |d| store.read_blob(d, "signature blob").ok())
        .map_err(|e| CopyError::Manifest {
            image: what,
            reason: e.to_string(),
        })?;
    Ok(Some(sigs))
}

/// Pushes the store's signatures of `subject` to `repo`, merged with those
/// the registry has; records the merged set in the store. Returns how many
/// signatures the registry holds now (0: the image has none).
pub fn push(
    store: &Store,
    client: &RegistryClient,
    repo: &str,
    subject: &Digest,
) -> Result<usize, CopyError> {
    let Some(local) = signing::stored(store, subject).map_err(signing_err)? else {
        return Ok(0);
    };
    let merged = match fetch(store, client, repo, subject)? {
        Some(remote) => signing::store(store, subject, &remote).map_err(signing_err)?,
        None => local,
    };
    for blob in merged.blobs() {
        let digest = Digest::of(blob);
        client.push_blob(repo, &digest, blob.len() as u64, &store.blob_path(&digest))?;
    }
    client.put_manifest(
        repo,
        &signing::signature_tag(subject),
        MEDIA_TYPE_MANIFEST,
        &merged.manifest_bytes,
    )?;
    Ok(merged.signatures.len())
}

/// Pulls the signatures of `subject` from `repo` into the store. Returns
/// how many the store holds for it now.
pub fn pull(
    store: &Store,
    client: &RegistryClient,
    repo: &str,
    subject: &Digest,
) -> Result<usize, CopyError> {
    match fetch(store, client, repo, subject)? {
        Some(remote) => Ok(signing::store(store, subject, &remote)
            .map_err(signing_err)?
            .signatures
            .len()),
        None => Ok(0),
    }
}

fn signing_err(e: signing::SigningError) -> CopyError {
    match e {
        signing::SigningError::Store(s) => CopyError::Store(s),
        other => CopyError::Manifest {
            image: "signatures".into(),
            reason: other.to_string(),
        },
    }
}
