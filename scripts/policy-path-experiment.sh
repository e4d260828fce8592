#!/usr/bin/env bash
# What each part of the policy engine's per-packet path costs an established bridged TCP stream
# (docs/policy.md, "Cost per packet"): three netns (client, a node with a bridge, server),
# br_netfilter, conntrack on; hand-written nft tables shaped like the engine's; iperf3 pinned
# (-A 0,1), ROUNDS interleaved rounds of SECS seconds. Needs root, nft, iperf3. Prints Gbit/s.
set -euo pipefail
P=tpx$$
C=$P-c; N=$P-n; S=$P-s
cleanup() { ip netns del $C 2>/dev/null; ip netns del $N 2>/dev/null; ip netns del $S 2>/dev/null; }
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
inet_one_noguard='table inet p {
  chain forwardp { type filter hook forward priority 0; policy accept;
    ct state established,related accept
  }
}'
apply() { ip netns exec $N nft flush ruleset; for r in "$@"; do echo "$r" | ip netns exec $N nft -f -; done; }
iperf() {
  ip netns exec $S iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
  for i in $(seq 100); do ip netns exec $S ss -Hltn 'sport = :5201' | grep -q . && break; sleep 0.02; done
  ip netns exec $C iperf3 -c 10.99.0.2 -p 5201 -t ${SECS:-5} -O 1 -A 0,1 -J | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
  wait
}
declare -A R
variants=(base full no_inet_guard one_chain bridge_only inet_only)
for round in $(seq ${ROUNDS:-3}); do
  for v in "${variants[@]}"; do
    case $v in
      base) apply "$ct";;
      full) apply "$ct" "$bridge_guard" "$inet_two";;
      no_inet_guard) apply "$ct" "$bridge_guard" "$inet_two_noguard";;
      one_chain) apply "$ct" "$bridge_guard" "$inet_one_noguard";;
      bridge_only) apply "$ct" "$bridge_guard";;
      inet_only) apply "$ct" "$inet_two";;
    esac
    g=$(iperf); R[$v]="${R[$v]:-} $g"; echo "round $round $v $g"
  done
done
for v in "${variants[@]}"; do echo "$v: ${R[$v]}"; done
