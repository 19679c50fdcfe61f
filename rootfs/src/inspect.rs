//! What `seaport inspect` shows: one JSON document per image, gathered from
//! its manifest, config and the sealer extension annotation.

use std::collections::BTreeMap;

use seaport_shared::digest::Digest;
use serde::Serialize;

use crate::oci::{
    Application, ImageExtension, Launch, ANNOTATION_LAYER_INSTRUCTION, ANNOTATION_METADATA,
    ANNOTATION_SEALER_EXTENSION,
};
use crate::store::{ResolvedImage, Store, StoreError};

/// One image, as `inspect` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct ImageInfo {
    /// The name it was looked up by.
    pub name: String,
    /// The manifest digest.
    pub digest: Digest,
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

/// Gathers [`ImageInfo`] for `name`.
pub fn inspect(store: &Store, name: &str) -> Result<ImageInfo, StoreError> {
    Ok(info(&store.resolve(name)?))
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
    let platform = match &c.variant {
        Some(v) => format!("{}/{}/{v}", c.os, c.architecture),
        None => format!("{}/{}", c.os, c.architecture),
    };
    ImageInfo {
        name: image.name.to_string(),
        digest: image.manifest_digest,
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
