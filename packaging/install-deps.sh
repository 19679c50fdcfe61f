#!/usr/bin/env bash
# Installs the Debian packages Seaport's build, tests, lab and benchmarks need.
# Used by the README's quick start and by .ci/run, so both stay in step.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps.sh: run as root (it uses apt-get)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# docker.io is here for its binaries only (the docker variant of the lab's
# test image); a dockerd it starts on this machine is not needed.
had_docker=no
if dpkg -s docker.io >/dev/null 2>&1; then had_docker=yes; fi
had_prometheus=no
if dpkg -s prometheus >/dev/null 2>&1; then had_prometheus=yes; fi
had_etcd=no
if dpkg -s etcd-server >/dev/null 2>&1; then had_etcd=yes; fi
apt-get update
apt-get install -y --no-install-recommends \
    ca-certificates curl openssl zstd \
    skopeo docker-registry apache2-utils \
    debootstrap systemd-container iproute2 iptables \
    openssh-server openssh-client \
    containerd runc docker.io prometheus \
    protobuf-compiler libprotobuf-dev etcd-server etcd-client
if [ "$had_docker" = no ] && [ -d /run/systemd/system ]; then
    systemctl disable --now docker.service docker.socket >/dev/null 2>&1 || true
fi
# The etcd backend's tests start their own etcd members; the packaged service
# stays off. protobuf-compiler and libprotobuf-dev (its well-known types) build
# the etcd client's API.
if [ "$had_etcd" = no ] && [ -d /run/systemd/system ]; then
    systemctl disable --now etcd.service >/dev/null 2>&1 || true
fi
# The metrics lab test runs its own Prometheus; the packaged service stays off.
if [ "$had_prometheus" = no ] && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
