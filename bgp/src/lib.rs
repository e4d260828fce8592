//! A BGP-4 speaker library with no I/O: the wire codec ([`packet`]), its RFC 4271 / RFC 7606
//! error answers ([`Error`]) and the RFC 4271 §8 finite state machine ([`fsm`]).
//!
//! The codec parses `&[u8]` into typed messages and writes them back into a `Vec<u8>`, byte for
//! byte where the input was canonical; how a message is encoded (2- or 4-octet AS numbers,
//! ADD-PATH identifiers) comes from [`packet::SessionCaps`], computed from both OPEN messages by
//! [`packet::negotiate`]. The FSM takes events (timers expired, messages received, TCP up or
//! down) and returns actions (send, start/stop a timer, drop the connection): the caller owns the
//! sockets and the clock. See docs/bgp.md.

mod error;
pub mod fsm;
pub mod packet;
pub mod rib;

pub use error::{EncodeError, Error, Notify, Result};
