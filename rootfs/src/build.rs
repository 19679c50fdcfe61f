//! Building a cluster image from a Kubefile and a context directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Build-time caching of container images, plugged into the build.
///
/// Called once, after every Kubefile instruction ran, with the merged rootfs
/// materialized at `rootfs`. Whatever it writes under `out` (a
/// `registry/docker/registry/v2/...` tree, paths relative to the rootfs)
/// becomes one more layer of the image. Returning `Ok(false)` (or writing
/// nothing) adds no layer.
pub trait ImageCache {
    /// Caches the images `rootfs` needs into `out`.
    fn cache(
        &self,
        rootfs: &Path,
        out: &Path,
    ) -> Result<bool, Box<dyn std::error::Error + Send + Sync>>;
}

/// Everything a build needs besides the store.
pub struct BuildOptions<'a> {
    /// The Kubefile to read.
    pub kubefile: PathBuf,
    /// The context directory COPY reads from.
    pub context: PathBuf,
    /// The name to give the image.
    pub tag: String,
    /// `--build-arg K=V` values for ARG.
    pub build_args: BTreeMap<String, String>,
    /// `--label K=V` values, applied after the Kubefile's LABELs.
    pub labels: BTreeMap<String, String>,
    /// `linux/<arch>`; sets `${ARCH}`. Default: the build host's.
    pub platform: String,
    /// Build-time image caching; `None` adds no registry layer.
    pub image_cache: Option<&'a dyn ImageCache>,
}
