//! `image-plugins`: the image's `plugins/*.yaml`, read from the
//! coordinator's own copy of it (never from what a host reports: these run
//! as root on every host), checked now so a broken one fails here, named.

use std::path::Path;

use seaport_rootfs::oci::Platform;
use seaport_shared::cluster::{ImageDigest, Role};

use super::super::drive::Driver;
use super::super::error::StageError;
use crate::clusterfile::Clusterfile;

pub(super) async fn run(driver: &Driver) -> Result<(), StageError> {
    // A multi-platform image's plugins are those of master0's platform.
    let (digest, master0_node) = driver.record.read(|c| {
        let node = c
            .hosts
            .iter()
            .find(|h| h.role == Role::Master0)
            .map(|h| h.node_id.clone());
        (c.manifest_digest, node)
    });
    let root = driver.image_root.clone();
    let agents = driver.agents.clone();
    let texts = tokio::task::spawn_blocking(move || {
        let platform = match master0_node {
            Some(id) => agents
                .nodes()?
                .into_iter()
                .find(|n| n.node_id == id)
                .filter(|n| !n.arch.is_empty())
                .map(|n| seaport_rootfs::registry::platform::machine_platform(&n.arch)),
            None => None,
        };
        image_plugins(&root, digest, platform.as_ref())
    })
    .await
    .map_err(|e| StageError::Internal(e.to_string()))??;
    for t in &texts {
        Clusterfile::parse(t).map_err(StageError::ImagePlugins)?;
    }
    driver.record.write(|c| c.image_plugins = texts);
    Ok(())
}

/// The image's `plugins/*.yaml` and `*.yml` (text), read from the layers
/// in the coordinator's store.
fn image_plugins(
    image_root: &Path,
    digest: ImageDigest,
    platform: Option<&Platform>,
) -> Result<Vec<String>, StageError> {
    let store = seaport_rootfs::store::Store::open(image_root).map_err(StageError::ImageStore)?;
    let files = seaport_rootfs::contents::files_in_dir(
        &store,
        &digest.digest(),
        platform,
        "plugins",
        |n| n.ends_with(".yaml") || n.ends_with(".yml"),
    )
    .map_err(StageError::ReadPlugins)?;
    Ok(files
        .into_iter()
        .filter_map(|(_, b)| String::from_utf8(b).ok())
        .collect())
}
