#!/usr/bin/env bash
# Builds the CNI plugins as they are shipped, with the `plugin` profile (fat LTO, stripped),
# into one directory to copy into a runtime's CNI bin directory (e.g. /opt/cni/bin):
#
#   scripts/build-plugins.sh [OUT_DIR]     # default: $CARGO_TARGET_DIR/cni-plugins
#
# The directory is printed as the last line of stdout.
#
# * cni-bridge is linked statically (glibc static-pie), so no ADD pays for the dynamic
#   loader. It makes no name lookup, so it links none of glibc's NSS, which a static glibc
#   binary would dlopen() from the machine it runs on (and which must then be the very
#   glibc it was built with). Both properties are checked below.
# * cni-ipam and cni-overlay stay dynamically linked: their etcd client resolves endpoint
#   host names with getaddrinfo(), i.e. through NSS.
#
# `--target` is what keeps `crt-static` off build scripts and proc-macros (the compiler
# loads them; they cannot be static): with an explicit target, RUSTFLAGS reach only the code
# built for that target. See docs/cni-bridge.md#performance.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
out="${1:-$CARGO_TARGET_DIR/cni-plugins}"
host=$(rustc -vV | sed -n 's/^host: //p')
case $host in
  *-linux-gnu) ;;
  *) echo "build-plugins.sh: the static build needs a *-linux-gnu host, this is $host" >&2; exit 1 ;;
esac

RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
  cargo build --profile plugin --target "$host" -p cni-bridge >&2
cargo build --profile plugin -p cni-ipam -p cni-overlay >&2

bridge="$CARGO_TARGET_DIR/$host/plugin/cni-bridge"
# A static executable has no program interpreter (ld.so) and needs no shared library.
if readelf -lW "$bridge" | grep -q 'Requesting program interpreter' || readelf -dW "$bridge" | grep -q '(NEEDED)'; then
  echo "build-plugins.sh: $bridge is not statically linked" >&2
  exit 1
fi
# glibc's NSS code names /etc/nsswitch.conf and loads libnss_<service>.so: a binary
# without those strings contains no NSS.
if grep -q -e 'nsswitch.conf' -e 'libnss_' "$bridge"; then
  echo "build-plugins.sh: $bridge links glibc's NSS (some name lookup): not safe to ship static" >&2
  exit 1
fi

mkdir -p "$out"
cp -f "$bridge" "$CARGO_TARGET_DIR/plugin/cni-ipam" "$CARGO_TARGET_DIR/plugin/cni-overlay" "$out/"
echo "$out"
