//! OCI archives: `save` writes images as one tar of an OCI image layout,
//! `load` reads one back, verifying every blob before anything enters the
//! store.
//!
//! An archive holds `oci-layout`, `index.json` and `blobs/sha256/<hex>`, in
//! that order, with normalized headers. Each image's index entry carries
//! `org.opencontainers.image.ref.name` set to the name as the user wrote it
//! (`kubernetes:v1.19.8`), so `skopeo copy oci-archive:FILE:kubernetes:v1.19.8
//! ...` finds it, and `io.containerd.image.name` set to the canonical name.
//!
//! A multi-platform image is saved whole: its index (the entry's media type
//! says so) and every platform's manifest, config and layers.
//!
//! An image's signatures (`crate::signing`) travel with it: their signature
//! image is one more entry, named `REPOSITORY:sha256-<hex>.sig` as in a
//! registry (so skopeo can copy it out too) and carrying
//! [`ANNOTATION_SIGNATURE_SUBJECT`]. `load` stores such entries (and any
//! entry named `...:sha256-<hex>.sig` whose layers are signature payloads)
//! as signatures, merged with those the store has, not as images.
//!
//! `load` streams every blob into a temporary file in the store, hashing it
//! as it goes, and checks that each named image is complete (manifest,
//! config, layers; for an index, every manifest it names). Only then are the blobs moved into place and the names
//! set. A corrupted or truncated archive is refused and the store is left as
//! it was.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};

use seaport_shared::digest::{Digest, HashingWriter};
use tempfile::NamedTempFile;

use crate::media;
use crate::oci::{
    Descriptor, Index, Manifest, ANNOTATION_REF_NAME, ANNOTATION_SIGNATURE_SUBJECT,
    MEDIA_TYPE_MANIFEST,
};
use crate::reference::ImageRef;
use crate::signing::{self, Signatures, SigningError};
use crate::store::{Store, StoreError, MAX_DOCUMENT_SIZE};

/// Index annotation with the canonical image name (containerd's key).
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Errors from save and load.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading or writing the archive failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The archive.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A signature image in the store or the archive is not usable.
    #[error(transparent)]
    Signing(#[from] SigningError),
    /// The archive is not a valid, complete OCI archive.
    #[error("refusing archive {path}: {reason}; nothing was loaded")]
    Invalid {
        /// The archive.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Writes the images `names` to `out` as one OCI archive (atomically).
/// Returns the names written, as they appear in the archive.
pub fn save(store: &Store, names: &[String], out: &Path) -> Result<Vec<String>, ArchiveError> {
    let io_err = |action| {
        move |source| ArchiveError::Io {
            action,
            path: out.to_path_buf(),
            source,
        }
    };
    let mut index = Index::new();
    let mut blobs = BTreeSet::new();
    let mut written = Vec::new();
    for name in names {
        let image = store.image(name)?;
        if let Some(i) = &image.index {
            // The archive holds the index whole: every manifest it names.
            if let Some(missing) = i.manifests.iter().find(|c| !store.has_blob(&c.digest)) {
                return Err(StoreError::MissingBlob(missing.digest).into());
            }
        }
        blobs.extend(image.blobs().into_iter().map(|(d, _)| d));
        blobs.insert(image.digest());
        let shown = image.name.to_string();
        let mut annotations = BTreeMap::new();
        annotations.insert(ANNOTATION_REF_NAME.to_string(), shown.clone());
        annotations.insert(
            ANNOTATION_CONTAINERD_NAME.to_string(),
            image.name.canonical(),
        );
        index.manifests.push(Descriptor {
            media_type: image.descriptor.media_type.clone(),
            digest: image.digest(),
            size: image.descriptor.size,
            annotations,
            platform: None,
        });
        written.push(shown);
        let subject = image.digest();
        let already = index
            .manifests
            .iter()
            .any(|d| signing::entry_subject(d) == Some(subject));
        if let (Some(sigs), false) = (signing::stored(store, &subject)?, already) {
            let tag = signing::signature_tag(&subject);
            let named = image.name.with_tag(&tag).map_err(StoreError::from)?;
            blobs.insert(sigs.digest());
            blobs.extend(sigs.blobs().into_iter().map(Digest::of));
            let mut annotations = BTreeMap::new();
            annotations.insert(ANNOTATION_REF_NAME.to_string(), named.to_string());
            annotations.insert(ANNOTATION_CONTAINERD_NAME.to_string(), named.canonical());
            annotations.insert(
                ANNOTATION_SIGNATURE_SUBJECT.to_string(),
                subject.to_string(),
            );
            index.manifests.push(Descriptor {
                media_type: MEDIA_TYPE_MANIFEST.into(),
                digest: sigs.digest(),
                size: sigs.manifest_bytes.len() as u64,
                annotations,
                platform: None,
            });
        }
    }
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".seaport-save-")
        .tempfile_in(dir)
        .map_err(io_err("creating a temporary file beside"))?;
    {
        let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, tmp.as_file()));
        tar.mode(tar::HeaderMode::Deterministic);
        let add_bytes = |tar: &mut tar::Builder<_>, path: &str, bytes: &[u8]| {
            let mut h = file_header(bytes.len() as u64);
            tar.append_data(&mut h, path, bytes)
        };
        add_bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(io_err("writing"))?;
        let index_bytes = serde_json::to_vec(&index).expect("index serializes");
        add_bytes(&mut tar, "index.json", &index_bytes).map_err(io_err("writing"))?;
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            h.set_mtime(0);
            tar.append_data(&mut h, dir, io::empty())
                .map_err(io_err("writing"))?;
        }
        for d in &blobs {
            let file = store.open_blob(d)?;
            let len = file.metadata().map_err(io_err("reading a blob for"))?.len();
            let mut h = file_header(len);
            tar.append_data(&mut h, format!("blobs/sha256/{}", d.hex()), file.take(len))
                .map_err(io_err("writing"))?;
        }
        let buf = tar.into_inner().map_err(io_err("writing"))?;
        buf.into_inner()
            .map_err(|e| e.into_error())
            .map_err(io_err("writing"))?;
    }
    tmp.as_file().sync_all().map_err(io_err("syncing"))?;
    tmp.persist(out)
        .map_err(|e| e.error)
        .map_err(io_err("renaming a temporary file to"))?;
    Ok(written)
}

fn file_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(0);
    h
}

/// One image loaded from an archive.
#[derive(Clone, Debug)]
pub struct LoadedImage {
    /// Its name.
    pub name: ImageRef,
    /// Its manifest digest (its index's, for a multi-platform image).
    pub digest: Digest,
}

/// Loads every named image of the OCI archive at `path` into `store`.
pub fn load(store: &Store, path: &Path) -> Result<Vec<LoadedImage>, ArchiveError> {
    let invalid = |reason: String| ArchiveError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|source| ArchiveError::Io {
        action: "opening",
        path: path.to_path_buf(),
        source,
    })?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, file));
    let mut staged: BTreeMap<Digest, NamedTempFile> = BTreeMap::new();
    let mut index_bytes: Option<Vec<u8>> = None;
    let mut saw_layout = false;
    let read_err = |e: io::Error| {
        invalid(format!(
            "it is not a readable tar (truncated or corrupted?): {e}"
        ))
    };
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let entry_path = entry
            .path()
            .map_err(read_err)?
            .to_string_lossy()
            .into_owned();
        let entry_path = entry_path.trim_start_matches("./").to_string();
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        match entry_path.as_str() {
            "oci-layout" => saw_layout = true,
            "index.json" => {
                if entry.size() > MAX_DOCUMENT_SIZE {
                    return Err(invalid("index.json is too large".into()));
                }
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).map_err(read_err)?;
                index_bytes = Some(bytes);
            }
            p => {
                let Some(hex) = p.strip_prefix("blobs/sha256/") else {
                    tracing::debug!(
                        entry = p,
                        "ignoring an entry that is not part of an OCI layout"
                    );
                    continue;
                };
                if !kind.is_file() {
                    return Err(invalid(format!("{p} is not a regular file")));
                }
                let digest = Digest::from_hex(hex)
                    .map_err(|_| invalid(format!("{p} is not named by a sha256 digest")))?;
                if staged.contains_key(&digest) || store.has_blob(&digest) {
                    // Still verify a duplicate: a bad copy must not pass silently.
                    seaport_shared::digest::verify_reader(&mut entry, &digest)
                        .map_err(|e| invalid(format!("blob {digest}: {e}")))?;
                    continue;
                }
                let mut tmp = store.temp_file()?;
                let expected = entry.size();
                let mut w =
                    HashingWriter::new(BufWriter::with_capacity(1 << 20, tmp.as_file_mut()));
                io::copy(&mut entry, &mut w).map_err(read_err)?;
                let (buf, actual, size) = w.finish();
                buf.into_inner().map_err(|e| read_err(e.into_error()))?;
                if size != expected {
                    return Err(invalid(format!(
                        "blob {digest} is truncated ({size} of {expected} bytes)"
                    )));
                }
                if actual != digest {
                    return Err(invalid(format!(
                        "blob {digest} is corrupted: its content hashes to {actual}"
                    )));
                }
                staged.insert(digest, tmp);
            }
        }
    }
    if !saw_layout {
        return Err(invalid(
            "it has no oci-layout file, so it is not an OCI archive".into(),
        ));
    }
    let index_bytes = index_bytes.ok_or_else(|| invalid("it has no index.json".into()))?;
    let index: Index = serde_json::from_slice(&index_bytes)
        .map_err(|e| invalid(format!("malformed index.json: {e}")))?;

    let read_doc = |d: &Digest| -> Result<Vec<u8>, ArchiveError> {
        if let Some(t) = staged.get(d) {
            let mut bytes = Vec::new();
            t.reopen()
                .and_then(|f| f.take(MAX_DOCUMENT_SIZE + 1).read_to_end(&mut bytes))
                .map_err(|source| ArchiveError::Io {
                    action: "reading back a staged blob of",
                    path: path.to_path_buf(),
                    source,
                })?;
            Ok(bytes)
        } else if store.has_blob(d) {
            Ok(store.read_blob(d, "manifest")?)
        } else {
            Err(invalid(format!("blob {d} is missing from the archive")))
        }
    };
    let present = |d: &Digest| staged.contains_key(d) || store.has_blob(d);
    let mut images = Vec::new();
    let mut needed = BTreeSet::new();
    let need_manifest = |digest: &Digest,
                         name: &ImageRef,
                         needed: &mut BTreeSet<Digest>|
     -> Result<(), ArchiveError> {
        let manifest: Manifest = serde_json::from_slice(&read_doc(digest)?)
            .map_err(|e| invalid(format!("manifest {digest}: {e}")))?;
        needed.insert(*digest);
        for d in std::iter::once(&manifest.config.digest)
            .chain(manifest.layers.iter().map(|l| &l.digest))
        {
            if !present(d) {
                return Err(invalid(format!(
                    "image {name}: blob {d} is missing from the archive"
                )));
            }
            needed.insert(*d);
        }
        Ok(())
    };
    let mut signatures: Vec<(Digest, Signatures)> = Vec::new();
    for desc in &index.manifests {
        if let Some(subject) = signing::entry_subject(desc) {
            let bytes = read_doc(&desc.digest)?;
            let sigs = Signatures::parse(&desc.digest.to_string(), &bytes, |d| {
                if staged.contains_key(d) || store.has_blob(d) {
                    read_doc(d).ok()
                } else {
                    None
                }
            })
            .map_err(|e| invalid(e.to_string()))?;
            if !sigs.signatures.is_empty() {
                needed.insert(desc.digest);
                needed.extend(sigs.blobs().into_iter().map(Digest::of));
                signatures.push((subject, sigs));
                continue;
            }
        }
        let is_index = media::is_index(&desc.media_type);
        if !is_index && !media::is_manifest(&desc.media_type) {
            return Err(invalid(format!(
                "index entry {} has media type {}, not an image manifest or index",
                desc.digest, desc.media_type
            )));
        }
        let name = desc
            .annotations
            .get(ANNOTATION_CONTAINERD_NAME)
            .or_else(|| desc.annotations.get(ANNOTATION_REF_NAME))
            .ok_or_else(|| {
                invalid(format!(
                    "image {} in index.json has no name annotation",
                    desc.digest
                ))
            })?;
        let name = ImageRef::parse(name).map_err(|e| invalid(e.to_string()))?;
        if is_index {
            // A multi-platform image: every manifest of its index, complete.
            let platforms: Index = serde_json::from_slice(&read_doc(&desc.digest)?)
                .map_err(|e| invalid(format!("index {}: {e}", desc.digest)))?;
            needed.insert(desc.digest);
            for child in &platforms.manifests {
                if !media::is_manifest(&child.media_type) {
                    return Err(invalid(format!(
                        "image {name}: its index names {} of media type {}, not an image manifest",
                        child.digest, child.media_type
                    )));
                }
                if !present(&child.digest) {
                    return Err(invalid(format!(
                        "image {name}: manifest {} is missing from the archive",
                        child.digest
                    )));
                }
                need_manifest(&child.digest, &name, &mut needed)?;
            }
        } else {
            need_manifest(&desc.digest, &name, &mut needed)?;
        }
        images.push(LoadedImage {
            name,
            digest: desc.digest,
        });
    }
    if images.is_empty() {
        return Err(invalid("index.json names no image".into()));
    }
    let _guard = store.write_guard()?;
    for (d, tmp) in staged {
        if needed.contains(&d) {
            store.commit_temp_blob(tmp, &d)?;
        }
    }
    for img in &images {
        store.set_name(&img.name, &img.digest)?;
    }
    drop(_guard);
    for (subject, sigs) in &signatures {
        signing::store(store, subject, sigs)?;
    }
    Ok(images)
}
