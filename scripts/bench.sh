#!/usr/bin/env bash
# The side-by-side benchmarks (printed, not asserted): ours against the reference plugins,
# BIRD, the rbd CLI and the kernel floors, in one run each. Not part of CI (scripts/test.sh):
# they take minutes and a noisy machine makes single numbers meaningless; run it on a quiet
# machine and read medians and ratios. Builds what it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
step() { printf '\n=== %s (%ss)\n' "$*" "$SECONDS"; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/cni-csi-target}"
T="$CARGO_TARGET_DIR"

step "testbed"
bash scripts/testbed.sh
step "build"
cargo build --release --workspace

step "benchmarks (side by side with the reference plugins; the shipped build of scripts/build-plugins.sh)"
plugins=$(bash scripts/build-plugins.sh "$T/cni-plugins" | tail -n 1)
"$T"/release/conformance bench cni --n 50 --plugin-dir "$plugins"
"$T"/release/conformance bench overlay --plugin-dir "$plugins"
"$T"/release/conformance bench csi-nfs --n 20 --driver "$T"/release/csi-nfs
# The cni-bgp agent vs BIRD 2 receiving the same 100k routes, and a 30th node joining a mesh.
"$T"/release/conformance bench bgp --plugin-dir "$T"/release
# The policy engine (nftables) vs a Felix-style iptables ruleset, 1k endpoints x 1k rules (docs/conformance.md).
"$T"/release/conformance bench policy --n 3
# csi-rbd vs rbd create / map + mkfs + mount / bind mount / a migration, in one guest kernel.
"$T"/release/conformance bench csi-rbd --n 10 --driver "$T"/release/csi-rbd
# csi-cloud's controller calls and snapshot export/import vs the plain AWS SDK, both against moto (docs/csi-cloud.md).
"$T"/release/conformance bench csi-cloud --n 10 --driver "$T"/release/csi-cloud
# The same with a 30 ms round trip to moto (a delaying proxy), as a network to AWS has.
"$T"/release/conformance bench csi-cloud --n 5 --rtt-ms 30 --driver "$T"/release/csi-cloud
# Clean csi-nfs moves in the 3-host overlay lab, in one guest kernel (docs/migration.md).
GUEST_MODULES="bridge veth vxlan nfsv4 nf_tables" GUEST_TIMEOUT=900 \
  bash scripts/guest/run.sh scripts/guest/migrate.sh "$T"/release bench migrate --n 5

step "done"
echo "all benchmarks ran in ${SECONDS}s"
