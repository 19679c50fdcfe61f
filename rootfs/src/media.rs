//! What a blob of a given media type is, and the one reader of layer blobs.
//!
//! Images come from Seaport's own builds (OCI, zstd layers), from sealer
//! and buildah (OCI or Docker schema 2, gzip layers), from skopeo, docker
//! and containerd (either, any compression). Everything that reads layer
//! content (the build's FROM base, RUN and image cache, the agent's unpack)
//! goes through [`open_layer`], so every reader accepts the same formats:
//!
//! | media type | compression |
//! | --- | --- |
//! | `application/vnd.oci.image.layer.v1.tar` | none |
//! | `application/vnd.oci.image.layer.v1.tar+gzip` | gzip |
//! | `application/vnd.oci.image.layer.v1.tar+zstd` | zstd |
//! | `application/vnd.oci.image.layer.nondistributable.v1.tar[+gzip\|+zstd]` | as named |
//! | `application/vnd.docker.image.rootfs.diff.tar` | none |
//! | `application/vnd.docker.image.rootfs.diff.tar.gzip` | gzip |
//! | `application/vnd.docker.image.rootfs.diff.tar.zstd` | zstd |
//!
//! Anything else (encrypted layers, foreign Windows layers, artifacts) is
//! refused with [`LayerMediaError::Unsupported`], which names the layer and
//! its media type. Decompression is native (flate2 for gzip, multi-member
//! streams included; zstd): no external program runs.

use std::io::{self, Read};

use seaport_shared::digest::Digest;

use crate::oci::{
    Descriptor, MEDIA_TYPE_DOCKER_LAYER_GZIP, MEDIA_TYPE_DOCKER_LAYER_TAR,
    MEDIA_TYPE_DOCKER_LAYER_ZSTD, MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_INDEX, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_LAYER_ZSTD,
    MEDIA_TYPE_MANIFEST,
};

/// How a tar layer is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (RFC 1952), one or more members.
    Gzip,
    /// zstd frames.
    Zstd,
}

/// The compression of a layer of this media type, or `None` when it is not
/// a tar layer Seaport reads.
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        MEDIA_TYPE_LAYER_TAR
        | MEDIA_TYPE_DOCKER_LAYER_TAR
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Compression::None),
        MEDIA_TYPE_LAYER_GZIP
        | MEDIA_TYPE_DOCKER_LAYER_GZIP
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Some(Compression::Gzip),
        MEDIA_TYPE_LAYER_ZSTD
        | MEDIA_TYPE_DOCKER_LAYER_ZSTD
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// The OCI media type of a layer of `media_type` (the same bytes): what a
/// manifest Seaport writes records for a layer taken from a Docker image.
pub fn oci_layer_media_type(media_type: &str) -> Option<&'static str> {
    Some(match layer_compression(media_type)? {
        Compression::None => MEDIA_TYPE_LAYER_TAR,
        Compression::Gzip => MEDIA_TYPE_LAYER_GZIP,
        Compression::Zstd => MEDIA_TYPE_LAYER_ZSTD,
    })
}

/// Whether `media_type` is an image manifest (OCI, or Docker schema 2).
pub fn is_manifest(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_MANIFEST || media_type == MEDIA_TYPE_DOCKER_MANIFEST
}

/// Whether `media_type` is an index of manifests (OCI index, or Docker
/// manifest list).
pub fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_INDEX || media_type == MEDIA_TYPE_DOCKER_LIST
}

/// The media type of a manifest or index document from its own bytes: its
/// `mediaType` field, or (OCI documents may omit it) its shape. `None` for
/// anything else, Docker schema 1 included.
pub fn document_media_type(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if let Some(t) = value.get("mediaType").and_then(|t| t.as_str()) {
        return (is_manifest(t) || is_index(t)).then(|| t.to_string());
    }
    if value.get("schemaVersion").and_then(|v| v.as_u64()) != Some(2) {
        return None;
    }
    if value.get("manifests").is_some() {
        Some(MEDIA_TYPE_INDEX.into())
    } else if value.get("config").is_some() {
        Some(MEDIA_TYPE_MANIFEST.into())
    } else {
        None
    }
}

/// A layer that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LayerMediaError {
    /// Its media type is not a tar layer Seaport reads.
    #[error(
        "layer {digest} has media type {media_type}, which Seaport cannot read \
         (it reads tar layers, uncompressed, gzip or zstd, under their OCI and Docker media types)"
    )]
    Unsupported {
        /// The layer.
        digest: Digest,
        /// Its media type.
        media_type: String,
    },
    /// The decompressor could not start on it.
    #[error("layer {digest} ({media_type}): {source}")]
    Decode {
        /// The layer.
        digest: Digest,
        /// Its media type.
        media_type: String,
        /// What failed.
        source: io::Error,
    },
}

/// Checks that every layer of `layers` has a media type [`open_layer`]
/// reads; the first one that does not is the error.
pub fn check_layers(layers: &[Descriptor]) -> Result<(), LayerMediaError> {
    match layers
        .iter()
        .find(|l| layer_compression(&l.media_type).is_none())
    {
        Some(l) => Err(LayerMediaError::Unsupported {
            digest: l.digest,
            media_type: l.media_type.clone(),
        }),
        None => Ok(()),
    }
}

/// `reader` decompressed.
pub fn decompress<'a>(
    compression: Compression,
    reader: impl Read + 'a,
) -> io::Result<Box<dyn Read + 'a>> {
    let buffered = io::BufReader::with_capacity(1 << 20, reader);
    Ok(match compression {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(zstd::stream::Decoder::with_buffer(buffered)?),
    })
}

/// The tar stream of the layer `desc`, whose blob is `blob`. Errors while
/// reading name the layer and its media type.
pub fn open_layer<'a>(
    desc: &Descriptor,
    blob: impl Read + 'a,
) -> Result<Box<dyn Read + 'a>, LayerMediaError> {
    let compression =
        layer_compression(&desc.media_type).ok_or_else(|| LayerMediaError::Unsupported {
            digest: desc.digest,
            media_type: desc.media_type.clone(),
        })?;
    let inner = decompress(compression, blob).map_err(|source| LayerMediaError::Decode {
        digest: desc.digest,
        media_type: desc.media_type.clone(),
        source,
    })?;
    Ok(Box::new(NamedReader {
        inner,
        digest: desc.digest,
        media_type: desc.media_type.clone(),
    }))
}

/// Prefixes read errors (a corrupt gzip header, a truncated zstd frame)
/// with the layer they come from.
struct NamedReader<'a> {
    inner: Box<dyn Read + 'a>,
    digest: Digest,
    media_type: String,
}

impl Read for NamedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("layer {} ({}): {e}", self.digest, self.media_type),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn desc(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            annotations: Default::default(),
            platform: None,
        }
    }

    fn tar_with(name: &str, text: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_mode(0o644);
        h.set_size(text.len() as u64);
        h.set_cksum();
        b.append(&h, text).unwrap();
        b.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn read_all(desc: &Descriptor, blob: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        open_layer(desc, blob)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn every_layer_format_reads_to_the_same_tar() {
        let tar = tar_with("etc/hello", b"hello\n");
        let gz = gzip(&tar);
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        for (media_type, blob) in [
            (MEDIA_TYPE_LAYER_TAR, &tar),
            (MEDIA_TYPE_DOCKER_LAYER_TAR, &tar),
            (MEDIA_TYPE_LAYER_GZIP, &gz),
            (MEDIA_TYPE_DOCKER_LAYER_GZIP, &gz),
            (MEDIA_TYPE_LAYER_ZSTD, &zst),
            (MEDIA_TYPE_DOCKER_LAYER_ZSTD, &zst),
        ] {
            assert_eq!(read_all(&desc(media_type, blob), blob), tar, "{media_type}");
        }
    }

    #[test]
    fn multi_member_gzip_reads_whole() {
        // pigz and concatenated gzip files write several members.
        let tar = tar_with("bin/tool", &[7u8; 70_000]);
        let (a, b) = tar.split_at(30_000);
        let mut blob = gzip(a);
        blob.extend(gzip(b));
        assert_eq!(read_all(&desc(MEDIA_TYPE_LAYER_GZIP, &blob), &blob), tar);
    }

    #[test]
    fn unknown_media_types_are_refused_naming_layer_and_type() {
        let blob = b"whatever";
        let d = desc(
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            blob,
        );
        let err = open_layer(&d, &blob[..]).err().unwrap().to_string();
        assert!(
            err.contains(&d.digest.to_string())
                && err.contains("application/vnd.oci.image.layer.v1.tar+gzip+encrypted"),
            "{err}"
        );
        let ok = desc(MEDIA_TYPE_LAYER_TAR, b"x");
        assert!(check_layers(std::slice::from_ref(&ok)).is_ok());
        let err = check_layers(&[ok, d.clone()]).unwrap_err().to_string();
        assert!(err.contains(&d.digest.to_string()), "{err}");
    }

    #[test]
    fn corrupt_gzip_names_the_layer() {
        let blob = b"\x1f\x8b\x08\x00garbage that is not deflate".to_vec();
        let d = desc(MEDIA_TYPE_DOCKER_LAYER_GZIP, &blob);
        let mut out = Vec::new();
        let err = open_layer(&d, &blob[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&d.digest.to_string()) && err.contains(MEDIA_TYPE_DOCKER_LAYER_GZIP),
            "{err}"
        );
    }

    #[test]
    fn docker_layer_types_map_to_oci() {
        assert_eq!(
            oci_layer_media_type(MEDIA_TYPE_DOCKER_LAYER_GZIP),
            Some(MEDIA_TYPE_LAYER_GZIP)
        );
        assert_eq!(
            oci_layer_media_type(MEDIA_TYPE_LAYER_ZSTD),
            Some(MEDIA_TYPE_LAYER_ZSTD)
        );
        assert_eq!(oci_layer_media_type("application/json"), None);
    }

    #[test]
    fn document_media_types_from_bytes() {
        assert_eq!(
            document_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(),
            Some(MEDIA_TYPE_INDEX)
        );
        assert_eq!(
            document_media_type(br#"{"schemaVersion":2,"config":{}}"#).as_deref(),
            Some(MEDIA_TYPE_MANIFEST)
        );
        assert_eq!(
            document_media_type(br#"{"schemaVersion":1,"fsLayers":[]}"#),
            None
        );
        assert_eq!(
            document_media_type(
                format!(r#"{{"mediaType":"{MEDIA_TYPE_DOCKER_LIST}"}}"#).as_bytes()
            )
            .as_deref(),
            Some(MEDIA_TYPE_DOCKER_LIST)
        );
    }
}
