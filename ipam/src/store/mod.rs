//! Where leases live, behind a trait so the allocator does not care.
//!
//! A [`Store`] hands out a [`Locked`] handle; every read-modify-write of a
//! network's leases happens through that handle, so the exclusion the
//! allocator relies on is visible in the types. Dropping the handle releases
//! the lock. [`disk::DiskStore`] is the host-local compatible
//! implementation; [`mem::MemStore`] is an in-memory double for tests. A
//! cluster store (etcd: a lease-backed lock or a per-key transaction, one
//! key per IP created with `Version == 0`) implements the same two traits.

use std::net::IpAddr;
use std::path::PathBuf;

pub mod disk;
pub mod mem;

/// Who holds a lease, as recorded in the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    /// The current format: `<containerID>\r\n<ifname>`.
    Attachment { container_id: String, ifname: String },
    /// Old host-local files hold only the container ID.
    ContainerOnly(String),
    /// Empty or unparseable content (e.g. host-local killed between its
    /// `O_EXCL` create and its write). No attachment can claim it.
    Unknown(String),
    /// The record exists but could not be read; never released blindly.
    Unreadable(String),
}

impl Owner {
    /// Parses a lease file's content with host-local's rules (whitespace
    /// around the whole content is ignored).
    pub fn parse(content: &str) -> Owner {
        let t = content.trim();
        if let Some((id, ifname)) = t.split_once("\r\n") {
            if !id.is_empty() {
                return Owner::Attachment { container_id: id.to_string(), ifname: ifname.to_string() };
            }
        } else if !t.is_empty() && !t.contains(char::is_whitespace) {
            return Owner::ContainerOnly(t.to_string());
        }
        Owner::Unknown(content.to_string())
    }

    /// The bytes host-local writes for `(id, ifname)`.
    pub fn record(container_id: &str, ifname: &str) -> String {
        format!("{container_id}\r\n{ifname}")
    }

    pub fn is(&self, container_id: &str, ifname: &str) -> bool {
        matches!(self, Owner::Attachment { container_id: c, ifname: i } if c == container_id && i == ifname)
    }

    pub fn container_id(&self) -> Option<&str> {
        match self {
            Owner::Attachment { container_id, .. } | Owner::ContainerOnly(container_id) => Some(container_id),
            _ => None,
        }
    }
}

/// One leased address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    pub ip: IpAddr,
    pub owner: Owner,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A remote store that cannot be reached right now (maps to code 11).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> StoreError {
        StoreError::Io { op, path: path.into(), source }
    }
}

pub type StoreResult<T> = std::result::Result<T, StoreError>;

impl From<StoreError> for cni_core::Error {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Io { .. } => cni_core::Error::io("IPAM store", &e),
            StoreError::Unavailable(_) => {
                cni_core::Error::new(cni_core::Code::TryAgainLater, "IPAM store unavailable").with_details(&e)
            }
        }
    }
}

/// A network's lease store.
pub trait Store {
    /// Takes the network-wide exclusive lock (blocking) and returns the
    /// handle through which leases are read and changed. Held until dropped.
    fn lock(&self) -> StoreResult<Box<dyn Locked + '_>>;

    /// A snapshot of the leased addresses without taking the lock (STATUS).
    fn reserved_ips(&self) -> StoreResult<Vec<IpAddr>>;

    /// Ok when an ADD could write to the store (STATUS).
    fn check_writable(&self) -> StoreResult<()>;
}

/// Operations on a locked store. Everything here runs under the lock.
pub trait Locked {
    /// Addresses leased to exactly `(container_id, ifname)`. Must find every
    /// lease that [`Locked::reserve`] created for it; may use an index to
    /// avoid a full scan.
    fn leased_to(&self, container_id: &str, ifname: &str) -> StoreResult<Vec<IpAddr>>;

    /// Whether `ip` is leased (a cheap hint before [`Locked::reserve`]).
    fn is_reserved(&self, ip: IpAddr) -> StoreResult<bool>;

    /// Atomically creates the lease `ip -> (container_id, ifname)`.
    /// `Ok(false)` when `ip` is already leased. A crash at any point leaves
    /// either no lease or the complete one.
    fn reserve(&self, container_id: &str, ifname: &str, ip: IpAddr) -> StoreResult<bool>;

    /// The round-robin cursor of range set `range_set`.
    fn last_reserved(&self, range_set: usize) -> StoreResult<Option<IpAddr>>;

    /// Moves the round-robin cursor (atomically replaced, never torn).
    fn set_last_reserved(&self, range_set: usize, ip: IpAddr) -> StoreResult<()>;

    /// host-local's release-by-ID: drops every lease of `(container_id,
    /// ifname)`; when there is none, drops old-format leases holding only
    /// `container_id`. Returns what was released.
    fn release(&self, container_id: &str, ifname: &str) -> StoreResult<Vec<IpAddr>>;

    /// Drops the lease of `ip`; `Ok(false)` when there was none.
    fn release_ip(&self, ip: IpAddr) -> StoreResult<bool>;

    /// Every lease of the network.
    fn leases(&self) -> StoreResult<Vec<Lease>>;

    /// Drops per-attachment bookkeeping of `(container_id, ifname)` once it
    /// holds no lease (ADD rollback).
    fn forget(&self, _container_id: &str, _ifname: &str) -> StoreResult<()> {
        Ok(())
    }

    /// GC housekeeping after stale leases are gone: drops bookkeeping of
    /// attachments `keep` rejects and leftovers of crashed writers.
    fn tidy(&self, _keep: &dyn Fn(&str, &str) -> bool) -> StoreResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_parsing_follows_host_local() {
        assert!(Owner::parse("c1\r\neth0").is("c1", "eth0"));
        assert!(Owner::parse("c1\r\neth0\n").is("c1", "eth0"));
        assert_eq!(Owner::parse("c1"), Owner::ContainerOnly("c1".into()));
        assert_eq!(Owner::parse(" c1\n"), Owner::ContainerOnly("c1".into()));
        assert!(matches!(Owner::parse(""), Owner::Unknown(_)));
        assert!(matches!(Owner::parse("a b"), Owner::Unknown(_)));
        assert_eq!(Owner::record("c1", "eth0"), "c1\r\neth0");
    }
}
