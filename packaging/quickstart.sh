#!/usr/bin/env bash
# Quick start on a fresh Debian 12 machine, as root, from the repository root:
# installs what Seaport needs, builds it, builds the example cluster image and
# inspects it, then brings up a lab of 3 real systemd hosts with their agents
# enrolled with a coordinator, and lists the nodes.
#
# The lab keeps running afterwards: look at it with `target/debug/seaport-lab
# status`, run commands with `target/debug/seaport-lab exec h1 -- CMD`, and take
# it down with `target/debug/seaport-lab down`.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing Debian packages"
bash packaging/install-deps.sh >/dev/null

step "building seaport, seaport-agent and seaport-lab"
cargo build -p seaport -p seaport-agent -p seaport-lab

bin=$PWD/target/debug
export SEAPORT_ROOT=${SEAPORT_ROOT:-/var/lib/seaport}

step "building the example cluster image into $SEAPORT_ROOT"
"$bin/seaport" build -f packaging/examples/hello/Kubefile -t hello:v1 .
"$bin/seaport" images
"$bin/seaport" inspect hello:v1

step "bringing up 3 lab hosts with agents enrolled (the first run builds the Debian base, about a minute)"
"$bin/seaport-lab" up --hosts 3 --agents

step "done"
echo "the lab keeps running: $bin/seaport-lab status | exec h1 -- CMD | down"
