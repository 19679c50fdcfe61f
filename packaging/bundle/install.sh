#!/bin/sh
# Installs a Seaport site from an unpacked offline bundle, with no network:
# the binaries, the coordinator as a systemd service (with its bootstrap
# endpoint, from which hosts get their agent), and the bundled images.
# Run as root from anywhere: sh seaport-bundle/install.sh
# Safe to run again: an existing CA and state are kept.
set -eu
umask 022
here=$(cd "$(dirname "$0")" && pwd)
ROOT=${SEAPORT_ROOT:-/var/lib/seaport}
PREFIX=/usr/local
say() { echo "seaport install: $*" >&2; }
fail() { echo "seaport install: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run me as root"
command -v systemctl >/dev/null 2>&1 || fail "systemctl not found: the coordinator runs as a systemd service"
cd "$here"
sha256sum --quiet -c SHA256SUMS || fail "the bundle's files do not match SHA256SUMS: copy it again"

install -d -m 0755 "$PREFIX/bin" "$PREFIX/share/seaport"
for bin in seaport seaport-agent; do
    install -m 0755 "bin/$bin" "$PREFIX/bin/$bin.new"
    mv -f "$PREFIX/bin/$bin.new" "$PREFIX/bin/$bin"
done
install -m 0644 systemd/seaport-agent.service "$PREFIX/share/seaport/seaport-agent.service"
install -m 0644 systemd/seaport-coordinator.service /etc/systemd/system/seaport-coordinator.service
say "installed $PREFIX/bin/seaport and $PREFIX/bin/seaport-agent"

"$PREFIX/bin/seaport" --root "$ROOT" coordinator init
systemctl daemon-reload
systemctl enable seaport-coordinator.service
systemctl restart seaport-coordinator.service
i=0
while ! systemctl is-active --quiet seaport-coordinator.service || [ ! -f "$ROOT/coordinator/bootstrap.json" ]; do
    i=$((i + 1))
    [ "$i" -le 120 ] || fail "seaport-coordinator.service did not start: see journalctl -u seaport-coordinator"
    sleep 0.5
done
say "seaport-coordinator.service is running"

"$PREFIX/bin/seaport" --root "$ROOT" load -i images.tar
say "done: see README.md for enrolling hosts and installing the cluster"
