#!/usr/bin/env bash
# Guest side of conformance/tests/csi_nfs_node.rs, run by scripts/guest/run.sh in a guest
# kernel that has the NFS client the host lacks (GUEST_NETWORK=user: the host's
# nfs-ganesha is at 10.0.2.2).
#
#   csi-nfs.sh TEST_BINARY PORT PORT41 BIN_DIR
#
# PORT is the main server's; PORT41 a second server's that serves NFSv4.1 only.
# BIN_DIR holds copies of csi-nfs and conformance where the guest can see them (the
# host's /tmp; the guest's /var/tmp is its own tmpfs).
#
# Runs the test binary's guest half (--in-guest): its checks, one at a time (one of
# them blackholes the server for a while, which must not disturb the others).
set -euo pipefail
exe=$1
port=$2
port41=$3
bin_dir=$4
mkdir -p /run/csi-nfs-guest
cd /run/csi-nfs-guest
export CSI_NFS_GUEST_PORT=$port
export CSI_NFS_GUEST_PORT41=$port41
export CSI_NFS_GUEST_BIN_DIR=$bin_dir CFT_PLUGIN_DIR=$bin_dir
exec "$exe" --in-guest
