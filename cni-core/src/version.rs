//! Spec versions we speak and how a config's version is negotiated.

use crate::error::{Code, Error, Result};

/// A CNI spec version we implement. Ordered: later variants are newer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

/// Every version our plugins accept, oldest first (what VERSION reports).
pub const SUPPORTED: [Version; 5] =
    [Version::V0_3_0, Version::V0_3_1, Version::V0_4_0, Version::V1_0_0, Version::V1_1_0];

impl Version {
    pub const LATEST: Version = Version::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    pub fn parse(s: &str) -> Option<Version> {
        SUPPORTED.into_iter().find(|v| v.as_str() == s)
    }

    /// Results before 1.0.0 carry `"version"` in each `ips` entry.
    pub fn ips_carry_version(self) -> bool {
        self < Version::V1_0_0
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares dotted versions numerically ("0.10.0" > "0.9.0"); unparsable parts count as 0.
pub fn cmp_str(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |s: &str| -> Vec<u64> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parts(a).cmp(&parts(b))
}

/// Picks the version to answer in. The runtime states the version it chose
/// in `cniVersion` (libcni picks from a list's `cniVersions` and writes its
/// choice there), so `cniVersion` wins; `cniVersions` only serves when
/// `cniVersion` is absent (its highest entry we support) and otherwise must
/// name `cniVersion` among its entries, or the config contradicts itself.
pub fn negotiate(cni_version: Option<&str>, cni_versions: Option<&[String]>) -> Result<Version> {
    let list = cni_versions.filter(|l| !l.is_empty());
    match (cni_version.filter(|s| !s.is_empty()), list) {
        (Some(s), list) => {
            let v = Version::parse(s).ok_or_else(|| {
                Error::new(Code::IncompatibleVersion, "incompatible CNI versions")
                    .with_details(format!("config is {s:?}, plugin supports {}", supported_list()))
            })?;
            if let Some(list) = list {
                if !list.iter().any(|l| l == s) {
                    return Err(Error::config("cniVersion is not one of cniVersions")
                        .with_details(format!("cniVersion {s:?}, cniVersions {list:?}")));
                }
            }
            Ok(v)
        }
        (None, Some(list)) => list.iter().filter_map(|s| Version::parse(s)).max().ok_or_else(|| {
            Error::new(Code::IncompatibleVersion, "incompatible CNI versions")
                .with_details(format!("config lists {list:?}, plugin supports {}", supported_list()))
        }),
        (None, None) => Err(Error::new(Code::IncompatibleVersion, "cniVersion is missing")
            .with_details(format!("plugin supports {}", supported_list()))),
    }
}

fn supported_list() -> String {
    SUPPORTED.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtimes_cni_version_wins_over_the_list() {
        let list = vec!["0.4.0".to_string(), "1.0.0".to_string(), "1.1.0".to_string(), "9.9.9".to_string()];
        assert_eq!(negotiate(Some("1.0.0"), Some(&list)).unwrap(), Version::V1_0_0);
        assert_eq!(negotiate(Some("0.4.0"), Some(&list)).unwrap(), Version::V0_4_0);
        assert_eq!(negotiate(Some("0.3.1"), None).unwrap(), Version::V0_3_1);
        // Without cniVersion, the highest entry we support.
        assert_eq!(negotiate(None, Some(&list)).unwrap(), Version::V1_1_0);
        assert_eq!(negotiate(Some(""), Some(&list)).unwrap(), Version::V1_1_0);
        // A cniVersion the list does not name is a contradictory config.
        assert_eq!(negotiate(Some("0.3.1"), Some(&list)).unwrap_err().code, Code::InvalidConfig);
    }

    #[test]
    fn unknown_versions_are_code_1() {
        assert_eq!(negotiate(Some("0.2.0"), None).unwrap_err().code, Code::IncompatibleVersion);
        assert_eq!(negotiate(None, None).unwrap_err().code, Code::IncompatibleVersion);
        let list = vec!["2.0.0".to_string()];
        assert_eq!(negotiate(None, Some(&list)).unwrap_err().code, Code::IncompatibleVersion);
        assert_eq!(negotiate(Some("2.0.0"), Some(&list)).unwrap_err().code, Code::IncompatibleVersion);
    }

    #[test]
    fn dotted_compare_is_numeric() {
        assert!(cmp_str("0.10.0", "0.9.0").is_gt());
        assert!(cmp_str("1.0.0", "1.1.0").is_lt());
    }
}
