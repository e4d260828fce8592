//! An in-memory [`Store`] for unit tests of the allocator (and of plugins
//! that embed it). Not shared between processes.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use super::{Lease, Locked, Owner, Store, StoreError, StoreResult};

#[derive(Debug, Default)]
struct State {
    leases: BTreeMap<IpAddr, Owner>,
    last: HashMap<usize, IpAddr>,
    locked: bool,
    read_only: bool,
}

#[derive(Debug, Default)]
pub struct MemStore {
    state: Mutex<State>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts a lease as another writer would (e.g. an old-format record).
    pub fn insert(&self, ip: IpAddr, owner: Owner) {
        self.st().leases.insert(ip, owner);
    }

    /// Every lease, sorted by address.
    pub fn snapshot(&self) -> Vec<Lease> {
        self.st().leases.iter().map(|(ip, owner)| Lease { ip: *ip, owner: owner.clone() }).collect()
    }

    /// Makes writes fail (STATUS tests).
    pub fn set_read_only(&self, ro: bool) {
        self.st().read_only = ro;
    }

    fn write_check(st: &State) -> StoreResult<()> {
        if st.read_only {
            Err(StoreError::io("write", "mem", std::io::Error::from(std::io::ErrorKind::PermissionDenied)))
        } else {
            Ok(())
        }
    }
}

impl Store for MemStore {
    fn lock(&self) -> StoreResult<Box<dyn Locked + '_>> {
        let mut st = self.st();
        // A second lock from the same caller would deadlock a real store.
        assert!(!st.locked, "MemStore locked twice");
        st.locked = true;
        Ok(Box::new(MemLocked { store: self }))
    }

    fn reserved_ips(&self) -> StoreResult<Vec<IpAddr>> {
        Ok(self.st().leases.keys().copied().collect())
    }

    fn check_writable(&self) -> StoreResult<()> {
        MemStore::write_check(&self.st())
    }
}

struct MemLocked<'a> {
    store: &'a MemStore,
}

impl Drop for MemLocked<'_> {
    fn drop(&mut self) {
        self.store.st().locked = false;
    }
}

impl Locked for MemLocked<'_> {
    fn leased_to(&self, container_id: &str, ifname: &str) -> StoreResult<Vec<IpAddr>> {
        Ok(self.store.st().leases.iter().filter(|(_, o)| o.is(container_id, ifname)).map(|(ip, _)| *ip).collect())
    }

    fn is_reserved(&self, ip: IpAddr) -> StoreResult<bool> {
        Ok(self.store.st().leases.contains_key(&ip))
    }

    fn reserve(&self, container_id: &str, ifname: &str, ip: IpAddr) -> StoreResult<bool> {
        let mut st = self.store.st();
        MemStore::write_check(&st)?;
        if st.leases.contains_key(&ip) {
            return Ok(false);
        }
        st.leases.insert(ip, Owner::Attachment { container_id: container_id.to_string(), ifname: ifname.to_string() });
        Ok(true)
    }

    fn last_reserved(&self, range_set: usize) -> StoreResult<Option<IpAddr>> {
        Ok(self.store.st().last.get(&range_set).copied())
    }

    fn set_last_reserved(&self, range_set: usize, ip: IpAddr) -> StoreResult<()> {
        let mut st = self.store.st();
        MemStore::write_check(&st)?;
        st.last.insert(range_set, ip);
        Ok(())
    }

    fn release(&self, container_id: &str, ifname: &str) -> StoreResult<Vec<IpAddr>> {
        let mut st = self.store.st();
        let mut mine: Vec<IpAddr> =
            st.leases.iter().filter(|(_, o)| o.is(container_id, ifname)).map(|(ip, _)| *ip).collect();
        if mine.is_empty() {
            let old = Owner::ContainerOnly(container_id.to_string());
            mine = st.leases.iter().filter(|(_, o)| **o == old).map(|(ip, _)| *ip).collect();
        }
        for ip in &mine {
            st.leases.remove(ip);
        }
        Ok(mine)
    }

    fn release_ip(&self, ip: IpAddr) -> StoreResult<bool> {
        Ok(self.store.st().leases.remove(&ip).is_some())
    }

    fn leases(&self) -> StoreResult<Vec<Lease>> {
        Ok(self.store.snapshot())
    }
}
