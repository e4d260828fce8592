#!/usr/bin/env bash
# Guest side of `conformance bench csi-nfs` (the node half), run by scripts/guest/run.sh
# with GUEST_NETWORK=user: the host's nfs-ganesha is at 10.0.2.2.
#
#   bench-csi-nfs.sh CONFORMANCE_BINARY CSI_NFS_BINARY PORT N
set -euo pipefail
exec "$1" bench csi-nfs --node-only --driver "$2" --server 10.0.2.2 --port "$3" --n "$4"
