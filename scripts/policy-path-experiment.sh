#!/usr/bin/env bash
# What each part of the policy engine's per-packet path costs an established bridged TCP stream
# (docs/policy.md, "Cost per packet"): three netns (client, a node with a bridge, server),
# br_netfilter, conntrack on; hand-written nft tables shaped like the engine's; iperf3 pinned
# (-A 0,1), ROUNDS interleaved rounds of SECS seconds (VARIANTS: which layouts, below). Needs
# root, nft, iperf3. Prints Gbit/s and each variant's ratio to `base` (conntrack only) per round.
# PERF=1: also samples the kernel with `perf record -a` (Debian's linux-perf) during each run
# and prints the share of the busy CPU spent in nf_tables (nft_*, jhash, nf_hook_slow,
# br_nf_hook_thresh): throughput moves by +-8 % between rounds here, this share by ~0.2 points,
# so it resolves what a piece of the path costs where iperf3 cannot.
set -euo pipefail
P=tpx$$
C=$P-c; N=$P-n; S=$P-s
work=$(mktemp -d)
cleanup() { ip netns del $C 2>/dev/null; ip netns del $N 2>/dev/null; ip netns del $S 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
modprobe br_netfilter 2>/dev/null || true  # built in here
for ns in $C $N $S; do ip netns add $ns; ip -n $ns link set lo up; done
ip -n $N link add br0 type bridge; ip -n $N link set br0 up
ip link add ${P}c type veth peer name nc netns $N; ip link set ${P}c netns $C
ip link add ${P}s type veth peer name ns netns $N; ip link set ${P}s netns $S
ip -n $C link set ${P}c name eth0; ip -n $S link set ${P}s name eth0
for ns in $C $S; do ip -n $ns link set eth0 up; done
ip -n $N link set nc master br0 up; ip -n $N link set ns master br0 up
ip -n $C addr add 10.99.0.1/24 dev eth0; ip -n $S addr add 10.99.0.2/24 dev eth0
ip netns exec $N sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
ct='table inet ctb {
  chain x { ct state invalid counter; }
}'
bridge_guard='table bridge g {
  map own4 { type ifname . ipv4_addr : verdict; elements = { "nc" . 10.99.0.1 : return, "ns" . 10.99.0.2 : return } }
  chain spoof { type filter hook prerouting priority -200; policy accept;
    iifname . ip saddr vmap @own4
  }
  chain deliver { type filter hook forward priority 10; policy accept;
    oifname . ip daddr vmap @own4
  }
}'
inet_two='table inet p {
  map spoof-if { type ifname : verdict; elements = { "rveth0" : drop } }
  map deliver-if { type ifname : verdict; elements = { "rveth0" : drop } }
  chain egress-fwd { type filter hook forward priority 0; policy accept;
    iifname vmap @spoof-if
    ct state established,related accept
  }
  chain ingress-fwd { type filter hook forward priority 1; policy accept;
    oifname vmap @deliver-if
    ct state established,related accept
  }
}'
inet_two_noguard='table inet p {
  chain egress-fwd { type filter hook forward priority 0; policy accept;
    ct state established,related accept
  }
  chain ingress-fwd { type filter hook forward priority 1; policy accept;
    ct state established,related accept
  }
}'
# One forward chain, established accepted first: also the iptables baseline's shape.
inet_one_noguard='table inet p {
  chain forwardp { type filter hook forward priority 0; policy accept;
    ct state established,related accept
  }
}'
# The delivery guard before br_netfilter's forward hook (priority 0) instead of after it: a
# bridge hook after br_netfilter's is run by br_nf_hook_thresh, one more walk of the hook list.
bridge_guard_early=${bridge_guard/forward priority 10/forward priority -10}
# Both lookups keyed on the interface index (4 bytes) instead of its name (16).
bridge_guard_index=$(sed -e 's/ifname \. ipv4_addr/iface_index . ipv4_addr/' -e 's/iifname \./iif ./' \
  -e 's/oifname \./oif ./' <<< "$bridge_guard")
apply() { ip netns exec $N nft flush ruleset; for r in "$@"; do echo "$r" | ip netns exec $N nft -f -; done; }
iperf() {
  ip netns exec $S iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
  for i in $(seq 100); do ip netns exec $S ss -Hltn 'sport = :5201' | grep -q . && break; sleep 0.02; done
  ip netns exec $C iperf3 -c 10.99.0.2 -p 5201 -t ${SECS:-5} -O 1 -A 0,1 -J > "$work/iperf.json" &
  local client=$!
  if [[ ${PERF:-0} == 1 ]]; then
    sleep 1.5  # past iperf3's omitted first second
    perf record -q -a -F 1999 -o "$work/perf.data" -- sleep $(( ${SECS:-5} - 2 )) 2>/dev/null
  fi
  wait $client
  python3 -c 'import json,sys; print("%.2f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e9))' "$work/iperf.json"
  wait
}
# The share of the busy (not idle) CPU that nf_tables took in the last PERF=1 run, in %.
nft_share() {
  perf report -i "$work/perf.data" --no-children --sort sym -q 2>/dev/null | awk '
    { p = $1; sub("%", "", p); s = $3 }
    s == "pv_native_safe_halt" || s == "default_idle" { idle += p }
    s ~ /^nft_/ || s == "jhash" || s == "nf_hook_slow" || s == "br_nf_hook_thresh" { nft += p }
    END { printf "%.2f", 100 * nft / (100 - idle) }'
}
declare -A R SHARE
# Default: the engine's layout on a bridge-only host (the bench's) against its candidates.
read -r -a variants <<< "${VARIANTS:-base now early index one_chain early_one ipt}"
for round in $(seq ${ROUNDS:-3}); do
  for v in "${variants[@]}"; do
    case $v in
      base) apply "$ct";;
      full) apply "$ct" "$bridge_guard" "$inet_two";;
      now|no_inet_guard) apply "$ct" "$bridge_guard" "$inet_two_noguard";;
      one_chain) apply "$ct" "$bridge_guard" "$inet_one_noguard";;
      early) apply "$ct" "$bridge_guard_early" "$inet_two_noguard";;
      index) apply "$ct" "$bridge_guard_index" "$inet_two_noguard";;
      early_one) apply "$ct" "$bridge_guard_early" "$inet_one_noguard";;
      ipt) apply "$ct" "$inet_one_noguard";;
      bridge_only) apply "$ct" "$bridge_guard";;
      inet_only) apply "$ct" "$inet_two";;
      *) echo "unknown variant $v" >&2; exit 2;;
    esac
    g=$(iperf); R[$v]="${R[$v]:-} $g"
    if [[ ${PERF:-0} == 1 ]]; then
      n=$(nft_share); SHARE[$v]="${SHARE[$v]:-} $n"; echo "round $round $v $g Gbit/s, nf_tables $n % of busy CPU"
    else
      echo "round $round $v $g"
    fi
  done
done
# Each variant's ratio to `base` in the same round, then the median of those ratios.
for v in "${variants[@]}"; do
  python3 - "$v" "${R[base]:-}" "${R[$v]}" <<'PY'
import statistics, sys
v, base, ours = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
line = f"{v}: {' '.join(ours)}"
if base:
    r = [float(o) / float(b) for o, b in zip(ours, base)]
    line += f"  | /base per round: {' '.join('%.3f' % x for x in r)}  median {statistics.median(r):.3f}"
print(line)
PY
  if [[ ${PERF:-0} == 1 ]]; then
    med=$(printf '%s\n' ${SHARE[$v]} | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }')
    echo "  nf_tables, % of busy CPU: ${SHARE[$v]}  median $med"
  fi
done
