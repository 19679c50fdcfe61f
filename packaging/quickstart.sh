#!/usr/bin/env bash
# Quick start on a fresh Debian 12 machine, as root, from the repository root:
# installs what Seaport needs, builds it, builds the example Kubefile image and
# inspects it, makes a signing key and signs the image, brings up a lab of 3
# real systemd hosts with their agents enrolled with a coordinator that
# requires signed images, builds and signs the lab's cluster image in the
# coordinator's store and installs it on the 3 hosts with `seaport run`.
#
# kubeadm and the Kubernetes binaries cannot be obtained on the machines this
# is built on: the lab's cluster image carries a recording kubeadm double (see
# the README), and everything else in it is real (containerd, runc, the
# registry, systemd units, hooks).
#
# The lab keeps running afterwards: look at it with `target/debug/seaport-lab
# status`, run commands with `target/debug/seaport-lab exec h1 -- CMD`, and take
# it down with `target/debug/seaport-lab down`.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing Debian packages"
bash packaging/install-deps.sh >/dev/null

step "building seaport, seaport-agent, seaport-lab and the lab's Kubernetes stand-ins"
cargo build -p seaport -p seaport-agent -p seaport-lab -p seaport-kube-double

bin=$PWD/target/debug
export SEAPORT_ROOT=${SEAPORT_ROOT:-/var/lib/seaport}

# A signing key for this run only (target/quickstart-keys/site.key and
# site.pub); its passphrase is random and lives in this shell.
keys=$PWD/target/quickstart-keys
rm -rf "$keys"
mkdir -p "$keys/trusted"
export SEAPORT_KEY_PASSWORD=${SEAPORT_KEY_PASSWORD:-$(head -c 18 /dev/urandom | base64)}

step "making a signing key: $keys/site.key (encrypted, 0600) and site.pub"
"$bin/seaport" key generate -o "$keys/site"
cp "$keys/site.pub" "$keys/trusted/"

step "building and signing the example cluster image into $SEAPORT_ROOT"
"$bin/seaport" build -f packaging/examples/hello/Kubefile -t hello:v1 --sign-key "$keys/site.key" .
"$bin/seaport" images
"$bin/seaport" inspect hello:v1 --trusted-keys "$keys/trusted"

step "bringing up 3 lab hosts with agents enrolled, the coordinator requiring signed images (the first run builds the Debian base, about a minute)"
"$bin/seaport-lab" up --hosts 3 --agents --trusted-keys "$keys/trusted" --require-signed
eval "$("$bin/seaport-lab" env)"
export SEAPORT_ROOT

step "building and signing the lab's cluster image in the coordinator's store ($SEAPORT_ROOT)"
"$bin/seaport-lab" image --sign-key "$keys/site.key"

step "installing it: master $LAB_H1, nodes $LAB_H2 and $LAB_H3"
"$bin/seaport" run seaport-test:v1 -m "$LAB_H1" -n "$LAB_H2,$LAB_H3"
"$bin/seaport" status

step "done"
echo "the lab keeps running: $bin/seaport-lab status | exec h1 -- CMD | down"
echo "the cluster: SEAPORT_ROOT=$SEAPORT_ROOT $bin/seaport status | delete --all --prune"
