#!/bin/bash
# Prepares a host: container runtime, kubelet, kernel settings.
# Run from the rootfs's scripts/ directory. Environment (from the Clusterfile;
# the agent sets ContainerRuntime to the runtime it installed):
#   ContainerRuntime   containerd or docker (spec.containerRuntime.type)
#   container_runtime  the same, older name; without either: docker when cri/
#                      ships a docker tarball, else containerd
#   registry_domain    the local registry's name (default sea.hub)
#   registry_port      its port (default 5000)
set -euo pipefail
cd "$(dirname "$0")"
rootfs=$(cd .. && pwd)
runtime=${ContainerRuntime:-${container_runtime:-}}
if [ -z "$runtime" ]; then
  if ls "$rootfs"/cri/docker*.tar.gz >/dev/null 2>&1 || [ -x "$rootfs/cri/dockerd" ]; then
    runtime=docker
  else
    runtime=containerd
  fi
fi

# Kernel modules and sysctls kubeadm's preflight checks expect.
modprobe br_netfilter 2>/dev/null || true
modprobe overlay 2>/dev/null || true
cat > /etc/sysctl.d/k8s.conf <<SYSCTL
net.bridge.bridge-nf-call-ip6tables = 1
net.bridge.bridge-nf-call-iptables = 1
net.ipv4.ip_forward = 1
vm.swappiness = 0
SYSCTL
sysctl --system >/dev/null 2>&1 || true
swapoff -a || true

case "$runtime" in
  containerd) bash containerd.sh ;;
  docker) bash docker.sh ;;
  *) echo "init.sh: unknown container_runtime '$runtime' (containerd or docker)" >&2; exit 1 ;;
esac

# Kubernetes binaries and the kubelet unit.
install -m 0755 "$rootfs"/bin/* /usr/bin/ 2>/dev/null || true
install -m 0755 kubelet-pre-start.sh /usr/bin/kubelet-pre-start.sh
install -m 0644 "$rootfs/etc/kubelet.service" /etc/systemd/system/kubelet.service
mkdir -p /etc/systemd/system/kubelet.service.d
install -m 0644 "$rootfs/etc/10-kubeadm.conf" /etc/systemd/system/kubelet.service.d/10-kubeadm.conf
mkdir -p /etc/kubernetes
install -m 0644 "$rootfs/statics/audit-policy.yml" /etc/kubernetes/audit-policy.yml
systemctl daemon-reload
systemctl enable kubelet
