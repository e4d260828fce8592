//! Export: what a peer is sent for a best route (eBGP, iBGP full mesh, route reflection), and
//! the packing of Adj-RIB-Out changes into UPDATE messages under the 4096-octet limit.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::attrs::PathAttrs;
use super::best::DEFAULT_LOCAL_PREF;
use super::{PeerConfig, RibConfig};
use crate::error::EncodeError;
use crate::packet::{
    AsPath, AsSegment, Attr, AttrValue, Family, Message, MpNextHop, MpReach, MpUnreach, Nlri, Prefix, SegmentKind,
    SessionCaps, Update, MAX_LEN,
};

/// The attributes `to` is sent for a route with `attrs`, learned from `from` (its config and
/// BGP identifier; `None`: originated here), or `None` when the rules forbid it:
/// - to eBGP: our AS prepended, next hop self, no LOCAL_PREF, MED only for our own routes,
///   no ORIGINATOR_ID / CLUSTER_LIST;
/// - to iBGP: LOCAL_PREF set (default 100), next hop self for our own routes, else unchanged;
///   an iBGP-learned route only when we reflect and the source or the target is a client,
///   with ORIGINATOR_ID set if absent and our CLUSTER_ID prepended to CLUSTER_LIST.
pub(super) fn transform(
    me: &RibConfig,
    to: &PeerConfig,
    pfx: Prefix,
    attrs: &PathAttrs,
    from: Option<(&PeerConfig, Ipv4Addr)>,
) -> Option<PathAttrs> {
    let to_ebgp = to.asn != me.asn;
    let from_ibgp = from.filter(|(f, _)| f.asn == me.asn);
    let mut a = attrs.clone();
    let next_hop_self = || match pfx.family() {
        Family::Ipv4Unicast => to.local_v4.map(MpNextHop::Ipv4),
        Family::Ipv6Unicast => to.local_v6.map(|global| MpNextHop::Ipv6 { global, link_local: None }),
    };
    if to_ebgp {
        let mut path = vec![AsSegment { kind: SegmentKind::Sequence, asns: vec![me.asn] }];
        match a.as_path.0.split_first() {
            Some((s, rest)) if s.kind == SegmentKind::Sequence => {
                if let Some(first) = path.first_mut() {
                    first.asns.extend_from_slice(&s.asns);
                }
                path.extend(rest.iter().cloned());
            }
            _ => path.extend(a.as_path.0.iter().cloned()),
        }
        a.as_path = AsPath(path);
        a.next_hop = next_hop_self()?;
        a.local_pref = None;
        if from.is_some() {
            a.med = None;
        }
        a.originator_id = None;
        a.cluster_list.clear();
        return Some(a);
    }
    a.local_pref = Some(a.local_pref.unwrap_or(DEFAULT_LOCAL_PREF));
    match (from, from_ibgp) {
        (None, _) => a.next_hop = next_hop_self()?,
        (Some(_), None) => {}
        (Some(_), Some((f, router_id))) => {
            let cluster = me.cluster_id?;
            if !(f.rr_client || to.rr_client) {
                return None;
            }
            a.originator_id = Some(a.originator_id.unwrap_or(router_id));
            a.cluster_list.insert(0, cluster);
        }
    }
    Some(a)
}

/// One Adj-RIB-Out change: announce `prefix` with `attrs`, or withdraw it (`None`).
#[derive(Debug, Clone, Copy)]
pub struct RouteOut<'a> {
    pub prefix: Prefix,
    pub attrs: Option<&'a PathAttrs>,
}

/// The path attributes of an UPDATE announcing `family` routes with `a` (MP_REACH_NLRI with
/// no NLRI yet for all but IPv4 routes with an IPv4 next hop), in type-code order.
fn wire_attrs(a: &PathAttrs, family: Family, caps: &SessionCaps) -> Vec<Attr> {
    let mut v = vec![Attr::new(AttrValue::Origin(a.origin))];
    if caps.four_octet_as {
        v.push(Attr::new(AttrValue::AsPath(a.as_path.clone())));
    } else {
        let (two, as4) = a.as_path.to_two_octet();
        v.push(Attr::new(AttrValue::AsPath(two)));
        v.extend(as4.map(|p| Attr::new(AttrValue::As4Path(p))));
    }
    match (family, a.next_hop) {
        (Family::Ipv4Unicast, MpNextHop::Ipv4(nh)) => v.push(Attr::new(AttrValue::NextHop(nh))),
        (f, next_hop) => v.push(Attr::new(AttrValue::MpReach(MpReach { family: f, next_hop, nlri: Vec::new() }))),
    }
    v.extend(a.med.map(|m| Attr::new(AttrValue::Med(m))));
    if caps.ibgp {
        v.push(Attr::new(AttrValue::LocalPref(a.local_pref.unwrap_or(DEFAULT_LOCAL_PREF))));
    }
    if !a.communities.is_empty() {
        v.push(Attr::new(AttrValue::Communities(a.communities.clone())));
    }
    v.extend(a.originator_id.map(|o| Attr::new(AttrValue::OriginatorId(o))));
    if !a.cluster_list.is_empty() {
        v.push(Attr::new(AttrValue::ClusterList(a.cluster_list.clone())));
    }
    v.extend(
        a.other
            .iter()
            .filter(|x| caps.four_octet_as || !matches!(x.value, AttrValue::Aggregator { asn, .. } if asn > 0xffff))
            .cloned(),
    );
    v.sort_by_key(|x| x.value.code());
    v
}

fn nlri_len(p: &Prefix, add_path: bool) -> usize {
    1 + usize::from(p.length()).div_ceil(8) + if add_path { 4 } else { 0 }
}

/// Packs changes into UPDATEs of at most 4096 octets: withdrawals first (IPv4 in the
/// withdrawn routes field, others in MP_UNREACH_NLRI), then one run of UPDATEs per attribute
/// set and family, as many prefixes per message as fit.
pub fn pack_updates<'a>(
    changes: impl IntoIterator<Item = RouteOut<'a>>,
    caps: &SessionCaps,
) -> Result<Vec<Update>, EncodeError> {
    let mut withdrawn: Vec<Vec<Nlri>> = vec![Vec::new(), Vec::new()];
    let mut groups: Vec<(Family, &PathAttrs, Vec<Nlri>)> = Vec::new();
    let mut index: HashMap<(Family, *const PathAttrs), usize> = HashMap::new();
    for c in changes {
        let f = c.prefix.family();
        match c.attrs {
            None => {
                if let Some(w) = withdrawn.get_mut(f as usize) {
                    w.push(c.prefix.into());
                }
            }
            Some(a) => {
                let i = *index.entry((f, a as *const PathAttrs)).or_insert_with(|| {
                    groups.push((f, a, Vec::new()));
                    groups.len() - 1
                });
                if let Some(g) = groups.get_mut(i) {
                    g.2.push(c.prefix.into());
                }
            }
        }
    }
    let mut out = Vec::new();
    let size = |u: &Update| -> Result<usize, EncodeError> { Ok(Message::Update(u.clone()).to_bytes(caps)?.len()) };
    for (f, w) in [Family::Ipv4Unicast, Family::Ipv6Unicast].into_iter().zip(withdrawn) {
        let ap = caps.add_path_send(f);
        let base = match f {
            Family::Ipv4Unicast => Update::default(),
            f => Update::new(vec![AttrValue::MpUnreach(MpUnreach { family: f, withdrawn: Vec::new() })], Vec::new()),
        };
        // Two octets of slack: the MP attribute's length may become extended.
        let budget = MAX_LEN - size(&base)? - 2;
        for chunk in chunks(&w, budget, ap) {
            let mut u = base.clone();
            match f {
                Family::Ipv4Unicast => u.withdrawn = chunk,
                _ => {
                    if let Some(AttrValue::MpUnreach(m)) = u.attrs.first_mut().map(|a| &mut a.value) {
                        m.withdrawn = chunk;
                    }
                }
            }
            out.push(u);
        }
    }
    for (f, a, nlri) in groups {
        let ap = caps.add_path_send(f);
        let base = Update { attrs: wire_attrs(a, f, caps), ..Update::default() };
        let budget = MAX_LEN.checked_sub(size(&base)? + 2).ok_or(EncodeError::TooLong(size(&base)?))?;
        for chunk in chunks(&nlri, budget, ap) {
            let mut u = base.clone();
            match u.attrs.iter_mut().find_map(|x| match &mut x.value {
                AttrValue::MpReach(m) => Some(m),
                _ => None,
            }) {
                Some(m) => m.nlri = chunk,
                None => u.nlri = chunk,
            }
            out.push(u);
        }
    }
    Ok(out)
}

/// Splits `nlri` into runs whose encoding fits `budget` octets.
fn chunks(nlri: &[Nlri], budget: usize, add_path: bool) -> Vec<Vec<Nlri>> {
    let mut out = Vec::new();
    let (mut cur, mut used) = (Vec::new(), 0);
    for n in nlri {
        let l = nlri_len(&n.prefix, add_path);
        if used + l > budget && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
            used = 0;
        }
        cur.push(*n);
        used += l;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}
