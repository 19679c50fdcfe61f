//! `kube-binaries`: `bin/` into `/usr/bin`, the image's units (not the
//! container runtime's), the kubelet drop-in and audit policy; units
//! enabled (the kubelet is started by kubeadm).

use std::fs;
use std::path::PathBuf;

use seaport_shared::cluster::Step;

use super::context::read_inside;
use super::context::{HostStep, StepContext};
use super::error::StepError;
use super::paths::{BIN_DIR, UNIT_DIR};

pub(super) struct KubeBinaries;

/// Units the `runtime` step owns; `kube-binaries` leaves them alone.
const RUNTIME_UNITS: &[&str] = &["containerd.service", "docker.service", "cri-docker.service"];

fn file_name(p: &std::path::Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

impl HostStep for KubeBinaries {
    fn step(&self) -> Step {
        Step::KubeBinaries
    }

    fn run(&self, cx: &mut StepContext<'_>) -> Result<String, StepError> {
        let rootfs = cx.rootfs();
        let mut names = Vec::new();
        let mut bins: Vec<PathBuf> = fs::read_dir(rootfs.join("bin"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        bins.sort();
        for p in bins {
            let name = file_name(&p);
            let bytes = read_inside(&rootfs, &p)?.unwrap_or_default();
            cx.install_file(&format!("{BIN_DIR}/{name}"), &bytes, 0o755)?;
            names.push(name);
        }
        let pre = rootfs.join("scripts/kubelet-pre-start.sh");
        if let Some(bytes) = read_inside(&rootfs, &pre)? {
            cx.install_file(&format!("{BIN_DIR}/kubelet-pre-start.sh"), &bytes, 0o755)?;
        }
        let mut units = Vec::new();
        let mut services: Vec<PathBuf> = fs::read_dir(rootfs.join("etc"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "service"))
            .collect();
        services.sort();
        for p in services {
            let name = file_name(&p);
            // The runtime step owns the container runtime's units.
            if RUNTIME_UNITS.contains(&name.as_str()) {
                continue;
            }
            let bytes = read_inside(&rootfs, &p)?.unwrap_or_default();
            cx.install_file(&format!("{UNIT_DIR}/{name}"), &bytes, 0o644)?;
            units.push(name);
        }
        if let Some(bytes) = read_inside(&rootfs, &rootfs.join("etc/10-kubeadm.conf"))? {
            cx.install_file(
                &format!("{UNIT_DIR}/kubelet.service.d/10-kubeadm.conf"),
                &bytes,
                0o644,
            )?;
        }
        if let Some(bytes) = read_inside(&rootfs, &rootfs.join("statics/audit-policy.yml"))? {
            cx.install_file("/etc/kubernetes/audit-policy.yml", &bytes, 0o644)?;
        }
        cx.systemctl_ok(&["daemon-reload"])?;
        for u in &units {
            // kubeadm starts the kubelet; other units start now.
            cx.enable_unit(u, u != "kubelet.service")?;
            if cx.rerun {
                // New binaries and units: restart what runs (kubelet once
                // kubeadm has started it), start nothing new.
                cx.systemctl_ok(&["try-restart", u])?;
            }
        }
        Ok(format!(
            "binaries {}; units {}",
            names.join(" "),
            units.join(" ")
        ))
    }
}
