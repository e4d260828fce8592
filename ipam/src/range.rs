//! Address ranges and range sets, and the round-robin walk over a set.
//!
//! Addresses are handled as `u128` inside one family so the arithmetic is
//! the same for IPv4 and IPv6. A [`Range`] is validated once
//! ([`Range::new`]); everything after that can assume `start <= end`, both
//! inside `subnet`, and a gateway.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// The address as a number within its family.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address `n` of the family of `like`. `n` must fit the family.
pub fn from_u128(like: IpAddr, n: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// One contiguous allocation range inside a subnet (host-local's `Range`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The subnet, host bits clear. Results carry its prefix length.
    pub subnet: IpNetwork,
    /// First address handed out (inclusive).
    pub start: IpAddr,
    /// Last address handed out (inclusive).
    pub end: IpAddr,
    /// Returned as the gateway of every address from this range and never
    /// handed out itself.
    pub gateway: IpAddr,
}

impl Range {
    /// Validates and fills in defaults the way host-local does:
    /// `start` = network+1, `end` = broadcast-1 (IPv4) or the last address
    /// (IPv6), `gateway` = network+1. Errors are plain messages; the caller
    /// wraps them as code 7.
    pub fn new(
        subnet: IpNetwork,
        start: Option<IpAddr>,
        end: Option<IpAddr>,
        gateway: Option<IpAddr>,
    ) -> Result<Range, String> {
        let bits: u8 = if subnet.is_ipv4() { 32 } else { 128 };
        if subnet.prefix() + 2 > bits {
            return Err(format!("network {subnet} is too small to allocate from"));
        }
        if subnet.ip() != subnet.network() {
            return Err(format!(
                "subnet {subnet} has host bits set (the network address for /{} is {})",
                subnet.prefix(),
                subnet.network()
            ));
        }
        let family_ok = |ip: IpAddr| ip.is_ipv4() == subnet.is_ipv4();
        let net = to_u128(subnet.network());
        let last = to_u128(subnet.broadcast());
        let default_end = if subnet.is_ipv4() { last - 1 } else { last };
        for (what, ip) in [("rangeStart", start), ("rangeEnd", end), ("gateway", gateway)] {
            if let Some(ip) = ip {
                if !family_ok(ip) || !subnet.contains(ip) {
                    return Err(format!("{what} {ip} is not in subnet {subnet}"));
                }
            }
        }
        let start = start.unwrap_or_else(|| from_u128(subnet.ip(), net + 1));
        let end = end.unwrap_or_else(|| from_u128(subnet.ip(), default_end));
        if to_u128(start) > to_u128(end) {
            return Err(format!("rangeStart {start} is after rangeEnd {end} in subnet {subnet}"));
        }
        let gateway = gateway.unwrap_or_else(|| from_u128(subnet.ip(), net + 1));
        Ok(Range { subnet, start, end, gateway })
    }

    pub fn is_ipv4(&self) -> bool {
        self.subnet.is_ipv4()
    }

    /// Inside `start..=end` (same family).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4() && (to_u128(self.start)..=to_u128(self.end)).contains(&to_u128(ip))
    }

    /// Never handed out: the gateway, the network address and, for IPv4,
    /// the broadcast address (the last two only matter when an explicit
    /// `rangeStart`/`rangeEnd` includes them).
    pub fn is_reserved_address(&self, ip: IpAddr) -> bool {
        ip == self.gateway || ip == self.subnet.network() || (self.is_ipv4() && ip == self.subnet.broadcast())
    }

    /// Whether `ip` may be leased from this range.
    pub fn allocatable(&self, ip: IpAddr) -> bool {
        self.contains(ip) && !self.is_reserved_address(ip)
    }

    /// How many addresses this range can hand out (saturating at `u128::MAX`).
    pub fn capacity(&self) -> u128 {
        let span = (to_u128(self.end) - to_u128(self.start)).saturating_add(1);
        let mut skipped = vec![self.gateway, self.subnet.network()];
        if self.is_ipv4() {
            skipped.push(self.subnet.broadcast());
        }
        skipped.sort();
        skipped.dedup();
        let inside = skipped.iter().filter(|ip| self.contains(**ip)).count() as u128;
        span - inside
    }

    fn overlaps(&self, other: &Range) -> bool {
        self.is_ipv4() == other.is_ipv4()
            && to_u128(self.start) <= to_u128(other.end)
            && to_u128(other.start) <= to_u128(self.end)
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// Ranges of one family from which exactly one address is leased per
/// attachment (host-local's `RangeSet`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    pub ranges: Vec<Range>,
}

impl RangeSet {
    /// Validates a set: non-empty, one family, no overlapping ranges.
    pub fn new(ranges: Vec<Range>) -> Result<RangeSet, String> {
        let Some(first) = ranges.first() else {
            return Err("empty range set".into());
        };
        if ranges.iter().any(|r| r.is_ipv4() != first.is_ipv4()) {
            return Err("mixes IPv4 and IPv6 ranges".into());
        }
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                if a.overlaps(b) {
                    return Err(format!("ranges {a} and {b} overlap"));
                }
            }
        }
        Ok(RangeSet { ranges })
    }

    pub fn is_ipv4(&self) -> bool {
        self.ranges[0].is_ipv4()
    }

    /// The range whose `start..=end` holds `ip`.
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    pub fn overlaps(&self, other: &RangeSet) -> bool {
        self.ranges.iter().any(|a| other.ranges.iter().any(|b| a.overlaps(b)))
    }

    /// Addresses this set can hand out (saturating).
    pub fn capacity(&self) -> u128 {
        self.ranges.iter().fold(0u128, |acc, r| acc.saturating_add(r.capacity()))
    }

    /// host-local's round-robin order: starting right after `last` when
    /// `last` lies in this set, else at the first range's start; across the
    /// ranges in order, wrapping once, skipping reserved addresses.
    pub fn candidates(&self, last: Option<IpAddr>) -> Candidates<'_> {
        let from_last =
            last.and_then(|ip| self.ranges.iter().position(|r| r.contains(ip)).map(|idx| (idx, to_u128(ip))));
        Candidates { set: self, pos: (0, 0), start: None, from_last, done: false }
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Iterator over the allocatable addresses of a [`RangeSet`] in round-robin
/// order; each address is yielded at most once.
pub struct Candidates<'a> {
    set: &'a RangeSet,
    /// (range index, address) of the cursor.
    pos: (usize, u128),
    /// Where the walk began; reaching it again ends the walk.
    start: Option<(usize, u128)>,
    from_last: Option<(usize, u128)>,
    done: bool,
}

impl Candidates<'_> {
    fn advance(&mut self) {
        let (idx, cur) = self.pos;
        let r = &self.set.ranges[idx];
        self.pos = if cur == to_u128(r.end) {
            let next = (idx + 1) % self.set.ranges.len();
            (next, to_u128(self.set.ranges[next].start))
        } else {
            (idx, cur + 1)
        };
    }
}

impl Iterator for Candidates<'_> {
    type Item = IpAddr;

    fn next(&mut self) -> Option<IpAddr> {
        loop {
            if self.done {
                return None;
            }
            match self.start {
                None => {
                    match self.from_last {
                        Some(p) => {
                            self.pos = p;
                            self.advance();
                        }
                        None => self.pos = (0, to_u128(self.set.ranges[0].start)),
                    }
                    self.start = Some(self.pos);
                }
                Some(start) => {
                    self.advance();
                    if self.pos == start {
                        self.done = true;
                        return None;
                    }
                }
            }
            let r = &self.set.ranges[self.pos.0];
            let ip = from_u128(r.start, self.pos.1);
            if !r.is_reserved_address(ip) {
                return Some(ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn range(subnet: &str, start: Option<&str>, end: Option<&str>) -> Range {
        Range::new(subnet.parse().unwrap(), start.map(ip), end.map(ip), None).unwrap()
    }

    #[test]
    fn defaults_follow_host_local() {
        let r = range("10.1.0.0/24", None, None);
        assert_eq!((r.start, r.end, r.gateway), (ip("10.1.0.1"), ip("10.1.0.254"), ip("10.1.0.1")));
        assert_eq!(r.capacity(), 253);
        let r6 = range("fd00::/125", None, None);
        assert_eq!((r6.start, r6.end), (ip("fd00::1"), ip("fd00::7")));
        assert_eq!(r6.capacity(), 6);
    }

    #[test]
    fn validation_messages() {
        let n = |s: &str| s.parse::<IpNetwork>().unwrap();
        assert!(Range::new(n("10.0.0.0/31"), None, None, None).unwrap_err().contains("too small"));
        assert!(Range::new(n("10.0.0.7/24"), None, None, None).unwrap_err().contains("host bits"));
        assert!(Range::new(n("10.0.0.0/24"), Some(ip("10.0.1.1")), None, None)
            .unwrap_err()
            .contains("rangeStart 10.0.1.1 is not in subnet"));
        assert!(Range::new(n("10.0.0.0/24"), Some(ip("10.0.0.50")), Some(ip("10.0.0.40")), None)
            .unwrap_err()
            .contains("after rangeEnd"));
        assert!(Range::new(n("10.0.0.0/24"), None, None, Some(ip("fd00::1"))).unwrap_err().contains("gateway"));
        let a = range("10.0.0.0/24", None, None);
        let b = range("10.0.0.0/25", None, None);
        assert!(RangeSet::new(vec![a.clone(), b]).unwrap_err().contains("overlap"));
        let c = range("fd00::/64", None, None);
        assert!(RangeSet::new(vec![a, c]).unwrap_err().contains("mixes"));
        // Disjoint ranges of one subnet are fine.
        RangeSet::new(vec![
            range("10.0.0.0/24", Some("10.0.0.10"), Some("10.0.0.20")),
            range("10.0.0.0/24", Some("10.0.0.30"), Some("10.0.0.40")),
        ])
        .unwrap();
    }

    #[test]
    fn walk_skips_gateway_network_broadcast_and_wraps_once() {
        let set = RangeSet::new(vec![range("10.0.0.0/29", Some("10.0.0.0"), Some("10.0.0.7"))]).unwrap();
        let all: Vec<IpAddr> = set.candidates(None).collect();
        let want: Vec<IpAddr> = (2..=6).map(|i| ip(&format!("10.0.0.{i}"))).collect();
        assert_eq!(all, want);
        assert_eq!(set.capacity(), 5);
        let from4: Vec<IpAddr> = set.candidates(Some(ip("10.0.0.4"))).collect();
        assert_eq!(from4, ["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"].map(ip));
        // A last address outside the set starts at the beginning.
        assert_eq!(set.candidates(Some(ip("10.9.9.9"))).next(), Some(ip("10.0.0.2")));
    }

    #[test]
    fn walk_crosses_ranges() {
        let set = RangeSet::new(vec![
            range("10.0.0.0/24", Some("10.0.0.10"), Some("10.0.0.11")),
            range("10.0.1.0/24", Some("10.0.1.20"), Some("10.0.1.21")),
        ])
        .unwrap();
        let v: Vec<IpAddr> = set.candidates(Some(ip("10.0.0.11"))).collect();
        assert_eq!(v, ["10.0.1.20", "10.0.1.21", "10.0.0.10", "10.0.0.11"].map(ip));
        assert_eq!(set.to_string(), "10.0.0.10-10.0.0.11,10.0.1.20-10.0.1.21");
    }

    #[test]
    fn huge_v6_capacity_saturates_without_overflow() {
        let r = range("::/0", None, None);
        assert_eq!(r.capacity(), u128::MAX - 1);
        let set = RangeSet::new(vec![r.clone()]).unwrap();
        assert_eq!(set.candidates(None).next(), Some(ip("::2")));
    }
}
