#!/usr/bin/env python3
"""Records what a BGP daemon sends: connects to it, sends an OPEN, answers with KEEPALIVEs,
and writes every message it receives (raw frames, concatenated) until End-of-RIB for both
unicast families or a timeout. With --bad-as it announces the wrong AS, to record the
daemon's NOTIFICATION. Our own OPEN is written too (the tests negotiate with it).

This file builds only the recorder's side; the golden bytes are the daemon's.
"""
import argparse, socket, struct, sys, time

def msg(ty, body=b""):
    return b"\xff" * 16 + struct.pack("!HB", 19 + len(body), ty) + body

def cap(code, value=b""):
    return bytes([code, len(value)]) + value

def our_open(asn, router_id, hold, addpath, as4=True, extended=False):
    caps = [
        cap(1, struct.pack("!HBB", 1, 0, 1)),      # MP IPv4 unicast
        cap(1, struct.pack("!HBB", 2, 0, 1)),      # MP IPv6 unicast
        cap(2),                                    # route refresh
        cap(5, struct.pack("!HHH", 1, 1, 2)),      # extended next hop: IPv4 over IPv6
        cap(64, struct.pack("!HHBB", 120, 1, 1, 0) + struct.pack("!HBB", 2, 1, 0)),  # graceful restart
    ]
    if as4:
        caps.append(cap(65, struct.pack("!I", asn)))  # 4-octet AS
    if addpath:
        caps.append(cap(69, struct.pack("!HBB", 1, 1, 1) + struct.pack("!HBB", 2, 1, 1)))  # receive
    my_as = asn if asn < 65536 else 23456
    if extended:  # RFC 9072: 255, 255, then a 2-octet length; each parameter has a 2-octet length
        params = b"".join(b"\x02" + struct.pack("!H", len(c)) + c for c in caps)
        head = struct.pack("!BHH4sBBH", 4, my_as, hold, socket.inet_aton(router_id), 255, 255, len(params))
        return msg(1, head + params)
    params = b"".join(b"\x02" + bytes([len(c)]) + c for c in caps)
    body = struct.pack("!BHH4sB", 4, my_as, hold, socket.inet_aton(router_id), len(params)) + params
    return msg(1, body)

def read_msg(s, deadline):
    buf = b""
    while len(buf) < 19:
        s.settimeout(max(0.05, deadline - time.time()))
        chunk = s.recv(19 - len(buf))
        if not chunk:
            return None
        buf += chunk
    (length,) = struct.unpack("!H", buf[16:18])
    while len(buf) < length:
        s.settimeout(max(0.05, deadline - time.time()))
        chunk = s.recv(length - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf

def is_eor(m):
    if m[18] != 2:
        return None
    body = m[19:]
    if body == b"\x00\x00\x00\x00":
        return (1, 1)
    # withdrawn 0, attrs: one MP_UNREACH with only AFI/SAFI
    if len(body) >= 4 and body[:2] == b"\x00\x00":
        al = struct.unpack("!H", body[2:4])[0]
        a = body[4:4 + al]
        if len(body) == 4 + al and len(a) >= 6 and a[1] == 15:
            ext = a[0] & 0x10
            l = struct.unpack("!H", a[2:4])[0] if ext else a[2]
            hdr = 4 if ext else 3
            if l == 3 and len(a) == hdr + 3:
                afi, safi = struct.unpack("!HB", a[hdr:hdr + 3])
                return (afi, safi)
    return None

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--connect", required=True)
    p.add_argument("--asn", type=int, required=True)
    p.add_argument("--router-id", required=True)
    p.add_argument("--hold", type=int, default=90)
    p.add_argument("--addpath", action="store_true")
    p.add_argument("--bad-as", action="store_true")
    p.add_argument("--extended-params", action="store_true", help="send our OPEN in the RFC 9072 format")
    p.add_argument("--no-as4", action="store_true", help="leave out the 4-octet AS capability")
    p.add_argument("--timeout", type=float, default=20)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    fam = socket.AF_INET6 if ":" in a.connect else socket.AF_INET
    o = our_open(a.asn + (1 if a.bad_as else 0), a.router_id, a.hold, a.addpath, not a.no_as4, a.extended_params)
    open(a.out + ".our-open.bin", "wb").write(o)
    # A daemon that just went down idles before it accepts again (GoBGP closes what it
    # accepts for a few seconds): retry until it answers with an OPEN.
    give_up = time.time() + 60
    while True:
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.connect((a.connect, 179))
            s.sendall(o)
            first = read_msg(s, time.time() + 10)
            if first is not None:
                break
        except OSError:
            pass
        s.close()
        if time.time() > give_up:
            sys.exit(f"{a.out}: {a.connect}:179 sent no OPEN within 60 s")
        time.sleep(0.3)
    got, eors, deadline = [], set(), time.time() + a.timeout
    m = first
    while True:
        got.append(m)
        if m[18] == 1 and not a.bad_as:
            s.sendall(msg(4))
        if m[18] == 3:
            break
        e = is_eor(m)
        if e:
            eors.add(e)
            if {(1, 1), (2, 1)} <= eors:
                break
        try:
            m = read_msg(s, deadline)
        except (socket.timeout, OSError):
            break
        if m is None or time.time() > deadline:
            break
    if not a.bad_as and got[-1][18] != 3:
        # Cease / Administrative Shutdown, so the daemon logs a clean stop.
        try:
            s.sendall(msg(3, b"\x06\x02"))
        except OSError:
            pass
    s.close()
    open(a.out + ".bin", "wb").write(b"".join(got))
    kinds = [ {1: "OPEN", 2: "UPDATE", 3: "NOTIFICATION", 4: "KEEPALIVE", 5: "ROUTE-REFRESH"}.get(m[18], "?") for m in got]
    print(f"{a.out}: {len(got)} messages: {' '.join(kinds)}; End-of-RIB {sorted(eors)}")
    if not got or got[0][18] != 1:
        sys.exit(f"{a.out}: the daemon sent no OPEN")
    if a.bad_as and got[-1][18] != 3:
        sys.exit(f"{a.out}: expected a NOTIFICATION for the wrong AS")

main()
