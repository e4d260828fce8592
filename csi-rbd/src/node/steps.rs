//! Per-step timings of NodeStageVolume and NodeUnstageVolume, logged at
//! debug level (`--log-level=debug`): where a slow stage spends its time
//! (Ceph round trips, the map, blkid, mkfs, the mount).

use std::time::Instant;

/// Elapsed time of each named step, in order.
pub struct Steps {
    last: Instant,
    parts: Vec<(&'static str, u128)>,
}

impl Steps {
    pub fn new() -> Steps {
        Steps { last: Instant::now(), parts: Vec::new() }
    }

    /// Ends the step `name` (it began at the previous mark).
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.parts.push((name, now.duration_since(self.last).as_micros()));
        self.last = now;
    }

    /// `name=µs` pairs, space separated.
    pub fn summary(&self) -> String {
        self.parts.iter().map(|(n, us)| format!("{n}={us}µs")).collect::<Vec<_>>().join(" ")
    }
}

impl Default for Steps {
    fn default() -> Steps {
        Steps::new()
    }
}
