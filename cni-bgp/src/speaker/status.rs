//! What the speaker tells about itself: a peer's state ([`PeerStatus`]), a Loc-RIB entry
//! ([`RouteInfo`]), and the words for why a session failed, as `cni-bgp status` prints them.

use std::net::{IpAddr, SocketAddr};

use bgp::fsm::{DownReason, State};
use bgp::packet::Notification;
use serde::{Deserialize, Serialize};

/// One configured peer, as `cni-bgp status` shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    pub address: IpAddr,
    pub asn: u32,
    pub kind: String,
    /// "Idle", "Connect", "Active", "OpenSent", "OpenConfirm", "Established".
    pub state: String,
    /// Seconds since the session reached Established.
    pub uptime_secs: Option<u64>,
    pub prefixes_received: usize,
    pub prefixes_sent: usize,
    /// Why the last connection attempt or session failed, in words.
    pub last_error: Option<String>,
}

/// One Loc-RIB best route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteInfo {
    pub prefix: ipnetwork::IpNetwork,
    /// The BGP next hop; `None` for a route originated here.
    pub next_hop: Option<IpAddr>,
    /// The peer it was learned from; `None` for a route originated here.
    pub peer: Option<IpAddr>,
    /// The AS numbers of AS_PATH in order (sets flattened).
    pub as_path: Vec<u32>,
    pub local_pref: Option<u32>,
}

/// The RFC 4271 name of an FSM state.
pub(crate) fn state_name(s: State) -> &'static str {
    match s {
        State::Idle => "Idle",
        State::Connect => "Connect",
        State::Active => "Active",
        State::OpenSent => "OpenSent",
        State::OpenConfirm => "OpenConfirm",
        State::Established => "Established",
    }
}

/// A failed outgoing connection: "connection refused on 10.0.0.2:179".
pub(crate) fn connect_error(to: SocketAddr, e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => format!("connection refused on {to}"),
        K::TimedOut => format!("connection timed out on {to}"),
        K::HostUnreachable => format!("host unreachable: {to}"),
        K::NetworkUnreachable => format!("network unreachable: {to}"),
        K::AddrNotAvailable => format!("cannot connect to {to}: local address not available"),
        _ => format!("cannot connect to {to}: {e}"),
    }
}

/// "2/2 (OPEN Message Error: Bad Peer AS)", with an administrative shutdown message if any.
fn notification_words(n: &Notification) -> String {
    let mut s = format!("{}/{} ({})", n.code, n.subcode, bgp::packet::notification_name(n.code, n.subcode));
    if let Some(m) = n.shutdown_message() {
        s.push_str(&format!(": {m:?}"));
    }
    s
}

/// Why a connection or session ended, in words; `None` when it was our own decision
/// (stopped, or closed by collision detection) rather than a failure.
///
/// `detail` is what the session knew beyond the FSM's reason: for a NOTIFICATION we sent, the
/// codec's or FSM's sentence (e.g. "peer AS 64513, configured 64512"); for a TCP failure, the
/// socket's error.
pub(crate) fn down_words(reason: &DownReason, detail: Option<&str>) -> Option<String> {
    Some(match reason {
        DownReason::Stopped => return None,
        DownReason::HoldTimerExpired => "hold timer expired".to_string(),
        DownReason::TcpFailed => detail.unwrap_or("connection closed by the peer").to_string(),
        DownReason::PeerNotification(n) => format!("peer sent NOTIFICATION {}", notification_words(n)),
        DownReason::LocalNotification(n) if n.code == 6 && n.subcode == 7 => return None,
        // Bad Peer AS: the sentence alone says it best.
        DownReason::LocalNotification(n) if n.code == 2 && n.subcode == 2 && detail.is_some() => {
            detail.unwrap_or_default().to_string()
        }
        DownReason::LocalNotification(n) => match detail {
            Some(d) => format!("{d}; sent NOTIFICATION {}", notification_words(n)),
            None => format!("sent NOTIFICATION {}", notification_words(n)),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_name_the_cause() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(connect_error("10.0.0.2:179".parse().unwrap(), &refused), "connection refused on 10.0.0.2:179");
        assert_eq!(
            down_words(
                &DownReason::LocalNotification(Notification::new(2, 2)),
                Some("peer AS 64513, configured 64512")
            )
            .as_deref(),
            Some("peer AS 64513, configured 64512")
        );
        assert_eq!(
            down_words(&DownReason::PeerNotification(Notification::new(6, 2)), None).as_deref(),
            Some("peer sent NOTIFICATION 6/2 (Cease: Administrative Shutdown)")
        );
        assert_eq!(down_words(&DownReason::HoldTimerExpired, None).as_deref(), Some("hold timer expired"));
        assert_eq!(down_words(&DownReason::LocalNotification(Notification::new(6, 7)), None), None);
        assert_eq!(down_words(&DownReason::Stopped, None), None);
    }
}
