//! OCI image-spec documents as Seaport writes and reads them: descriptors,
//! manifests, image configs and the image index, plus the media types and
//! annotation keys of a cluster image.
//!
//! Maps are `BTreeMap`s and fields serialize in a fixed order, so the same
//! image always serializes to the same bytes (and so the same digest).

use std::collections::BTreeMap;

use seaport_shared::digest::Digest;
use serde::{Deserialize, Deserializer, Serialize};

/// Reads `null` as the default value: Docker's image configs write
/// `"Env": null`, `"Labels": null` and the like where OCI omits the field.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Media type of an OCI image manifest.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index.
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of an OCI image config.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of a zstd-compressed tar layer (what Seaport writes).
pub const MEDIA_TYPE_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Media type of a gzip-compressed tar layer (accepted when reading).
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of an uncompressed tar layer (accepted when reading).
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Docker's image manifest, schema 2 (read and kept as it is).
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker's manifest list, the index of a multi-platform image.
pub const MEDIA_TYPE_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker's image config (same fields as the OCI config).
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker's gzip-compressed tar layer.
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker's zstd-compressed tar layer (containerd and buildkit write it).
pub const MEDIA_TYPE_DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
/// Docker's uncompressed tar layer.
pub const MEDIA_TYPE_DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Annotation naming an image in an index (OCI image layout convention).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Manifest annotation holding the sealer image extension JSON
/// (type, applications, launch), as sealer writes it.
pub const ANNOTATION_SEALER_EXTENSION: &str = "sealer.image.extension";
/// Layer descriptor annotation: the Kubefile instruction that made the layer.
pub const ANNOTATION_LAYER_INSTRUCTION: &str = "io.seaport.layer.instruction";
/// Manifest annotation: the content of the rootfs's `Metadata` file.
pub const ANNOTATION_METADATA: &str = "io.seaport.image.metadata";
/// Manifest annotation: the platform the image was built for (`linux/amd64`).
pub const ANNOTATION_PLATFORM: &str = "io.seaport.image.platform";
/// Annotation on an `index.json` entry (local store, archives) holding the
/// signatures of an image: the digest they sign (see `crate::signing`).
pub const ANNOTATION_SIGNATURE_SUBJECT: &str = "io.seaport.signature.subject";
/// Label recording the `KUBEVERSION` instruction (sealer 0.9+'s label key).
pub const LABEL_KUBE_VERSION: &str = "app.alpha.sealer.io/supported-kube-version";
/// Prefix of the label sealer 0.9+ sets to `"true"` per `CNI` app (`...NAME`).
pub const LABEL_KUBE_CNI_PREFIX: &str = "cluster.alpha.sealer.io/kube-cni-";
/// Prefix of the label sealer 0.9+ sets to `"true"` per `CSI` app.
pub const LABEL_KUBE_CSI_PREFIX: &str = "cluster.alpha.sealer.io/kube-csi-";

/// A content descriptor: what a blob is, its digest and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// The media type of the referenced blob.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Its sha256 digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Free-form annotations.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    /// The platform, in index entries that carry one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// An OS/architecture pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `v8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An OCI image manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// [`MEDIA_TYPE_MANIFEST`].
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// The layers, bottom first.
    #[serde(default, deserialize_with = "null_default")]
    pub layers: Vec<Descriptor>,
    /// Image-level annotations (sealer extension, Metadata, platform).
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image index (`index.json` of a layout).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// [`MEDIA_TYPE_INDEX`].
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests, each named by an [`ANNOTATION_REF_NAME`] annotation.
    #[serde(default, deserialize_with = "null_default")]
    pub manifests: Vec<Descriptor>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_INDEX.to_string()),
            manifests: Vec::new(),
        }
    }
}

/// An OCI image config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Creation time (RFC 3339), only when SOURCE_DATE_EPOCH is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// From MAINTAINER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// e.g. `amd64`.
    pub architecture: String,
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `v8` for arm64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Runtime settings: env, cmd, labels.
    #[serde(default, deserialize_with = "null_default")]
    pub config: RuntimeConfig,
    /// The uncompressed layer digests.
    pub rootfs: RootFs,
    /// One entry per instruction.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub history: Vec<History>,
}

/// The `config` section of an image config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    /// `K=V` entries from ENV, in order of first definition.
    #[serde(
        rename = "Env",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<String>,
    /// From CMD and CMDS: commands run after the cluster is up.
    #[serde(
        rename = "Cmd",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cmd: Vec<String>,
    /// From LABEL, KUBEVERSION and `--label`.
    #[serde(
        rename = "Labels",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
}

/// The `rootfs` section of an image config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// sha256 of each uncompressed layer tar, bottom first.
    #[serde(default, deserialize_with = "null_default")]
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> Self {
        Self {
            kind: "layers".into(),
            diff_ids: Vec::new(),
        }
    }
}

/// One history entry of an image config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Creation time, only when SOURCE_DATE_EPOCH is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The instruction, as written in the Kubefile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// True when the instruction made no layer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// The sealer image extension, stored as JSON in the
/// [`ANNOTATION_SEALER_EXTENSION`] manifest annotation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageExtension {
    /// Which tool built the image.
    #[serde(rename = "buildClient", default)]
    pub build_client: BuildClient,
    /// `v1alpha1`.
    #[serde(rename = "schemaVersion", default)]
    pub schema_version: String,
    /// `kube-installer` (has a Kubernetes rootfs) or `app-installer`.
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Applications declared by APP, CNI and CSI (and inherited from FROM).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applications: Vec<Application>,
    /// What LAUNCH or CMDS asked to run.
    #[serde(default)]
    pub launch: Launch,
}

/// The build client recorded in the extension.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildClient {
    /// sealer puts its version here; Seaport writes `seaport-<version>`.
    #[serde(rename = "sealerVersion", default)]
    pub sealer_version: String,
    /// Unused by Seaport; kept for sealer compatibility.
    #[serde(rename = "buildahVersion", default)]
    pub buildah_version: String,
}

/// The launch section of the extension.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    /// Raw shell commands (CMDS, CMD).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmds: Vec<String>,
    /// Applications to launch, in order (LAUNCH).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_names: Vec<String>,
}

/// One application in a cluster image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Application {
    /// Unique name within the image.
    pub name: String,
    /// `helm`, `kube` (YAML manifests) or `shell`; empty when the files do
    /// not tell (the app has APPCMDS), which sealer writes by leaving it out.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Files (relative to the app directory) that launch it (`files` in
    /// images sealer 0.9.3+ built).
    #[serde(
        rename = "launchfiles",
        alias = "files",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub launch_files: Vec<String>,
    /// The APPCMDS words, run as one command in the app's directory
    /// (`cmds` in images sealer built).
    #[serde(
        rename = "launchCmds",
        alias = "cmds",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub launch_cmds: Vec<String>,
    /// Environment for the app's commands (APPENV).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// `app`, or `cni`/`csi` when declared by CNI or CSI.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// Directory of the app in the rootfs, e.g. `application/apps/NAME/`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
}
