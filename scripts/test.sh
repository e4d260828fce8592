#!/usr/bin/env bash
# The whole test suite, as CI runs it: lints, unit + integration tests in real
# network namespaces (CNI), against a real nfs-ganesha and a guest kernel's NFS
# client (csi-nfs) and against a real single-node Ceph cluster with guest kernels as
# the RBD nodes (csi-rbd), the CNI conformance suite against our plugins and the
# reference ones, fuzzing, and the side-by-side benchmarks (printed, not asserted).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
step() { printf '\n=== %s (%ss)\n' "$*" "$SECONDS"; }
# Builds go to one directory outside the clone, so a fresh clone on a machine that
# already built the project (a developer's session, an earlier CI run) reuses the
# compiled dependencies instead of rebuilding them cold.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/cni-csi-target}"
T="$CARGO_TARGET_DIR"

step "testbed"
bash scripts/testbed.sh

step "format and lints"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings

step "build (with the toolchain Cargo.toml's rust-version names, so that field stays true)"
msrv=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
[[ -n $msrv ]] || { echo "no rust-version in Cargo.toml" >&2; exit 1; }
cargo +"$msrv" build --release --workspace

step "unit and integration tests (real netns, nftables, host-local interop, nfs-ganesha, Ceph; CSI nodes in guest kernels)"
# The build step above made every binary the guest tests copy into their guests (csi-nfs,
# csi-rbd, conformance). `conformance csi` (csi-sanity's specs) runs against csi-nfs twice in
# here: identity, controller and snapshots on this host (conformance/tests/csi_suite.rs), and
# all of it, node specs included, inside the guest kernel (conformance/tests/csi_nfs_node.rs);
# and against csi-rbd once, all of it, driver and suite in one guest kernel on the Ceph
# fixture's bridge (conformance/tests/csi_rbd_suite.rs).
cargo test --release --workspace -- --test-threads=2

step "conformance: ours (cni-bridge + cni-ipam)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/ours.json" <<JSON
{"cniVersion":"1.1.0","name":"cft","type":"cni-bridge","bridge":"cft0","isGateway":true,
 "ipam":{"type":"cni-ipam","ranges":[[{"subnet":"10.123.0.0/24"}]],"dataDir":"$work/ipam"}}
JSON
"$T"/release/conformance cni --plugin-dir "$T"/release --config "$work/ours.json"

step "conformance: reference bridge + host-local (informational: they lack 1.1.0)"
sed -e 's/"cni-bridge"/"bridge"/' -e 's/"cni-ipam"/"host-local"/' -e 's/"1.1.0"/"1.0.0"/' "$work/ours.json" > "$work/ref.json"
"$T"/release/conformance cni --plugin-dir /usr/lib/cni --config "$work/ref.json" || echo "(reference failures are expected; see docs/conformance.md)"

step "fuzzing (${FUZZ_SECONDS}s per target)"
for t in config result cni_args bgp_message policy_file policy_selector; do
  mkdir -p "fuzz/corpus/$t"
  (cd fuzz && cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 2>&1 | tail -n 4)
done

step "benchmarks (side by side with the reference plugins; the shipped build of scripts/build-plugins.sh)"
plugins=$(bash scripts/build-plugins.sh "$T/cni-plugins" | tail -n 1)
"$T"/release/conformance bench cni --n 50 --plugin-dir "$plugins"
"$T"/release/conformance bench overlay --plugin-dir "$plugins"
"$T"/release/conformance bench csi-nfs --n 20 --driver "$T"/release/csi-nfs
# The cni-bgp agent vs BIRD 2 receiving the same 100k routes, and a 30th node joining a mesh.
"$T"/release/conformance bench bgp --plugin-dir "$T"/release
# csi-rbd vs rbd create / map + mkfs + mount / bind mount / a migration, in one guest kernel.
"$T"/release/conformance bench csi-rbd --n 10 --driver "$T"/release/csi-rbd
# Clean csi-nfs moves in the 3-host overlay lab, in one guest kernel (docs/migration.md).
GUEST_MODULES="bridge veth vxlan nfsv4 nf_tables" GUEST_TIMEOUT=900 \
  bash scripts/guest/run.sh scripts/guest/migrate.sh "$T"/release bench migrate --n 5

step "done"
echo "all steps passed in ${SECONDS}s"
