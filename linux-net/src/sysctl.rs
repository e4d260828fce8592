//! Sysctls under /proc/sys/net, written only when they differ.

use crate::error::{Error, Result};

/// Sets `/proc/sys/<key>` (key like `net/ipv4/ip_forward`) unless it already holds `value`.
pub fn ensure(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{key}");
    if let Ok(cur) = std::fs::read_to_string(&path) {
        if cur.trim() == value {
            return Ok(());
        }
    }
    std::fs::write(&path, value).map_err(|e| Error::io(format!("set sysctl {key}={value}"), e))
}
