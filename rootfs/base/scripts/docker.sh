#!/bin/bash
# Installs and starts Docker from the rootfs's cri/ directory
# (cri/docker.tar.gz with dockerd, docker, containerd, runc ...), unless present.
set -euo pipefail
cd "$(dirname "$0")"
rootfs=$(cd .. && pwd)

if ! command -v dockerd >/dev/null 2>&1; then
  tarball=$(ls "$rootfs"/cri/docker*.tar.gz 2>/dev/null | head -n1 || true)
  if [ -z "$tarball" ]; then
    echo "docker.sh: docker is not installed and cri/ has no docker*.tar.gz" >&2
    exit 1
  fi
  tar -xzf "$tarball" -C /usr/bin --strip-components=1
fi
mkdir -p /etc/docker
install -m 0644 "$rootfs/etc/daemon.json" /etc/docker/daemon.json
install -m 0644 "$rootfs/etc/docker.service" /etc/systemd/system/docker.service
systemctl daemon-reload
systemctl enable --now docker
