//! The one place that touches the kernel's networking.
//!
//! Everything here is synchronous netlink from the calling thread: a CNI
//! plugin lives for a few milliseconds, so there is no runtime to start and
//! no helper process to exec. Modules are named for the kernel object they
//! own: [`netns`], [`link`], [`addr`], [`route`], [`sysctl`], [`nft`].

pub mod addr;
pub mod error;
pub mod link;
pub mod neigh;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod route;
pub mod sysctl;
pub mod vxlan;

pub use error::{Error, Result};
