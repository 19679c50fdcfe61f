#!/bin/sh
# Builds Debian packages of the static binaries with dpkg-deb:
#   seaport_VERSION_ARCH.deb        /usr/bin/seaport, the coordinator unit
#   seaport-agent_VERSION_ARCH.deb  /usr/bin/seaport-agent, the agent unit
# each with its man pages (made by the binary from its own flags) and its
# bash, zsh and fish completions.
#
#   packaging/deb/build-debs.sh [BIN_DIR] [OUT_DIR]
#     BIN_DIR: static binaries from packaging/build-static.sh (default target/static)
#     OUT_DIR: default target/deb
#   DEB_COMPRESSION=xz|zstd|gzip|none (default xz, dpkg-deb's -Z)
#
# The units shipped in packages run /usr/bin/...; neither package starts a
# service on install: the coordinator needs `seaport coordinator init`
# semantics decided by the operator, the agent needs `seaport-agent join`.
set -eu
cd "$(dirname "$0")/../.."
bins=${1:-target/static}
out=${2:-target/deb}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
mkdir -p "$out"

build() {
    pkg=$1 bin=$2 unit=$3 desc=$4
    [ -x "$bins/$bin" ] || { echo "build-debs: $bins/$bin missing: run packaging/build-static.sh" >&2; exit 1; }
    stage=$(mktemp -d)
    chmod 0755 "$stage"
    trap 'rm -rf "$stage"' EXIT
    install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" "$stage/usr/share/doc/$pkg"
    install -m 0755 "$bins/$bin" "$stage/usr/bin/$bin"
    sed 's#/usr/local/bin/#/usr/bin/#g' "packaging/systemd/$unit" > "$stage/lib/systemd/system/$unit"
    chmod 0644 "$stage/lib/systemd/system/$unit"
    install -d "$stage/usr/share/man/man1" "$stage/usr/share/bash-completion/completions" \
        "$stage/usr/share/zsh/vendor-completions" "$stage/usr/share/fish/vendor_completions.d"
    "$bins/$bin" man --out "$stage/usr/share/man/man1" >/dev/null
    gzip -9n "$stage"/usr/share/man/man1/*.1
    "$bins/$bin" completion bash > "$stage/usr/share/bash-completion/completions/$bin"
    "$bins/$bin" completion zsh > "$stage/usr/share/zsh/vendor-completions/_$bin"
    "$bins/$bin" completion fish > "$stage/usr/share/fish/vendor_completions.d/$bin.fish"
    chmod -R u=rwX,go=rX "$stage/usr/share"
    install -m 0644 docs/bootstrap.md "$stage/usr/share/doc/$pkg/bootstrap.md"
    install -m 0644 docs/identity.md "$stage/usr/share/doc/$pkg/identity.md"
    size=$(du -sk "$stage" | cut -f1)
    cat > "$stage/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: Seaport <seaport@example.invalid>
Installed-Size: $size
Section: admin
Priority: optional
Description: $desc
CONTROL
    cat > "$stage/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
POSTINST
    chmod 0755 "$stage/DEBIAN/postinst"
    dpkg-deb --root-owner-group "-Z${DEB_COMPRESSION:-xz}" --build "$stage" "$out/${pkg}_${version}_${arch}.deb" >&2
    rm -rf "$stage"
    trap - EXIT
}

build seaport seaport seaport-coordinator.service \
    "Seaport CLI and coordinator: cluster images, CA, node inventory, bootstrap endpoint"
build seaport-agent seaport-agent seaport-agent.service \
    "Seaport host agent: enrolls with the coordinator and installs cluster images"
ls -l "$out"
