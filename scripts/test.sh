#!/usr/bin/env bash
# The whole test suite, as CI runs it: lints, unit + integration tests in real
# network namespaces (CNI), against a real nfs-ganesha and a guest kernel's NFS
# client (csi-nfs) and against a real single-node Ceph cluster with guest kernels as
# the RBD nodes (csi-rbd), the CNI conformance suite against our plugins and the
# reference ones, and fuzzing. The side-by-side benchmarks are scripts/bench.sh (CI does
# not run it: they print, they assert nothing, and they cost minutes). `bench cni`, `bench policy`,
# `bench overlay`, `bench bgp` and `bench csi-rbd` also run one short round as tests of the
# suite (conformance/tests/), so they cannot rot unnoticed; `bench csi-nfs` and `bench migrate`
# run only in scripts/bench.sh.
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
# --all-targets: the test step below then compiles nothing. `cargo test` turns on the
# dev-dependencies' features; a build of the binaries alone resolves features without them
# and so compiled ~40 dependencies (the AWS SDK's among them) a second time.
msrv=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
[[ -n $msrv ]] || { echo "no rust-version in Cargo.toml" >&2; exit 1; }
cargo +"$msrv" build --release --workspace --all-targets

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

step "done"
echo "all steps passed in ${SECONDS}s"
