#!/bin/bash
# Assembles a kubernetes:vX.Y.Z cluster image from the default CloudRootfs
# (rootfs/base) and a directory of upstream binaries that you provide.
#
#   packaging/assemble-kubernetes-image.sh -v v1.19.8 -b DIR [-c CRI.tar.gz] \
#       [-a amd64] [-t NAME:TAG] [-s SEAPORT]
#
# DIR must hold kubeadm, kubectl and kubelet for that version and
# architecture; crictl, conntrack, nerdctl and seautil are copied too when
# present. CRI.tar.gz (containerd with runc, ctr ...; or docker.tar.gz with
# dockerd, docker, containerd, runc ..., which makes docker the runtime) goes
# to cri/. The image is built with `seaport build` into the local store
# (--root/SEAPORT_ROOT).
set -euo pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

version="" bindir="" cri="" arch="" tag="" seaport="${SEAPORT:-seaport}"
while getopts "v:b:c:a:t:s:h" opt; do
  case "$opt" in
    v) version=$OPTARG ;;
    b) bindir=$OPTARG ;;
    c) cri=$OPTARG ;;
    a) arch=$OPTARG ;;
    t) tag=$OPTARG ;;
    s) seaport=$OPTARG ;;
    h) usage 0 ;;
    *) usage ;;
  esac
done
[ -n "$version" ] && [ -n "$bindir" ] || usage
[[ "$version" =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "error: version '$version' is not vX.Y.Z" >&2; exit 2; }
[ -d "$bindir" ] || { echo "error: binary directory '$bindir' does not exist" >&2; exit 2; }
if [ -z "$arch" ]; then
  case "$(uname -m)" in
    x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;;
  esac
fi
tag=${tag:-kubernetes:$version}

here=$(cd "$(dirname "$0")" && pwd)
base="$here/../rootfs/base"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ctx="$work/rootfs"
cp -a "$base" "$ctx"
find "$ctx" -name .keep -delete

for b in kubeadm kubectl kubelet; do
  [ -f "$bindir/$b" ] || { echo "error: $bindir/$b is missing" >&2; exit 1; }
  install -m 0755 "$bindir/$b" "$ctx/bin/$b"
done
for b in crictl conntrack nerdctl seautil helm; do
  if [ -f "$bindir/$b" ]; then install -m 0755 "$bindir/$b" "$ctx/bin/$b"; fi
done
if [ -n "$cri" ]; then
  [ -f "$cri" ] || { echo "error: CRI tarball '$cri' does not exist" >&2; exit 1; }
  cp "$cri" "$ctx/cri/"
fi

# The version everywhere the rootfs names it.
sed -i "s/^kubernetesVersion: .*/kubernetesVersion: $version/" "$ctx/etc/kubeadm.yml"
sed -i "s/^KUBEVERSION .*/KUBEVERSION $version/" "$ctx/Kubefile"
cat > "$ctx/Metadata" <<META
{
  "version": "$version",
  "arch": "$arch",
  "kubeVersion": "$version",
  "ClusterRuntime": "kubernetes",
  "NydusFlag": false
}
META
# The control-plane images to cache, when this host can run the kubeadm given.
if "$ctx/bin/kubeadm" version >/dev/null 2>&1; then
  "$ctx/bin/kubeadm" config images list --kubernetes-version "$version" >> "$ctx/manifests/imageList" || true
fi

"$seaport" build -f "$ctx/Kubefile" -t "$tag" --platform "linux/$arch" "$ctx"
