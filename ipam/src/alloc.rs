//! The IPAM verbs as pure logic over a [`Store`].
//!
//! Nothing here knows about files: the disk store, the in-memory test
//! double and a future cluster store all run the same code.

use std::collections::HashSet;
use std::net::IpAddr;

use cni_core::{Attachment, CniResult, Code, Error, IpConfig, Result};
use ipnetwork::IpNetwork;

use crate::config::IpamConfig;
use crate::store::{Locked, Owner, Store};
use crate::CODE_EXHAUSTED;

/// Leases one address per range set to `(container_id, ifname)` and returns
/// them in range-set order, with the range's gateway and subnet prefix.
///
/// Idempotent: addresses the attachment already holds are returned again
/// (a runtime retrying an ADD after a crash gets the same lease). On error
/// nothing this call reserved is left behind.
pub fn allocate(store: &dyn Store, conf: &IpamConfig, container_id: &str, ifname: &str) -> Result<Vec<IpConfig>> {
    validate_requested(conf)?;
    let locked = store.lock()?;
    allocate_locked(&*locked, conf, container_id, ifname)
}

fn validate_requested(conf: &IpamConfig) -> Result<()> {
    let n = conf.range_sets.len();
    let mut requested: Vec<Option<IpAddr>> = vec![None; n];
    for &ip in &conf.requested {
        let Some(i) = conf.set_for(ip) else {
            return Err(Error::config(format!("requested IP address {ip} is not in any configured range"))
                .with_details(ranges_summary(conf)));
        };
        if let Some(other) = requested[i] {
            return Err(Error::config(format!(
                "requested IP addresses {other} and {ip} are both in range set {i} ({}); one address per range set",
                conf.range_sets[i]
            )));
        }
        let range = conf.range_sets[i].range_for(ip).expect("set_for found it");
        if ip == range.gateway {
            return Err(Error::config(format!("requested IP address {ip} is the gateway of range {range}")));
        }
        if range.is_reserved_address(ip) {
            return Err(Error::config(format!(
                "requested IP address {ip} is the network or broadcast address of {}",
                range.subnet
            )));
        }
        requested[i] = Some(ip);
    }
    Ok(())
}

/// [`allocate`] with the store's lock already held (callers that do more
/// under the same lock, such as cluster mode claiming a block first).
pub fn allocate_locked(
    locked: &dyn Locked,
    conf: &IpamConfig,
    container_id: &str,
    ifname: &str,
) -> Result<Vec<IpConfig>> {
    validate_requested(conf)?;
    let n = conf.range_sets.len();
    let mut requested: Vec<Option<IpAddr>> = vec![None; n];
    for &ip in &conf.requested {
        // validate_requested checked that each lands in one set.
        if let Some(i) = conf.set_for(ip) {
            requested[i] = Some(ip);
        }
    }
    let held = locked.leased_to(container_id, ifname)?;
    let mut assigned: Vec<Option<IpAddr>> = vec![None; n];
    for ip in &held {
        if let Some(i) = conf.set_for(*ip) {
            if assigned[i].is_none() {
                assigned[i] = Some(*ip);
            }
        }
    }

    let mut fresh: Vec<IpAddr> = Vec::new();
    let outcome = (|| -> Result<()> {
        for i in 0..n {
            let set = &conf.range_sets[i];
            if let Some(have) = assigned[i] {
                match requested[i] {
                    Some(want) if want != have => {
                        return Err(Error::config(format!(
                            "requested IP address {want} in range set {i}, but {container_id}/{ifname} already holds {have}"
                        )))
                    }
                    _ => {
                        tracing::info!(%have, set = i, "attachment already holds a lease; reusing it");
                        continue;
                    }
                }
            }
            let ip = match requested[i] {
                Some(want) => {
                    if !locked.reserve(container_id, ifname, want)? {
                        return Err(Error::config(format!(
                            "requested IP address {want} is not available in range set {i} ({set}): already leased"
                        )));
                    }
                    want
                }
                None => round_robin(locked, conf, i, container_id, ifname)?,
            };
            fresh.push(ip);
            assigned[i] = Some(ip);
            if let Err(e) = locked.set_last_reserved(i, ip) {
                // Only the round-robin position: the lease itself is in place.
                tracing::warn!("cannot record last reserved IP: {e}");
            }
        }
        Ok(())
    })();

    if let Err(e) = outcome {
        for ip in &fresh {
            if let Err(re) = locked.release_ip(*ip) {
                tracing::error!(%ip, "rollback after failed ADD: {re}");
            }
        }
        if held.is_empty() {
            if let Err(re) = locked.forget(container_id, ifname) {
                tracing::warn!("rollback after failed ADD: {re}");
            }
        }
        return Err(e);
    }

    Ok(assigned
        .into_iter()
        .zip(&conf.range_sets)
        .map(|(ip, set)| {
            let ip = ip.expect("every range set was assigned");
            let r = set.range_for(ip).expect("assigned from this set");
            IpConfig {
                address: IpNetwork::new(ip, r.subnet.prefix()).expect("prefix of a valid subnet"),
                gateway: Some(r.gateway),
                interface: None,
            }
        })
        .collect())
}

fn round_robin(locked: &dyn Locked, conf: &IpamConfig, i: usize, container_id: &str, ifname: &str) -> Result<IpAddr> {
    let set = &conf.range_sets[i];
    let last = locked.last_reserved(i)?;
    for ip in set.candidates(last) {
        if locked.is_reserved(ip)? {
            continue;
        }
        if locked.reserve(container_id, ifname, ip)? {
            return Ok(ip);
        }
    }
    Err(Error::new(Code::Other(CODE_EXHAUSTED), format!("no IP addresses available in range set {i}: {set}")))
}

fn ranges_summary(conf: &IpamConfig) -> String {
    conf.range_sets.iter().enumerate().map(|(i, s)| format!("range set {i}: {s}")).collect::<Vec<_>>().join("; ")
}

/// The full ADD: leases plus the configured routes and DNS.
pub fn add(store: &dyn Store, conf: &IpamConfig, container_id: &str, ifname: &str) -> Result<CniResult> {
    // Everything that can fail without touching the store goes first.
    let dns = conf.dns()?;
    let ips = allocate(store, conf, container_id, ifname)?;
    Ok(CniResult { interfaces: Vec::new(), ips, routes: conf.routes.clone(), dns })
}

/// Releases what `(container_id, ifname)` holds (old-format records by ID
/// when nothing matches exactly). Nothing leased is success.
pub fn release(store: &dyn Store, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
    let locked = store.lock()?;
    let released = locked.release(container_id, ifname)?;
    tracing::info!(?released, "released leases");
    Ok(released)
}

/// CHECK: the attachment holds one lease in every range set, and a
/// `prevResult` (when given) agrees with the store about the addresses in
/// our ranges.
pub fn check(
    store: &dyn Store,
    conf: &IpamConfig,
    container_id: &str,
    ifname: &str,
    prev: Option<&CniResult>,
) -> Result<()> {
    let leases = store.lock()?.leases()?;
    let mut mine: Vec<IpAddr> = leases.iter().filter(|l| l.owner.is(container_id, ifname)).map(|l| l.ip).collect();
    if mine.is_empty() {
        let old = Owner::ContainerOnly(container_id.to_string());
        mine = leases.iter().filter(|l| l.owner == old).map(|l| l.ip).collect();
    }
    if mine.is_empty() {
        return Err(Error::new(
            Code::UnknownContainer,
            format!("no IP address is leased to container {container_id} ifname {ifname} in network {}", conf.network),
        ));
    }
    for (i, set) in conf.range_sets.iter().enumerate() {
        if !mine.iter().any(|ip| set.contains(*ip)) {
            return Err(Error::new(
                Code::UnknownContainer,
                format!("container {container_id} ifname {ifname} holds no lease in range set {i} ({set})"),
            ));
        }
    }
    if let Some(prev) = prev {
        let ours: Vec<IpAddr> =
            prev.ips.iter().map(|c| c.address.ip()).filter(|ip| conf.set_for(*ip).is_some()).collect();
        for ip in &ours {
            if !mine.contains(ip) {
                return Err(Error::config(format!(
                    "prevResult address {ip} is not leased to container {container_id} ifname {ifname}"
                )));
            }
        }
        for ip in &mine {
            if conf.set_for(*ip).is_some() && !ours.contains(ip) {
                return Err(Error::config(format!(
                    "lease {ip} of container {container_id} ifname {ifname} is missing from prevResult"
                )));
            }
        }
    }
    Ok(())
}

/// STATUS: `Unavailable` (50) when the store cannot be written or some
/// range set has no free address left.
pub fn status(store: &dyn Store, conf: &IpamConfig) -> Result<()> {
    store.check_writable().map_err(|e| Error::new(Code::Unavailable, "IPAM store is not writable").with_details(e))?;
    let taken = store
        .reserved_ips()
        .map_err(|e| Error::new(Code::Unavailable, "cannot read the IPAM store").with_details(e))?;
    for (i, set) in conf.range_sets.iter().enumerate() {
        let used = taken.iter().filter(|ip| set.range_for(**ip).is_some_and(|r| r.allocatable(**ip))).count() as u128;
        if used >= set.capacity() {
            return Err(Error::new(Code::Unavailable, format!("no IP addresses available in range set {i}: {set}"))
                .with_details(format!("{used} of {} addresses leased", set.capacity())));
        }
    }
    Ok(())
}

/// What a GC did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub released: Vec<IpAddr>,
    pub kept: usize,
}

/// GC: releases every lease whose attachment is not in `valid`. Old-format
/// records (container ID only) are kept when any valid attachment has that
/// container ID. Keeps going on errors and reports them all at the end.
pub fn gc(store: &dyn Store, valid: &[Attachment]) -> Result<GcReport> {
    let locked = store.lock()?;
    gc_locked(&*locked, valid)
}

/// [`gc`] with the store's lock already held.
pub fn gc_locked(locked: &dyn Locked, valid: &[Attachment]) -> Result<GcReport> {
    let pairs: HashSet<(&str, &str)> = valid.iter().map(|a| (a.container_id.as_str(), a.ifname.as_str())).collect();
    let ids: HashSet<&str> = valid.iter().map(|a| a.container_id.as_str()).collect();
    let keep = |id: &str, ifname: &str| pairs.contains(&(id, ifname));

    let mut report = GcReport::default();
    let mut errors: Vec<String> = Vec::new();
    for lease in locked.leases()? {
        let stale = match &lease.owner {
            Owner::Attachment { container_id, ifname } => !keep(container_id, ifname),
            Owner::ContainerOnly(id) => !ids.contains(id.as_str()),
            Owner::Unknown(_) => true,
            Owner::Unreadable(e) => {
                errors.push(format!("{}: unreadable lease: {e}", lease.ip));
                false
            }
        };
        if !stale {
            report.kept += 1;
            continue;
        }
        match locked.release_ip(lease.ip) {
            Ok(_) => {
                tracing::info!(ip = %lease.ip, owner = ?lease.owner, "GC released stale lease");
                report.released.push(lease.ip);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if let Err(e) = locked.tidy(&keep) {
        errors.push(e.to_string());
    }
    if errors.is_empty() {
        Ok(report)
    } else {
        Err(Error::new(
            Code::Io,
            format!("GC released {} lease(s) but hit {} error(s)", report.released.len(), errors.len()),
        )
        .with_details(errors.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::{Range, RangeSet};
    use crate::store::mem::MemStore;
    use std::path::PathBuf;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(subnet: &str, start: Option<&str>, end: Option<&str>) -> RangeSet {
        RangeSet::new(vec![Range::new(subnet.parse().unwrap(), start.map(ip), end.map(ip), None).unwrap()]).unwrap()
    }

    fn conf(sets: Vec<RangeSet>) -> IpamConfig {
        IpamConfig {
            network: "net".into(),
            data_dir: PathBuf::from("/nonexistent"),
            range_sets: sets,
            routes: vec![],
            resolv_conf: None,
            requested: vec![],
        }
    }

    fn addrs(v: &[IpConfig]) -> Vec<String> {
        v.iter().map(|c| c.address.to_string()).collect()
    }

    #[test]
    fn round_robin_skips_gateway_and_continues_after_last() {
        let s = MemStore::new();
        let c = conf(vec![set("10.0.0.0/29", None, None)]);
        let a = allocate(&s, &c, "c1", "eth0").unwrap();
        assert_eq!(addrs(&a), ["10.0.0.2/29"]);
        assert_eq!(a[0].gateway, Some(ip("10.0.0.1")));
        assert_eq!(addrs(&allocate(&s, &c, "c2", "eth0").unwrap()), ["10.0.0.3/29"]);
        release(&s, "c1", "eth0").unwrap();
        // Round-robin: .2 is free again but the cursor moves on.
        assert_eq!(addrs(&allocate(&s, &c, "c3", "eth0").unwrap()), ["10.0.0.4/29"]);
        for id in ["c4", "c5"] {
            allocate(&s, &c, id, "eth0").unwrap();
        }
        // Wraps around to the released .2.
        assert_eq!(addrs(&allocate(&s, &c, "c6", "eth0").unwrap()), ["10.0.0.2/29"]);
        let e = allocate(&s, &c, "c7", "eth0").unwrap_err();
        assert_eq!(e.code, Code::Other(CODE_EXHAUSTED));
        assert!(e.msg.contains("no IP addresses available in range set 0: 10.0.0.1-10.0.0.6"));
        assert_eq!(status(&s, &c).unwrap_err().code, Code::Unavailable);
    }

    #[test]
    fn re_add_returns_the_same_lease_and_partial_failure_rolls_back() {
        let s = MemStore::new();
        let c = conf(vec![set("10.0.0.0/24", None, None), set("10.1.0.0/30", None, None)]);
        let a = allocate(&s, &c, "c1", "eth0").unwrap();
        assert_eq!(addrs(&a), ["10.0.0.2/24", "10.1.0.2/30"]);
        assert_eq!(allocate(&s, &c, "c1", "eth0").unwrap(), a);
        // Set 1 is now full: c2's set-0 address must be rolled back.
        let e = allocate(&s, &c, "c2", "eth0").unwrap_err();
        assert_eq!(e.code, Code::Other(CODE_EXHAUSTED));
        assert!(e.msg.contains("range set 1"), "{e}");
        assert_eq!(s.snapshot().len(), 2);
    }

    #[test]
    fn requested_addresses() {
        let s = MemStore::new();
        let mut c = conf(vec![set("10.0.0.0/24", None, None)]);
        c.requested = vec![ip("10.0.0.50")];
        assert_eq!(addrs(&allocate(&s, &c, "c1", "eth0").unwrap()), ["10.0.0.50/24"]);
        let e = allocate(&s, &c, "c2", "eth0").unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig);
        assert!(e.msg.contains("not available"), "{e}");
        // Re-ADD with the same request is idempotent; a different one is refused.
        allocate(&s, &c, "c1", "eth0").unwrap();
        c.requested = vec![ip("10.0.0.51")];
        assert!(allocate(&s, &c, "c1", "eth0").unwrap_err().msg.contains("already holds"));
        for (req, want) in [("10.9.0.1", "not in any configured range"), ("10.0.0.1", "gateway")] {
            c.requested = vec![ip(req)];
            let e = allocate(&s, &c, "c3", "eth0").unwrap_err();
            assert_eq!(e.code, Code::InvalidConfig);
            assert!(e.msg.contains(want), "{e}");
        }
        c.requested = vec![ip("10.0.0.60"), ip("10.0.0.61")];
        assert!(allocate(&s, &c, "c3", "eth0").unwrap_err().msg.contains("one address per range set"));
        let e = {
            let mut c = conf(vec![set("10.0.0.0/24", Some("10.0.0.0"), Some("10.0.0.255"))]);
            c.requested = vec![ip("10.0.0.255")];
            allocate(&s, &c, "c3", "eth0").unwrap_err()
        };
        assert!(e.msg.contains("broadcast"), "{e}");
    }

    #[test]
    fn check_compares_store_and_prev_result() {
        let s = MemStore::new();
        let c = conf(vec![set("10.0.0.0/24", None, None)]);
        assert_eq!(check(&s, &c, "c1", "eth0", None).unwrap_err().code, Code::UnknownContainer);
        let r = add(&s, &c, "c1", "eth0").unwrap();
        check(&s, &c, "c1", "eth0", None).unwrap();
        check(&s, &c, "c1", "eth0", Some(&r)).unwrap();
        let mut wrong = r.clone();
        wrong.ips[0].address = "10.0.0.99/24".parse().unwrap();
        assert_eq!(check(&s, &c, "c1", "eth0", Some(&wrong)).unwrap_err().code, Code::InvalidConfig);
        // Addresses outside our ranges (another plugin's) are ignored.
        let mut extra = r.clone();
        extra.ips.push(IpConfig { address: "192.168.9.9/24".parse().unwrap(), gateway: None, interface: Some(0) });
        check(&s, &c, "c1", "eth0", Some(&extra)).unwrap();
        assert_eq!(check(&s, &c, "c1", "eth1", None).unwrap_err().code, Code::UnknownContainer);
    }

    #[test]
    fn gc_keeps_valid_and_frees_the_rest() {
        let s = MemStore::new();
        let c = conf(vec![set("10.0.0.0/24", None, None)]);
        for id in ["a", "b", "c"] {
            allocate(&s, &c, id, "eth0").unwrap();
        }
        s.insert(ip("10.0.0.100"), Owner::ContainerOnly("a".into()));
        s.insert(ip("10.0.0.101"), Owner::ContainerOnly("zz".into()));
        s.insert(ip("10.0.0.102"), Owner::Unknown(String::new()));
        let valid = vec![Attachment { container_id: "a".into(), ifname: "eth0".into() }];
        let mut rep = gc(&s, &valid).unwrap();
        rep.released.sort();
        assert_eq!(rep.kept, 2);
        let left: Vec<IpAddr> = s.snapshot().iter().map(|l| l.ip).collect();
        assert_eq!(left, [ip("10.0.0.2"), ip("10.0.0.100")]);
    }

    #[test]
    fn status_reports_unwritable_store() {
        let s = MemStore::new();
        let c = conf(vec![set("10.0.0.0/24", None, None)]);
        status(&s, &c).unwrap();
        s.set_read_only(true);
        assert_eq!(status(&s, &c).unwrap_err().code, Code::Unavailable);
    }
}
