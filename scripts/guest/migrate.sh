#!/usr/bin/env bash
# Guest side of `conformance migrate` / `conformance bench migrate`, run by
# scripts/guest/run.sh in a guest kernel that has the NFS client the host lacks:
#
#   GUEST_MODULES="bridge veth vxlan nfsv4 nf_tables" \
#     scripts/guest/run.sh scripts/guest/migrate.sh BIN_DIR ARGS...
#
# BIN_DIR holds conformance, csi-nfs, cni-overlay, cni-bridge and cni-ipam (a
# directory the guest sees: the host's /tmp or the build dir run.sh shares);
# ARGS are conformance's (e.g. `migrate --json`, `bench migrate --n 5`).
#
# Everything runs inside the guest: nfs-ganesha in its root netns, the lab, etcd,
# the agents and the drivers. Temp files go to a tmpfs of their own: ganesha's
# VFS backend needs a filesystem with file handles, which the guest's /tmp
# (an overlay on the host's 9p root) lacks.
#
# conformance's stdout is printed after it exits, each line prefixed with
# "MIGRATE-OUT " (so a caller can pick it out of the console); its progress
# (stderr) streams as it goes. Exit status: conformance's.
set -euo pipefail
(($# >= 2)) || {
  echo "usage: $0 BIN_DIR ARGS..." >&2
  exit 2
}
bin_dir=$1
shift
for b in conformance csi-nfs cni-overlay cni-bridge cni-ipam; do
  [[ -x $bin_dir/$b ]] || {
    echo "migrate.sh: FAIL: $bin_dir/$b not found (cargo build --release -p conformance -p csi-nfs -p cni-overlay -p cni-bridge -p cni-ipam)" >&2
    exit 2
  }
done
work=/run/migrate-guest
mkdir -p "$work"
mount -t tmpfs -o size=512m tmpfs "$work"
export TMPDIR=$work
rc=0
"$bin_dir/conformance" "$@" --plugin-dir "$bin_dir" >"$work/stdout" || rc=$?
sed 's/^/MIGRATE-OUT /' "$work/stdout"
exit "$rc"
