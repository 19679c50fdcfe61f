//! Pushing and pulling cluster images between the local store and a registry.
//!
//! Push uploads the config and layers the registry does not have yet (HEAD
//! first), then the manifest, byte for byte as stored, so the image keeps
//! its digest; a multi-platform image sends every platform's manifest (by
//! digest) and then its index under the tag. Pull fetches the manifest;
//! when the name points at an index it takes every platform (the index is
//! kept, byte for byte), or only the manifest of the platform asked for. It
//! downloads the blobs the store lacks, verifying each while it is written,
//! and names the image last, so an interrupted pull leaves no half image
//! behind a name. Blobs move several at a time on scoped threads. The
//! image's signatures move with it (`super::signatures`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use seaport_shared::digest::Digest;

use super::client::RegistryClient;
use super::copy_error::store_to_digest_error;
pub use super::copy_error::CopyError;
use super::platform::{available_platforms, platform_string, select_manifest};
use crate::oci::MEDIA_TYPE_MANIFEST;
use crate::oci::{Descriptor, Index, Manifest, Platform};
use crate::reference::ImageRef;
use crate::store::{Store, StoreError};

/// A manifest fetched from a registry, resolved to one platform.
#[derive(Clone, Debug)]
pub struct RemoteImage {
    /// The index the name pointed at, if it was one: bytes, media type, digest.
    pub index: Option<(Vec<u8>, String, Digest)>,
    /// The image manifest's bytes as served.
    pub manifest_bytes: Vec<u8>,
    /// Its media type.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// The parsed manifest.
    pub manifest: Manifest,
}

impl RemoteImage {
    /// The config and layers, without duplicates, config first.
    pub fn blobs(&self) -> Vec<Descriptor> {
        let mut out: Vec<Descriptor> = Vec::new();
        for d in std::iter::once(&self.manifest.config).chain(&self.manifest.layers) {
            if !out.iter().any(|o| o.digest == d.digest) {
                out.push(d.clone());
            }
        }
        out
    }
}

/// Fetches the manifest `image` names from `client`, following an index to
/// the manifest for `platform`.
pub fn fetch_image(
    client: &RegistryClient,
    image: &ImageRef,
    platform: &Platform,
) -> Result<RemoteImage, CopyError> {
    let reference = match (image.digest(), image.tag()) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.to_string(),
        (None, None) => crate::reference::DEFAULT_TAG.to_string(),
    };
    let repo = image.repository();
    let (bytes, media_type, digest) = client.get_manifest(repo, &reference)?;
    let bad = |reason: String| CopyError::Manifest {
        image: image.to_string(),
        reason,
    };
    if crate::media::is_index(&media_type) {
        let index: Index = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("its index does not parse: {e}")))?;
        let chosen = select_manifest(&index, platform).ok_or_else(|| CopyError::NoPlatform {
            image: image.to_string(),
            wanted: platform_string(platform),
            available: available_platforms(&index).join(", "),
        })?;
        let (m_bytes, m_type, m_digest) = client.get_manifest(repo, &chosen.digest.to_string())?;
        if !crate::media::is_manifest(&m_type) {
            return Err(bad(format!(
                "the index entry for {} is a {m_type}, not an image manifest",
                platform_string(platform)
            )));
        }
        let manifest = parse_manifest(&m_bytes).map_err(|e| bad(e.to_string()))?;
        return Ok(RemoteImage {
            index: Some((bytes, media_type, digest)),
            manifest_bytes: m_bytes,
            media_type: m_type,
            digest: m_digest,
            manifest,
        });
    }
    let manifest = parse_manifest(&bytes).map_err(|e| bad(e.to_string()))?;
    Ok(RemoteImage {
        index: None,
        manifest_bytes: bytes,
        media_type,
        digest,
        manifest,
    })
}

/// What is wrong with a manifest a registry sent.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of a manifest.
    #[error("its manifest does not parse: {0}")]
    Parse(#[from] serde_json::Error),
    /// Another schema.
    #[error("manifest schema version {0} is not supported (only 2)")]
    Schema(u32),
}

fn parse_manifest(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let m: Manifest = serde_json::from_slice(bytes)?;
    if m.schema_version != 2 {
        return Err(ManifestError::Schema(m.schema_version));
    }
    Ok(m)
}

/// What a push or pull moved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// The manifest digest.
    pub digest: Option<Digest>,
    /// Blobs transferred.
    pub transferred: usize,
    /// Bytes transferred.
    pub bytes: u64,
    /// Blobs skipped because the other side had them.
    pub skipped: usize,
    /// Signatures of the image the destination holds after the transfer.
    pub signatures: usize,
}

/// Pushes the local image `local` to `dest` (registry, repository, tag).
/// A multi-platform image goes whole: every platform's blobs and manifest,
/// then the index.
pub fn push_image(
    store: &Store,
    local: &str,
    dest: &ImageRef,
    client: &RegistryClient,
) -> Result<CopyReport, CopyError> {
    let image = store.image(local)?;
    if let Some(d) = dest.digest() {
        if *d != image.digest() {
            return Err(CopyError::Manifest {
                image: dest.to_string(),
                reason: format!("the local image's digest is {}", image.digest()),
            });
        }
    }
    if let Some(index) = &image.index {
        // Every manifest an index names must reach the registry, which
        // refuses an index whose manifests it lacks.
        for child in &index.manifests {
            if !store.has_blob(&child.digest) {
                return Err(StoreError::MissingBlob(child.digest).into());
            }
        }
    }
    let mut blobs: Vec<Descriptor> = Vec::new();
    for m in &image.manifests {
        let manifest = &m.image.manifest;
        for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if !blobs.iter().any(|o| o.digest == d.digest) {
                blobs.push(d.clone());
            }
        }
    }
    for d in &blobs {
        if !store.has_blob(&d.digest) {
            return Err(StoreError::MissingBlob(d.digest).into());
        }
    }
    let repo = dest.repository();
    let transferred = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    for_each_parallel(&blobs, client.options().parallel, |d| {
        let path = store.blob_path(&d.digest);
        if client.push_blob(repo, &d.digest, d.size, &path)? {
            transferred.fetch_add(1, Ordering::Relaxed);
            bytes.fetch_add(d.size, Ordering::Relaxed);
        }
        Ok::<_, CopyError>(())
    })?;
    let reference = match (dest.tag(), dest.digest()) {
        (Some(t), _) => t.to_string(),
        (None, Some(d)) => d.to_string(),
        (None, None) => crate::reference::DEFAULT_TAG.to_string(),
    };
    let digest = match &image.index {
        None => {
            let m = &image.manifests[0].image;
            let manifest_bytes = store.read_blob(&m.manifest_digest, "manifest")?;
            let media_type = m
                .manifest
                .media_type
                .clone()
                .unwrap_or_else(|| MEDIA_TYPE_MANIFEST.to_string());
            client.put_manifest(repo, &reference, &media_type, &manifest_bytes)?
        }
        Some(index) => {
            for child in &index.manifests {
                let child_bytes = store.read_blob(&child.digest, "manifest")?;
                client.put_manifest(
                    repo,
                    &child.digest.to_string(),
                    &child.media_type,
                    &child_bytes,
                )?;
            }
            let index_bytes = store.read_blob(&image.digest(), "index")?;
            client.put_manifest(repo, &reference, &image.descriptor.media_type, &index_bytes)?
        }
    };
    let signatures = super::signatures::push(store, client, repo, &image.digest())?;
    let transferred = transferred.into_inner();
    Ok(CopyReport {
        digest: Some(digest),
        transferred,
        bytes: bytes.into_inner(),
        skipped: blobs.len() - transferred,
        signatures,
    })
}

/// Pulls `image` into the store and names it there. When the name points
/// at an index, `platform` picks one manifest (the name then points at it);
/// `None` takes every manifest of the index and names the index.
pub fn pull_image(
    store: &Store,
    image: &ImageRef,
    client: &RegistryClient,
    platform: Option<&Platform>,
) -> Result<CopyReport, CopyError> {
    let repo = image.repository();
    let Fetched {
        digest: top_digest,
        documents,
        blobs,
    } = match platform {
        Some(p) => {
            let remote = fetch_image(client, image, p)?;
            Fetched {
                blobs: remote.blobs(),
                digest: remote.digest,
                documents: vec![remote.manifest_bytes],
            }
        }
        None => fetch_all(client, image)?,
    };
    let _guard = store.write_guard()?;
    let transferred = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    for_each_parallel(&blobs, client.options().parallel, |d| {
        if store.has_blob(&d.digest) {
            return Ok(());
        }
        let n = client.download_blob(repo, &d.digest, Some(d.size), &mut |reader| {
            store
                .write_blob_verified(&d.digest, reader)
                .map_err(store_to_digest_error)
        })?;
        transferred.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(n, Ordering::Relaxed);
        Ok::<_, CopyError>(())
    })?;
    // Manifests before the index that names them, the index last.
    for doc in &documents {
        store.put_blob(doc)?;
    }
    store.set_name(image, &top_digest)?;
    drop(_guard);
    let signatures = super::signatures::pull(store, client, repo, &top_digest)?;
    let transferred = transferred.into_inner();
    Ok(CopyReport {
        digest: Some(top_digest),
        transferred,
        bytes: bytes.into_inner(),
        skipped: blobs.len() - transferred,
        signatures,
    })
}

/// What a pull stores: the digest the name points at, the documents
/// (manifests, then the index) and the blobs they need, without duplicates.
struct Fetched {
    digest: Digest,
    documents: Vec<Vec<u8>>,
    blobs: Vec<Descriptor>,
}

/// Every manifest `image` names: the one manifest, or every manifest of its
/// index.
fn fetch_all(client: &RegistryClient, image: &ImageRef) -> Result<Fetched, CopyError> {
    let reference = match (image.digest(), image.tag()) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.to_string(),
        (None, None) => crate::reference::DEFAULT_TAG.to_string(),
    };
    let repo = image.repository();
    let (bytes, media_type, digest) = client.get_manifest(repo, &reference)?;
    let bad = |reason: String| CopyError::Manifest {
        image: image.to_string(),
        reason,
    };
    let mut blobs: Vec<Descriptor> = Vec::new();
    let mut add = |m: &Manifest| {
        for d in std::iter::once(&m.config).chain(&m.layers) {
            if !blobs.iter().any(|o| o.digest == d.digest) {
                blobs.push(d.clone());
            }
        }
    };
    if !crate::media::is_index(&media_type) {
        add(&parse_manifest(&bytes).map_err(|e| bad(e.to_string()))?);
        return Ok(Fetched {
            digest,
            documents: vec![bytes],
            blobs,
        });
    }
    let index: Index = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("its index does not parse: {e}")))?;
    let mut documents = Vec::new();
    for child in &index.manifests {
        if !crate::media::is_manifest(&child.media_type) {
            return Err(bad(format!(
                "its index names {} of media type {}, not an image manifest",
                child.digest, child.media_type
            )));
        }
        let (m_bytes, _, _) = client.get_manifest(repo, &child.digest.to_string())?;
        add(&parse_manifest(&m_bytes).map_err(|e| bad(e.to_string()))?);
        documents.push(m_bytes);
    }
    documents.push(bytes);
    Ok(Fetched {
        digest,
        documents,
        blobs,
    })
}

/// Runs `f` on every item, `parallel` at a time; stops at the first error.
pub(crate) fn for_each_parallel<T: Sync, E: Send>(
    items: &[T],
    parallel: usize,
    f: impl Fn(&T) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<E>> = Mutex::new(None);
    let workers = parallel.clamp(1, items.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else {
                    return;
                };
                if let Err(e) = f(item) {
                    failed.store(true, Ordering::Relaxed);
                    first_error.lock().expect("error slot").get_or_insert(e);
                    return;
                }
            });
        }
    });
    match first_error.into_inner().expect("error slot") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_runs_everything_and_reports_an_error() {
        let items: Vec<u32> = (0..50).collect();
        let sum = AtomicU64::new(0);
        for_each_parallel(&items, 4, |i| {
            sum.fetch_add(u64::from(*i), Ordering::Relaxed);
            Ok::<_, String>(())
        })
        .unwrap();
        assert_eq!(sum.into_inner(), (0..50).sum::<u64>());
        let err = for_each_parallel(&items, 3, |i| {
            if *i == 7 {
                Err(format!("item {i}"))
            } else {
                Ok(())
            }
        });
        assert_eq!(err.unwrap_err(), "item 7");
        for_each_parallel(&[] as &[u32], 4, |_| Ok::<_, String>(())).unwrap();
    }
}
