#!/usr/bin/env bash
# Guest side of conformance/tests/csi_rbd_suite.rs, run by scripts/guest/run.sh in a guest
# kernel attached to the host's Ceph bridge (GUEST_NETWORK=bridge:NAME): the host kernel has
# no rbd, so the driver (--mode all: controller and node in one process) and the suite run
# here, against the cluster on the host.
#
#   csi-rbd-suite.sh CONFORMANCE_BINARY CSI_RBD_BINARY WORK_DIR [conformance csi flags...]
#
# WORK_DIR (under the host's /tmp, which the guest sees) holds config.json (ceph-csi's
# cluster config), params.json and secrets.json (mode 0600). Prints the suite's report, the
# driver's log when the suite failed, and a "LEFT: ..." line for every rbd device still
# mapped or mount still under the suite's directories afterwards.
set -euo pipefail
conformance=$1
driver=$2
work=$3
shift 3
run=/run/csi-rbd-suite
mkdir -p "$run/mnt"
sock=$run/csi.sock
"$driver" --endpoint "unix://$sock" --mode all --node-id csi-rbd-suite \
  --cluster-config "$work/config.json" --state-dir "$run/state" 2>"$run/driver.log" &
pid=$!
# Bounded wait for the socket (20 s), failing at once if the driver exits.
for _ in $(seq 200); do
  [[ -S $sock ]] && break
  kill -0 "$pid" 2>/dev/null || { echo "csi-rbd exited before serving:"; cat "$run/driver.log"; exit 2; }
  sleep 0.1
done
[[ -S $sock ]] || { echo "csi-rbd did not create $sock in 20 s:"; cat "$run/driver.log"; exit 2; }

rc=0
"$conformance" csi --endpoint "unix://$sock" --params "$work/params.json" --secrets "$work/secrets.json" \
  --mount-dir "$run/mnt" "$@" || rc=$?
kill -TERM "$pid"
wait "$pid" || echo "csi-rbd exited with $? after SIGTERM"
if ((rc != 0)); then
  echo "--- driver log (last 80 lines)"
  tail -n 80 "$run/driver.log"
fi
for d in /sys/bus/rbd/devices/*; do
  [[ -e $d ]] && echo "LEFT: rbd device $(basename "$d"): $(cat "$d/pool")/$(cat "$d/name")"
done
grep -F "$run" /proc/self/mounts | sed 's/^/LEFT: mount /' || true
exit "$rc"
