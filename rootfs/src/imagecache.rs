//! Build-time caching of container images into the image's `registry/`.
//!
//! A cluster image carries every container image its cluster needs, so the
//! site needs no registry of its own. After the Kubefile ran, the build
//! hands the merged rootfs to [`RegistryImageCache`], which
//!
//! 1. collects image names, as sealer does, from
//!    - `image:` fields in every YAML document under `manifests/` and in the
//!      apps' files under `application/` (APP, CNI, CSI);
//!    - `manifests/imageList`, one name a line (`#` comments and blank lines
//!      ignored);
//!    - Helm charts (any directory with a `Chart.yaml` under `charts/` or
//!      `application/`): `repository` + `tag` (+ `registry`, `digest`)
//!      mappings and `image:` strings in `values.yaml`, the chart's
//!      `appVersion` when the tag is empty, and literal `image:` lines in
//!      `templates/` (lines with `{{` are skipped: Helm is not run);
//!    - `--image-list FILE`; minus the names in `--ignored-image-list FILE`;
//! 2. pulls each for the target platform, with the credentials from
//!    `seaport login`, verifying every blob as it is written;
//! 3. writes them into distribution's storage layout under
//!    `out/registry/docker/registry/v2` (see [`crate::registry::layout`]),
//!    which the build turns into one more layer.
//!
//! Repository paths keep everything but the domain: `quay.io/coreos/etcd:v3`
//! is stored as repository `coreos/etcd`, tag `v3`, so a mirror for any
//! domain resolves it on the cluster's registry, as with sealer. The domains
//! are recorded in `registry/seaport-images.json` ([`IMAGE_INDEX_FILE`]),
//! which the install reads to configure containerd mirrors for every domain
//! present. Two images from different domains with the same repository path
//! would be indistinguishable behind the mirrors: the build fails naming
//! both. Images already in the base image's `registry/` (by tag or digest)
//! are not pulled again, and blobs already there are not fetched again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_norway::Value;

use crate::build::ImageCache;
use crate::oci::Platform;
use crate::reference::ImageRef;
use crate::registry::client::{ClientOptions, RegistryClient, RegistryError};
use crate::registry::copy::{fetch_image, for_each_parallel, CopyError};
use crate::registry::credentials::{CredentialStore, CredentialsError};
use crate::registry::layout::{LayoutError, RegistryStorage};
use crate::registry::platform::{host_platform, platform_string};

/// The index of cached images, beside `docker/` in `registry/`.
pub const IMAGE_INDEX_FILE: &str = "seaport-images.json";

/// Errors from collecting or caching images.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file naming images could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A name in a file is not a valid image name.
    #[error("{path}:{line}: {reason}")]
    BadName {
        /// The file.
        path: PathBuf,
        /// Its line (1-based).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The credentials file could not be read.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// One image could not be pulled.
    #[error("pulling container image {image} (named in {origin}) for {platform}: {source}")]
    Pull {
        /// The image, fully qualified.
        image: String,
        /// Which file named it.
        origin: String,
        /// The platform.
        platform: String,
        /// The cause.
        source: Box<CopyError>,
    },
    /// Two domains would share a repository path in the registry.
    #[error("container images {first} and {second} would both be stored as repository {repository}; images from different registries cannot share a repository path (drop one with --ignored-image-list)")]
    Collision {
        /// The shared repository path.
        repository: String,
        /// One image.
        first: String,
        /// The other.
        second: String,
    },
    /// Writing the registry tree failed.
    #[error("writing the registry layer: {0}")]
    Layout(#[from] LayoutError),
    /// The index of cached images is malformed.
    #[error("{path} is not a valid image index: {reason}")]
    Index {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// One image cached in a `registry/` tree.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CachedImage {
    /// Fully qualified name, e.g. `quay.io/coreos/etcd:v3.5.0`.
    pub name: String,
    /// The registry domain it came from.
    pub domain: String,
    /// Its repository path in the cached registry (`coreos/etcd`).
    pub repository: String,
    /// The manifest (or index) digest the name resolves to there.
    pub digest: String,
}

/// `registry/seaport-images.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageIndex {
    /// The cached images, sorted by name.
    pub images: Vec<CachedImage>,
}

impl ImageIndex {
    /// Reads the index in `registry_dir` (empty when there is none). Every
    /// domain must be `HOST[:PORT]`: the index comes with the image, and
    /// each domain becomes a directory on hosts (containerd's
    /// `certs.d/DOMAIN/hosts.toml`).
    pub fn load(registry_dir: &Path) -> Result<Self, CacheError> {
        let path = registry_dir.join(IMAGE_INDEX_FILE);
        let index: Self = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CacheError::Index {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(CacheError::Read { path, source }),
        };
        for image in &index.images {
            crate::reference::validate_registry(&image.domain).map_err(|reason| {
                CacheError::Index {
                    path: path.clone(),
                    reason: format!("image {:?}: {reason}", image.name),
                }
            })?;
        }
        Ok(index)
    }

    /// The registry domains present, sorted: the mirrors the cluster's
    /// container runtime needs.
    pub fn domains(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self.images.iter().map(|i| i.domain.as_str()).collect();
        set.into_iter().map(str::to_string).collect()
    }
}

/// The registry domains of the images cached in a rootfs's `registry/`
/// directory (from [`IMAGE_INDEX_FILE`]).
pub fn cached_domains(registry_dir: &Path) -> Result<Vec<String>, CacheError> {
    Ok(ImageIndex::load(registry_dir)?.domains())
}

/// Options of [`RegistryImageCache`].
#[derive(Clone, Debug)]
pub struct ImageCacheOptions {
    /// Extra image names, one a line (`--image-list`).
    pub image_list: Option<PathBuf>,
    /// Names not to cache, one a line (`--ignored-image-list`).
    pub ignored_image_list: Option<PathBuf>,
    /// The platform to pull for.
    pub platform: Platform,
    /// TLS, insecure registries, retries.
    pub client: ClientOptions,
    /// Where `seaport login` stored credentials; `None`: anonymous.
    pub credentials: Option<CredentialStore>,
}

/// The build hook that caches container images (see the module docs).
#[derive(Clone, Debug)]
pub struct RegistryImageCache {
    opts: ImageCacheOptions,
}

/// Where a name was found, for error messages.
#[derive(Clone, Debug)]
struct Named {
    image: ImageRef,
    origin: String,
}

impl RegistryImageCache {
    /// A cache with explicit options.
    pub fn new(opts: ImageCacheOptions) -> Self {
        Self { opts }
    }

    /// The cache as `seaport build` flags describe it: `root` is the Seaport
    /// root (for `certs.d`), credentials from the docker config.json. The
    /// build passes each platform it builds (as the build hook); the
    /// options' platform (this host's) serves direct calls of
    /// [`Self::cache_into`].
    pub fn from_flags(
        root: &Path,
        image_list: Option<&Path>,
        ignored_image_list: Option<&Path>,
        insecure_registries: &[String],
    ) -> Result<Self, CacheError> {
        Ok(Self::new(ImageCacheOptions {
            image_list: image_list.map(Path::to_path_buf),
            ignored_image_list: ignored_image_list.map(Path::to_path_buf),
            platform: host_platform(),
            client: ClientOptions {
                insecure_registries: insecure_registries.to_vec(),
                certs_dirs: ClientOptions::default_certs_dirs(root),
                ..ClientOptions::default()
            },
            credentials: Some(CredentialStore::default_location()?),
        }))
    }

    /// The images `rootfs` (plus the image lists) names, without the ignored
    /// ones, sorted and without duplicates.
    pub fn images(&self, rootfs: &Path) -> Result<Vec<ImageRef>, CacheError> {
        Ok(self
            .collect(rootfs)?
            .into_values()
            .map(|n| n.image)
            .collect())
    }

    fn collect(&self, rootfs: &Path) -> Result<BTreeMap<String, Named>, CacheError> {
        let mut found: Vec<(String, PathBuf, usize)> = Vec::new();
        scan_rootfs(rootfs, &mut found)?;
        if let Some(list) = &self.opts.image_list {
            found.extend(read_image_list(list)?);
        }
        let mut ignored = BTreeSet::new();
        if let Some(list) = &self.opts.ignored_image_list {
            for (name, path, line) in read_image_list(list)? {
                let image = parse_name(&name, &path, line)?;
                ignored.insert(image.canonical());
            }
        }
        let mut out = BTreeMap::new();
        for (name, path, line) in found {
            let image = parse_name(&name, &path, line)?;
            let key = image.canonical();
            if ignored.contains(&key) {
                continue;
            }
            let origin = match path.strip_prefix(rootfs) {
                Ok(rel) => format!("{}:{line}", rel.display()),
                Err(_) => format!("{}:{line}", path.display()),
            };
            out.entry(key).or_insert(Named { image, origin });
        }
        Ok(out)
    }

    /// Caches the images into `out/registry`. Returns whether anything was
    /// written.
    pub fn cache_into(&self, rootfs: &Path, out: &Path) -> Result<bool, CacheError> {
        let wanted = self.collect(rootfs)?;
        if wanted.is_empty() {
            return Ok(false);
        }
        let base_dir = rootfs.join("registry");
        let base = RegistryStorage::new(&base_dir);
        let out_dir = out.join("registry");
        let target = RegistryStorage::new(&out_dir);
        let mut index = ImageIndex::load(&base_dir)?;
        // Which domain owns each repository path.
        let mut owners: HashMap<String, String> = HashMap::new();
        for cached in &index.images {
            owners
                .entry(cached.repository.clone())
                .or_insert(cached.name.clone());
        }
        let platform = platform_string(&self.opts.platform);
        let mut clients: HashMap<String, RegistryClient> = HashMap::new();
        let mut wrote = false;
        // Check every name before pulling anything.
        for named in wanted.values() {
            let image = &named.image;
            let repo = image.repository().to_string();
            match owners.get(&repo) {
                Some(owner) => {
                    let owner_ref = ImageRef::parse(owner).ok();
                    if owner_ref.as_ref().map(|o| o.registry()) != Some(image.registry()) {
                        return Err(CacheError::Collision {
                            repository: repo,
                            first: owner.clone(),
                            second: image.canonical(),
                        });
                    }
                }
                None => {
                    owners.insert(repo, image.canonical());
                }
            }
        }
        for named in wanted.values() {
            let image = &named.image;
            if let Some(digest) = cached_digest(&base, image) {
                tracing::info!(image = %image.canonical(), "already in the base image's registry");
                record(&mut index, image, &digest);
                continue;
            }
            if !clients.contains_key(image.registry()) {
                let client = self
                    .client(image.registry())
                    .map_err(|e| CacheError::Pull {
                        image: image.canonical(),
                        origin: named.origin.clone(),
                        platform: platform.clone(),
                        source: Box::new(e),
                    })?;
                clients.insert(image.registry().to_string(), client);
            }
            let client = &clients[image.registry()];
            let digest =
                self.pull_one(client, image, &base, &target)
                    .map_err(|e| CacheError::Pull {
                        image: image.canonical(),
                        origin: named.origin.clone(),
                        platform: platform.clone(),
                        source: Box::new(e),
                    })?;
            client
                .progress()
                .println(&format!("cached {} ({digest})", image.canonical()));
            record(&mut index, image, &digest);
            wrote = true;
        }
        if wrote {
            index.images.sort();
            index.images.dedup();
            let bytes = serde_json::to_vec_pretty(&index).expect("the index serializes");
            fs::create_dir_all(&out_dir).map_err(|source| CacheError::Read {
                path: out_dir.clone(),
                source,
            })?;
            crate::store::write_file_atomic(&out_dir.join(IMAGE_INDEX_FILE), &bytes).map_err(
                |e| CacheError::Index {
                    path: out_dir.join(IMAGE_INDEX_FILE),
                    reason: e.to_string(),
                },
            )?;
        }
        Ok(wrote)
    }

    fn client(&self, registry: &str) -> Result<RegistryClient, CopyError> {
        let credentials = match &self.opts.credentials {
            Some(store) => store.get(registry).map_err(|e| {
                CopyError::Registry(RegistryError::Client {
                    registry: registry.to_string(),
                    reason: e.to_string(),
                })
            })?,
            None => None,
        };
        Ok(RegistryClient::new(
            registry,
            &self.opts.client,
            credentials,
        )?)
    }

    /// Pulls one image into `target`; returns the digest its name resolves to.
    fn pull_one(
        &self,
        client: &RegistryClient,
        image: &ImageRef,
        base: &RegistryStorage,
        target: &RegistryStorage,
    ) -> Result<String, CopyError> {
        let remote = fetch_image(client, image, &self.opts.platform)?;
        let repo = image.repository();
        let layout = |e: LayoutError| {
            CopyError::Registry(RegistryError::Io {
                what: "writing the registry layer".into(),
                source: std::io::Error::other(e.to_string()),
            })
        };
        let blobs = remote.blobs();
        for_each_parallel(&blobs, client.options().parallel, |d| {
            if !base.has_blob(&d.digest) && !target.has_blob(&d.digest) {
                client.download_blob(repo, &d.digest, Some(d.size), &mut |reader| {
                    target.write_blob(&d.digest, reader).map_err(|e| match e {
                        LayoutError::Verify { source, .. } => source,
                        other => seaport_shared::digest::DigestError::Io(std::io::Error::other(
                            other.to_string(),
                        )),
                    })
                })?;
            }
            target.link_layer(repo, &d.digest).map_err(layout)?;
            Ok::<_, CopyError>(())
        })?;
        target
            .write_blob_bytes(&remote.manifest_bytes)
            .map_err(layout)?;
        target.link_manifest(repo, &remote.digest).map_err(layout)?;
        // A name pinned to an index digest keeps the index (it must resolve
        // to that digest); a tag points at the target platform's manifest.
        let top = match (&remote.index, image.digest()) {
            (Some((bytes, _, digest)), Some(_)) => {
                target.write_blob_bytes(bytes).map_err(layout)?;
                target.link_manifest(repo, digest).map_err(layout)?;
                *digest
            }
            _ => remote.digest,
        };
        if let Some(tag) = image.tag() {
            target.tag(repo, tag, &top).map_err(layout)?;
        }
        Ok(top.to_string())
    }
}

impl ImageCache for RegistryImageCache {
    fn cache(
        &self,
        rootfs: &Path,
        out: &Path,
        platform: &Platform,
    ) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
        let mut for_platform = self.clone();
        for_platform.opts.platform = platform.clone();
        Ok(for_platform.cache_into(rootfs, out)?)
    }
}

/// The digest `image` resolves to in `storage`, if it is fully there.
fn cached_digest(
    storage: &RegistryStorage,
    image: &ImageRef,
) -> Option<seaport_shared::digest::Digest> {
    let repo = image.repository();
    if let Some(d) = image.digest() {
        return storage.has_manifest(repo, d).then_some(*d);
    }
    storage.resolve_tag(repo, image.tag()?)
}

fn record(index: &mut ImageIndex, image: &ImageRef, digest: &impl ToString) {
    let entry = CachedImage {
        name: image.canonical(),
        domain: image.registry().to_string(),
        repository: image.repository().to_string(),
        digest: digest.to_string(),
    };
    index.images.retain(|i| i.name != entry.name);
    index.images.push(entry);
}

fn parse_name(name: &str, path: &Path, line: usize) -> Result<ImageRef, CacheError> {
    ImageRef::parse(name).map_err(|e| CacheError::BadName {
        path: path.to_path_buf(),
        line,
        reason: e.to_string(),
    })
}

/// Reads an image list: one name a line; `#` starts a comment.
pub fn read_image_list(path: &Path) -> Result<Vec<(String, PathBuf, usize)>, CacheError> {
    let text = fs::read_to_string(path).map_err(|source| CacheError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(image_list_names(&text)
        .into_iter()
        .map(|(name, line)| (name, path.to_path_buf(), line))
        .collect())
}

/// The names in an image list's text, with their 1-based line numbers.
pub fn image_list_names(text: &str) -> Vec<(String, usize)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let line_text = line.split('#').next().unwrap_or_default().trim();
            (!line_text.is_empty()).then(|| (line_text.to_string(), i + 1))
        })
        .collect()
}

/// Whether a value is a template or variable rather than an image name.
fn is_templated(value: &str) -> bool {
    value.contains("{{") || value.contains("${") || value.contains("$(")
}

/// Image names in a YAML text: every `image:` string in every document.
/// Text that does not parse as YAML (templates) is scanned line by line.
pub fn yaml_image_names(text: &str) -> Vec<(String, usize)> {
    let mut names = Vec::new();
    let mut parsed = true;
    for doc in serde_norway::Deserializer::from_str(text) {
        match Value::deserialize(doc) {
            Ok(value) => walk_image_fields(&value, &mut names),
            Err(_) => {
                parsed = false;
                break;
            }
        }
    }
    if !parsed {
        return literal_image_lines(text);
    }
    names
        .into_iter()
        .filter(|n| !is_templated(n))
        .map(|n| {
            let line = line_of(text, &n);
            (n, line)
        })
        .collect()
}

fn walk_image_fields(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Mapping(map) => {
            for (k, v) in map {
                if k.as_str() == Some("image") {
                    if let Some(s) = v.as_str() {
                        out.push(s.trim().to_string());
                        continue;
                    }
                }
                walk_image_fields(v, out);
            }
        }
        Value::Sequence(seq) => seq.iter().for_each(|v| walk_image_fields(v, out)),
        Value::Tagged(t) => walk_image_fields(&t.value, out),
        _ => {}
    }
}

/// `image:` lines with a literal value (templates, or YAML that does not parse).
pub fn literal_image_lines(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start().trim_start_matches("- ").trim_start();
        let Some(rest) = t.strip_prefix("image:") else {
            continue;
        };
        let value = rest.split(" #").next().unwrap_or_default().trim();
        let value = value.trim_matches(|c| c == '"' || c == '\'');
        if value.is_empty()
            || is_templated(value)
            || value.starts_with(['{', '[', '&', '*', '|', '>'])
        {
            continue;
        }
        out.push((value.to_string(), i + 1));
    }
    out
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map_or(1, |i| i + 1)
}

/// Image names in a chart's `values.yaml`: `repository`/`tag` mappings
/// (with optional `registry` and `digest`) and `image:` strings. An empty
/// tag falls back to `app_version`, as most charts' templates do.
pub fn values_image_names(text: &str, app_version: Option<&str>) -> Vec<(String, usize)> {
    let Ok(value) = serde_norway::from_str::<Value>(text) else {
        return literal_image_lines(text);
    };
    let mut names = Vec::new();
    walk_values(&value, app_version, &mut names);
    names
        .into_iter()
        .filter(|n| !is_templated(n))
        .map(|n| {
            let repo_part = n.split(['@']).next().unwrap_or(&n);
            let probe = repo_part.rsplit('/').next().unwrap_or(repo_part);
            let probe = probe.split(':').next().unwrap_or(probe);
            let line = line_of(text, probe);
            (n, line)
        })
        .collect()
}

fn scalar(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn walk_values(value: &Value, app_version: Option<&str>, out: &mut Vec<String>) {
    match value {
        Value::Mapping(map) => {
            let get = |k: &str| map.get(Value::String(k.to_string()));
            if let Some(repository) = scalar(get("repository")) {
                let mut name = match scalar(get("registry")) {
                    Some(reg) => format!("{}/{repository}", reg.trim_end_matches('/')),
                    None => repository,
                };
                let tag = scalar(get("tag")).or_else(|| app_version.map(str::to_string));
                let digest = scalar(get("digest"));
                let last = name.rsplit('/').next().unwrap_or_default().to_string();
                if let Some(tag) = tag {
                    if !last.contains(':') {
                        name = format!("{name}:{tag}");
                    }
                }
                if let Some(d) = digest {
                    name = format!("{name}@{d}");
                }
                out.push(name);
            }
            for (k, v) in map {
                if k.as_str() == Some("image") {
                    if let Some(s) = v.as_str() {
                        let s = s.trim();
                        let last = s.rsplit('/').next().unwrap_or_default();
                        match scalar(get("tag")) {
                            Some(tag) if !last.contains(':') && !s.contains('@') => {
                                out.push(format!("{s}:{tag}"))
                            }
                            _ => out.push(s.to_string()),
                        }
                        continue;
                    }
                }
                walk_values(v, app_version, out);
            }
        }
        Value::Sequence(seq) => seq.iter().for_each(|v| walk_values(v, app_version, out)),
        Value::Tagged(t) => walk_values(&t.value, app_version, out),
        _ => {}
    }
}

fn is_yaml(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "yaml" || e == "yml")
}

/// Scans `manifests/`, `charts/` and `application/` of a rootfs.
fn scan_rootfs(rootfs: &Path, found: &mut Vec<(String, PathBuf, usize)>) -> Result<(), CacheError> {
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| CacheError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let image_list = rootfs.join("manifests").join("imageList");
    if image_list.is_file() {
        found.extend(read_image_list(&image_list)?);
    }
    for top in ["manifests", "charts", crate::build::APP_ROOT] {
        let dir = rootfs.join(top);
        if !dir.is_dir() {
            continue;
        }
        let mut files: Vec<PathBuf> = Vec::new();
        let mut charts: Vec<PathBuf> = Vec::new();
        for entry in walkdir::WalkDir::new(&dir).sort_by_file_name() {
            let entry = entry.map_err(|e| CacheError::Read {
                path: dir.clone(),
                source: e.into(),
            })?;
            if entry.file_type().is_dir() && entry.path().join("Chart.yaml").is_file() {
                charts.push(entry.path().to_path_buf());
            } else if entry.file_type().is_file() {
                let p = entry.path();
                if is_yaml(p) {
                    files.push(p.to_path_buf());
                } else if p.extension().is_some_and(|e| e == "tgz") {
                    tracing::warn!(chart = %p.display(), "packaged charts (.tgz) are not scanned for images; unpack the chart or list its images in manifests/imageList");
                }
            }
        }
        for file in files {
            if charts.iter().any(|c| file.starts_with(c)) {
                continue;
            }
            let text = read(&file)?;
            found.extend(
                yaml_image_names(&text)
                    .into_iter()
                    .map(|(n, l)| (n, file.clone(), l)),
            );
        }
        for chart in charts {
            let chart_yaml = read(&chart.join("Chart.yaml"))?;
            let app_version = serde_norway::from_str::<Value>(&chart_yaml)
                .ok()
                .and_then(|v| scalar(v.get("appVersion")));
            let values = chart.join("values.yaml");
            if values.is_file() {
                let text = read(&values)?;
                found.extend(
                    values_image_names(&text, app_version.as_deref())
                        .into_iter()
                        .map(|(n, l)| (n, values.clone(), l)),
                );
            }
            let templates = chart.join("templates");
            if templates.is_dir() {
                for entry in walkdir::WalkDir::new(&templates)
                    .sort_by_file_name()
                    .into_iter()
                    .flatten()
                {
                    let p = entry.path();
                    let is_template = p
                        .extension()
                        .is_some_and(|e| e == "yaml" || e == "yml" || e == "tpl");
                    if entry.file_type().is_file() && is_template {
                        let text = read(p)?;
                        found.extend(
                            literal_image_lines(&text)
                                .into_iter()
                                .map(|(n, l)| (n, p.to_path_buf(), l)),
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: Vec<(String, usize)>) -> Vec<String> {
        v.into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn image_fields_in_every_document() {
        let text = "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: a\n    image: nginx:1.25\n  initContainers:\n  - image: \"quay.io/x/y@sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n---\nkind: Deployment\nspec:\n  template:\n    spec:\n      containers:\n        - image: busybox\n          name: b\n";
        let found = yaml_image_names(text);
        assert_eq!(
            names(found.clone()),
            vec![
                "nginx:1.25",
                "quay.io/x/y@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "busybox"
            ]
        );
        assert_eq!(found[0].1, 6);
        assert_eq!(found[2].1, 15);
    }

    #[test]
    fn templates_fall_back_to_literal_lines() {
        let text = "spec:\n  containers:\n  - image: {{ .Values.image }}\n  - image: \"registry.k8s.io/pause:3.9\" # comment\n{{- if .Values.x }}\n";
        assert_eq!(
            names(yaml_image_names(text)),
            vec!["registry.k8s.io/pause:3.9"]
        );
    }

    #[test]
    fn image_list_skips_comments_and_blanks() {
        let got = image_list_names("# header\n\nnginx:1\n  quay.io/a/b:2  # pinned\n");
        assert_eq!(
            got,
            vec![("nginx:1".to_string(), 3), ("quay.io/a/b:2".to_string(), 4)]
        );
    }

    #[test]
    fn chart_values_patterns() {
        let values = "image:\n  repository: bitnami/redis\n  tag: 7.2.0\nsidecar:\n  image:\n    registry: quay.io\n    repository: prometheus/exporter\n    tag: \"\"\nother:\n  image: docker.io/library/busybox:1.36\nplain:\n  image: alpine\n  tag: 3.19\n";
        let got = names(values_image_names(values, Some("1.0.0")));
        assert_eq!(
            got,
            vec![
                "bitnami/redis:7.2.0",
                "quay.io/prometheus/exporter:1.0.0",
                "docker.io/library/busybox:1.36",
                "alpine:3.19"
            ]
        );
    }

    #[test]
    fn collects_from_a_rootfs_minus_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("manifests")).unwrap();
        fs::write(
            root.join("manifests/app.yaml"),
            "spec:\n  image: nginx:1.25\n",
        )
        .unwrap();
        fs::write(
            root.join("manifests/imageList"),
            "busybox:1.36\n# c\nquay.io/a/b:1\n",
        )
        .unwrap();
        let chart = root.join("charts/redis");
        fs::create_dir_all(chart.join("templates")).unwrap();
        fs::write(chart.join("Chart.yaml"), "name: redis\nappVersion: 7.0.0\n").unwrap();
        fs::write(
            chart.join("values.yaml"),
            "image:\n  repository: bitnami/redis\n",
        )
        .unwrap();
        fs::write(
            chart.join("templates/dep.yaml"),
            "    image: {{ .Values.image.repository }}\n    image: registry.k8s.io/pause:3.9\n",
        )
        .unwrap();
        let app = root.join("application/apps/calico");
        fs::create_dir_all(&app).unwrap();
        fs::write(
            app.join("calico.yaml"),
            "containers:\n- image: docker.io/calico/cni:v3.26.1\n",
        )
        .unwrap();
        let ignored = root.join("ignored");
        fs::write(&ignored, "docker.io/library/busybox:1.36\n").unwrap();
        let extra = root.join("extra");
        fs::write(&extra, "ghcr.io/o/r:2\n").unwrap();
        let cache = RegistryImageCache::new(ImageCacheOptions {
            image_list: Some(extra),
            ignored_image_list: Some(ignored),
            platform: host_platform(),
            client: ClientOptions::default(),
            credentials: None,
        });
        let got: Vec<String> = cache
            .images(root)
            .unwrap()
            .iter()
            .map(|i| i.canonical())
            .collect();
        assert_eq!(
            got,
            vec![
                "docker.io/bitnami/redis:7.0.0",
                "docker.io/calico/cni:v3.26.1",
                "docker.io/library/nginx:1.25",
                "ghcr.io/o/r:2",
                "quay.io/a/b:1",
                "registry.k8s.io/pause:3.9",
            ]
        );
    }

    #[test]
    fn a_bad_name_is_reported_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("manifests")).unwrap();
        fs::write(root.join("manifests/imageList"), "nginx:1\nNot_Valid:x\n").unwrap();
        let cache = RegistryImageCache::new(ImageCacheOptions {
            image_list: None,
            ignored_image_list: None,
            platform: host_platform(),
            client: ClientOptions::default(),
            credentials: None,
        });
        let err = cache.images(root).unwrap_err().to_string();
        assert!(err.contains("manifests/imageList:2"), "{err}");
        assert!(!root.join("out").exists());
    }
}
