#!/usr/bin/env bash
# The main job, in three acts: containers (network namespaces) on a one-host cni-bridge
# network; three hosts (one behind a router) joined by the cni-overlay VXLAN overlay
# with a real etcd; then, in that 3-host lab, a container that migrates from host A
# to host B with its csi-nfs volume (clean, and again after host A is killed). Each
# prints what it does and checks, then tears down and checks nothing is left.
#
# The third act needs a kernel NFS client: without one (e.g. this testbed's host
# kernel) it runs in a guest kernel (scripts/guest/run.sh, ~30-90 s to boot under TCG).
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_FUZZ=0 bash scripts/testbed.sh
cargo build --release -q -p cni-bridge -p cni-ipam -p cni-overlay -p csi-nfs -p conformance
bin=$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)
echo "=== one host: cni-bridge + cni-ipam"
"$bin/conformance" demo --plugin-dir "$bin"
echo
echo "=== three hosts: cni-overlay (VXLAN, leases in etcd)"
"$bin/conformance" demo --overlay --plugin-dir "$bin"
echo
echo "=== a container moves from host A to host B with its NFS volume (cni-overlay + csi-nfs)"
if grep -qw nfs4 /proc/filesystems || { modprobe nfsv4 2>/dev/null && grep -qw nfs4 /proc/filesystems; }; then
  "$bin/conformance" migrate --plugin-dir "$bin"
else
  echo "(this kernel has no NFS client: the lab runs in a guest kernel; see docs/migration.md)"
  GUEST_MODULES="bridge veth vxlan nfsv4 nf_tables" GUEST_TIMEOUT=900 \
    bash scripts/guest/run.sh scripts/guest/migrate.sh "$bin" migrate | sed -u 's/^MIGRATE-OUT //'
fi
