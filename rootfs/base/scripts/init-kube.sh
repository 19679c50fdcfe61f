#!/bin/bash
# Checks what kubeadm needs before init or join: the binaries, the kubelet
# unit and the container runtime's socket.
set -euo pipefail
for b in kubeadm kubelet kubectl; do
  if ! command -v "$b" >/dev/null 2>&1; then
    echo "init-kube.sh: $b is not installed (the image's bin/ must ship it)" >&2
    exit 1
  fi
done
if [ ! -S /run/containerd/containerd.sock ] && [ ! -S /var/run/docker.sock ]; then
  echo "init-kube.sh: no container runtime socket; run init.sh first" >&2
  exit 1
fi
systemctl enable kubelet
