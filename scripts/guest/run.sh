#!/usr/bin/env bash
# Boots ONE guest kernel with the host's userland (virtme-ng, software emulation) and
# runs a guest-side script in it; prints the script's output and exits with its status.
#
#   scripts/guest/run.sh SCRIPT [ARGS...]
#
# The guest sees the host's filesystem through 9p (read-only root; /tmp, /run, /var
# writable overlays), so freshly built binaries are there at the same paths. It has no
# network device unless GUEST_NETWORK=user (below): by default whatever the script does
# stays inside the guest.
#
# Why a guest: the host kernel lacks features some tests need (bridge VLAN filtering,
# 8021q, the NFS client), and cannot load modules. The guest is Debian's kernel (linux-image-amd64),
# the newest /boot/vmlinuz-*-amd64 whose modules are installed; KVM hangs on these
# machines, so it runs under TCG (--disable-kvm): one boot takes about 25-30 s.
#
# Environment:
#   GUEST_MODULES  modules loaded in the guest before the script (default: bridge 8021q veth)
#   GUEST_KERNEL   a kernel version to use instead of the newest one (e.g. 6.1.0-56-amd64)
#   GUEST_TIMEOUT  seconds before the guest is killed (default 240)
#   GUEST_NETWORK  "user" gives the guest a NIC on QEMU's user network: the guest is
#                  10.0.2.15/24 and reaches the host's loopback services at 10.0.2.2
#                  (e.g. an NFS server the test started on the host). Default: none.
#                  "bridge:NAME" attaches the guest's NIC to the host bridge NAME (which
#                  /etc/qemu/bridge.conf must allow) and gives it GUEST_ADDR (CIDR, required)
#                  and the MAC GUEST_MAC (default: derived from GUEST_ADDR, so that two
#                  guests on one bridge never share QEMU's default MAC). Use it when the
#                  server must be reachable at one address from every guest (Ceph: its
#                  monitor hands out the OSDs' addresses).
#   GUEST_ENV      names of host environment variables to set in the guest too (space
#                  separated; the guest starts with a bare environment), e.g. "BENCH_CSI_LOG"
#   GUEST_MEMORY   guest memory (default 1G)
#   GUEST_CPUS     guest vCPUs (default 2)
#
# The kernel boots with mitigations=off: the guest runs nothing but test code for a minute,
# and under TCG the speculation mitigations double the cost of every exec.
#
# A missing prerequisite is an error (exit 2), never a skip: scripts/testbed.sh installs
# qemu-system-x86, linux-image-amd64, busybox-static and virtme-ng.
set -euo pipefail

die() {
  echo "run.sh: FAIL: $*" >&2
  exit 2
}

(($# >= 1)) || die "usage: $0 SCRIPT [ARGS...]"
[[ -f $1 ]] || die "guest script $1 not found"
script=$(readlink -f "$1")
shift

for tool in vng qemu-system-x86_64 busybox; do
  command -v "$tool" >/dev/null || die "$tool not found (run scripts/testbed.sh)"
done

kver=${GUEST_KERNEL:-}
if [[ -z $kver ]]; then
  while read -r k; do
    v=${k#/boot/vmlinuz-}
    if [[ -d /lib/modules/$v ]]; then
      kver=$v
      break
    fi
  done < <(ls -1 /boot/vmlinuz-*-amd64 2>/dev/null | sort -V -r)
fi
[[ -n $kver ]] || die "no /boot/vmlinuz-*-amd64 with /lib/modules/<version> (install linux-image-amd64)"
[[ -r /boot/vmlinuz-$kver && -d /lib/modules/$kver ]] || die "kernel $kver: /boot/vmlinuz-$kver or /lib/modules/$kver missing"

modules=${GUEST_MODULES-bridge 8021q veth}
guest_cmd="exec 2>&1"
if [[ -n $modules ]]; then
  guest_cmd+="; modprobe -a $modules || { echo 'run.sh: FAIL: modprobe $modules failed in the guest'; exit 3; }"
fi
net_args=()
case ${GUEST_NETWORK:-} in
  "") ;;
  user)
    net_args=(--network user)
    # The NIC's name varies (eth0, enp0s*): take the first that is not lo, and set
    # the address QEMU's user network expects, whether or not vng's DHCP did it.
    guest_cmd+='; nic=$(ls /sys/class/net | grep -vx lo | head -n1)'
    guest_cmd+='; [ -n "$nic" ] || { echo "run.sh: FAIL: no NIC in the guest"; exit 3; }'
    guest_cmd+='; ip link set "$nic" up && ip addr replace 10.0.2.15/24 dev "$nic" && ip route replace default via 10.0.2.2'
    ;;
  bridge:?*)
    [[ -n ${GUEST_ADDR:-} ]] || die "GUEST_NETWORK=bridge:NAME needs GUEST_ADDR (e.g. 10.224.3.10/24)"
    ip4=${GUEST_ADDR%/*}
    IFS=. read -r _ _ o3 o4 <<<"$ip4"
    mac=${GUEST_MAC:-$(printf '52:54:00:aa:%02x:%02x' "$o3" "$o4")}
    net_args=(--network "bridge=${GUEST_NETWORK#bridge:}" --no-dhcp --net-mac-address "$mac")
    guest_cmd+='; nic=$(ls /sys/class/net | grep -vx lo | head -n1)'
    guest_cmd+='; [ -n "$nic" ] || { echo "run.sh: FAIL: no NIC in the guest"; exit 3; }'
    guest_cmd+="; ip link set \"\$nic\" up && ip addr replace $(printf '%q' "$GUEST_ADDR") dev \"\$nic\""
    ;;
  *) die "GUEST_NETWORK=$GUEST_NETWORK: expected 'user' or 'bridge:NAME'" ;;
esac
for v in ${GUEST_ENV:-}; do
  [[ $v =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "GUEST_ENV: $v is not a variable name"
  [[ -n ${!v+set} ]] && guest_cmd+="; export $v=$(printf '%q' "${!v}")"
done
guest_cmd+="; exec bash $(printf '%q ' "$script" "$@")"

# The guest's /var is an empty in-memory overlay, so a build dir under /var (test.sh's
# default CARGO_TARGET_DIR is /var/tmp/cni-csi-target) would hide the binaries under
# test: share it read-only at the same path.
dir_args=()
if [[ -n ${CARGO_TARGET_DIR:-} && -d $CARGO_TARGET_DIR ]]; then
  dir_args=(--rodir="$(readlink -f "$CARGO_TARGET_DIR")")
fi

echo "run.sh: booting $kver (TCG) for $script" >&2
start=$SECONDS
# The guest's console (and vng's own messages) reach us through a pipe: vng reopens its
# stdout and stderr, and were they a file, its writes would clobber what came before.
# With pipefail the pipeline's status is vng's (cat exits 0), i.e. the guest script's.
rc=0
timeout --kill-after=10 "${GUEST_TIMEOUT:-240}" \
  vng --run "/boot/vmlinuz-$kver" --disable-kvm --force-9p --memory "${GUEST_MEMORY:-1G}" --cpus "${GUEST_CPUS:-2}" \
  --append "mitigations=off" "${net_args[@]}" "${dir_args[@]}" --exec "$guest_cmd" </dev/null 2>&1 | cat || rc=$?
if ((rc == 124 || rc == 137)); then
  echo "run.sh: FAIL: guest timed out after ${GUEST_TIMEOUT:-240}s" >&2
fi
echo "run.sh: guest finished in $((SECONDS - start))s with exit status $rc" >&2
exit "$rc"
