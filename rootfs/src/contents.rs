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
use crate::store::{Store, StoreError};

/// Most bytes of one file read this way.
pub const MAX_FILE: u64 = 1 << 20;

/// Errors reading an image's files.
#[derive(Debug, thiserror::Error)]
pub enum ContentsError {
    /// The image or a blob is not usable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A layer's media type is not one Seaport reads.
    #[error(transparent)]
    Media(#[from] LayerMediaError),
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
/// whose names `wanted` accepts, of the image `manifest_digest`, in name
/// order, as `(DIR/NAME, bytes)`.
pub fn files_in_dir(
    store: &Store,
    manifest_digest: &Digest,
    dir: &str,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Vec<u8>)>, ContentsError> {
    let manifest = store.manifest(manifest_digest)?;
    let dir = dir.trim_matches('/');
    // name -> bytes; a link is kept (as the layer holding it) to refuse
    // if it survives.
    let mut files: BTreeMap<String, Result<Vec<u8>, Digest>> = BTreeMap::new();
    for layer in &manifest.layers {
        let digest = layer.digest;
        let layer_err = |source| ContentsError::Layer { digest, source };
        let mut reader = media::open_layer(layer, store.open_blob(&digest)?)?;
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
        // Read to the end: a layer that does not decompress is an error.
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
        let got = files_in_dir(&store, &top, "plugins", yaml).unwrap();
        assert_eq!(got, vec![("plugins/b.yml".to_string(), b"b2".to_vec())]);
        let base = store.resolve("base:v1").unwrap().manifest_digest;
        let got = files_in_dir(&store, &base, "plugins/", yaml).unwrap();
        let names: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["plugins/a.yaml", "plugins/b.yml", "plugins/d.yaml"]);
        // The whole directory removed.
        let gone = run("FROM base:v1\nRUN rm -r plugins\n", "gone:v1");
        assert!(files_in_dir(&store, &gone, "plugins", yaml)
            .unwrap()
            .is_empty());
        // A link among the files is named.
        let linked = run(
            "FROM base:v1\nRUN ln -s /etc/passwd plugins/x.yaml\n",
            "link:v1",
        );
        let err = files_in_dir(&store, &linked, "plugins", yaml).unwrap_err();
        assert!(
            err.to_string().contains("plugins/x.yaml") && err.to_string().contains("link"),
            "{err}"
        );
    }
}
