#!/usr/bin/env bash
# Recaptures the golden bytes: BIRD 2, GoBGP 3 and FRR 8 each run in a network namespace of
# their own, joined by a veth to a namespace where recorder.py connects to them, sends an OPEN
# and writes what the daemon sends. Run as root from anywhere:
#   bash bgp/tests/golden/capture.sh [bird|gobgp|frr ...]
# With --interop first, it records nothing: our own speaker (bgp/examples/speak.rs, the codec
# and the FSM over a plain TCP socket) peers with each daemon instead, announces
# 10.251.200.0/24 and fd00:bbbb::/48 with community 65000:200, and the script checks that the
# daemon accepted both and that the speaker learned the daemon's three prefixes.
# Needs: bird2 gobgpd frr python3 iproute2 (apt-get install bird2 gobgpd frr).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mode=capture
if [ "${1:-}" = --interop ]; then
  mode=interop; shift
  root=$(cd "$here/../../.." && pwd)
  (cd "$root" && cargo build --release -p bgp --example speak >&2)
  speak="${CARGO_TARGET_DIR:-$root/target}/release/examples/speak"
fi
daemons=${*:-bird gobgp frr}
work=$(mktemp -d /tmp/bgp-golden.XXXXXX); chmod 755 "$work"
DAEMON_AS=4200000001   # a 4-octet AS: the daemons' OPENs carry AS_TRANS
PEER_AS=65000          # the recorder's AS on the eBGP session

cleanup() {
  for d in bird gobgp frr; do
    for ns in "h5g-$d-d" "h5g-$d-r"; do
      if ip netns pids "$ns" >/dev/null 2>&1; then
        for p in $(ip netns pids "$ns"); do kill "$p" 2>/dev/null || true; done
      fi
    done
  done
  sleep 0.5
  for d in bird gobgp frr; do
    for ns in "h5g-$d-d" "h5g-$d-r"; do ip netns del "$ns" 2>/dev/null || true; done
  done
  [ -n "${KEEP:-}" ] || rm -rf "$work"; rm -rf /var/run/frr/h5g
}
trap cleanup EXIT

setup_ns() { # name index
  local d=$1 i=$2
  ip netns add "h5g-$d-d"; ip netns add "h5g-$d-r"
  ip link add "h5g$d-d" type veth peer name "h5g$d-r"
  ip link set "h5g$d-d" netns "h5g-$d-d"; ip link set "h5g$d-r" netns "h5g-$d-r"
  for side in d r; do
    local n=2; [ $side = r ] && n=1
    ip -n "h5g-$d-$side" link set lo up
    ip -n "h5g-$d-$side" addr add "10.251.$i.$n/24" dev "h5g$d-$side"
    ip -n "h5g-$d-$side" addr add "fd00:251:$i::$n/64" dev "h5g$d-$side" nodad
    ip -n "h5g-$d-$side" link set "h5g$d-$side" up
  done
}

record() { # daemon index session args...
  local d=$1 i=$2 s=$3; shift 3
  ip netns exec "h5g-$d-r" python3 "$here/recorder.py" --out "$here/$d-$s" "$@"
}

poll() { # what-for command...: bounded wait (15 s) for a command to succeed
  local what=$1; shift
  for _ in $(seq 75); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "FAIL: $what" >&2; return 1
}

daemon_has() { # daemon index prefix text: the daemon's table shows the prefix with the text
  local d=$1 i=$2 p=$3 t=$4 af=ipv4; case $p in *:*) af=ipv6 ;; esac
  case $d in
  bird) ip netns exec h5g-bird-d birdc -s "$work/bird.ctl" show route "$p" all | grep -q -- "$t" ;;
  gobgp) ip netns exec h5g-gobgp-d gobgp -u 127.0.0.1 -p 50151 global rib -a $af "$p" | grep -q -- "$t" ;;
  frr) ip netns exec h5g-frr-d vtysh -N h5g -c "show bgp $af unicast $p" 2>/dev/null | grep -q -- "$t" ;;
  esac
}

interop() { # daemon index
  local d=$1 i=$2
  ip netns exec "h5g-$d-r" "$speak" "10.251.$i.2" $PEER_AS $DAEMON_AS "10.251.$i.1" "10.251.$i.1" \
    "fd00:251:$i::1" 8 10.251.200.0/24 fd00:bbbb::/48 2> "$work/speak-$d.log" &
  local pid=$! ok=1
  case $d in bird) c4='(65000,200)' ;; *) c4='65000:200' ;; esac
  poll "$d accepts 10.251.200.0/24 from our speaker" daemon_has "$d" "$i" 10.251.200.0/24 "$c4" || ok=0
  poll "$d accepts fd00:bbbb::/48 from our speaker" daemon_has "$d" "$i" fd00:bbbb::/48 "$c4" || ok=0
  wait "$pid" || ok=0
  cat "$work/speak-$d.log" >&2
  grep -q "learned 3 prefixes" "$work/speak-$d.log" || { echo "FAIL: $d: speaker did not learn 3 prefixes" >&2; ok=0; }
  [ $ok = 1 ] && echo "interop $d: OK" || { echo "interop $d: FAILED"; return 1; }
}

sessions() { # daemon index: the four recordings every daemon gets
  local d=$1 i=$2
  if [ $mode = interop ]; then interop "$d" "$i"; return; fi
  record "$d" "$i" ebgp-v4 --connect "10.251.$i.2" --asn $PEER_AS --router-id "10.251.$i.1"
  record "$d" "$i" ebgp-as2 --connect "10.251.$i.2" --asn $PEER_AS --router-id "10.251.$i.1" --no-as4
  # FRR 8.4 configured with extended-optional-parameters parses the peer's OPEN in that
  # format too ("stream has not enough bytes" otherwise): send ours that way to it.
  local ext=(); [ "$d" = frr ] && ext=(--extended-params)
  record "$d" "$i" ibgp-v6 --connect "fd00:251:$i::2" --asn $DAEMON_AS --router-id "10.251.$i.1" --addpath "${ext[@]}"
  record "$d" "$i" bad-as --connect "10.251.$i.2" --asn $PEER_AS --router-id "10.251.$i.1" --bad-as
}

for d in $daemons; do
  case $d in
  bird)
    i=1; setup_ns bird $i
    cat > "$work/bird.conf" <<CONF
router id 10.251.$i.2;
protocol device {}
protocol static s4 { ipv4; route 10.251.100.0/24 blackhole; route 10.251.101.0/24 blackhole; }
protocol static s6 { ipv6; route fd00:aaaa::/48 blackhole; }
filter golden_out { bgp_community.add((65001,100)); bgp_med = 50; accept; }
protocol bgp peer_ebgp {
  local 10.251.$i.2 as $DAEMON_AS; neighbor 10.251.$i.1 as $PEER_AS; passive on;
  ipv4 { import all; export filter golden_out; };
  ipv6 { import all; export filter golden_out; next hop address fd00:251:$i::2; };
}
protocol bgp peer_ibgp {
  local fd00:251:$i::2 as $DAEMON_AS; neighbor fd00:251:$i::1 as $DAEMON_AS; passive on;
  ipv4 { import all; export filter golden_out; extended next hop on; add paths tx; };
  ipv6 { import all; export filter golden_out; add paths tx; };
}
CONF
    ip netns exec h5g-bird-d bird -c "$work/bird.conf" -s "$work/bird.ctl" -P "$work/bird.pid"
    sessions bird $i
    ;;
  gobgp)
    i=2; setup_ns gobgp $i
    cat > "$work/gobgp.toml" <<CONF
[global.config]
  as = $DAEMON_AS
  router-id = "10.251.$i.2"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "10.251.$i.1"
    peer-as = $PEER_AS
  [neighbors.transport.config]
    passive-mode = true
  [neighbors.graceful-restart.config]
    enabled = true
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "fd00:251:$i::1"
    peer-as = $DAEMON_AS
  [neighbors.transport.config]
    passive-mode = true
  [neighbors.graceful-restart.config]
    enabled = true
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
    [neighbors.afi-safis.add-paths.config]
      send-max = 8
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
    [neighbors.afi-safis.add-paths.config]
      send-max = 8
CONF
    ip netns exec h5g-gobgp-d gobgpd -f "$work/gobgp.toml" -t toml --api-hosts 127.0.0.1:50151 --pprof-disable -l debug \
      > "$work/gobgpd.log" 2>&1 &
    for _ in $(seq 100); do
      ip netns exec h5g-gobgp-d gobgp -u 127.0.0.1 -p 50151 global >/dev/null 2>&1 && break; sleep 0.1
    done
    g() { ip netns exec h5g-gobgp-d gobgp -u 127.0.0.1 -p 50151 "$@"; }
    g global rib add -a ipv4 10.251.100.0/24 community 65001:100 med 50
    g global rib add -a ipv4 10.251.101.0/24 community 65001:100 med 50
    g global rib add -a ipv6 fd00:aaaa::/48 community 65001:100 med 50
    sessions gobgp $i
    ;;
  frr)
    i=3; setup_ns frr $i
    mkdir -p /var/run/frr/h5g "$work/frr"
    cat > "$work/frr/bgpd.conf" <<CONF
frr defaults traditional
router bgp $DAEMON_AS
 bgp router-id 10.251.$i.2
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor 10.251.$i.1 remote-as $PEER_AS
 neighbor 10.251.$i.1 passive
 neighbor 10.251.$i.1 advertisement-interval 0
 neighbor fd00:251:$i::1 remote-as $DAEMON_AS
 neighbor fd00:251:$i::1 passive
 neighbor fd00:251:$i::1 extended-optional-parameters
 !
 address-family ipv4 unicast
  network 10.251.100.0/24 route-map out
  network 10.251.101.0/24 route-map out
  neighbor fd00:251:$i::1 addpath-tx-all-paths
 exit-address-family
 address-family ipv6 unicast
  network fd00:aaaa::/48 route-map out
  neighbor 10.251.$i.1 activate
  neighbor fd00:251:$i::1 activate
  neighbor fd00:251:$i::1 addpath-tx-all-paths
 exit-address-family
!
route-map out permit 10
 set community 65001:100
 set metric 50
!
CONF
    echo "hostname h5g-zebra" > "$work/frr/zebra.conf"
    chown -R frr:frr /var/run/frr/h5g "$work/frr"
    # zebra is needed: bgpd validates the next hops of its network statements through it.
    ip netns exec h5g-frr-d /usr/lib/frr/zebra -d -N h5g -f "$work/frr/zebra.conf" -i "$work/frr/zebra.pid" \
      --log file:"$work/frr/zebra.log"
    ip netns exec h5g-frr-d /usr/lib/frr/bgpd -d -N h5g -f "$work/frr/bgpd.conf" -i "$work/frr/bgpd.pid" \
      --log file:"$work/frr/bgpd.log"
    # bgpd originates its networks only once zebra has answered: wait until both are in its table.
    for n in $(seq 150); do
      v=(ip netns exec h5g-frr-d vtysh -N h5g -c)
      if "${v[@]}" 'show bgp ipv4 unicast 10.251.101.0/24' 2>/dev/null | grep -q 65001:100 &&
         "${v[@]}" 'show bgp ipv6 unicast fd00:aaaa::/48' 2>/dev/null | grep -q 65001:100; then break; fi
      [ "$n" = 150 ] && { echo "FRR did not originate its networks within 30 s" >&2; exit 1; }
      sleep 0.2
    done
    sessions frr $i
    ;;
  *) echo "unknown daemon $d" >&2; exit 2 ;;
  esac
done
if [ $mode = capture ]; then ls -l "$here"/*.bin; fi
