#!/usr/bin/env bash
# Guest side (run by scripts/guest/run.sh inside a guest kernel that has bridge VLAN
# filtering and 8021q): cni-bridge's VLAN options for real, all scenarios in one boot.
#
#   vlan.sh [PATH-TO-cni-bridge]     (default: target/release/cni-bridge of this checkout)
#
# Prints `PASS <name>` / `FAIL <name>: <why>` per check and exits non-zero when any check
# failed. Every check runs even after a failure, so one boot reports everything.
#
# Scenarios (the guest's own bridges and namespaces; the guest has no NIC, nothing leaves it):
#   access     a, b on access VLAN 10 and c, d on VLAN 20, one bridge, isGateway false:
#              a<->b and c<->d talk, a->c does not; ports have PVID 10/20 untagged and
#              keep VID 1 (preserveDefaultVlan defaults to true); the bridge filters VLANs.
#   nodefault  e: vlan 10 + preserveDefaultVlan:false -> VID 1 gone from its port, VLAN 10 works.
#   trunk      t: vlanTrunk [{id:30},{minID:40,maxID:42}] -> VIDs 30,40,41,42 tagged on its
#              port; frames tagged 30 from t (eth0.30) reach f on access VLAN 30.
#   gateway    g, h: vlan 10 + isGateway on another bridge: <bridge>.10 is a vlan link (id 10)
#              on the bridge holding the gateway address, the bridge has VID 10 on itself
#              (`self`), the result names the gateway, the container pings it.
#   del        DEL of every container exits 0 and removes its host veth; a repeated DEL is 0.
#
# Under TCG every exec costs 0.2-1 s (the guest reads binaries over 9p and translates them),
# so this script spawns as few processes as it can: bash builtins for strings, one
# `ip -batch` for namespaces, one state snapshot parsed by one jq, pings in parallel.
set -uo pipefail

here=${BASH_SOURCE[0]%/*}
[[ ${BASH_SOURCE[0]} == */* ]] || here=.
BIN=${1:-$here/../../target/release/cni-bridge}
W=/tmp/vlantest
failures=0

pass() { echo "PASS $1"; }
fail() {
  echo "FAIL $1: $2"
  failures=$((failures + 1))
}
finish() {
  if ((failures)); then
    echo "vlan.sh: $failures failure(s)"
    exit 1
  fi
  echo "vlan.sh: all passed"
  exit 0
}

for tool in ip bridge ping jq; do
  type -P "$tool" >/dev/null || fail prereq "$tool missing in the guest"
done
[[ -x $BIN ]] || fail prereq "cni-bridge binary $BIN not found or not executable"
((failures)) && finish
# Time spent per phase, from bash's clock (no exec): "-- PHASE at +S.Ds".
T0=${EPOCHREALTIME//[.,]/}
phase() {
  local us=$((${EPOCHREALTIME//[.,]/} - T0))
  printf -- '-- %s at +%d.%ds\n' "$1" $((us / 1000000)) $((us / 100000 % 10))
}
read -r uptime _ </proc/uptime
echo "guest: plugin $BIN, script started ${uptime}s after the guest kernel"
mkdir -p "$W"

IDS=(a b c d e t f g h)
ip -batch - <<EOF || fail prereq "ip netns add failed"
$(for id in "${IDS[@]}"; do echo "netns add vt-$id"; done)
EOF

# conf NETWORK BRIDGE SUBNET EXTRA: network config (cni-bridge + in-process cni-ipam);
# EXTRA is JSON members to add, e.g. '"vlan":10,'. Sets $CONF.
conf() {
  CONF="{\"cniVersion\":\"1.1.0\",\"name\":\"$1\",\"type\":\"cni-bridge\",\"bridge\":\"$2\",$4"
  CONF+="\"ipam\":{\"type\":\"cni-ipam\",\"ranges\":[[{\"subnet\":\"$3\"}]],\"dataDir\":\"$W/ipam\"}}"
}

# cni CMD ID: runs the plugin for container ID (netns vt-ID) with the config in $W/ID.conf;
# the output lands in $OUT (stdout + stderr), the exit status is returned.
cni() {
  local rc=0
  CNI_COMMAND=$1 CNI_CONTAINERID="vt-$2" CNI_NETNS="/var/run/netns/vt-$2" CNI_IFNAME=eth0 \
    CNI_PATH="${BIN%/*}" "$BIN" <"$W/$2.conf" >"$W/$2.out" 2>&1 || rc=$?
  OUT=
  IFS= read -r -d '' OUT <"$W/$2.out"
  return $rc
}

# add ID: ADD with $CONF; records the host veth (the result's 2nd interface), address, gateway.
declare -A VETH IP GW
add() {
  local id=$1 rc=0
  printf '%s' "$CONF" >"$W/$id.conf"
  cni ADD "$id" || rc=$?
  if ((rc)); then
    fail "add-$id" "ADD exited $rc: ${OUT//$'\n'/ }"
    return
  fi
  local re_veth='"interfaces":\[\{[^}]*\},\{[^}]*"name":"([^"]+)"'
  [[ $OUT =~ $re_veth ]] && VETH[$id]=${BASH_REMATCH[1]}
  [[ $OUT =~ \"address\":\"([0-9.]+)/ ]] && IP[$id]=${BASH_REMATCH[1]}
  [[ $OUT =~ \"gateway\":\"([0-9.]+)\" ]] && GW[$id]=${BASH_REMATCH[1]}
  if [[ -z ${VETH[$id]:-} || -z ${IP[$id]:-} ]]; then
    fail "add-$id" "result lacks the host veth or the address: $OUT"
    return
  fi
  pass "add-$id"
}

# ---------------------------------------------------------------- ADDs
phase "ADDs"
conf vlanacc vtacc0 10.80.0.0/24 '"vlan":10,'
add a
add b
conf vlanacc vtacc0 10.80.0.0/24 '"vlan":20,'
add c
add d
conf vlanacc vtacc0 10.80.0.0/24 '"vlan":10,"preserveDefaultVlan":false,'
add e
conf vlanacc vtacc0 10.80.0.0/24 '"vlanTrunk":[{"id":30},{"minID":40,"maxID":42}],'
add t
conf vlanacc vtacc0 10.80.0.0/24 '"vlan":30,'
add f
conf vlangw vtgw0 10.80.1.0/24 '"vlan":10,"isGateway":true,'
add g
add h # a second ADD on the gateway network: VLAN link and address already there

# ---------------------------------------------------------------- kernel state, one snapshot
phase "state snapshot"
# Lines: "vlan DEV VID FLAGS" (FLAGS: P = PVID, U = egress untagged, - = not), sorted by VID;
# "link NAME KIND VLAN-ID PARENT VLAN-FILTERING"; "addr DEV ADDR/LEN" (IPv4).
{
  bridge -j vlan show
  ip -j -d link show
  ip -j -4 addr show
} >"$W/state.json" 2>&1
jq -r -s '
  (.[0][] | .ifname as $d | [.vlans[]? | . as $v | range($v.vlan; ($v.vlanEnd // $v.vlan) + 1)
     | {vid: ., f: ($v.flags // [])}] | sort_by(.vid)[]
     | "vlan \($d) \(.vid) \(if (.f | index("PVID")) then "P" else "-" end)\(if (.f | index("Egress Untagged")) then "U" else "-" end)"),
  (.[1][] | "link \(.ifname) \(.linkinfo.info_kind // "-") \(.linkinfo.info_data.id // "-") \(.link // "-") \(.linkinfo.info_data.vlan_filtering // "-")"),
  (.[2][] | .ifname as $d | .addr_info[] | "addr \($d) \(.local)/\(.prefixlen)")
' "$W/state.json" >"$W/state.txt" 2>&1 || fail state "cannot parse the kernel state: $(<"$W/state.txt")"
declare -A VL LINK ADDR
while read -r kind dev rest; do
  case $kind in
  vlan) VL[$dev]+="${VL[$dev]:+,}$rest" ;;
  link) LINK[$dev]=$rest ;;
  addr) ADDR[$dev]+="${ADDR[$dev]:+,}$rest" ;;
  esac
done <"$W/state.txt"

expect() { # expect NAME GOT WANT WHAT
  if [[ $2 == "$3" ]]; then pass "$1"; else fail "$1" "$4 is [$2], want [$3]"; fi
}
port() { # expect_port NAME ID WANT: the VLANs of container ID's host veth
  local v=${VETH[$2]:-none}
  expect "$1" "${VL[$v]:-}" "$3" "VLANs of $2's port $v"
}

# Access VLANs: adding VID N as PVID moves the PVID off VID 1, which stays (untagged).
expect access-bridge-vlan-filtering "${LINK[vtacc0]:-}" "bridge - - 1" "vtacc0 (kind id parent vlan_filtering)"
port access-pvid-a a "1 -U,10 PU"
port access-pvid-b b "1 -U,10 PU"
port access-pvid-c c "1 -U,20 PU"
port nodefault-no-vid1 e "10 PU"
port trunk-tagged-vids t "1 PU,30 --,40 --,41 --,42 --"
port trunk-access-30 f "1 -U,30 PU"
expect gateway-in-result "${GW[g]:-}" 10.80.1.1 "gateway in g's result"
expect gateway-vlan-link "${LINK[vtgw0.10]:-}" "vlan 10 vtgw0 -" "vtgw0.10 (kind id parent vlan_filtering)"
expect gateway-addr-on-vlan-link "${ADDR[vtgw0.10]:-}" 10.80.1.1/24 "IPv4 of vtgw0.10"
expect gateway-not-on-bridge "${ADDR[vtgw0]:-}" "" "IPv4 of vtgw0 itself"
expect gateway-bridge-self-vid "${VL[vtgw0]:-}" "1 PU,10 --" "VLANs of bridge vtgw0 itself"
port gateway-port-pvid g "1 -U,10 PU"
port gateway-port-pvid-h h "1 -U,10 PU"

# ---------------------------------------------------------------- traffic
phase "traffic"
# Tagged VLAN 30 from the trunk container: eth0.30 in t, on a subnet of its own shared only
# with f (access VLAN 30), so the untagged 10.80.0.0/24 path cannot answer.
ip -n vt-t -batch - <<EOF >"$W/trunk.out" 2>&1 || fail trunk-tagged-traffic "setup in vt-t: $(<"$W/trunk.out")"
link add link eth0 name eth0.30 type vlan id 30
addr add 10.81.30.2/24 dev eth0.30
link set eth0.30 up
EOF
ip -n vt-f addr add 10.81.30.3/24 dev eth0 || fail trunk-tagged-traffic "address in vt-f"

# Positive pings try a few times (the first ARP under TCG can be slow); negative ones
# send 2 probes. All run in parallel; results are collected in order.
declare -A PID
ping_bg() { # ping_bg NAME FROM-ID ADDR yes|no
  if [[ $4 == yes ]]; then
    (for _ in 1 2 3; do ip netns exec "vt-$2" ping -n -q -c 1 -W 1 "$3" >/dev/null 2>&1 && exit 0; done; exit 1) &
  else
    (! ip netns exec "vt-$2" ping -n -q -c 2 -i 0.5 -W 1 "$3" >/dev/null 2>&1) &
  fi
  PID[$1]="$! vt-$2 $3 $4"
}
ping_bg access-same-vlan-10 a "${IP[b]:-0.0.0.0}" yes
ping_bg access-same-vlan-20 c "${IP[d]:-0.0.0.0}" yes
ping_bg access-isolated a "${IP[c]:-0.0.0.0}" no
ping_bg nodefault-vlan-10-works e "${IP[a]:-0.0.0.0}" yes
ping_bg trunk-tagged-traffic t 10.81.30.3 yes
ping_bg gateway-ping g 10.80.1.1 yes
ping_bg gateway-ping-h h "${GW[h]:-0.0.0.0}" yes
for name in access-same-vlan-10 access-same-vlan-20 access-isolated nodefault-vlan-10-works \
  trunk-tagged-traffic gateway-ping gateway-ping-h; do
  read -r pid from to want <<<"${PID[$name]}"
  if wait "$pid"; then
    pass "$name"
  elif [[ $want == yes ]]; then
    fail "$name" "$from cannot ping $to"
  else
    fail "$name" "$from pings $to across VLANs"
  fi
done

# ---------------------------------------------------------------- DEL
phase "DELs"
for id in "${IDS[@]}"; do
  [[ -e $W/$id.conf ]] || {
    fail "del-$id" "no config (its ADD never ran)"
    continue
  }
  rc=0
  cni DEL "$id" || rc=$?
  if ((rc)); then fail "del-$id" "DEL exited $rc: ${OUT//$'\n'/ }"; else pass "del-$id"; fi
done
rc=0
cni DEL a || rc=$?
if ((rc)); then fail del-repeated "second DEL of a exited $rc: ${OUT//$'\n'/ }"; else pass del-repeated; fi
ip -o link show >"$W/links.txt" 2>&1
IFS= read -r -d '' links <"$W/links.txt"
for id in "${IDS[@]}"; do
  v=${VETH[$id]:-}
  [[ -n $v ]] || continue
  if [[ $links == *": $v@"* || $links == *": $v:"* ]]; then
    fail "del-veth-gone-$id" "host veth $v still present after DEL"
  else
    pass "del-veth-gone-$id"
  fi
done

phase done
# No cleanup: the guest, its bridges and namespaces vanish when it powers off.
if ((failures)); then
  echo "--- kernel state after the ADDs ($W/state.txt):"
  while IFS= read -r line; do echo "  $line"; done <"$W/state.txt"
fi
finish
