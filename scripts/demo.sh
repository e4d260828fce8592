#!/usr/bin/env bash
# The main job, twice: containers (network namespaces) on a one-host cni-bridge
# network, then three hosts (one behind a router) joined by the cni-overlay VXLAN
# overlay with a real etcd. Each prints addresses and pings, then tears down and
# checks nothing is left.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_FUZZ=0 bash scripts/testbed.sh
cargo build --release -q -p cni-bridge -p cni-ipam -p cni-overlay -p conformance
echo "=== one host: cni-bridge + cni-ipam"
target/release/conformance demo --plugin-dir target/release
echo
echo "=== three hosts: cni-overlay (VXLAN, leases in etcd)"
target/release/conformance demo --overlay --plugin-dir target/release
