//! The crate's errors. A decoding error *is* the NOTIFICATION the RFCs tell us to send
//! (code, subcode, data), plus a sentence for logs.

use crate::packet::Notification;

/// A protocol error that resets the session: the NOTIFICATION to send and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail} (NOTIFICATION {code}/{subcode}: {name})", name = crate::packet::notification_name(*code, *subcode))]
pub struct Notify {
    pub code: u8,
    pub subcode: u8,
    /// The NOTIFICATION's data field, as the RFC prescribes for this error.
    pub data: Vec<u8>,
    /// What was wrong, in words, for logs.
    pub detail: String,
}

impl Notify {
    pub fn new(code: u8, subcode: u8, data: impl Into<Vec<u8>>, detail: impl Into<String>) -> Self {
        Notify { code, subcode, data: data.into(), detail: detail.into() }
    }

    /// The NOTIFICATION message that reports this error to the peer.
    pub fn to_notification(&self) -> Notification {
        Notification { code: self.code, subcode: self.subcode, data: self.data.clone() }
    }
}

/// A value that cannot be put on the wire as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// encode a BGP message: {0} octets exceed the 4096-octet limit
    #[error("encode a BGP message: {0} octets exceed the 4096-octet limit")]
    TooLong(usize),
    /// A field larger than its wire width.
    #[error("encode {what}: value {value} does not fit in its field")]
    Overflow { what: &'static str, value: usize },
    /// A 4-octet AS number on a session without the 4-octet AS capability (RFC 6793 §4.2.2:
    /// the caller substitutes AS_TRANS and adds AS4_PATH).
    #[error("encode {what}: AS {asn} needs the 4-octet AS capability (use AS_TRANS and AS4_PATH)")]
    FourOctetAs { what: &'static str, asn: u32 },
    /// A next hop of the wrong family for the attribute.
    #[error("encode {0}: address family mismatch")]
    Family(&'static str),
}

/// Every error of this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("decode: {0}")]
    Decode(#[from] Notify),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A RIB call named a peer that [`crate::rib::Rib::add_peer`] did not give.
    #[error("rib: no peer {0}")]
    UnknownPeer(u32),
    /// A RIB call that needs an established session (receive, updates) on a peer without one.
    #[error("rib: peer {0} has no established session")]
    PeerNotUp(u32),
}

pub type Result<T> = std::result::Result<T, Error>;
