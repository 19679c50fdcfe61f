#!/bin/bash
# Installs and starts containerd from the rootfs's cri/ directory
# (cri/containerd.tar.gz with bin/containerd, runc, ctr, ...), unless present.
set -euo pipefail
cd "$(dirname "$0")"
rootfs=$(cd .. && pwd)
registry="${registry_domain:-sea.hub}:${registry_port:-5000}"

if ! command -v containerd >/dev/null 2>&1; then
  tarball=$(ls "$rootfs"/cri/containerd*.tar.gz 2>/dev/null | head -n1 || true)
  if [ -z "$tarball" ]; then
    echo "containerd.sh: containerd is not installed and cri/ has no containerd*.tar.gz" >&2
    exit 1
  fi
  tar -xzf "$tarball" -C /usr
fi
mkdir -p /etc/containerd "/etc/containerd/certs.d/$registry"
# A configuration already there (Seaport's agent writes it, with the local
# registry's credentials and TLS trust) is kept.
if [ ! -e /etc/containerd/config.toml ]; then
  install -m 0644 "$rootfs/etc/containerd.toml" /etc/containerd/config.toml
fi
if [ ! -e "/etc/containerd/certs.d/$registry/hosts.toml" ]; then
  cat > "/etc/containerd/certs.d/$registry/hosts.toml" <<HOSTS
server = "http://$registry"
[host."http://$registry"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
HOSTS
fi
install -m 0644 "$rootfs/etc/containerd.service" /etc/systemd/system/containerd.service
systemctl daemon-reload
systemctl enable --now containerd
