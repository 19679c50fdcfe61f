#!/bin/bash
# Starts the local registry serving the rootfs's registry/ directory
# (distribution's docker/registry/v2 storage layout) on registry_port.
# Uses the host's `docker-registry` (Debian's distribution package) or
# `registry` binary; data lives under /var/lib/registry.
set -euo pipefail
cd "$(dirname "$0")"
rootfs=$(cd .. && pwd)
port=${registry_port:-5000}
data=/var/lib/registry

mkdir -p "$data" /etc/docker/registry
if [ -d "$rootfs/registry" ]; then
  cp -a "$rootfs/registry/." "$data/"
fi
sed "s/addr: :5000/addr: :$port/" "$rootfs/etc/registry_config.yml" > /etc/docker/registry/config.yml
bin=$(command -v docker-registry || command -v registry || true)
if [ -z "$bin" ]; then
  echo "init-registry.sh: no registry binary (docker-registry or registry) on this host" >&2
  exit 1
fi
cat > /etc/systemd/system/seaport-registry.service <<UNIT
[Unit]
Description=Local registry of the cluster image
After=network.target
[Service]
ExecStart=$bin serve /etc/docker/registry/config.yml
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now seaport-registry
