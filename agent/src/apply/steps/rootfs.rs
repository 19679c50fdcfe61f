//! `rootfs`: verify and unpack the image's layers into the cluster's rootfs.

use std::fs;

use seaport_shared::cluster::Step;
use seaport_shared::safetar::UnpackOptions;

use super::context::{HostStep, StepContext};
use super::error::StepError;
use super::paths::PREVIOUS_ROOTFS;

pub(super) struct Rootfs;

impl HostStep for Rootfs {
    fn step(&self) -> Step {
        Step::Rootfs
    }

    fn run(&self, cx: &mut StepContext<'_>) -> Result<String, StepError> {
        let dir = cx.opts.cluster_dir();
        // Leftovers of an unpack that was interrupted.
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(".rootfs.unpack-")
                {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let opts = UnpackOptions {
            preserve_ownership: false,
            refuse_devices: !cx.opts.allow_devices,
            refuse_setuid: !cx.opts.allow_setuid,
        };
        // While the registry serves from the old tree (its bind mount), that
        // tree is kept aside until the registry step mounts the new one.
        let serving = cx.fx.is_mounted(&dir.join("registry"));
        let previous = dir.join(PREVIOUS_ROOTFS);
        let did =
            cx.img
                .unpack_replacing(&cx.rootfs(), &opts, serving.then_some(previous.as_path()))?;
        Ok(if did {
            format!("{} layers unpacked", cx.img.manifest.layers.len())
        } else {
            "already unpacked".into()
        })
    }
}
