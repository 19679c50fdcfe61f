//! What `seaport inspect` shows: one JSON document per image, gathered from
//! its manifest, config and the sealer extension annotation; for a
//! multi-platform image, the index and one such document per platform.

use std::collections::BTreeMap;

use seaport_shared::digest::Digest;
use serde::Serialize;

use crate::oci::Platform;
use crate::oci::{
    Application, ImageExtension, Launch, ANNOTATION_LAYER_INSTRUCTION, ANNOTATION_METADATA,
    ANNOTATION_SEALER_EXTENSION,
};
use crate::store::{ResolvedImage, Store, StoreError, StoredImage};

/// One image, as `inspect` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct ImageInfo {
    /// The name it was looked up by.
    pub name: String,
    /// The manifest digest.
    pub digest: Digest,
    /// The manifest's media type (OCI, or Docker schema 2).
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The multi-platform index this manifest was picked from, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<Digest>,
    /// `os/arch[/variant]`.
    pub platform: String,
    /// `kube-installer` or `app-installer`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Sum of the compressed layer sizes.
    pub size: u64,
    /// Creation time, when the build had SOURCE_DATE_EPOCH.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// MAINTAINER.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// The layers, bottom first.
    pub layers: Vec<LayerInfo>,
    /// LABEL, KUBEVERSION and `--label`.
    pub labels: BTreeMap<String, String>,
    /// ENV.
    pub env: BTreeMap<String, String>,
    /// CMD and CMDS.
    pub cmds: Vec<String>,
    /// LAUNCH.
    pub launch: Launch,
    /// APP, CNI, CSI (with APPCMDS and APPENV).
    pub apps: Vec<Application>,
    /// The rootfs's `Metadata` file, parsed as JSON when it is JSON.
    #[serde(rename = "Metadata")]
    pub metadata: serde_json::Value,
}

/// One layer in [`ImageInfo`].
#[derive(Clone, Debug, Serialize)]
pub struct LayerInfo {
    /// Compressed digest.
    pub digest: Digest,
    /// Compressed size.
    pub size: u64,
    /// Media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The instruction that made it.
    pub instruction: String,
}

/// A multi-platform image, as `inspect` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct IndexInfo {
    /// The name it was looked up by.
    pub name: String,
    /// The index digest (the image digest).
    pub digest: Digest,
    /// OCI index or Docker manifest list.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// `os/arch[/variant]` of each manifest, in the index's order.
    pub platforms: Vec<String>,
    /// Sum of the compressed layer sizes of every platform, each layer once.
    pub size: u64,
    /// Each platform's image.
    pub manifests: Vec<ImageInfo>,
}

/// What `inspect` shows for a name.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Inspected {
    /// One manifest: the image, or the platform asked for.
    Image(Box<ImageInfo>),
    /// A multi-platform image.
    Index(IndexInfo),
}

/// Gathers [`ImageInfo`] for `name` (an image with one manifest).
pub fn inspect(store: &Store, name: &str) -> Result<ImageInfo, StoreError> {
    Ok(info(&store.resolve(name)?))
}

/// What `seaport inspect NAME [--platform P]` shows: the image; for a
/// multi-platform image every platform, or only `platform`'s manifest.
pub fn inspect_image(
    store: &Store,
    name: &str,
    platform: Option<&Platform>,
) -> Result<Inspected, StoreError> {
    let image = store.image(name)?;
    let picked = |m: &ResolvedImage| {
        let mut i = info(m);
        i.index = image.index.as_ref().map(|_| image.digest());
        i
    };
    if let Some(p) = platform {
        return Ok(Inspected::Image(Box::new(picked(image.for_platform(p)?))));
    }
    if !image.is_index() {
        return Ok(Inspected::Image(Box::new(info(&image.manifests[0].image))));
    }
    Ok(Inspected::Index(IndexInfo {
        name: image.name.to_string(),
        digest: image.digest(),
        media_type: image.descriptor.media_type.clone(),
        platforms: image.platforms(),
        size: layers_size(&image),
        manifests: image.manifests.iter().map(|m| picked(&m.image)).collect(),
    }))
}

/// The compressed size of every layer of `image`, each layer once (shared
/// layers of several platforms count once).
pub fn layers_size(image: &StoredImage) -> u64 {
    let mut seen = std::collections::BTreeSet::new();
    image
        .manifests
        .iter()
        .flat_map(|m| &m.image.manifest.layers)
        .filter(|l| seen.insert(l.digest))
        .map(|l| l.size)
        .sum()
}

/// Gathers [`ImageInfo`] from a resolved image.
pub fn info(image: &ResolvedImage) -> ImageInfo {
    let ext: ImageExtension = image
        .manifest
        .annotations
        .get(ANNOTATION_SEALER_EXTENSION)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let mut layer_history = image
        .config
        .history
        .iter()
        .filter(|h| !h.empty_layer)
        .map(|h| h.created_by.clone().unwrap_or_default());
    let layers = image
        .manifest
        .layers
        .iter()
        .map(|l| {
            let from_history = layer_history.next().unwrap_or_default();
            LayerInfo {
                digest: l.digest,
                size: l.size,
                media_type: l.media_type.clone(),
                instruction: l
                    .annotations
                    .get(ANNOTATION_LAYER_INSTRUCTION)
                    .cloned()
                    .unwrap_or(from_history),
            }
        })
        .collect::<Vec<_>>();
    let metadata = match image.manifest.annotations.get(ANNOTATION_METADATA) {
        Some(text) => {
            serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.clone()))
        }
        None => serde_json::Value::Null,
    };
    let c = &image.config;
    let platform = crate::registry::platform::platform_string(&crate::store::config_platform(c));
    ImageInfo {
        name: image.name.to_string(),
        digest: image.manifest_digest,
        media_type: image
            .manifest
            .media_type
            .clone()
            .unwrap_or_else(|| crate::oci::MEDIA_TYPE_MANIFEST.into()),
        index: None,
        platform,
        kind: ext.kind.clone(),
        size: layers.iter().map(|l| l.size).sum(),
        created: c.created.clone(),
        author: c.author.clone(),
        layers,
        labels: c.config.labels.clone(),
        env: c
            .config
            .env
            .iter()
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        cmds: ext.launch.cmds.clone(),
        launch: ext.launch.clone(),
        apps: ext.applications,
        metadata,
    }
}
