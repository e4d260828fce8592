//! Per-name async locks for controllers: concurrent calls for one name run
//! in turn (the second waits, then finds the first one's result) instead of
//! failing with ABORTED. A name's lock is forgotten once nobody holds or
//! waits for it, so the map does not grow with every name ever seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Map = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

/// The locks, one per `(kind, name)`.
#[derive(Debug, Default)]
pub struct Locks(Map);

/// Held while a call works on one name; dropping it lets the next one in.
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard {
    map: Map,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Locks {
    /// Waits until no other call holds `key` of this `kind` ("volume",
    /// "snapshot", ...; kinds never share a lock), then holds it.
    pub async fn lock(&self, kind: &str, key: &str) -> LockGuard {
        let key = format!("{kind}\0{key}");
        let m = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(map.entry(key.clone()).or_default())
        };
        let guard = m.lock_owned().await;
        LockGuard { map: Arc::clone(&self.0), key, guard: Some(guard) }
    }

    /// How many names are held or waited for right now.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// No name is held or waited for.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.guard.take());
        // Nobody else holds or waits for it (they clone under this lock).
        if map.get(&self.key).is_some_and(|m| Arc::strong_count(m) == 1) {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_name_at_a_time_and_locks_are_forgotten_after_use() {
        let locks = Locks::default();
        let a = locks.lock("volume", "x").await;
        let other = locks.lock("volume", "y").await;
        let snapshot = tokio::time::timeout(Duration::from_millis(50), locks.lock("snapshot", "x")).await;
        assert!(snapshot.is_ok(), "another kind with the same name does not wait");
        drop(snapshot);
        let waiting = tokio::time::timeout(Duration::from_millis(50), locks.lock("volume", "x")).await;
        assert!(waiting.is_err(), "a second lock on one name waits");
        drop((a, other));
        let _again = locks.lock("volume", "x").await;
        assert_eq!(locks.len(), 1);
        drop(_again);
        assert!(locks.is_empty());
    }
}
