#!/usr/bin/env bash
# The main job: containers (network namespaces) on a cni-bridge network, their
# addresses, pings between them and to the gateway, then a clean teardown.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_FUZZ=0 bash scripts/testbed.sh
cargo build --release -q -p cni-bridge -p ipam -p conformance
exec target/release/conformance demo --plugin-dir target/release "$@"
