#!/bin/bash
# Installs and starts Docker from the rootfs's cri/ directory
# (cri/docker.tar.gz with dockerd, docker, containerd, runc ... at its top
# level or under docker/), its daemon.json and unit, unless dockerd is
# installed already; then makes sure it runs.
set -euo pipefail
cd "$(dirname "$0")"
rootfs=$(cd .. && pwd)
registry="${registry_domain:-sea.hub}:${registry_port:-5000}"

if ! command -v dockerd >/dev/null 2>&1; then
  tarball=$(ls "$rootfs"/cri/docker*.tar.gz 2>/dev/null | head -n1 || true)
  if [ -z "$tarball" ]; then
    echo "docker.sh: docker is not installed and cri/ has no docker*.tar.gz" >&2
    exit 1
  fi
  listing=$(tar -tzf "$tarball")
  if grep -q '^docker/' <<<"$listing"; then
    tar -xzf "$tarball" -C /usr/bin --strip-components=1
  else
    tar -xzf "$tarball" -C /usr/bin
  fi
  mkdir -p /etc/docker
  sed "s/sea\.hub:5000/$registry/g" "$rootfs/etc/daemon.json" > /etc/docker/daemon.json
  install -m 0644 "$rootfs/etc/docker.service" /etc/systemd/system/docker.service
  systemctl daemon-reload
fi
systemctl enable --now docker
