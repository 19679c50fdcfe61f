//! The cluster image on the host: its documents from an OCI image layout
//! (the agent's blob store has the same `blobs/sha256/` shape) and the
//! merged rootfs unpacked from its layers.
//!
//! A multi-platform image (an OCI index or Docker manifest list) resolves to
//! the manifest of this host's platform, which the agent knows from its
//! machine architecture (`crate::facts::host_platform`); a single-platform
//! image must be for this host's platform. Layers are read by
//! `seaport_rootfs::media::open_layer`, so tar, gzip and zstd layers under
//! OCI and Docker media types unpack natively; a layer of another media type
//! is refused, naming it, before anything is unpacked.
//!
//! The layers are verified against their digests, then unpacked in order
//! into a temporary directory beside the rootfs (whiteouts applied, every
//! entry confined to it, device nodes and setuid files refused unless
//! allowed), which is renamed into place only when all of them succeeded:
//! a failed unpack leaves no half-written rootfs. A marker file records the
//! image digest, so an unpack that finished is not repeated.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use seaport_rootfs::media;
use seaport_rootfs::oci::{ImageConfig, Index, Manifest, Platform, ANNOTATION_REF_NAME};
use seaport_rootfs::registry::platform::{platform_string, select_manifest};
use seaport_shared::digest::{verify_reader, Digest};
use seaport_shared::safetar::{self, UnpackOptions};

/// The file beside the rootfs naming the image it was unpacked from.
pub const ROOTFS_MARKER: &str = "rootfs.image";

/// Errors reading or unpacking the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A document is malformed.
    #[error("{path}: {reason}")]
    Document {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The layout has no image of this name.
    #[error("the image layout {layout} has no image named {name} (it has: {known})")]
    NotFound {
        /// The layout.
        layout: PathBuf,
        /// The wanted name.
        name: String,
        /// The names it has.
        known: String,
    },
    /// A blob does not match its digest.
    #[error(
        "blob {digest} in {layout} does not match its digest ({reason}); fetch the image again"
    )]
    Corrupt {
        /// The layout.
        layout: PathBuf,
        /// The digest.
        digest: Digest,
        /// The mismatch.
        reason: String,
    },
    /// A layer entry is refused.
    #[error("layer {digest}: {source}; nothing was installed")]
    Unpack {
        /// The layer.
        digest: Digest,
        /// The refusal.
        source: safetar::SafeTarError,
    },
    /// A layer's media type is not one the agent reads.
    #[error("{0}; nothing was installed")]
    Layer(#[from] media::LayerMediaError),
    /// The image has no manifest for this host's platform.
    #[error(
        "image {image} has no manifest for this host's platform {wanted} (it has: {available})"
    )]
    Platform {
        /// The image (manifest or index digest).
        image: Digest,
        /// This host's platform.
        wanted: String,
        /// What the image has.
        available: String,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io {
        action,
        path,
        source,
    }
}

/// An image in a layout directory.
#[derive(Clone, Debug)]
pub struct LayoutImage {
    /// The layout directory (or blob store), for messages.
    pub layout: PathBuf,
    /// The directory holding the blobs by hex digest.
    pub blobs: PathBuf,
    /// The manifest digest.
    pub digest: Digest,
    /// The manifest.
    pub manifest: Manifest,
    /// The config.
    pub config: ImageConfig,
}

impl LayoutImage {
    /// Finds `name` in the layout's `index.json`: by the ref-name annotation
    /// (full name, or its last path element, or its tag) or by digest; a
    /// multi-platform image resolves to this host's platform.
    pub fn open(layout: &Path, name: &str) -> Result<Self, ImageError> {
        Self::open_for(layout, name, &crate::facts::host_platform())
    }

    /// [`Self::open`] for `platform`.
    pub fn open_for(layout: &Path, name: &str, platform: &Platform) -> Result<Self, ImageError> {
        let desc = Self::entry(layout, name)?;
        Self::from_blobs_for(
            layout,
            &layout.join("blobs").join("sha256"),
            &desc.digest,
            platform,
        )
    }

    /// The `index.json` entry `name` picks in the layout (see [`Self::open`]):
    /// the manifest or multi-platform index the name points at.
    pub fn entry(layout: &Path, name: &str) -> Result<seaport_rootfs::oci::Descriptor, ImageError> {
        let index_path = layout.join("index.json");
        let bytes = fs::read(&index_path).map_err(io("reading", &index_path))?;
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| ImageError::Document {
            path: index_path.clone(),
            reason: e.to_string(),
        })?;
        let names: Vec<String> = index
            .manifests
            .iter()
            .filter_map(|d| d.annotations.get(ANNOTATION_REF_NAME).cloned())
            .collect();
        let wanted = seaport_rootfs::reference::ImageRef::parse(name)
            .map(|r| r.canonical())
            .unwrap_or_else(|_| name.to_string());
        let found = index.manifests.iter().find(|d| {
            d.digest.to_string() == name
                || d.annotations.get(ANNOTATION_REF_NAME).is_some_and(|n| {
                    n == name
                        || n == &wanted
                        || seaport_rootfs::reference::ImageRef::parse(n)
                            .is_ok_and(|r| r.canonical() == wanted)
                })
        });
        match (found, index.manifests.len()) {
            (Some(d), _) => Ok(d.clone()),
            (None, 1) if name.is_empty() => Ok(index.manifests[0].clone()),
            _ => Err(ImageError::NotFound {
                layout: layout.to_path_buf(),
                name: name.to_string(),
                known: names.join(", "),
            }),
        }
    }

    /// The image whose manifest (or multi-platform index) is `digest`, for
    /// this host's platform, its blobs named by hex digest in `blobs` (an
    /// agent's blob store). `origin` names it in messages.
    pub fn from_blobs(origin: &Path, blobs: &Path, digest: &Digest) -> Result<Self, ImageError> {
        Self::from_blobs_for(origin, blobs, digest, &crate::facts::host_platform())
    }

    /// The manifest `digest` stands for on `platform`: itself when it is an
    /// image manifest, else the index's manifest for the platform.
    pub fn platform_manifest(
        origin: &Path,
        blobs: &Path,
        digest: &Digest,
        platform: &Platform,
    ) -> Result<Digest, ImageError> {
        let bytes = read_verified(origin, blobs, digest)?;
        let media_type = media::document_media_type(&bytes).unwrap_or_default();
        if !media::is_index(&media_type) {
            return Ok(*digest);
        }
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| ImageError::Document {
            path: blobs.join(digest.hex()),
            reason: e.to_string(),
        })?;
        select_manifest(&index, platform)
            .map(|d| d.digest)
            .ok_or_else(|| ImageError::Platform {
                image: *digest,
                wanted: platform_string(platform),
                available: seaport_rootfs::registry::platform::available_platforms(&index)
                    .join(", "),
            })
    }

    /// [`Self::from_blobs`] for `platform`.
    pub fn from_blobs_for(
        origin: &Path,
        blobs: &Path,
        digest: &Digest,
        platform: &Platform,
    ) -> Result<Self, ImageError> {
        let path_of = |d: &Digest| blobs.join(d.hex());
        let digest = &Self::platform_manifest(origin, blobs, digest, platform)?;
        let manifest: Manifest = serde_json::from_slice(&read_verified(origin, blobs, digest)?)
            .map_err(|e| ImageError::Document {
                path: path_of(digest),
                reason: e.to_string(),
            })?;
        let config: ImageConfig =
            serde_json::from_slice(&read_verified(origin, blobs, &manifest.config.digest)?)
                .map_err(|e| ImageError::Document {
                    path: path_of(&manifest.config.digest),
                    reason: e.to_string(),
                })?;
        let own = seaport_rootfs::store::config_platform(&config);
        if !own.architecture.is_empty()
            && seaport_rootfs::registry::platform::select(&[&own], |p| Some(*p), platform).is_none()
        {
            return Err(ImageError::Platform {
                image: *digest,
                wanted: platform_string(platform),
                available: platform_string(&own),
            });
        }
        Ok(Self {
            layout: origin.to_path_buf(),
            blobs: blobs.to_path_buf(),
            digest: *digest,
            manifest,
            config,
        })
    }

    /// The sealer extension of the manifest (applications, launch), if any.
    pub fn extension(&self) -> Option<seaport_rootfs::oci::ImageExtension> {
        self.manifest
            .annotations
            .get(seaport_rootfs::oci::ANNOTATION_SEALER_EXTENSION)
            .and_then(|text| serde_json::from_str(text).ok())
    }

    /// The image env (`K=V` entries of the config).
    pub fn env(&self) -> Vec<(String, String)> {
        self.config
            .config
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Unpacks the layers into `rootfs` unless it already holds this image.
    /// Returns false when it did.
    pub fn unpack_into(&self, rootfs: &Path, opts: &UnpackOptions) -> Result<bool, ImageError> {
        self.unpack_replacing(rootfs, opts, None)
    }

    /// [`Self::unpack_into`], replacing a rootfs of another image atomically
    /// (the new tree and the old one are exchanged in one rename). The old
    /// tree is removed, or moved to `keep_old` when that is given and free
    /// (something still uses it, e.g. the registry's bind mount).
    pub fn unpack_replacing(
        &self,
        rootfs: &Path,
        opts: &UnpackOptions,
        keep_old: Option<&Path>,
    ) -> Result<bool, ImageError> {
        let parent = rootfs.parent().expect("the rootfs has a parent");
        let marker = parent.join(ROOTFS_MARKER);
        if rootfs.is_dir()
            && fs::read_to_string(&marker).is_ok_and(|m| m.trim() == self.digest.to_string())
        {
            return Ok(false);
        }
        fs::create_dir_all(parent).map_err(io("creating", parent))?;
        media::check_layers(&self.manifest.layers)?;
        for desc in &self.manifest.layers {
            let path = self.blobs.join(desc.digest.hex());
            let f = fs::File::open(&path).map_err(io("opening", &path))?;
            verify_reader(f, &desc.digest).map_err(|e| ImageError::Corrupt {
                layout: self.layout.clone(),
                digest: desc.digest,
                reason: e.to_string(),
            })?;
        }
        let tmp = tempfile::Builder::new()
            .prefix(".rootfs.unpack-")
            .tempdir_in(parent)
            .map_err(io("creating a directory in", parent))?;
        for desc in &self.manifest.layers {
            let path = self.blobs.join(desc.digest.hex());
            let f = fs::File::open(&path).map_err(io("opening", &path))?;
            safetar::unpack(media::open_layer(desc, f)?, tmp.path(), opts).map_err(|source| {
                ImageError::Unpack {
                    digest: desc.digest,
                    source,
                }
            })?;
        }
        let _ = fs::remove_file(&marker);
        let kept = tmp.keep();
        if fs::symlink_metadata(rootfs).is_ok() {
            exchange(&kept, rootfs).map_err(io("exchanging the new rootfs with", rootfs))?;
            // `kept` now holds the old tree.
            match keep_old {
                Some(p) if fs::symlink_metadata(p).is_err() => {
                    fs::rename(&kept, p).map_err(io("moving the old rootfs to", p))?
                }
                _ => fs::remove_dir_all(&kept).map_err(io("removing the old rootfs", &kept))?,
            }
        } else {
            fs::rename(&kept, rootfs).map_err(io("renaming into place", rootfs))?;
        }
        fs::write(&marker, format!("{}\n", self.digest)).map_err(io("writing", &marker))?;
        Ok(true)
    }
}

/// Swaps the trees at `a` and `b`: in one `renameat2(RENAME_EXCHANGE)` where
/// the kernel and C library have it, else in three renames (a crash between
/// them leaves the rootfs missing, and its removed marker makes the next run
/// unpack again).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
        match renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut aside = a.as_os_str().to_owned();
    aside.push(".exchange");
    let aside = PathBuf::from(aside);
    fs::rename(b, &aside)?;
    fs::rename(a, b)?;
    fs::rename(&aside, a)
}

/// `blobs/sha256/<hex>` of a layout.
pub fn blob_path(layout: &Path, digest: &Digest) -> PathBuf {
    layout.join("blobs").join("sha256").join(digest.hex())
}

fn read_verified(layout: &Path, blobs: &Path, digest: &Digest) -> Result<Vec<u8>, ImageError> {
    let path = blobs.join(digest.hex());
    let mut bytes = Vec::new();
    fs::File::open(&path)
        .and_then(|f| f.take(4 << 20).read_to_end(&mut bytes))
        .map_err(io("reading", &path))?;
    if Digest::of(&bytes) != *digest {
        return Err(ImageError::Corrupt {
            layout: layout.to_path_buf(),
            digest: *digest,
            reason: "the document's bytes hash differently".into(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use seaport_rootfs::oci::{Descriptor, MEDIA_TYPE_MANIFEST};
    use std::collections::BTreeMap;

    /// Writes a layout with one image of the given layer tars (uncompressed).
    pub(crate) fn layout_with(dir: &Path, name: &str, layers: &[Vec<u8>], env: &[&str]) -> Digest {
        let layers: Vec<(&str, Vec<u8>)> = layers
            .iter()
            .map(|l| (seaport_rootfs::oci::MEDIA_TYPE_LAYER_TAR, l.clone()))
            .collect();
        let (md, size) = image_blobs(dir, &layers, env, "amd64");
        name_in_layout(dir, name, MEDIA_TYPE_MANIFEST, md, size);
        md
    }

    /// Writes the blobs of one image (layer blobs with their media types, a
    /// config for `arch`, a manifest) into `dir/blobs/sha256`; returns the
    /// manifest's digest and size.
    pub(crate) fn image_blobs(
        dir: &Path,
        layers: &[(&str, Vec<u8>)],
        env: &[&str],
        arch: &str,
    ) -> (Digest, u64) {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let put = |bytes: &[u8]| {
            let d = Digest::of(bytes);
            fs::write(blobs.join(d.hex()), bytes).unwrap();
            d
        };
        let mut descs = Vec::new();
        for (media_type, l) in layers {
            descs.push(Descriptor {
                media_type: media_type.to_string(),
                digest: put(l),
                size: l.len() as u64,
                annotations: BTreeMap::new(),
                platform: None,
            });
        }
        let mut config = ImageConfig {
            architecture: arch.into(),
            os: "linux".into(),
            ..ImageConfig::default()
        };
        config.config.env = env.iter().map(|s| s.to_string()).collect();
        let cbytes = serde_json::to_vec(&config).unwrap();
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_MANIFEST.into()),
            config: Descriptor {
                media_type: "application/vnd.oci.image.config.v1+json".into(),
                digest: put(&cbytes),
                size: cbytes.len() as u64,
                annotations: BTreeMap::new(),
                platform: None,
            },
            layers: descs,
            annotations: BTreeMap::new(),
        };
        let mbytes = serde_json::to_vec(&manifest).unwrap();
        (put(&mbytes), mbytes.len() as u64)
    }

    /// Writes `index.json` naming the blob `digest` `name`.
    pub(crate) fn name_in_layout(
        dir: &Path,
        name: &str,
        media_type: &str,
        digest: Digest,
        size: u64,
    ) {
        let mut index = Index::new();
        index.manifests.push(Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            annotations: [(ANNOTATION_REF_NAME.to_string(), name.to_string())].into(),
            platform: None,
        });
        fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    }

    pub(crate) fn tar_of(entries: &[(&str, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            match link {
                Some(l) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_link_name(l).unwrap();
                }
                None => h.set_entry_type(tar::EntryType::Regular),
            }
            h.set_mode(
                if path.starts_with("bin/") || path.starts_with("cri/") || path.ends_with(".sh") {
                    0o755
                } else {
                    0o644
                },
            );
            h.set_size(data.len() as u64);
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn another_image_replaces_the_rootfs_and_the_old_tree_goes_or_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let open = |n: &str, content: &[u8]| {
            let layout = dir.path().join(n);
            layout_with(&layout, n, &[tar_of(&[("etc/v", content, None)])], &[]);
            LayoutImage::open(&layout, n).unwrap()
        };
        let (a, b, c) = (open("a", b"A"), open("b", b"B"), open("c", b"C"));
        let rootfs = dir.path().join("data/x/rootfs");
        let aside = dir.path().join("data/x/rootfs.previous");
        let opts = UnpackOptions::default();
        assert!(a.unpack_replacing(&rootfs, &opts, Some(&aside)).unwrap());
        assert!(!aside.exists());
        assert!(b.unpack_replacing(&rootfs, &opts, Some(&aside)).unwrap());
        assert_eq!(fs::read(rootfs.join("etc/v")).unwrap(), b"B");
        assert_eq!(fs::read(aside.join("etc/v")).unwrap(), b"A");
        // The kept tree is still in use: the replaced one is removed instead.
        assert!(c.unpack_replacing(&rootfs, &opts, Some(&aside)).unwrap());
        assert_eq!(fs::read(rootfs.join("etc/v")).unwrap(), b"C");
        assert_eq!(fs::read(aside.join("etc/v")).unwrap(), b"A");
        assert!(a.unpack_into(&rootfs, &opts).unwrap());
        assert_eq!(fs::read(rootfs.join("etc/v")).unwrap(), b"A");
        let mut names: Vec<String> = fs::read_dir(dir.path().join("data/x"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["rootfs", "rootfs.image", "rootfs.previous"]);
    }

    #[test]
    fn layers_are_merged_with_whiteouts_and_a_refused_layer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let lower = tar_of(&[("etc/a", b"A", None), ("etc/b", b"B", None)]);
        let upper = tar_of(&[("etc/.wh.a", b"", None), ("etc/b", b"B2", None)]);
        layout_with(
            &layout,
            "docker.io/library/test:1",
            &[lower, upper],
            &["X=1"],
        );
        let img = LayoutImage::open(&layout, "test:1").unwrap();
        assert_eq!(img.env(), vec![("X".to_string(), "1".to_string())]);
        let rootfs = dir.path().join("data/c/rootfs");
        assert!(img.unpack_into(&rootfs, &UnpackOptions::default()).unwrap());
        assert!(!rootfs.join("etc/a").exists());
        assert_eq!(fs::read(rootfs.join("etc/b")).unwrap(), b"B2");
        assert!(!img.unpack_into(&rootfs, &UnpackOptions::default()).unwrap());

        let evil_layout = dir.path().join("evil");
        let ok = tar_of(&[("etc/x", b"x", None)]);
        let evil = tar_of(&[("l", b"", Some("/")), ("l/etc/pwned", b"x", None)]);
        layout_with(&evil_layout, "evil:1", &[ok, evil], &[]);
        let img = LayoutImage::open(&evil_layout, "evil:1").unwrap();
        let rootfs2 = dir.path().join("data/d/rootfs");
        let err = img
            .unpack_into(&rootfs2, &UnpackOptions::default())
            .unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(!rootfs2.exists());
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("data/d")).unwrap().collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        let dotdot_layout = dir.path().join("dotdot");
        layout_with(
            &dotdot_layout,
            "dd:1",
            &[tar_of(&[("../../escape", b"x", None)])],
            &[],
        );
        let img = LayoutImage::open(&dotdot_layout, "dd:1").unwrap();
        assert!(img
            .unpack_into(&dir.path().join("data/e/rootfs"), &UnpackOptions::default())
            .is_err());
        assert!(!dir.path().join("escape").exists() && !dir.path().join("data/escape").exists());
    }

    #[test]
    fn a_corrupt_layer_is_refused_before_anything_is_unpacked() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        layout_with(&layout, "t:1", &[tar_of(&[("a", b"A", None)])], &[]);
        let img = LayoutImage::open(&layout, "t:1").unwrap();
        let layer = blob_path(&layout, &img.manifest.layers[0].digest);
        fs::write(&layer, b"garbage").unwrap();
        let err = img
            .unpack_into(&dir.path().join("r/rootfs"), &UnpackOptions::default())
            .unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        let err = LayoutImage::open(&layout, "nope:1").unwrap_err();
        assert!(err.to_string().contains("t:1"), "{err}");
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_and_zstd_layers_under_docker_and_oci_types_unpack_natively() {
        use seaport_rootfs::oci::{
            MEDIA_TYPE_DOCKER_LAYER_GZIP, MEDIA_TYPE_DOCKER_LAYER_TAR, MEDIA_TYPE_LAYER_ZSTD,
        };
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let first = tar_of(&[("etc/a", b"from gzip", None), ("etc/b", b"B", None)]);
        let second = tar_of(&[("etc/.wh.b", b"", None), ("etc/c", b"from zstd", None)]);
        let third = tar_of(&[("etc/d", b"from tar", None)]);
        let (md, size) = image_blobs(
            &layout,
            &[
                (MEDIA_TYPE_DOCKER_LAYER_GZIP, gzip(&first)),
                (MEDIA_TYPE_LAYER_ZSTD, zstd_bytes(&second)),
                (MEDIA_TYPE_DOCKER_LAYER_TAR, third),
            ],
            &[],
            "amd64",
        );
        name_in_layout(&layout, "v2s2:1", MEDIA_TYPE_MANIFEST, md, size);
        let amd64 = seaport_rootfs::registry::platform::machine_platform("x86_64");
        let img = LayoutImage::open_for(&layout, "v2s2:1", &amd64).unwrap();
        let rootfs = dir.path().join("data/c/rootfs");
        assert!(img.unpack_into(&rootfs, &UnpackOptions::default()).unwrap());
        assert_eq!(fs::read(rootfs.join("etc/a")).unwrap(), b"from gzip");
        assert!(!rootfs.join("etc/b").exists());
        assert_eq!(fs::read(rootfs.join("etc/c")).unwrap(), b"from zstd");
        assert_eq!(fs::read(rootfs.join("etc/d")).unwrap(), b"from tar");
    }

    fn zstd_bytes(bytes: &[u8]) -> Vec<u8> {
        zstd::encode_all(bytes, 3).unwrap()
    }

    #[test]
    fn an_unknown_layer_media_type_is_refused_naming_it_before_unpacking() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let ok = tar_of(&[("etc/a", b"A", None)]);
        let odd = b"encrypted bytes".to_vec();
        let (md, size) = image_blobs(
            &layout,
            &[
                (seaport_rootfs::oci::MEDIA_TYPE_LAYER_TAR, ok),
                (
                    "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
                    odd.clone(),
                ),
            ],
            &[],
            "amd64",
        );
        name_in_layout(&layout, "odd:1", MEDIA_TYPE_MANIFEST, md, size);
        let amd64 = seaport_rootfs::registry::platform::machine_platform("x86_64");
        let img = LayoutImage::open_for(&layout, "odd:1", &amd64).unwrap();
        let rootfs = dir.path().join("data/o/rootfs");
        let err = img
            .unpack_into(&rootfs, &UnpackOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&Digest::of(&odd).to_string())
                && err.contains("application/vnd.oci.image.layer.v1.tar+gzip+encrypted"),
            "{err}"
        );
        assert!(!rootfs.exists());
        assert!(fs::read_dir(dir.path().join("data/o")).map_or(true, |mut d| d.next().is_none()));
    }

    #[test]
    fn a_multi_platform_image_resolves_to_the_hosts_platform() {
        use seaport_rootfs::oci::{Platform, MEDIA_TYPE_INDEX};
        use seaport_rootfs::registry::platform::machine_platform;
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let mut index = Index::new();
        for arch in ["amd64", "arm64"] {
            let layer = tar_of(&[("etc/arch", arch.as_bytes(), None)]);
            let (md, size) = image_blobs(
                &layout,
                &[(seaport_rootfs::oci::MEDIA_TYPE_LAYER_TAR, layer)],
                &[],
                arch,
            );
            index.manifests.push(Descriptor {
                media_type: MEDIA_TYPE_MANIFEST.into(),
                digest: md,
                size,
                annotations: BTreeMap::new(),
                platform: Some(Platform {
                    architecture: arch.into(),
                    os: "linux".into(),
                    variant: None,
                }),
            });
        }
        let ibytes = serde_json::to_vec(&index).unwrap();
        let id = Digest::of(&ibytes);
        fs::write(blob_path(&layout, &id), &ibytes).unwrap();
        name_in_layout(
            &layout,
            "multi:1",
            MEDIA_TYPE_INDEX,
            id,
            ibytes.len() as u64,
        );
        for (machine, arch) in [("x86_64", "amd64"), ("aarch64", "arm64")] {
            let img =
                LayoutImage::open_for(&layout, "multi:1", &machine_platform(machine)).unwrap();
            assert_eq!(img.config.architecture, arch);
            let rootfs = dir.path().join(format!("data/{arch}/rootfs"));
            img.unpack_into(&rootfs, &UnpackOptions::default()).unwrap();
            assert_eq!(fs::read(rootfs.join("etc/arch")).unwrap(), arch.as_bytes());
            // By index digest from the blob store, as tasks name it.
            let blobs = layout.join("blobs/sha256");
            let from_store =
                LayoutImage::from_blobs_for(&layout, &blobs, &id, &machine_platform(machine))
                    .unwrap();
            assert_eq!(from_store.digest, img.digest);
        }
        let err = LayoutImage::open_for(&layout, "multi:1", &machine_platform("s390x"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linux/s390x") && err.contains("linux/amd64, linux/arm64"),
            "{err}"
        );
        // A single-platform image for another platform is refused too.
        let arm_only = dir.path().join("arm-only");
        let (md, size) = image_blobs(
            &arm_only,
            &[(
                seaport_rootfs::oci::MEDIA_TYPE_LAYER_TAR,
                tar_of(&[("a", b"A", None)]),
            )],
            &[],
            "arm64",
        );
        name_in_layout(&arm_only, "arm:1", MEDIA_TYPE_MANIFEST, md, size);
        let err = LayoutImage::open_for(&arm_only, "arm:1", &machine_platform("x86_64"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linux/amd64") && err.contains("linux/arm64"),
            "{err}"
        );
    }
}
