//! Test support: a real registry (see `server.rs`) plus small images for
//! the local store and for OCI layouts.
#![allow(dead_code)]

#[path = "server.rs"]
mod server;
pub(crate) use server::*;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use seaport_rootfs::oci::{
    Descriptor, ImageConfig, Manifest, MEDIA_TYPE_CONFIG, MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_MANIFEST,
};
use seaport_rootfs::reference::ImageRef;
use seaport_rootfs::store::Store;
use seaport_shared::digest::Digest;

/// Deterministic pseudo-random bytes (incompressible enough for tests).
pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Stores an image made of `layers` in `store` under `name`; returns the
/// manifest digest.
pub(crate) fn make_store_image(store: &Store, name: &str, layers: &[Vec<u8>]) -> Digest {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        let d = store.put_blob(layer).unwrap();
        diff_ids.push(d);
        descs.push(Descriptor {
            media_type: MEDIA_TYPE_LAYER_TAR.into(),
            digest: d,
            size: layer.len() as u64,
            annotations: Default::default(),
            platform: None,
        });
    }
    let mut config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        ..Default::default()
    };
    config.rootfs.diff_ids = diff_ids;
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = store.put_blob(&config_bytes).unwrap();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_MANIFEST.into()),
        config: Descriptor {
            media_type: MEDIA_TYPE_CONFIG.into(),
            digest: config_digest,
            size: config_bytes.len() as u64,
            annotations: Default::default(),
            platform: None,
        },
        layers: descs,
        annotations: Default::default(),
    };
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = store.put_blob(&bytes).unwrap();
    store
        .set_name(&ImageRef::parse(name).unwrap(), &digest)
        .unwrap();
    digest
}

/// A tar archive holding one file.
pub(crate) fn tar_with(path: &str, content: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    b.append_data(&mut h, path, content).unwrap();
    b.into_inner().unwrap()
}

/// Writes an OCI image layout at `dir` with one image tagged `tag` made of
/// one tar layer; returns the manifest digest.
pub(crate) fn make_oci_layout(dir: &Path, tag: &str, layer: &[u8]) -> Digest {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = Digest::of(bytes);
        fs::write(blobs.join(d.hex()), bytes).unwrap();
        d
    };
    let layer_digest = put(layer);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    );
    let config_digest = put(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_MANIFEST}","config":{{"mediaType":"{MEDIA_TYPE_CONFIG}","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"{MEDIA_TYPE_LAYER_TAR}","digest":"{layer_digest}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let manifest_digest = put(manifest.as_bytes());
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{MEDIA_TYPE_MANIFEST}","digest":"{manifest_digest}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#,
        manifest.len()
    );
    fs::write(dir.join("index.json"), index).unwrap();
    manifest_digest
}

/// Writes a docker config.json with credentials for `registry`.
pub(crate) fn write_docker_config(dir: &Path, registry: &str, user: &str, pass: &str) -> PathBuf {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let path = dir.join("config.json");
    let mut f = fs::File::create(&path).unwrap();
    write!(f, r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#).unwrap();
    path
}
