//! The local image store: an OCI image layout under `<root>/images`.
//!
//! ```text
//! <root>/images/oci-layout          {"imageLayoutVersion":"1.0.0"}
//! <root>/images/index.json          one manifest or index descriptor per name
//! <root>/images/blobs/sha256/<hex>  manifests, configs, layers
//! <root>/images/tmp/                temporary files, renamed into blobs/
//! <root>/images/index.lock          held while index.json is rewritten
//! <root>/images/gc.lock             shared by writers, exclusive for gc
//! ```
//!
//! A name points at an image manifest (OCI or Docker schema 2) or, for a
//! multi-platform image, at an index (OCI index or Docker manifest list)
//! whose manifests carry their platforms; [`Store::image`] reads either.
//!
//! Every name in `index.json` carries the `org.opencontainers.image.ref.name`
//! annotation with the canonical name (`docker.io/library/kubernetes:v1.19.8`),
//! so skopeo and other OCI tools can read the directory as it is.
//!
//! An image's signatures (a cosign signature image, `crate::signing`) are
//! an `index.json` entry without a name, carrying
//! [`ANNOTATION_SIGNATURE_SUBJECT`]: the digest they sign. They live as
//! long as some name points at that digest (or at an index naming it).
//!
//! Writes are atomic: a blob is written to a temporary file in `tmp/`, hashed
//! while written, fsynced and renamed into place only when its digest
//! matches; `index.json` is rewritten to a temporary file and renamed under an
//! exclusive file lock, so concurrent processes never see or make a torn
//! index. Blobs added for an image that is not named yet must be protected
//! from a concurrent [`Store::gc`] by holding a [`WriteGuard`] from
//! [`Store::write_guard`] until [`Store::set_name`] has run.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;
use seaport_shared::digest::{Digest, DigestError, HashingWriter};
use tempfile::NamedTempFile;

use crate::media;
use crate::oci::{
    Descriptor, ImageConfig, Index, Manifest, Platform, ANNOTATION_REF_NAME,
    ANNOTATION_SIGNATURE_SUBJECT, MEDIA_TYPE_MANIFEST,
};
use crate::reference::{ImageRef, ReferenceError};
use crate::registry::platform::{platform_string, select};

/// Manifests and configs larger than this are refused as corrupt.
pub const MAX_DOCUMENT_SIZE: u64 = 4 * 1024 * 1024;

/// Errors from the local store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// No image has this name.
    #[error("image {0} is not in the local store (see `seaport images`)")]
    NotFound(String),
    /// A blob the store needs is missing.
    #[error("blob {0} is missing from the local store; the store is damaged, re-pull or re-load the image")]
    MissingBlob(Digest),
    /// A blob's content does not match its digest.
    #[error("blob {digest}: {source}")]
    Verify {
        /// The blob.
        digest: Digest,
        /// The mismatch or I/O error.
        source: DigestError,
    },
    /// A JSON document in the store is malformed.
    #[error("malformed {what} {digest}: {source}")]
    Json {
        /// manifest, config or index.
        what: &'static str,
        /// The document's digest (or the index's).
        digest: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A JSON document is larger than [`MAX_DOCUMENT_SIZE`].
    #[error("{what} {digest} is {size} bytes, more than the {MAX_DOCUMENT_SIZE} allowed")]
    TooLarge {
        /// manifest or config.
        what: &'static str,
        /// Its digest.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// A name in the index is not a valid image name.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A multi-platform image has no manifest for the platform asked for.
    #[error("{image} has no manifest for platform {wanted} (it has: {available})")]
    NoPlatform {
        /// The image.
        image: String,
        /// The platform asked for.
        wanted: String,
        /// The platforms it has.
        available: String,
    },
    /// A single manifest was needed and the name is a multi-platform image.
    #[error("{image} is a multi-platform image ({platforms}); name one platform's manifest by its digest, or pick a platform")]
    MultiPlatform {
        /// The image.
        image: String,
        /// Its platforms.
        platforms: String,
    },
    /// A blob named as an image is neither an image manifest nor an index.
    #[error("blob {digest} is not an image manifest or index (media type {media_type})")]
    NotAnImage {
        /// The blob.
        digest: Digest,
        /// What it claims or seems to be.
        media_type: String,
    },
    /// A file of the store could not be written in place.
    #[error(transparent)]
    Write(#[from] seaport_shared::confined::ConfinedError),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// One named image in the store.
#[derive(Clone, Debug)]
pub struct ImageEntry {
    /// Its name.
    pub name: ImageRef,
    /// The manifest descriptor from `index.json`.
    pub manifest: Descriptor,
}

/// An image resolved to its documents.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The name it was resolved from (with the digest filled in when the
    /// lookup was by digest).
    pub name: ImageRef,
    /// The manifest's digest: the image digest.
    pub manifest_digest: Digest,
    /// The manifest's size in bytes.
    pub manifest_size: u64,
    /// The parsed manifest.
    pub manifest: Manifest,
    /// The parsed image config.
    pub config: ImageConfig,
}

/// One platform's manifest of a stored image.
#[derive(Clone, Debug)]
pub struct PlatformImage {
    /// Its platform: from the index entry, else from its config.
    pub platform: Platform,
    /// The manifest and config.
    pub image: ResolvedImage,
}

/// A named image as stored: one image manifest, or an index (OCI index or
/// Docker manifest list) of one manifest per platform.
#[derive(Clone, Debug)]
pub struct StoredImage {
    /// The name it was looked up by (with the digest filled in when the
    /// lookup was by digest).
    pub name: ImageRef,
    /// What the name points at: media type, digest and size of the manifest
    /// or index.
    pub descriptor: Descriptor,
    /// The index, for a multi-platform image.
    pub index: Option<Index>,
    /// The manifests: the one manifest, or the index's image manifests that
    /// are in the store, in the index's order.
    pub manifests: Vec<PlatformImage>,
}

impl StoredImage {
    /// The digest the name points at (the index's, for a multi-platform image).
    pub fn digest(&self) -> Digest {
        self.descriptor.digest
    }

    /// Whether the name points at an index.
    pub fn is_index(&self) -> bool {
        self.index.is_some()
    }

    /// The platforms, `os/arch[/variant]`, in order.
    pub fn platforms(&self) -> Vec<String> {
        self.manifests
            .iter()
            .map(|m| platform_string(&m.platform))
            .collect()
    }

    /// The manifest for `wanted`, matched as a registry pull matches it (see
    /// [`select`]). A single-manifest image whose config names no
    /// architecture serves every platform.
    pub fn for_platform(&self, wanted: &Platform) -> Result<&ResolvedImage, StoreError> {
        if let [only] = self.manifests.as_slice() {
            if only.platform.architecture.is_empty() {
                return Ok(&only.image);
            }
        }
        select(&self.manifests, |m| Some(&m.platform), wanted)
            .map(|m| &m.image)
            .ok_or_else(|| StoreError::NoPlatform {
                image: self.name.to_string(),
                wanted: platform_string(wanted),
                available: self.platforms().join(", "),
            })
    }

    /// Every blob of the image with its size, without duplicates: the index
    /// (if any), then each manifest, its config and its layers.
    pub fn blobs(&self) -> Vec<(Digest, u64)> {
        let mut out: Vec<(Digest, u64)> = Vec::new();
        let mut add = |d: Digest, size: u64| {
            if !out.iter().any(|(o, _)| *o == d) {
                out.push((d, size));
            }
        };
        if self.index.is_some() {
            add(self.descriptor.digest, self.descriptor.size);
        }
        for m in &self.manifests {
            add(m.image.manifest_digest, m.image.manifest_size);
            add(m.image.manifest.config.digest, m.image.manifest.config.size);
            for l in &m.image.manifest.layers {
                add(l.digest, l.size);
            }
        }
        out
    }

    /// The blobs one platform needs: the index (if any), and that platform's
    /// manifest, config and layers.
    pub fn blobs_for(&self, image: &ResolvedImage) -> Vec<(Digest, u64)> {
        let mut out = Vec::new();
        if self.index.is_some() {
            out.push((self.descriptor.digest, self.descriptor.size));
        }
        out.push((image.manifest_digest, image.manifest_size));
        out.push((image.manifest.config.digest, image.manifest.config.size));
        for l in &image.manifest.layers {
            if !out.iter().any(|(d, _)| *d == l.digest) {
                out.push((l.digest, l.size));
            }
        }
        out
    }
}

/// The platform an image config describes.
pub fn config_platform(config: &ImageConfig) -> Platform {
    Platform {
        architecture: config.architecture.clone(),
        os: if config.os.is_empty() {
            "linux".into()
        } else {
            config.os.clone()
        },
        variant: config.variant.clone(),
    }
}

/// What [`Store::gc`] removed.
#[derive(Clone, Debug, Default)]
pub struct GcReport {
    /// Blobs removed.
    pub removed: Vec<Digest>,
    /// Bytes freed.
    pub freed_bytes: u64,
}

/// Keeps [`Store::gc`] from running while held: take one before adding blobs
/// that no name references yet, and drop it after [`Store::set_name`].
pub struct WriteGuard {
    _file: File,
}

/// The local OCI image layout.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens the store under `root` (the Seaport root), creating an empty
    /// layout at `<root>/images` if there is none.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let dir = root.join("images");
        let blobs = dir.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(io_err("creating", &blobs))?;
        let tmp = dir.join("tmp");
        fs::create_dir_all(&tmp).map_err(io_err("creating", &tmp))?;
        let store = Self { dir };
        let layout = store.dir.join("oci-layout");
        if !layout.exists() {
            store.write_file_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = store.dir.join("index.json");
        if !index.exists() {
            let _lock = store.lock("index.lock", true)?;
            if !index.exists() {
                let bytes = serde_json::to_vec(&Index::new()).expect("index serializes");
                store.write_file_atomic(&index, &bytes)?;
            }
        }
        for lock in ["index.lock", "gc.lock"] {
            let path = store.dir.join(lock);
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err("creating", &path))?;
        }
        Ok(store)
    }

    /// The layout directory (`<root>/images`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the blob with this digest lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(digest.hex())
    }

    /// Whether the store holds this blob.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Opens a blob for reading. The content is trusted (it was verified
    /// when written); use [`Store::read_blob`] for a verified small read.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, StoreError> {
        File::open(self.blob_path(digest)).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::MissingBlob(*digest)
            } else {
                StoreError::Io {
                    action: "opening",
                    path: self.blob_path(digest),
                    source: e,
                }
            }
        })
    }

    /// Reads a small blob (a manifest or config) whole, verifying its digest.
    pub fn read_blob(&self, digest: &Digest, what: &'static str) -> Result<Vec<u8>, StoreError> {
        let file = self.open_blob(digest)?;
        let size = file
            .metadata()
            .map_err(io_err("reading", &self.blob_path(digest)))?
            .len();
        if size > MAX_DOCUMENT_SIZE {
            return Err(StoreError::TooLarge {
                what,
                digest: *digest,
                size,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        (&file)
            .take(MAX_DOCUMENT_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err("reading", &self.blob_path(digest)))?;
        if Digest::of(&bytes) != *digest {
            return Err(StoreError::Verify {
                digest: *digest,
                source: DigestError::Mismatch {
                    expected: *digest,
                    actual: Digest::of(&bytes),
                    size: bytes.len() as u64,
                },
            });
        }
        Ok(bytes)
    }

    /// A new temporary file inside the store (same filesystem as the
    /// blobs, so it can be renamed into place). It is deleted when dropped.
    pub fn temp_file(&self) -> Result<NamedTempFile, StoreError> {
        let tmp = self.dir.join("tmp");
        tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&tmp)
            .map_err(io_err("creating a temporary file in", &tmp))
    }

    /// A new temporary directory inside the store, deleted when dropped.
    pub fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir, StoreError> {
        let tmp = self.dir.join("tmp");
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&tmp)
            .map_err(io_err("creating a temporary directory in", &tmp))
    }

    /// Moves a fully written temporary file into place as blob `digest`.
    /// The caller must have computed `digest` over exactly the file's bytes
    /// (for example with a [`HashingWriter`]). The file is fsynced first.
    pub fn commit_temp_blob(&self, tmp: NamedTempFile, digest: &Digest) -> Result<(), StoreError> {
        let dest = self.blob_path(digest);
        if dest.is_file() {
            return Ok(());
        }
        tmp.as_file()
            .sync_all()
            .map_err(io_err("syncing", tmp.path()))?;
        tmp.persist(&dest).map_err(|e| StoreError::Io {
            action: "renaming a temporary file to",
            path: dest.clone(),
            source: e.error,
        })?;
        sync_dir(dest.parent().expect("blob has a parent"));
        Ok(())
    }

    /// Writes a blob from `reader`, verifying it against `expected` while
    /// writing. On a mismatch or error nothing is left in the store.
    /// Returns the blob's size.
    pub fn write_blob_verified(
        &self,
        expected: &Digest,
        reader: impl Read,
    ) -> Result<u64, StoreError> {
        let mut tmp = self.temp_file()?;
        let size = seaport_shared::digest::copy_verified(reader, tmp.as_file_mut(), expected)
            .map_err(|source| StoreError::Verify {
                digest: *expected,
                source,
            })?;
        self.commit_temp_blob(tmp, expected)?;
        Ok(size)
    }

    /// Stores `bytes` as a blob and returns its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(bytes);
        if self.has_blob(&digest) {
            return Ok(digest);
        }
        let mut tmp = self.temp_file()?;
        let mut w = HashingWriter::new(tmp.as_file_mut());
        w.write_all(bytes).map_err(io_err("writing", &self.dir))?;
        self.commit_temp_blob(tmp, &digest)?;
        Ok(digest)
    }

    /// Takes a [`WriteGuard`]: [`Store::gc`] waits until it is dropped.
    pub fn write_guard(&self) -> Result<WriteGuard, StoreError> {
        Ok(WriteGuard {
            _file: self.lock("gc.lock", false)?,
        })
    }

    /// Reads `index.json`.
    pub fn index(&self) -> Result<Index, StoreError> {
        let path = self.dir.join("index.json");
        let bytes = fs::read(&path).map_err(io_err("reading", &path))?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
            what: "index",
            digest: path.display().to_string(),
            source,
        })
    }

    /// Lists the named images, sorted by name.
    pub fn list(&self) -> Result<Vec<ImageEntry>, StoreError> {
        let mut out = Vec::new();
        for desc in self.index()?.manifests {
            let Some(name) = desc.annotations.get(ANNOTATION_REF_NAME) else {
                continue;
            };
            let name = ImageRef::parse(name)?;
            out.push(ImageEntry {
                name,
                manifest: desc,
            });
        }
        out.sort_by_key(|e| e.name.canonical());
        Ok(out)
    }

    /// Reads and parses a manifest blob.
    pub fn manifest(&self, digest: &Digest) -> Result<Manifest, StoreError> {
        let bytes = self.read_blob(digest, "manifest")?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
            what: "manifest",
            digest: digest.to_string(),
            source,
        })
    }

    /// Reads and parses an image config blob.
    pub fn config(&self, digest: &Digest) -> Result<ImageConfig, StoreError> {
        let bytes = self.read_blob(digest, "config")?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
            what: "config",
            digest: digest.to_string(),
            source,
        })
    }

    /// Finds the entry of `name` (a name, or `name@sha256:...`, or a bare
    /// `sha256:...` digest of what a name points at) in `index.json`.
    pub fn lookup(&self, name: &str) -> Result<ImageEntry, StoreError> {
        let entries = self.list()?;
        if let Ok(d) = name.parse::<Digest>() {
            return entries
                .into_iter()
                .find(|e| e.manifest.digest == d)
                .ok_or_else(|| StoreError::NotFound(name.to_string()));
        }
        let wanted = ImageRef::parse(name)?;
        let found = match wanted.digest() {
            Some(d) => entries.into_iter().find(|e| {
                e.manifest.digest == *d
                    && e.name.canonical_repository() == wanted.canonical_repository()
            }),
            None => entries.into_iter().find(|e| e.name == wanted),
        };
        found.ok_or_else(|| StoreError::NotFound(wanted.to_string()))
    }

    /// The image `name` points at, with every manifest of it in the store.
    pub fn image(&self, name: &str) -> Result<StoredImage, StoreError> {
        let entry = self.lookup(name)?;
        let top = entry.manifest;
        if !media::is_index(&top.media_type) {
            let image = self.resolve_digest(entry.name.clone(), &top.digest)?;
            return Ok(StoredImage {
                name: entry.name,
                descriptor: top,
                index: None,
                manifests: vec![PlatformImage {
                    platform: config_platform(&image.config),
                    image,
                }],
            });
        }
        let index = self.index_blob(&top.digest)?;
        let mut manifests = Vec::new();
        for child in &index.manifests {
            if !media::is_manifest(&child.media_type) || !self.has_blob(&child.digest) {
                continue;
            }
            let image = self.resolve_digest(entry.name.clone(), &child.digest)?;
            let platform = child
                .platform
                .clone()
                .unwrap_or_else(|| config_platform(&image.config));
            manifests.push(PlatformImage { platform, image });
        }
        if manifests.is_empty() {
            let first = index.manifests.first().map_or(top.digest, |d| d.digest);
            return Err(StoreError::MissingBlob(first));
        }
        Ok(StoredImage {
            name: entry.name,
            descriptor: top,
            index: Some(index),
            manifests,
        })
    }

    /// Resolves `name` (see [`Store::lookup`]) to its manifest and config.
    /// A multi-platform image is refused: use [`Store::image`].
    pub fn resolve(&self, name: &str) -> Result<ResolvedImage, StoreError> {
        let image = self.image(name)?;
        if image.is_index() {
            return Err(StoreError::MultiPlatform {
                image: image.name.to_string(),
                platforms: image.platforms().join(", "),
            });
        }
        Ok(image
            .manifests
            .into_iter()
            .next()
            .expect("a single-manifest image has its manifest")
            .image)
    }

    /// Reads and parses an index blob.
    pub fn index_blob(&self, digest: &Digest) -> Result<Index, StoreError> {
        let bytes = self.read_blob(digest, "index")?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
            what: "index",
            digest: digest.to_string(),
            source,
        })
    }

    /// Loads the manifest `digest` and its config, naming the result `name`.
    pub fn resolve_digest(
        &self,
        name: ImageRef,
        digest: &Digest,
    ) -> Result<ResolvedImage, StoreError> {
        let manifest = self.manifest(digest)?;
        let config = self.config(&manifest.config.digest)?;
        let manifest_size = fs::metadata(self.blob_path(digest))
            .map_err(io_err("reading", &self.blob_path(digest)))?
            .len();
        Ok(ResolvedImage {
            name,
            manifest_digest: *digest,
            manifest_size,
            manifest,
            config,
        })
    }

    /// Points `name` at the image manifest or index `manifest_digest`
    /// (which must be in the store; an index's manifests are not checked),
    /// replacing what it pointed at. Returns the previous digest.
    pub fn set_name(
        &self,
        name: &ImageRef,
        manifest_digest: &Digest,
    ) -> Result<Option<Digest>, StoreError> {
        let path = self.blob_path(manifest_digest);
        let size = fs::metadata(&path)
            .map_err(|_| StoreError::MissingBlob(*manifest_digest))?
            .len();
        let bytes = self.read_blob(manifest_digest, "manifest")?;
        let media_type =
            media::document_media_type(&bytes).ok_or_else(|| StoreError::NotAnImage {
                digest: *manifest_digest,
                media_type: serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| {
                        v.get("mediaType")
                            .and_then(|t| t.as_str())
                            .map(String::from)
                    })
                    .unwrap_or_else(|| "unknown".into()),
            })?;
        if media::is_index(&media_type) {
            self.index_blob(manifest_digest)?;
        } else {
            self.manifest(manifest_digest)?;
        }
        let name = name.with_tag(name.tag().unwrap_or(crate::reference::DEFAULT_TAG))?;
        self.update_index(|index| {
            let key = name.canonical();
            let previous = remove_named(index, &key);
            let mut desc = Descriptor {
                media_type,
                digest: *manifest_digest,
                size,
                annotations: Default::default(),
                platform: None,
            };
            desc.annotations.insert(ANNOTATION_REF_NAME.into(), key);
            index.manifests.push(desc);
            index.manifests.sort_by(|a, b| {
                a.annotations
                    .get(ANNOTATION_REF_NAME)
                    .cmp(&b.annotations.get(ANNOTATION_REF_NAME))
            });
            Ok(previous)
        })
    }

    /// Removes `name` from the index (blobs stay until [`Store::gc`]).
    /// Returns the digest it pointed at.
    pub fn remove_name(&self, name: &ImageRef) -> Result<Digest, StoreError> {
        let key = name.canonical();
        self.update_index(|index| {
            remove_named(index, &key).ok_or_else(|| StoreError::NotFound(name.to_string()))
        })
    }

    /// The entry holding the signatures of `subject`, if the store has one.
    pub fn signature_entry(&self, subject: &Digest) -> Result<Option<Descriptor>, StoreError> {
        let key = subject.to_string();
        Ok(self
            .index()?
            .manifests
            .into_iter()
            .find(|d| d.annotations.get(ANNOTATION_SIGNATURE_SUBJECT) == Some(&key)))
    }

    /// Records the manifest `manifest` (in the store, with its blobs) as the
    /// signatures of `subject`, replacing what was recorded.
    pub fn set_signature_entry(
        &self,
        subject: &Digest,
        manifest: &Digest,
    ) -> Result<(), StoreError> {
        let size = fs::metadata(self.blob_path(manifest))
            .map_err(|_| StoreError::MissingBlob(*manifest))?
            .len();
        let key = subject.to_string();
        self.update_index(|index| {
            index
                .manifests
                .retain(|d| d.annotations.get(ANNOTATION_SIGNATURE_SUBJECT) != Some(&key));
            let mut desc = Descriptor {
                media_type: MEDIA_TYPE_MANIFEST.into(),
                digest: *manifest,
                size,
                annotations: Default::default(),
                platform: None,
            };
            desc.annotations
                .insert(ANNOTATION_SIGNATURE_SUBJECT.into(), key.clone());
            index.manifests.push(desc);
            Ok(())
        })
    }

    /// Every blob some named image needs: indexes, manifests, configs,
    /// layers, and the signatures of what they name.
    pub fn referenced_blobs(&self) -> Result<BTreeSet<Digest>, StoreError> {
        let index = self.index()?;
        let mut keep = self.named_blobs(&index)?;
        for desc in &index.manifests {
            let Some(subject) = signature_subject(desc) else {
                continue;
            };
            if !keep.contains(&subject) || !self.has_blob(&desc.digest) {
                continue;
            }
            keep.insert(desc.digest);
            let manifest = self.manifest(&desc.digest)?;
            keep.insert(manifest.config.digest);
            keep.extend(manifest.layers.iter().map(|l| l.digest));
        }
        Ok(keep)
    }

    /// The blobs of the named images of `index`.
    fn named_blobs(&self, index: &Index) -> Result<BTreeSet<Digest>, StoreError> {
        let mut keep = BTreeSet::new();
        for desc in index.manifests.iter().cloned() {
            if signature_subject(&desc).is_some() {
                continue;
            }
            keep.insert(desc.digest);
            let mut manifests = Vec::new();
            if media::is_index(&desc.media_type) {
                for child in self.index_blob(&desc.digest)?.manifests {
                    keep.insert(child.digest);
                    if media::is_manifest(&child.media_type) && self.has_blob(&child.digest) {
                        manifests.push(child.digest);
                    }
                }
            } else if media::is_manifest(&desc.media_type) {
                manifests.push(desc.digest);
            }
            for m in manifests {
                let manifest = self.manifest(&m)?;
                keep.insert(manifest.config.digest);
                keep.extend(manifest.layers.iter().map(|l| l.digest));
            }
        }
        Ok(keep)
    }

    /// Removes every blob no named image references, and leftover
    /// temporary files. Waits for writers holding a [`WriteGuard`].
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let _gc = self.lock("gc.lock", true)?;
        let _index = self.lock("index.lock", true)?;
        let keep = self.referenced_blobs()?;
        // Signatures of images no name points at any more go with them.
        let mut index = self.index()?;
        let before = index.manifests.len();
        index
            .manifests
            .retain(|d| signature_subject(d).is_none_or(|s| keep.contains(&s)));
        if index.manifests.len() != before {
            let bytes = serde_json::to_vec(&index).expect("index serializes");
            self.write_file_atomic(&self.dir.join("index.json"), &bytes)?;
        }
        let mut report = GcReport::default();
        let blobs = self.dir.join("blobs").join("sha256");
        for entry in fs::read_dir(&blobs).map_err(io_err("listing", &blobs))? {
            let entry = entry.map_err(io_err("listing", &blobs))?;
            let name = entry.file_name();
            let Some(digest) = name.to_str().and_then(|n| Digest::from_hex(n).ok()) else {
                continue;
            };
            if keep.contains(&digest) {
                continue;
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(entry.path()).map_err(io_err("removing", &entry.path()))?;
            report.removed.push(digest);
            report.freed_bytes += size;
        }
        // With the exclusive gc lock held no writer is active, so anything in
        // tmp/ was left by a killed process.
        let tmp = self.dir.join("tmp");
        if let Ok(entries) = fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let p = entry.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
        report.removed.sort();
        Ok(report)
    }

    fn update_index<T>(
        &self,
        change: impl FnOnce(&mut Index) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _lock = self.lock("index.lock", true)?;
        let mut index = self.index()?;
        let out = change(&mut index)?;
        let bytes = serde_json::to_vec(&index).expect("index serializes");
        self.write_file_atomic(&self.dir.join("index.json"), &bytes)?;
        Ok(out)
    }

    fn lock(&self, name: &str, exclusive: bool) -> Result<File, StoreError> {
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("opening lock file", &path))?;
        if exclusive {
            FileExt::lock_exclusive(&file).map_err(io_err("locking", &path))?;
        } else {
            FileExt::lock_shared(&file).map_err(io_err("locking", &path))?;
        }
        Ok(file)
    }

    fn write_file_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        write_file_atomic(path, bytes)
    }
}

/// The digest an entry's signatures sign, if the entry holds signatures.
fn signature_subject(desc: &Descriptor) -> Option<Digest> {
    desc.annotations
        .get(ANNOTATION_SIGNATURE_SUBJECT)
        .and_then(|s| s.parse().ok())
}

fn remove_named(index: &mut Index, key: &str) -> Option<Digest> {
    let pos = index
        .manifests
        .iter()
        .position(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(key))?;
    Some(index.manifests.remove(pos).digest)
}

/// Writes `bytes` to `path` atomically, mode 0600
/// ([`seaport_shared::confined::write_atomic`]).
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    Ok(seaport_shared::confined::write_atomic(path, bytes, 0o600)?)
}

fn sync_dir(dir: &Path) {
    // Best effort: some filesystems refuse fsync on directories.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{
        MEDIA_TYPE_DOCKER_LAYER_GZIP, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_INDEX,
        MEDIA_TYPE_MANIFEST,
    };
    use crate::registry::platform::{machine_platform, parse_platform};

    /// Stores a one-layer image for `arch` (config, layer, manifest) and
    /// returns the manifest's descriptor, with `platform` set as an index
    /// entry carries it.
    fn put_image(store: &Store, arch: &str, variant: Option<&str>, layer: &[u8]) -> Descriptor {
        let layer_digest = store.put_blob(layer).unwrap();
        let config = ImageConfig {
            architecture: arch.into(),
            os: "linux".into(),
            variant: variant.map(Into::into),
            rootfs: crate::oci::RootFs {
                kind: "layers".into(),
                diff_ids: vec![layer_digest],
            },
            ..ImageConfig::default()
        };
        let config_bytes = serde_json::to_vec(&config).unwrap();
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_MANIFEST.into()),
            config: Descriptor {
                media_type: crate::oci::MEDIA_TYPE_CONFIG.into(),
                digest: store.put_blob(&config_bytes).unwrap(),
                size: config_bytes.len() as u64,
                annotations: Default::default(),
                platform: None,
            },
            layers: vec![Descriptor {
                media_type: crate::oci::MEDIA_TYPE_LAYER_TAR.into(),
                digest: layer_digest,
                size: layer.len() as u64,
                annotations: Default::default(),
                platform: None,
            }],
            annotations: Default::default(),
        };
        let bytes = serde_json::to_vec(&manifest).unwrap();
        Descriptor {
            media_type: MEDIA_TYPE_MANIFEST.into(),
            digest: store.put_blob(&bytes).unwrap(),
            size: bytes.len() as u64,
            annotations: Default::default(),
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(Into::into),
            }),
        }
    }

    #[test]
    fn a_multi_platform_name_resolves_per_platform_and_gc_keeps_every_platform() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let amd = put_image(&store, "amd64", None, b"amd64 layer");
        let arm = put_image(&store, "arm64", Some("v8"), b"arm64 layer");
        let mut index = Index::new();
        index.manifests = vec![amd.clone(), arm.clone()];
        let index_digest = store
            .put_blob(&serde_json::to_vec(&index).unwrap())
            .unwrap();
        let stray = store.put_blob(b"stray").unwrap();
        let name = ImageRef::parse("multi:v1").unwrap();
        store.set_name(&name, &index_digest).unwrap();

        let listed = store.list().unwrap();
        assert_eq!(listed[0].manifest.media_type, MEDIA_TYPE_INDEX);
        assert_eq!(listed[0].manifest.digest, index_digest);
        let image = store.image("multi:v1").unwrap();
        assert!(image.is_index());
        assert_eq!(image.digest(), index_digest);
        assert_eq!(image.platforms(), ["linux/amd64", "linux/arm64/v8"]);
        let pick = |p: &Platform| image.for_platform(p).map(|m| m.manifest_digest);
        assert_eq!(pick(&machine_platform("x86_64")).unwrap(), amd.digest);
        assert_eq!(pick(&machine_platform("aarch64")).unwrap(), arm.digest);
        assert_eq!(
            pick(&parse_platform("linux/arm64/v8").unwrap()).unwrap(),
            arm.digest
        );
        let err = pick(&machine_platform("s390x")).unwrap_err().to_string();
        assert!(
            err.contains("multi:v1")
                && err.contains("linux/s390x")
                && err.contains("linux/amd64, linux/arm64/v8"),
            "{err}"
        );
        // The platform blobs of one platform: the index, then its own.
        let amd_image = image.for_platform(&machine_platform("x86_64")).unwrap();
        let only_amd: Vec<Digest> = image
            .blobs_for(amd_image)
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        assert_eq!(only_amd[0], index_digest);
        assert!(only_amd.contains(&Digest::of(b"amd64 layer")));
        assert!(!only_amd.contains(&Digest::of(b"arm64 layer")));
        assert_eq!(
            image.blobs().len(),
            7,
            "index, 2 manifests, 2 configs, 2 layers"
        );
        // One manifest is what `resolve` gives; an index is named as such.
        let err = store.resolve("multi:v1").unwrap_err().to_string();
        assert!(err.contains("multi-platform"), "{err}");
        // By digest, and tagged under another name.
        assert_eq!(store.image(&index_digest.to_string()).unwrap().name, name);
        store
            .set_name(&ImageRef::parse("other:v1").unwrap(), &index_digest)
            .unwrap();

        let report = store.gc().unwrap();
        assert_eq!(report.removed, vec![stray]);
        for d in image.blobs() {
            assert!(store.has_blob(&d.0), "gc removed {}", d.0);
        }
        store.remove_name(&name).unwrap();
        store
            .remove_name(&ImageRef::parse("other:v1").unwrap())
            .unwrap();
        store.gc().unwrap();
        assert!(image.blobs().iter().all(|(d, _)| !store.has_blob(d)));
    }

    #[test]
    fn a_single_platform_image_matches_its_config_platform() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let arm = put_image(&store, "arm64", None, b"arm only");
        store
            .set_name(&ImageRef::parse("arm:v1").unwrap(), &arm.digest)
            .unwrap();
        let image = store.image("arm:v1").unwrap();
        assert!(!image.is_index());
        assert_eq!(image.platforms(), ["linux/arm64"]);
        assert!(image.for_platform(&machine_platform("aarch64")).is_ok());
        let err = image
            .for_platform(&machine_platform("x86_64"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linux/amd64") && err.contains("linux/arm64"),
            "{err}"
        );
        assert_eq!(store.resolve("arm:v1").unwrap().manifest_digest, arm.digest);
    }

    #[test]
    fn docker_schema2_manifests_and_configs_with_nulls_are_read() {
        // What docker and buildah write: Docker media types, `null` for
        // empty lists and maps.
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let layer = store.put_blob(b"gzip bytes").unwrap();
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":null,"Cmd":null,"Labels":null}},"rootfs":{{"type":"layers","diff_ids":["{layer}"]}},"history":null,"created":"2023-01-01T00:00:00Z"}}"#
        );
        let config_digest = store.put_blob(config.as_bytes()).unwrap();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{config_digest}"}},"layers":[{{"mediaType":"{MEDIA_TYPE_DOCKER_LAYER_GZIP}","size":10,"digest":"{layer}"}}]}}"#,
            config.len()
        );
        let m = store.put_blob(manifest.as_bytes()).unwrap();
        store
            .set_name(&ImageRef::parse("sealer:v2s2").unwrap(), &m)
            .unwrap();
        assert_eq!(
            store.list().unwrap()[0].manifest.media_type,
            MEDIA_TYPE_DOCKER_MANIFEST
        );
        let image = store.resolve("sealer:v2s2").unwrap();
        assert!(image.config.config.env.is_empty());
        assert_eq!(
            image.manifest.layers[0].media_type,
            MEDIA_TYPE_DOCKER_LAYER_GZIP
        );
        assert!(store.referenced_blobs().unwrap().contains(&layer));
        // Something that is no image is not named.
        let junk = store
            .put_blob(br#"{"schemaVersion":1,"fsLayers":[]}"#)
            .unwrap();
        let err = store
            .set_name(&ImageRef::parse("junk:v1").unwrap(), &junk)
            .unwrap_err();
        assert!(matches!(err, StoreError::NotAnImage { .. }), "{err}");
    }

    #[test]
    fn blob_round_trip_and_mismatch_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let d = store.put_blob(b"hello").unwrap();
        assert!(store.has_blob(&d));
        assert_eq!(store.read_blob(&d, "test").unwrap(), b"hello");

        let wrong = Digest::of(b"other");
        let err = store
            .write_blob_verified(&wrong, &b"hello!"[..])
            .unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        assert!(!store.has_blob(&wrong));
        assert_eq!(fs::read_dir(store.dir().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn names_point_at_manifests_and_gc_keeps_only_referenced_blobs() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let config = store.put_blob(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#).unwrap();
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_MANIFEST.into()),
            config: Descriptor {
                media_type: crate::oci::MEDIA_TYPE_CONFIG.into(),
                digest: config,
                size: 10,
                annotations: Default::default(),
                platform: None,
            },
            layers: vec![],
            annotations: Default::default(),
        };
        let m = store
            .put_blob(&serde_json::to_vec(&manifest).unwrap())
            .unwrap();
        let stray = store.put_blob(b"stray").unwrap();
        let name = ImageRef::parse("kube:v1").unwrap();
        assert_eq!(store.set_name(&name, &m).unwrap(), None);
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name.to_string(), "kube:v1");
        assert_eq!(store.resolve("kube:v1").unwrap().manifest_digest, m);
        assert_eq!(store.resolve(&m.to_string()).unwrap().name, name);

        let report = store.gc().unwrap();
        assert_eq!(report.removed, vec![stray]);
        assert!(store.has_blob(&m) && store.has_blob(&config));

        store.remove_name(&name).unwrap();
        assert!(matches!(
            store.resolve("kube:v1"),
            Err(StoreError::NotFound(_))
        ));
        store.gc().unwrap();
        assert!(!store.has_blob(&m) && !store.has_blob(&config));
    }
}
