#!/usr/bin/env bash
# Installs every system dependency the demo and the test suite need, idempotently,
# on a fresh Debian 12 machine (run as root). Later issues append their packages here.
set -euo pipefail

PACKAGES=(
  iproute2 nftables iputils-ping curl tcpdump iperf3 jq python3
  openssl                       # throw-away CA and certificates for the TLS etcd tests
  containernetworking-plugins   # reference bridge/host-local/portmap/tuning: interop + side-by-side benchmarks
  protobuf-compiler libprotobuf-dev  # prost/tonic builds (CSI, etcd-client needs descriptor.proto)
  etcd-server etcd-client       # etcd 3.4: cluster IPAM and the overlay's tests, a real server per test
  linux-libc-dev                # kernel UAPI headers (nf_tables.h) for the nftables wire format
  # Guest kernel for what the host kernel lacks (bridge VLAN filtering, 8021q): scripts/guest/run.sh
  # boots Debian's kernel under QEMU (TCG) with the host's userland through virtme-ng (below).
  qemu-system-x86 linux-image-amd64 busybox-static
  # csi-nfs: a real NFS server for its tests (nfs-ganesha, userspace: the host kernel has no
  # nfsd), libnfs for the controller's userspace NFS client, nfs-ls for debugging
  nfs-ganesha nfs-ganesha-vfs libnfs-dev libnfs-utils
  libclang-dev                  # bindgen generates csi-nfs's libnfs bindings from libnfs-dev's headers
  # csi-rbd: a real single-node Ceph 16 cluster for its tests (monitor + in-memory OSD, and a
  # manager for the pool statistics GetCapacity reports),
  # librados/librbd headers for the bindings, rbd-nbd for the alternative mounter,
  # xfsprogs for XFS volumes
  ceph-mon ceph-osd ceph-mgr ceph-common librados-dev librbd-dev rbd-nbd xfsprogs
  # bgp: the speaker's interop tests and golden captures peer with the daemons the industry runs
  bird2 gobgpd frr
  # policy: the Felix-style iptables baseline of `bench policy` (iptables-restore, ipsets), and
  # `dmesg` for the Log action's kernel log lines in the traffic tests
  iptables ipset util-linux
  # csi-cloud: a venv for moto (below)
  python3-venv
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "testbed: installing ${missing[*]}" >&2
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# Fuzzing needs a nightly toolchain (preinstalled on this machine kind) and cargo-fuzz.
if [[ "${WITH_FUZZ:-1}" == 1 ]] && ! cargo fuzz --version >/dev/null 2>&1; then
  echo "testbed: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked >&2
fi
for tool in ip nft iptables-restore ipset ping ganesha.nfsd ceph-mon ceph-osd ceph-mgr rbd rbd-nbd mkfs.xfs bird gobgpd; do
  command -v "$tool" >/dev/null || { echo "testbed: $tool missing after install" >&2; exit 1; }
done
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] || { echo "testbed: reference CNI plugins missing" >&2; exit 1; }

# virtme-ng (PyPI) gives `vng`, which scripts/guest/run.sh uses to boot the guest kernel.
if ! command -v vng >/dev/null; then
  echo "testbed: installing virtme-ng" >&2
  python3 -m pip install -q virtme-ng==1.42 >&2
  hash -r
  if ! command -v vng >/dev/null && command -v pyenv >/dev/null; then pyenv rehash; fi
fi
for tool in vng qemu-system-x86_64 busybox; do
  command -v "$tool" >/dev/null || { echo "testbed: $tool missing after install" >&2; exit 1; }
done
compgen -G '/boot/vmlinuz-*-amd64' >/dev/null || { echo "testbed: no guest kernel in /boot (linux-image-amd64)" >&2; exit 1; }

# csi-cloud: moto (PyPI `moto[server]`), the EC2 and EBS API emulator its tests start on
# loopback, in a venv of its own under /opt/moto. Pinned (the newest release when this was
# written; docs/csi-cloud.md lists what it still gets wrong), reinstalled only when another
# version is found, so a second run is a no-op.
MOTO_VERSION=5.2.6
if [[ "$(/opt/moto/bin/python -c 'import moto; print(moto.__version__)' 2>/dev/null)" != "$MOTO_VERSION" ]]; then
  echo "testbed: installing moto[server] $MOTO_VERSION in /opt/moto" >&2
  python3 -m venv /opt/moto
  /opt/moto/bin/pip install -q "moto[server]==$MOTO_VERSION" >&2
fi
[[ -x /opt/moto/bin/moto_server ]] || { echo "testbed: /opt/moto/bin/moto_server missing after install" >&2; exit 1; }
