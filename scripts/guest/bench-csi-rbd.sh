#!/usr/bin/env bash
# Guest side of `conformance bench csi-rbd`, run by scripts/guest/run.sh in a guest kernel
# attached to the host's Ceph bridge (GUEST_NETWORK=bridge:NAME; the host kernel has no rbd).
#
#   bench-csi-rbd.sh CONFORMANCE_BINARY CSI_RBD_BINARY|- WORK_DIR N SIZE_MIB
#
# WORK_DIR (under the host's /tmp, which the guest sees over 9p) holds the cluster's config.json and
# the monitor address, ceph.conf path and key (env.json, mode 0600). "-" for the driver: the
# raw sequence alone (--raw-only).
set -euo pipefail
conformance=$1
driver=$2
work=$3
n=$4
size=$5
# The drivers' state dirs and logs and both sides' staging dirs go to a guest-local ext4 on a
# RAM disk (TMPDIR), not to /tmp: that is the host's over 9p, where every file operation and
# fsync is a round trip to the host, which a node's local disk does not pay. ext4 (not tmpfs)
# so that the driver's fsyncs still commit a journal, as on a node's disk.
# BENCH_CSI_TMP=9p keeps them under /tmp (how the bench ran before; for comparison).
if [[ ${BENCH_CSI_TMP:-local} != 9p ]]; then
  local_dir=/var/tmp/bench-csi-rbd-local
  modprobe brd rd_nr=1 rd_size=65536
  mkfs.ext4 -q -F /dev/ram0
  mkdir -p "$local_dir"
  mount -t ext4 /dev/ram0 "$local_dir"
  export TMPDIR=$local_dir
fi
if [[ $driver == - ]]; then
  exec "$conformance" bench csi-rbd --raw-only --in-guest "$work" --n "$n" --size-mib "$size"
fi
exec "$conformance" bench csi-rbd --driver "$driver" --in-guest "$work" --n "$n" --size-mib "$size"
