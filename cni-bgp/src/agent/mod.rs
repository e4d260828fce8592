//! `cni-bgp agent`, the node agent (issue #13, item 2), and the client side
//! of its control socket for `cni-bgp status|routes` (item 4).
//!
//! One concern per file: [`flags`] (the command line and its checks),
//! [`host`] (defaults from the host), [`peers`] (who to peer with, pure),
//! [`prefixes`] (what to advertise, pure), [`blocks`] (the IPAM blocks from
//! etcd), [`control`] (the status and control sockets), [`run`] (start
//! order and the event loop). See docs/cni-bgp.md, "Agent".

pub mod blocks;
pub mod control;
pub mod flags;
pub mod host;
pub mod peers;
pub mod prefixes;
pub mod run;

pub use flags::AgentFlags;
pub use run::run;
