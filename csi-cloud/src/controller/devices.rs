//! Device names for AttachVolume: `/dev/xvdba` … `/dev/xvdcz`, never one in
//! use on the instance, and a name released recently only when no other is
//! left. Reusing a name a detach just freed can leave the next attachment
//! stuck in "attaching" on real EC2 (aws-ebs-csi-driver #1801, kubernetes
//! #31891), so released names rest: the allocator hands out never-used names
//! first, then the one released longest ago.
//!
//! Names in use come from EC2 (DescribeInstances' block device mappings) at
//! each attach, so a restarted controller loses only the rest periods.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

/// Candidates, in the order they are tried.
pub fn candidates() -> impl Iterator<Item = String> {
    ["b", "c"].into_iter().flat_map(|p| ('a'..='z').map(move |c| format!("/dev/xvd{p}{c}")))
}

/// Per-instance release times of device names.
#[derive(Debug, Default)]
pub struct Allocator {
    released: Mutex<HashMap<String, HashMap<String, Instant>>>,
}

impl Allocator {
    /// A name for a new attachment on `instance`, given the names `in_use`
    /// there; `None` when all 52 are taken.
    pub fn pick(&self, instance: &str, in_use: &HashSet<String>) -> Option<String> {
        let released = self.released.lock().unwrap_or_else(|e| e.into_inner());
        let rested = released.get(instance);
        let free = candidates().filter(|n| !in_use.contains(n));
        let mut oldest: Option<(Instant, String)> = None;
        for name in free {
            match rested.and_then(|r| r.get(&name)) {
                None => return Some(name),
                Some(t) => {
                    if oldest.as_ref().is_none_or(|(o, _)| t < o) {
                        oldest = Some((*t, name));
                    }
                }
            }
        }
        oldest.map(|(_, n)| n)
    }

    /// `name` on `instance` was just released (detached, or an attach with it failed).
    pub fn release(&self, instance: &str, name: &str) {
        let mut released = self.released.lock().unwrap_or_else(|e| e.into_inner());
        released.entry(instance.to_string()).or_default().insert(name.to_string(), Instant::now());
    }

    /// Forgets an instance that no longer exists.
    pub fn forget(&self, instance: &str) {
        self.released.lock().unwrap_or_else(|e| e.into_inner()).remove(instance);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_use_are_skipped_and_released_names_rest() {
        let a = Allocator::default();
        assert_eq!(candidates().count(), 52);
        let mut in_use: HashSet<String> = ["/dev/xvdba".to_string()].into();
        assert_eq!(a.pick("i-1", &in_use).as_deref(), Some("/dev/xvdbb"));
        a.release("i-1", "/dev/xvdbb");
        assert_eq!(a.pick("i-1", &in_use).as_deref(), Some("/dev/xvdbc"), "a just-released name rests");
        assert_eq!(a.pick("i-2", &in_use).as_deref(), Some("/dev/xvdbb"), "per instance");
        // Everything else in use: the released names come back, oldest first.
        in_use = candidates().filter(|n| n != "/dev/xvdbb" && n != "/dev/xvdcz").collect();
        a.release("i-1", "/dev/xvdcz");
        assert_eq!(a.pick("i-1", &in_use).as_deref(), Some("/dev/xvdbb"));
        in_use.insert("/dev/xvdbb".into());
        in_use.insert("/dev/xvdcz".into());
        assert_eq!(a.pick("i-1", &in_use), None);
        a.forget("i-1");
    }
}
