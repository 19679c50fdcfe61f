//! Where the steps put things on the host.

/// Where binaries from `bin/` and `cri/` go: the units of sealer's images
/// (`kubelet.service`, `containerd.service`) start them from there.
pub(crate) const BIN_DIR: &str = "/usr/bin";
/// The admin kubeconfig `kubeadm init` and a control-plane join write.
pub(crate) const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
/// Where sealer copies it on every master (root's kubectl reads it).
pub(crate) const ROOT_KUBECONFIG: &str = "/root/.kube/config";
/// The home directory commands run with (sealer runs them as root).
pub(crate) const ROOT_HOME: &str = "/root";
/// Where units go.
pub(crate) const UNIT_DIR: &str = "/etc/systemd/system";
/// The local registry's unit.
pub(crate) const REGISTRY_UNIT: &str = "seaport-registry.service";
/// Where a replaced rootfs waits while the registry still serves from it.
pub(crate) const PREVIOUS_ROOTFS: &str = "rootfs.previous";
/// Where the image's registry binary may be.
pub(crate) const REGISTRY_BINARIES: &[&str] = &[
    "bin/registry",
    "bin/docker-registry",
    "cri/registry",
    "cri/docker-registry",
];
