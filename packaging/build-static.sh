#!/bin/sh
# Builds statically linked seaport-agent (and seaport) binaries for the
# bootstrap endpoint, the offline bundle and machine images.
#
#   packaging/build-static.sh [OUT_DIR]        (default: target/static)
#
# - x86_64-unknown-linux-gnu with crt-static: always (the host toolchain).
# - x86_64-unknown-linux-musl: when its rust target is installed
#   (rustup target add x86_64-unknown-linux-musl) and musl-gcc is present.
# - aarch64-unknown-linux-gnu: when its rust target and
#   aarch64-linux-gnu-gcc are installed.
# Each result is checked with `ldd` (must not be a dynamic executable),
# stripped, and listed with its size and sha256 in OUT_DIR/SHA256SUMS.
#
# Static glibc note: name lookups through NSS (getaddrinfo of a host name)
# need the same glibc version at run time; coordinator addresses given as IP
# addresses never touch NSS. Prefer the musl build where its target exists.
set -eu

cd "$(dirname "$0")/.."
out=${1:-target/static}
mkdir -p "$out"
targets=""
installed=$(rustup target list --installed 2>/dev/null || rustc -vV | sed -n 's/^host: //p')

have_target() { echo "$installed" | grep -qx "$1"; }

targets="x86_64-unknown-linux-gnu"
if have_target x86_64-unknown-linux-musl && command -v musl-gcc >/dev/null 2>&1; then
    targets="$targets x86_64-unknown-linux-musl"
else
    echo "build-static: skipping x86_64-unknown-linux-musl (rust target or musl-gcc not installed)" >&2
fi
if have_target aarch64-unknown-linux-gnu && command -v aarch64-linux-gnu-gcc >/dev/null 2>&1; then
    targets="$targets aarch64-unknown-linux-gnu"
else
    echo "build-static: skipping aarch64-unknown-linux-gnu (rust target or aarch64-linux-gnu-gcc not installed)" >&2
fi

# Small, symbol-free release binaries; the workspace profile keeps line
# tables for local debugging, shipped binaries do not need them.
export CARGO_PROFILE_RELEASE_DEBUG=false
export CARGO_PROFILE_RELEASE_STRIP=symbols
export CARGO_PROFILE_RELEASE_LTO=thin
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS=4
# Static builds get their own target directory so the ordinary build's
# artifacts (built without crt-static) stay valid.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}/static-build

: > "$out/SHA256SUMS.new"
for t in $targets; do
    case $t in
        *-musl) flags="-C target-feature=+crt-static" ;;
        aarch64-unknown-linux-gnu)
            flags="-C target-feature=+crt-static -C linker=aarch64-linux-gnu-gcc"
            export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc ;;
        *) flags="-C target-feature=+crt-static" ;;
    esac
    echo "build-static: building for $t" >&2
    # --target keeps build scripts and proc macros dynamic: only the
    # shipped binaries get crt-static.
    for bin in seaport-agent seaport; do
        pkg=$bin
        RUSTFLAGS="$flags" cargo build --release --target "$t" -p "$pkg" --bin "$bin"
        src="$CARGO_TARGET_DIR/$t/release/$bin"
        linkage=$(ldd "$src" 2>&1 || true)
        case $linkage in
            *"not a dynamic executable"*|*"statically linked"*) ;;
            *)
                echo "build-static: $src is dynamically linked:" >&2
                echo "$linkage" >&2
                exit 1 ;;
        esac
        dest="$out/$bin-$t"
        cp "$src" "$dest.tmp"
        mv -f "$dest.tmp" "$dest"
        size=$(stat -c %s "$dest")
        echo "build-static: $dest: $size bytes ($(( (size + 524288) / 1048576 )) MiB), $(file -b "$dest" 2>/dev/null | cut -d, -f1-2 || true)" >&2
        (cd "$out" && sha256sum "$bin-$t") >> "$out/SHA256SUMS.new"
    done
done
mv -f "$out/SHA256SUMS.new" "$out/SHA256SUMS"
# Plain names for the host's architecture, as the bundle and the
# bootstrap endpoint expect them.
host=$(rustc -vV | sed -n 's/^host: //p')
for bin in seaport-agent seaport; do
    if [ -f "$out/$bin-$host" ]; then
        cp "$out/$bin-$host" "$out/$bin.tmp"
        mv -f "$out/$bin.tmp" "$out/$bin"
    fi
done
cat "$out/SHA256SUMS"
