//! The path attributes a route carries, normalised from an UPDATE, and their interning: every
//! route holding the same attribute set holds one `Arc` to it, so 100k prefixes announced with
//! one attribute set cost one set.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::packet::{AsPath, Attr, AttrValue, MpNextHop, Origin, SessionCaps, Update};

/// One route's path attributes, as used by best-path selection and the export rules. The
/// next hop is part of the set: IPv4 NLRI take NEXT_HOP, MP_REACH_NLRI its own next hop.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathAttrs {
    pub origin: Origin,
    /// The real path (AS4_PATH already merged on 2-octet sessions).
    pub as_path: AsPath,
    pub next_hop: MpNextHop,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub communities: Vec<u32>,
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
    /// Every other attribute to pass on (ATOMIC_AGGREGATE, AGGREGATOR, unknown optional
    /// transitive ones with the partial bit set), as [`Attr::for_propagation`] leaves them.
    pub other: Vec<Attr>,
}

impl PathAttrs {
    /// Attributes of a route this speaker originates: ORIGIN IGP, empty AS_PATH; the next hop
    /// is replaced by ours on export.
    pub fn local(next_hop: MpNextHop) -> PathAttrs {
        PathAttrs {
            origin: Origin::Igp,
            as_path: AsPath::default(),
            next_hop,
            med: None,
            local_pref: None,
            communities: Vec::new(),
            originator_id: None,
            cluster_list: Vec::new(),
            other: Vec::new(),
        }
    }

    /// The attributes of an accepted UPDATE for routes with `next_hop`. `None` when a
    /// well-known mandatory attribute is missing (the decoder already gave treat-as-withdraw).
    pub fn from_update(u: &Update, caps: &SessionCaps, next_hop: MpNextHop) -> Option<PathAttrs> {
        let mut p = PathAttrs::local(next_hop);
        p.as_path = u.as_path(caps)?;
        let mut origin = None;
        for a in &u.attrs {
            match &a.value {
                AttrValue::Origin(o) => origin = origin.or(Some(*o)),
                AttrValue::Med(m) => p.med = p.med.or(Some(*m)),
                AttrValue::LocalPref(l) => p.local_pref = p.local_pref.or(Some(*l)),
                AttrValue::Communities(c) if p.communities.is_empty() => p.communities = c.clone(),
                AttrValue::OriginatorId(o) => p.originator_id = p.originator_id.or(Some(*o)),
                AttrValue::ClusterList(c) if p.cluster_list.is_empty() => p.cluster_list = c.clone(),
                AttrValue::AtomicAggregate
                | AttrValue::Aggregator { .. }
                | AttrValue::As4Aggregator { .. }
                | AttrValue::Unknown { .. } => p.other.extend(a.for_propagation()),
                // AS4_PATH is merged above; the rest are the NLRI carriers, repeats and
                // discarded (malformed) attributes.
                _ => {}
            }
        }
        p.origin = origin?;
        Some(p)
    }

    /// The first AS of the path: the neighbouring AS whose MEDs are comparable (RFC 4271
    /// §9.1.2.2 c); `None` for a path originated inside our AS.
    pub fn neighbour_as(&self) -> Option<u32> {
        self.as_path.0.first().and_then(|s| s.asns.first().copied())
    }

    /// Whether `asn` appears anywhere in the path (AS_PATH loop detection, RFC 4271 §9.1.2).
    pub fn path_contains(&self, asn: u32) -> bool {
        self.as_path.0.iter().any(|s| s.asns.contains(&asn))
    }
}

/// The interned attribute sets: `intern` returns the one `Arc` for equal sets.
#[derive(Debug, Default)]
pub struct AttrPool {
    sets: HashSet<Arc<PathAttrs>>,
    /// How many sets the last collection left: the next one runs when the pool has doubled,
    /// so that freeing costs O(1) amortised per interned set.
    after_collect: usize,
}

impl AttrPool {
    pub fn intern(&mut self, a: PathAttrs) -> Arc<PathAttrs> {
        if let Some(x) = self.sets.get(&a) {
            return x.clone();
        }
        let x = Arc::new(a);
        self.sets.insert(x.clone());
        x
    }

    /// Forgets the sets no route holds any more (the pool's own reference is the last).
    pub fn collect(&mut self) {
        self.sets.retain(|a| Arc::strong_count(a) > 1);
        self.after_collect = self.sets.len();
    }

    /// [`AttrPool::collect`] once the pool has doubled since the last collection.
    pub fn maybe_collect(&mut self) {
        if self.sets.len() > 2 * self.after_collect + 64 {
            self.collect();
        }
    }

    /// How many distinct attribute sets routes hold.
    pub fn len(&self) -> usize {
        self.sets.iter().filter(|a| Arc::strong_count(a) > 1).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
