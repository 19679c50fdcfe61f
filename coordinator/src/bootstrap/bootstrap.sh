#!/bin/sh
# Seaport agent bootstrap, made by `seaport bootstrap`. It holds a join
# token: keep it secret. Safe to run again: an enrolled host with a running
# agent is left as it is.
set -eu
umask 077

main() {
COORDINATOR=@COORDINATOR@
BOOTSTRAP=@BOOTSTRAP@
CA_PIN=@CA_PIN@
AGENT_SHA256=@AGENT_SHA256@
PREINSTALLED=@PREINSTALLED@
TOKEN=@TOKEN@
TOKEN=${TOKEN:-${SEAPORT_JOIN_TOKEN:-}}
SERVER_NAME=coordinator.seaport
BIN=/usr/local/bin/seaport-agent
UNIT=/etc/systemd/system/seaport-agent.service
STATE_DIR=/var/lib/seaport-agent

say() { echo "seaport bootstrap: $*" >&2; }
fail() { echo "seaport bootstrap: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run me as root"
command -v systemctl >/dev/null 2>&1 || fail "systemctl not found: the agent runs as a systemd service"

if [ -s "$STATE_DIR/identity/node.pem" ] && [ -x "$BIN" ] && [ -f "$UNIT" ] \
    && systemctl is-enabled --quiet seaport-agent.service \
    && systemctl is-active --quiet seaport-agent.service; then
    say "this host is already enrolled and its agent is running; nothing to do"
    exit 0
fi

work=$(mktemp -d /tmp/seaport-bootstrap.XXXXXX)
trap 'rm -rf "$work"' EXIT
cat > "$work/ca.pem" <<'SEAPORT_CA'
@CA_PEM@
SEAPORT_CA

if [ "$PREINSTALLED" = yes ]; then
    [ -x "$BIN" ] || fail "--preinstalled was given but there is no executable $BIN in this machine image"
    say "using the agent already installed at $BIN"
else
    [ -n "$TOKEN" ] || fail "no join token: set SEAPORT_JOIN_TOKEN"
    command -v curl >/dev/null 2>&1 || fail "curl not found: install curl, or bake the agent into the image and use --preinstalled"
    command -v sha256sum >/dev/null 2>&1 || fail "sha256sum not found (coreutils)"
    printf 'Authorization: Bearer %s\n' "$TOKEN" > "$work/auth"
    host=${BOOTSTRAP%:*}
    port=${BOOTSTRAP##*:}
    say "downloading the agent from https://$BOOTSTRAP (CA pinned)"
    # The server is verified against the CA written above, never the
    # system's trust store; it must present the coordinator's name.
    if ! curl --silent --show-error --fail-with-body --proto =https --tlsv1.2 \
        --cacert "$work/ca.pem" --capath "$work" \
        --connect-to "$SERVER_NAME:$port:$host:$port" \
        --connect-timeout 10 --max-time 300 --retry 5 --retry-connrefused --retry-delay 2 \
        --header "@$work/auth" \
        --output "$work/seaport-agent" \
        "https://$SERVER_NAME:$port/v1/agent"; then
        msg=$(head -c 2000 "$work/seaport-agent" 2>/dev/null || true)
        fail "the coordinator's bootstrap endpoint https://$BOOTSTRAP refused or failed: ${msg:-no answer}"
    fi
    got=$(sha256sum "$work/seaport-agent" | cut -d' ' -f1)
    if [ "$got" != "$AGENT_SHA256" ]; then
        fail "the downloaded agent has sha256 $got, expected $AGENT_SHA256: refusing to install it (tampered in transit, or the coordinator serves another build: generate the bootstrap again)"
    fi
    chmod 0755 "$work/seaport-agent"
    mkdir -p "$(dirname "$BIN")"
    cp "$work/seaport-agent" "$BIN.new"
    mv -f "$BIN.new" "$BIN"
    say "installed $BIN (sha256 $got)"
fi

cat > "$UNIT.new" <<'SEAPORT_UNIT'
@UNIT@
SEAPORT_UNIT
chmod 0644 "$UNIT.new"
mv -f "$UNIT.new" "$UNIT"
systemctl daemon-reload

if [ -s "$STATE_DIR/identity/node.pem" ]; then
    say "this host is already enrolled; starting its agent"
else
    [ -n "$TOKEN" ] || fail "no join token: set SEAPORT_JOIN_TOKEN"
    say "joining the coordinator at $COORDINATOR"
    if ! SEAPORT_JOIN_TOKEN=$TOKEN "$BIN" join --coordinator "$COORDINATOR" --ca-pin "$CA_PIN" --state-dir "$STATE_DIR"; then
        fail "joining the coordinator at $COORDINATOR failed (see the message above)"
    fi
fi
systemctl enable --now seaport-agent.service
systemctl is-active --quiet seaport-agent.service || fail "seaport-agent.service did not start: see journalctl -u seaport-agent"
say "enrolled; seaport-agent.service is running"
}

main "$@"
