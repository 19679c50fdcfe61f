//! distribution's filesystem storage layout, written directly.
//!
//! The CloudRootfs `registry/` directory is the storage root of the
//! registry served on the cluster (Debian's `docker-registry`, distribution
//! 2.8). Writing it directly, instead of pushing to a running registry,
//! needs no daemon at build time. The layout under the root:
//!
//! ```text
//! docker/registry/v2/blobs/sha256/<hex[..2]>/<hex>/data
//! docker/registry/v2/repositories/<repo>/_layers/sha256/<hex>/link
//! docker/registry/v2/repositories/<repo>/_manifests/revisions/sha256/<hex>/link
//! docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>/current/link
//! docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>/index/sha256/<hex>/link
//! ```
//!
//! Each `link` file holds `sha256:<hex>` with no newline. A repository can
//! serve a blob only through its `_layers` link, and a manifest only through
//! its revision link, so both are written for everything an image needs.
//!
//! [`RegistryStorage::cached`] reads the same tree, so images already
//! present (in a base image's `registry/`) are found and not fetched again.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use seaport_shared::digest::{Digest, DigestError};

/// The path of the v2 tree below a storage root.
pub const V2_DIR: &str = "docker/registry/v2";

/// Errors from reading or writing registry storage.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A filesystem operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A blob did not hash to its digest.
    #[error("blob {digest}: {source}")]
    Verify {
        /// The blob.
        digest: Digest,
        /// The mismatch or read error.
        source: DigestError,
    },
    /// A repository or tag name cannot be a path in the layout.
    #[error("{what} {name:?} cannot be stored in registry storage")]
    BadName {
        /// repository or tag.
        what: &'static str,
        /// The name.
        name: String,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayoutError + 'a {
    move |source| LayoutError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// One storage root (the directory holding `docker/`).
#[derive(Clone, Debug)]
pub struct RegistryStorage {
    root: PathBuf,
}

impl RegistryStorage {
    /// The storage rooted at `root`; nothing is created until written.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The storage root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn v2(&self) -> PathBuf {
        self.root.join(V2_DIR)
    }

    /// Where a blob's data lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.v2()
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(&hex)
            .join("data")
    }

    /// Whether the blob's data is present.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Writes a blob from `reader`, verifying its digest while writing;
    /// nothing is left behind on error. Returns its size.
    pub fn write_blob(&self, digest: &Digest, reader: &mut dyn Read) -> Result<u64, LayoutError> {
        let dest = self.blob_path(digest);
        let dir = dest.parent().expect("blob path has a parent");
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".seaport-")
            .tempfile_in(dir)
            .map_err(io_err("creating a temporary file in", dir))?;
        let size = seaport_shared::digest::copy_verified(reader, tmp.as_file_mut(), digest)
            .map_err(|source| LayoutError::Verify {
                digest: *digest,
                source,
            })?;
        tmp.as_file().sync_all().map_err(io_err("syncing", &dest))?;
        tmp.persist(&dest).map_err(|e| LayoutError::Io {
            action: "renaming a temporary file to",
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(size)
    }

    /// Writes a small blob held in memory.
    pub fn write_blob_bytes(&self, bytes: &[u8]) -> Result<Digest, LayoutError> {
        let digest = Digest::of(bytes);
        if !self.has_blob(&digest) {
            self.write_blob(&digest, &mut &bytes[..])?;
        }
        Ok(digest)
    }

    /// Reads a blob whole, verifying it (for manifests).
    pub fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, LayoutError> {
        let path = self.blob_path(digest);
        let file = fs::File::open(&path).map_err(io_err("opening", &path))?;
        let mut bytes = Vec::new();
        file.take(limit)
            .read_to_end(&mut bytes)
            .map_err(io_err("reading", &path))?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(LayoutError::Verify {
                digest: *digest,
                source: DigestError::Mismatch {
                    expected: *digest,
                    actual,
                    size: bytes.len() as u64,
                },
            });
        }
        Ok(bytes)
    }

    fn repo_dir(&self, repo: &str) -> Result<PathBuf, LayoutError> {
        let ok = !repo.is_empty()
            && repo.split('/').all(|c| {
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && !c.starts_with('_')
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !ok {
            return Err(LayoutError::BadName {
                what: "repository",
                name: repo.to_string(),
            });
        }
        Ok(self.v2().join("repositories").join(repo))
    }

    /// Lets `repo` serve blob `digest` (a layer or config).
    pub fn link_layer(&self, repo: &str, digest: &Digest) -> Result<(), LayoutError> {
        let path = self
            .repo_dir(repo)?
            .join("_layers/sha256")
            .join(digest.hex())
            .join("link");
        write_link(&path, digest)
    }

    /// Lets `repo` serve manifest `digest` (stored as a blob already).
    pub fn link_manifest(&self, repo: &str, digest: &Digest) -> Result<(), LayoutError> {
        let path = self
            .repo_dir(repo)?
            .join("_manifests/revisions/sha256")
            .join(digest.hex())
            .join("link");
        write_link(&path, digest)
    }

    /// Points `repo:tag` at manifest `digest`.
    pub fn tag(&self, repo: &str, tag: &str, digest: &Digest) -> Result<(), LayoutError> {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(LayoutError::BadName {
                what: "tag",
                name: tag.to_string(),
            });
        }
        let tag_dir = self.repo_dir(repo)?.join("_manifests/tags").join(tag);
        write_link(
            &tag_dir.join("index/sha256").join(digest.hex()).join("link"),
            digest,
        )?;
        write_link(&tag_dir.join("current/link"), digest)
    }

    /// The manifest `repo:tag` points at, if the tag and the manifest are
    /// both present.
    pub fn resolve_tag(&self, repo: &str, tag: &str) -> Option<Digest> {
        let dir = self.repo_dir(repo).ok()?;
        let link = dir.join("_manifests/tags").join(tag).join("current/link");
        let digest = read_link(&link)?;
        self.has_manifest(repo, &digest).then_some(digest)
    }

    /// Whether `repo` can serve manifest `digest`.
    pub fn has_manifest(&self, repo: &str, digest: &Digest) -> bool {
        let Ok(dir) = self.repo_dir(repo) else {
            return false;
        };
        let link = dir
            .join("_manifests/revisions/sha256")
            .join(digest.hex())
            .join("link");
        read_link(&link) == Some(*digest) && self.has_blob(digest)
    }

    /// The repositories with at least one manifest, sorted.
    pub fn repositories(&self) -> Vec<String> {
        let base = self.v2().join("repositories");
        let mut out = Vec::new();
        for entry in walkdir::WalkDir::new(&base)
            .min_depth(1)
            .into_iter()
            .filter_entry(|e| e.file_type().is_dir())
            .flatten()
        {
            if entry.file_name() == "_manifests" {
                if let Some(repo) = entry
                    .path()
                    .parent()
                    .and_then(|p| p.strip_prefix(&base).ok())
                    .and_then(|p| p.to_str())
                {
                    out.push(repo.to_string());
                }
            }
        }
        out.sort();
        out
    }
}

fn write_link(path: &Path, digest: &Digest) -> Result<(), LayoutError> {
    let text = digest.to_string();
    if fs::read_to_string(path).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    let dir = path.parent().expect("link path has a parent");
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".seaport-")
        .tempfile_in(dir)
        .map_err(io_err("creating a temporary file in", dir))?;
    tmp.write_all(text.as_bytes())
        .map_err(io_err("writing", path))?;
    tmp.persist(path).map_err(|e| LayoutError::Io {
        action: "renaming a temporary file to",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

fn read_link(path: &Path) -> Option<Digest> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_distribution_paths_and_resolves_tags() {
        let dir = tempfile::tempdir().unwrap();
        let s = RegistryStorage::new(dir.path());
        let layer = s.write_blob_bytes(b"layer").unwrap();
        let manifest = s.write_blob_bytes(b"{\"m\":1}").unwrap();
        s.link_layer("library/busybox", &layer).unwrap();
        s.link_manifest("library/busybox", &manifest).unwrap();
        s.tag("library/busybox", "1.35", &manifest).unwrap();
        let hex = layer.hex();
        let data = dir.path().join(format!(
            "docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ));
        assert_eq!(fs::read(data).unwrap(), b"layer");
        let link = dir.path().join(format!(
            "docker/registry/v2/repositories/library/busybox/_layers/sha256/{hex}/link"
        ));
        assert_eq!(fs::read_to_string(link).unwrap(), layer.to_string());
        assert_eq!(s.resolve_tag("library/busybox", "1.35"), Some(manifest));
        assert_eq!(s.resolve_tag("library/busybox", "1.36"), None);
        assert_eq!(s.repositories(), vec!["library/busybox".to_string()]);
        // No temporary files are left beside the data.
        let names: Vec<_> = walkdir::WalkDir::new(dir.path())
            .into_iter()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".seaport-"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn a_wrong_blob_is_refused_and_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = RegistryStorage::new(dir.path());
        let claimed = Digest::of(b"right");
        let err = s.write_blob(&claimed, &mut &b"wrong"[..]).unwrap_err();
        assert!(matches!(
            err,
            LayoutError::Verify {
                source: DigestError::Mismatch { .. },
                ..
            }
        ));
        assert!(!s.has_blob(&claimed));
        let leftovers = walkdir::WalkDir::new(dir.path())
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = RegistryStorage::new(dir.path());
        let d = Digest::of(b"x");
        assert!(s.link_layer("../etc", &d).is_err());
        assert!(s.link_layer("a/_uploads", &d).is_err());
        assert!(s.tag("a", "../x", &d).is_err());
    }
}
