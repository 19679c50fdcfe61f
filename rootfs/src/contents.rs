//! Files of an image read from its layers in the local store, as the merged
//! rootfs holds them, without unpacking anything.
//!
//! The coordinator reads what it hands to every host (the image's
//! `plugins/*.yaml`) from its own copy of the image this way, never from
//! what one host reports. Layers are read bottom first; a later layer's
//! file replaces an earlier one's, OCI whiteouts (`.wh.NAME`,
//! `.wh..wh..opq`) remove what lower layers left, and a directory replaced
//! by something else takes its files with it. Files are taken as regular
//! files only: a symlink or hard link among them is an error naming it (an
//! image is read as it was built, and a link could name anything).

use std::collections::BTreeMap;
use std::io::{self, Read};

use seaport_shared::digest::Digest;
use seaport_shared::safetar::{normalize_entry_path, WHITEOUT_OPAQUE, WHITEOUT_PREFIX};

use crate::media::{self, LayerMediaError};
use crate::oci::Platform;
use crate::registry::platform::{platform_string, select_manifest};
use crate::store::{Store, StoreError};

/// Most bytes of one file read this way.
pub const MAX_FILE: u64 = 1 << 20;

/// Errors reading an image's files.
#[derive(Debug, thiserror::Error)]
pub enum ContentsError {
    /// The image or a blob is not usable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A layer is of a format Seaport does not read.
    #[error(transparent)]
    Media(#[from] LayerMediaError),
    /// A multi-platform image has no manifest for the platform asked for.
    #[error("image {digest} has no manifest for {platform}")]
    NoPlatform {
        /// The index.
        digest: Digest,
        /// The platform asked for.
        platform: String,
    },
    /// A layer could not be read.
    #[error("reading layer {digest}: {source}")]
    Layer {
        /// The layer.
        digest: Digest,
        /// The cause.
        source: io::Error,
    },
    /// A file is a link or too large.
    #[error("{path} in layer {digest}: {reason}")]
    Unusable {
        /// The file, relative to the rootfs.
        path: String,
        /// The layer it is in.
        digest: Digest,
        /// What is wrong.
        reason: String,
    },
}

/// The files directly in `dir` (relative to the rootfs, e.g. `plugins`)
/// whose names `wanted` accepts, of the image `digest`, in name order, as
/// `(DIR/NAME, bytes)`. For a multi-platform image (an index), the files of
/// its manifest for `platform` (the first manifest when none is given).
pub fn files_in_dir(
    store: &Store,
    digest: &Digest,
    platform: Option<&Platform>,
    dir: &str,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Vec<u8>)>, ContentsError> {
    let manifest_digest = &platform_manifest(store, digest, platform)?;
    let manifest = store.manifest(manifest_digest)?;
    let dir = dir.trim_matches('/');
    // name -> bytes; a link is kept (as the layer holding it) to refuse
    // if it survives.
    let mut files: BTreeMap<String, Result<Vec<u8>, Digest>> = BTreeMap::new();
    for layer in &manifest.layers {
        let digest = layer.digest;
        let layer_err = |source| ContentsError::Layer { digest, source };
        let mut reader = media::open_layer(layer, io::BufReader::new(store.open_blob(&digest)?))?;
        let mut archive = tar::Archive::new(&mut reader);
        for entry in archive.entries().map_err(layer_err)? {
            let mut entry = entry.map_err(layer_err)?;
            let Ok(raw) = entry.path() else { continue };
            let Ok(Some(rel)) = normalize_entry_path(&raw) else {
                continue;
            };
            let Some(rel) = rel.to_str().map(str::to_string) else {
                continue;
            };
            let (parent, name) = match rel.rsplit_once('/') {
                Some((p, n)) => (p.to_string(), n.to_string()),
                None => (String::new(), rel.clone()),
            };
            let covers = |path: &str| dir == path || dir.starts_with(&format!("{path}/"));
            if name == WHITEOUT_OPAQUE {
                if covers(&parent) {
                    files.clear();
                }
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                let target = if parent.is_empty() {
                    hidden.to_string()
                } else {
                    format!("{parent}/{hidden}")
                };
                if covers(&target) {
                    files.clear();
                } else if parent == dir {
                    files.remove(hidden);
                }
                continue;
            }
            let kind = entry.header().entry_type();
            if covers(&rel) {
                if !kind.is_dir() {
                    // The directory (or one above it) replaced by a file or
                    // link: its files are gone with it.
                    files.clear();
                }
                continue;
            }
            if parent != dir || !wanted(&name) {
                continue;
            }
            match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    if entry.size() > MAX_FILE {
                        return Err(ContentsError::Unusable {
                            path: rel,
                            digest,
                            reason: format!("it is larger than {MAX_FILE} bytes"),
                        });
                    }
                    let mut bytes = Vec::with_capacity(entry.size() as usize);
                    entry.read_to_end(&mut bytes).map_err(layer_err)?;
                    files.insert(name, Ok(bytes));
                }
                k if k.is_dir() => {
                    files.remove(&name);
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    files.insert(name, Err(digest));
                }
                _ => {
                    files.remove(&name);
                }
            }
        }
        // Read to the end, so a damaged end of the layer is an error too.
        io::copy(&mut reader, &mut io::sink()).map_err(layer_err)?;
    }
    files
        .into_iter()
        .map(|(name, r)| {
            let path = format!("{dir}/{name}");
            r.map(|b| (path.clone(), b))
                .map_err(|layer| ContentsError::Unusable {
                    path,
                    digest: *manifest_digest,
                    reason: format!(
                        "it is a link (in layer {layer}); files here must be regular files"
                    ),
                })
        })
        .collect()
}

/// The manifest of `digest` for `platform`: `digest` itself unless it is an
/// index.
fn platform_manifest(
    store: &Store,
    digest: &Digest,
    platform: Option<&Platform>,
) -> Result<Digest, ContentsError> {
    let bytes = store.read_blob(digest, "manifest")?;
    if !media::document_media_type(&bytes).is_some_and(|t| media::is_index(&t)) {
        return Ok(*digest);
    }
    let index = store.index_blob(digest)?;
    let chosen = match platform {
        Some(p) => select_manifest(&index, p).ok_or_else(|| ContentsError::NoPlatform {
            digest: *digest,
            platform: platform_string(p),
        })?,
        None => index.manifests.first().ok_or(ContentsError::NoPlatform {
            digest: *digest,
            platform: "any platform".into(),
        })?,
    };
    Ok(chosen.digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{build, BuildOptions};
    use std::fs;

    fn yaml(n: &str) -> bool {
        n.ends_with(".yaml") || n.ends_with(".yml")
    }

    #[test]
    fn reads_the_merged_files_of_a_directory_across_layers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("root")).unwrap();
        let ctx = dir.path().join("ctx");
        fs::create_dir_all(ctx.join("plugins")).unwrap();
        for (n, t) in [
            ("a.yaml", "a1"),
            ("b.yml", "b1"),
            ("c.txt", "c"),
            ("d.yaml", "d"),
        ] {
            fs::write(ctx.join("plugins").join(n), t).unwrap();
        }
        fs::write(ctx.join("new-b.yml"), "b2").unwrap();
        let kubefile = dir.path().join("Kubefile");
        let run = |text: &str, tag: &str| {
            fs::write(&kubefile, text).unwrap();
            let mut opts = BuildOptions::new(&kubefile, &ctx, tag);
            opts.platform = "linux/amd64".into();
            build(&store, &opts).unwrap().digest
        };
        run("FROM scratch\nCOPY plugins plugins\n", "base:v1");
        let top = run(
            "FROM base:v1\nRUN rm plugins/a.yaml && mkdir plugins/d.yaml.d\nCOPY new-b.yml plugins/b.yml\nRUN rm plugins/d.yaml && mkdir plugins/d.yaml\n",
            "top:v1",
        );
        let got = files_in_dir(&store, &top, None, "plugins", yaml).unwrap();
        assert_eq!(got, vec![("plugins/b.yml".to_string(), b"b2".to_vec())]);
        let base = store.resolve("base:v1").unwrap().manifest_digest;
        let got = files_in_dir(&store, &base, None, "plugins/", yaml).unwrap();
        let names: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["plugins/a.yaml", "plugins/b.yml", "plugins/d.yaml"]);
        // The whole directory removed.
        let gone = run("FROM base:v1\nRUN rm -r plugins\n", "gone:v1");
        assert!(files_in_dir(&store, &gone, None, "plugins", yaml)
            .unwrap()
            .is_empty());
        // A link among the files is named.
        let linked = run(
            "FROM base:v1\nRUN ln -s /etc/passwd plugins/x.yaml\n",
            "link:v1",
        );
        let err = files_in_dir(&store, &linked, None, "plugins", yaml).unwrap_err();
        assert!(
            err.to_string().contains("plugins/x.yaml") && err.to_string().contains("link"),
            "{err}"
        );
    }

    #[test]
    fn a_multi_platform_image_is_read_for_the_platform_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("root")).unwrap();
        let ctx = dir.path().join("ctx");
        fs::create_dir_all(&ctx).unwrap();
        fs::write(ctx.join("amd64.yaml"), "for amd64").unwrap();
        fs::write(ctx.join("arm64.yaml"), "for arm64").unwrap();
        let kubefile = dir.path().join("Kubefile");
        fs::write(&kubefile, "FROM scratch\nCOPY ${ARCH}.yaml plugins/\n").unwrap();
        let mut opts = BuildOptions::new(&kubefile, &ctx, "multi:v1");
        opts.platform = "linux/amd64,linux/arm64".into();
        let index = build(&store, &opts).unwrap().digest;
        for (arch, want) in [("arm64", "for arm64"), ("amd64", "for amd64")] {
            let p = crate::registry::platform::machine_platform(arch);
            let got = files_in_dir(&store, &index, Some(&p), "plugins", yaml).unwrap();
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!(got[0].1, want.as_bytes(), "{arch}");
        }
        let s390x = crate::registry::platform::machine_platform("s390x");
        let err = files_in_dir(&store, &index, Some(&s390x), "plugins", yaml).unwrap_err();
        assert!(err.to_string().contains("linux/s390x"), "{err}");
    }
}
