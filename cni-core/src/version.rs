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

/// Picks the version a config asks for: the highest entry of `cniVersions`
/// that we support when the list is present, otherwise `cniVersion`.
pub fn negotiate(cni_version: Option<&str>, cni_versions: Option<&[String]>) -> Result<Version> {
    if let Some(list) = cni_versions.filter(|l| !l.is_empty()) {
        return list.iter().filter_map(|s| Version::parse(s)).max().ok_or_else(|| {
            Error::new(Code::IncompatibleVersion, "incompatible CNI versions")
                .with_details(format!("config lists {list:?}, plugin supports {}", supported_list()))
        });
    }
    match cni_version {
        None | Some("") => Err(Error::new(Code::IncompatibleVersion, "cniVersion is missing")
            .with_details(format!("plugin supports {}", supported_list()))),
        Some(s) => Version::parse(s).ok_or_else(|| {
            Error::new(Code::IncompatibleVersion, "incompatible CNI versions")
                .with_details(format!("config is {s:?}, plugin supports {}", supported_list()))
        }),
    }
}

fn supported_list() -> String {
    SUPPORTED.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_prefers_the_highest_common_version() {
        let list = vec!["0.4.0".to_string(), "1.1.0".to_string(), "9.9.9".to_string()];
        assert_eq!(negotiate(Some("0.4.0"), Some(&list)).unwrap(), Version::V1_1_0);
        assert_eq!(negotiate(Some("0.3.1"), None).unwrap(), Version::V0_3_1);
    }

    #[test]
    fn unknown_versions_are_code_1() {
        assert_eq!(negotiate(Some("0.2.0"), None).unwrap_err().code, Code::IncompatibleVersion);
        assert_eq!(negotiate(None, None).unwrap_err().code, Code::IncompatibleVersion);
        let list = vec!["2.0.0".to_string()];
        assert_eq!(negotiate(Some("1.0.0"), Some(&list)).unwrap_err().code, Code::IncompatibleVersion);
    }

    #[test]
    fn dotted_compare_is_numeric() {
        assert!(cmp_str("0.10.0", "0.9.0").is_gt());
        assert!(cmp_str("1.0.0", "1.1.0").is_lt());
    }
}
