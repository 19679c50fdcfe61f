#!/bin/bash
# Undoes init.sh: stops and removes the kubelet, the container runtime units
# and their configuration. Kubernetes state itself is removed by
# `kubeadm reset` before this runs.
set -uo pipefail
systemctl disable --now kubelet 2>/dev/null
rm -f /etc/systemd/system/kubelet.service /usr/bin/kubelet-pre-start.sh
rm -rf /etc/systemd/system/kubelet.service.d
for unit in seaport-registry containerd docker; do
  if [ -f "/etc/systemd/system/$unit.service" ]; then
    systemctl disable --now "$unit" 2>/dev/null
    rm -f "/etc/systemd/system/$unit.service"
  fi
done
rm -f /etc/sysctl.d/k8s.conf /etc/kubernetes/audit-policy.yml
rm -rf /etc/containerd/certs.d /etc/docker/registry
systemctl daemon-reload 2>/dev/null
exit 0
