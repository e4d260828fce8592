//! Best-path selection (RFC 4271 §9.1.2.2 as deployed by BIRD, FRR and GoBGP): a total order
//! over the candidate routes of one prefix, each comparison naming the step that decided it
//! so that tests and logs can say why a route won.

use std::cmp::Ordering;
use std::net::{IpAddr, Ipv4Addr};

use super::attrs::PathAttrs;

/// The steps, in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// A route this speaker originates beats any learned one.
    Local,
    /// Highest LOCAL_PREF (absent: the default, 100).
    LocalPref,
    /// Shortest AS_PATH (an AS_SET counts 1, confederation segments 0).
    AsPathLength,
    /// Lowest ORIGIN (IGP < EGP < INCOMPLETE).
    Origin,
    /// Lowest MED (absent: 0), only between routes from the same neighbouring AS.
    Med,
    /// A route learned over eBGP beats one learned over iBGP.
    EbgpOverIbgp,
    /// Lowest router ID: the ORIGINATOR_ID of a reflected route, else the peer's BGP ID.
    RouterId,
    /// Shortest CLUSTER_LIST (RFC 4456 §9).
    ClusterListLength,
    /// Lowest peer address.
    PeerAddress,
    /// Nothing tells them apart (the same route).
    Equal,
}

impl Step {
    /// Every deciding step, in order (docs/bgp.md's table is held to it).
    pub const ORDER: [Step; 9] = [
        Step::Local,
        Step::LocalPref,
        Step::AsPathLength,
        Step::Origin,
        Step::Med,
        Step::EbgpOverIbgp,
        Step::RouterId,
        Step::ClusterListLength,
        Step::PeerAddress,
    ];
}

/// LOCAL_PREF assumed for a route without one (eBGP-learned or local), as BIRD and FRR do.
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// What selection needs to know about one candidate route.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub attrs: &'a PathAttrs,
    /// `None` for a locally originated route.
    pub peer: Option<PeerFacts>,
}

/// The facts about the peer a route came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerFacts {
    pub ebgp: bool,
    pub router_id: Ipv4Addr,
    pub addr: IpAddr,
}

/// `Less` means `a` is better. MED is compared only when both routes come from the same
/// neighbouring AS (`always_compare_med` off, the BIRD / Calico default).
pub fn compare(a: &Candidate<'_>, b: &Candidate<'_>) -> (Ordering, Step) {
    let (pa, pb) = match (a.peer, b.peer) {
        (None, None) => return (Ordering::Equal, Step::Equal),
        (None, Some(_)) => return (Ordering::Less, Step::Local),
        (Some(_), None) => return (Ordering::Greater, Step::Local),
        (Some(pa), Some(pb)) => (pa, pb),
    };
    let (x, y) = (a.attrs, b.attrs);
    let lp = |p: &PathAttrs| p.local_pref.unwrap_or(DEFAULT_LOCAL_PREF);
    let steps: [(Step, Ordering); 8] = [
        (Step::LocalPref, lp(y).cmp(&lp(x))),
        (Step::AsPathLength, x.as_path.length().cmp(&y.as_path.length())),
        (Step::Origin, x.origin.cmp(&y.origin)),
        (
            Step::Med,
            if x.neighbour_as() == y.neighbour_as() {
                x.med.unwrap_or(0).cmp(&y.med.unwrap_or(0))
            } else {
                Ordering::Equal
            },
        ),
        (Step::EbgpOverIbgp, pb.ebgp.cmp(&pa.ebgp)),
        (Step::RouterId, x.originator_id.unwrap_or(pa.router_id).cmp(&y.originator_id.unwrap_or(pb.router_id))),
        (Step::ClusterListLength, x.cluster_list.len().cmp(&y.cluster_list.len())),
        (Step::PeerAddress, pa.addr.cmp(&pb.addr)),
    ];
    steps.into_iter().find(|(_, o)| o.is_ne()).map(|(s, o)| (o, s)).unwrap_or((Ordering::Equal, Step::Equal))
}
