//! Loading `images/*.tar` of the rootfs into the local registry: OCI
//! archives (an image layout in a tar, as `skopeo copy ... oci-archive:`
//! writes) and docker archives (`docker save`), pushed over HTTP to the
//! registry on this host with seaport-rootfs's registry client. Images keep
//! their repository path without the domain (as the registry layer does), so
//! `docker.io/library/busybox:1.36` is served as `sea.hub:5000/library/busybox:1.36`.

use std::fs;
use std::path::{Path, PathBuf};

use seaport_rootfs::oci::{Index, Manifest, ANNOTATION_REF_NAME, MEDIA_TYPE_INDEX};
use seaport_rootfs::reference::ImageRef;
use seaport_rootfs::registry::client::{ClientOptions, RegistryClient};
use seaport_shared::digest::Digest;
use seaport_shared::safetar::{self, UnpackOptions};

/// Errors loading images.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading the archive failed.
    #[error("{archive}: {reason}")]
    Archive {
        /// The tar.
        archive: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Pushing failed.
    #[error("pushing {name} from {archive} to the local registry: {reason}")]
    Push {
        /// The image.
        name: String,
        /// The tar.
        archive: PathBuf,
        /// The registry's answer.
        reason: String,
    },
}

/// Loads every `*.tar` of `images_dir` into the registry at `registry`
/// (`127.0.0.1:5000`), unpacking into `scratch`. Returns the names pushed.
/// With `ca_file` the registry is reached over TLS, its certificate
/// verified against that CA; else over plain HTTP.
pub fn load_images(
    images_dir: &Path,
    registry: &str,
    ca_file: Option<&Path>,
    scratch: &Path,
    credentials: Option<seaport_rootfs::registry::credentials::Credentials>,
) -> Result<Vec<String>, LoadError> {
    let mut tars: Vec<PathBuf> = match fs::read_dir(images_dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "tar"))
            .collect(),
        Err(_) => return Ok(Vec::new()),
    };
    tars.sort();
    let opts = ClientOptions {
        insecure: ca_file.is_none(),
        ca_files: ca_file.map(Path::to_path_buf).into_iter().collect(),
        progress: false,
        ..ClientOptions::default()
    };
    let client =
        RegistryClient::new(registry, &opts, credentials).map_err(|e| LoadError::Push {
            name: String::new(),
            archive: images_dir.to_path_buf(),
            reason: e.to_string(),
        })?;
    let mut pushed = Vec::new();
    for tar in tars {
        let arch = |reason: String| LoadError::Archive {
            archive: tar.clone(),
            reason,
        };
        let _ = fs::remove_dir_all(scratch);
        fs::create_dir_all(scratch)
            .map_err(|e| arch(format!("creating {}: {e}", scratch.display())))?;
        let f = fs::File::open(&tar).map_err(|e| arch(e.to_string()))?;
        safetar::unpack(f, scratch, &UnpackOptions::default()).map_err(|e| arch(e.to_string()))?;
        let stem = tar
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if scratch.join("index.json").is_file() {
            pushed.extend(push_oci(&client, scratch, &stem, &tar)?);
        } else if scratch.join("manifest.json").is_file() {
            pushed.extend(push_docker(&client, scratch, &tar)?);
        } else {
            return Err(arch(
                "neither an OCI archive (index.json) nor a docker archive (manifest.json)".into(),
            ));
        }
        let _ = fs::remove_dir_all(scratch);
    }
    Ok(pushed)
}

fn image_name(
    annotations: &std::collections::BTreeMap<String, String>,
    stem: &str,
) -> Option<String> {
    if let Some(n) = annotations.get("io.containerd.image.name") {
        return Some(n.clone());
    }
    let n = annotations.get(ANNOTATION_REF_NAME)?;
    if n.contains('/') || n.contains(':') {
        Some(n.clone())
    } else {
        // Only a tag: the archive's file name is the repository.
        Some(format!("{stem}:{n}"))
    }
}

fn push_oci(
    client: &RegistryClient,
    dir: &Path,
    stem: &str,
    tar: &Path,
) -> Result<Vec<String>, LoadError> {
    let arch = |reason: String| LoadError::Archive {
        archive: tar.to_path_buf(),
        reason,
    };
    let index: Index =
        serde_json::from_slice(&fs::read(dir.join("index.json")).map_err(|e| arch(e.to_string()))?)
            .map_err(|e| arch(format!("index.json: {e}")))?;
    let mut names = Vec::new();
    for desc in &index.manifests {
        let Some(name) = image_name(&desc.annotations, stem) else {
            return Err(arch(format!(
                "manifest {} has no {ANNOTATION_REF_NAME} annotation naming it",
                desc.digest
            )));
        };
        let r = ImageRef::parse(&name).map_err(|e| arch(e.to_string()))?;
        let repo = r.repository().to_string();
        let push_err = |reason: String| LoadError::Push {
            name: name.clone(),
            archive: tar.to_path_buf(),
            reason,
        };
        let blob = |d: &Digest| dir.join("blobs/sha256").join(d.hex());
        let bytes = fs::read(blob(&desc.digest)).map_err(|e| arch(e.to_string()))?;
        let mut manifests = vec![(desc.digest, desc.media_type.clone(), bytes.clone())];
        if desc.media_type == MEDIA_TYPE_INDEX
            || desc.media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
        {
            let child: Index = serde_json::from_slice(&bytes).map_err(|e| arch(e.to_string()))?;
            manifests = child
                .manifests
                .iter()
                .map(|c| Ok((c.digest, c.media_type.clone(), fs::read(blob(&c.digest))?)))
                .collect::<Result<Vec<_>, std::io::Error>>()
                .map_err(|e| arch(e.to_string()))?;
            manifests.push((desc.digest, desc.media_type.clone(), bytes));
        }
        for (digest, media, mbytes) in &manifests {
            if let Ok(m) = serde_json::from_slice::<Manifest>(mbytes) {
                for d in std::iter::once(&m.config).chain(&m.layers) {
                    client
                        .push_blob(&repo, &d.digest, d.size, &blob(&d.digest))
                        .map_err(|e| push_err(e.to_string()))?;
                }
            }
            let reference = if *digest == desc.digest {
                r.tag().unwrap_or("latest").to_string()
            } else {
                digest.to_string()
            };
            client
                .put_manifest(&repo, &reference, media, mbytes)
                .map_err(|e| push_err(e.to_string()))?;
        }
        names.push(r.canonical());
    }
    Ok(names)
}

#[derive(serde::Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn push_docker(client: &RegistryClient, dir: &Path, tar: &Path) -> Result<Vec<String>, LoadError> {
    let arch = |reason: String| LoadError::Archive {
        archive: tar.to_path_buf(),
        reason,
    };
    let inside = |rel: &str| -> Result<PathBuf, LoadError> {
        match safetar::normalize_entry_path(Path::new(rel)) {
            Ok(Some(p)) => Ok(dir.join(p)),
            _ => Err(arch(format!(
                "manifest.json names {rel:?}, outside the archive"
            ))),
        }
    };
    let entries: Vec<DockerEntry> = serde_json::from_slice(
        &fs::read(dir.join("manifest.json")).map_err(|e| arch(e.to_string()))?,
    )
    .map_err(|e| arch(format!("manifest.json: {e}")))?;
    let mut names = Vec::new();
    for e in entries {
        let describe = |path: &Path| -> Result<(Digest, u64), LoadError> {
            let f =
                fs::File::open(path).map_err(|err| arch(format!("{}: {err}", path.display())))?;
            Digest::of_reader(f).map_err(|err| arch(err.to_string()))
        };
        let config_path = inside(&e.config)?;
        let (config_digest, config_size) = describe(&config_path)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let p = inside(l)?;
            let (d, s) = describe(&p)?;
            layers.push((p, d, s));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": config_size,
                "digest": config_digest.to_string(),
            },
            "layers": layers.iter().map(|(_, d, s)| serde_json::json!({
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar",
                "size": s,
                "digest": d.to_string(),
            })).collect::<Vec<_>>(),
        });
        let mbytes = serde_json::to_vec(&manifest).expect("serializes");
        for tag in &e.repo_tags {
            let r = ImageRef::parse(tag).map_err(|err| arch(err.to_string()))?;
            let repo = r.repository().to_string();
            let push_err = |reason: String| LoadError::Push {
                name: tag.clone(),
                archive: tar.to_path_buf(),
                reason,
            };
            client
                .push_blob(&repo, &config_digest, config_size, &config_path)
                .map_err(|err| push_err(err.to_string()))?;
            for (p, d, s) in &layers {
                client
                    .push_blob(&repo, d, *s, p)
                    .map_err(|err| push_err(err.to_string()))?;
            }
            client
                .put_manifest(
                    &repo,
                    r.tag().unwrap_or("latest"),
                    "application/vnd.docker.distribution.manifest.v2+json",
                    &mbytes,
                )
                .map_err(|err| push_err(err.to_string()))?;
            names.push(r.canonical());
        }
    }
    Ok(names)
}
