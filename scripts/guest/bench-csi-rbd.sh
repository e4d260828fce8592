#!/usr/bin/env bash
# Guest side of `conformance bench csi-rbd`, run by scripts/guest/run.sh in a guest kernel
# attached to the host's Ceph bridge (GUEST_NETWORK=bridge:NAME; the host kernel has no rbd).
#
#   bench-csi-rbd.sh CONFORMANCE_BINARY CSI_RBD_BINARY|- WORK_DIR N SIZE_MIB
#
# WORK_DIR (under the host's /tmp, which the guest sees) holds the cluster's config.json and
# the monitor address, ceph.conf path and key (env.json, mode 0600). "-" for the driver: the
# raw sequence alone (--raw-only).
set -euo pipefail
conformance=$1
driver=$2
work=$3
n=$4
size=$5
if [[ $driver == - ]]; then
  exec "$conformance" bench csi-rbd --raw-only --in-guest "$work" --n "$n" --size-mib "$size"
fi
exec "$conformance" bench csi-rbd --driver "$driver" --in-guest "$work" --n "$n" --size-mib "$size"
