#!/usr/bin/env bash
# Guest side of conformance/tests/csi_nfs_node.rs, run by scripts/guest/run.sh in a guest
# kernel that has the NFS client the host lacks (GUEST_NETWORK=user: the host's
# nfs-ganesha is at 10.0.2.2).
#
#   csi-nfs.sh TEST_BINARY PORT
#
# Runs the test binary's guest half (--in-guest): its checks, one at a time (one of
# them blackholes the server for a while, which must not disturb the others).
set -euo pipefail
exe=$1
port=$2
mkdir -p /run/csi-nfs-guest
cd /run/csi-nfs-guest
export CSI_NFS_GUEST_PORT=$port
exec "$exe" --in-guest
