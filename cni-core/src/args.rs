//! `CNI_ARGS`: `K=V;K2=V2` pairs handed to plugins by the runtime.

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs(pub Vec<(String, String)>);

impl CniArgs {
    /// Parses `K=V;K2=V2`. Empty input and empty segments are fine; a
    /// segment without `=` or with an empty key is an invalid environment.
    pub fn parse(s: &str) -> Result<CniArgs> {
        let mut out = Vec::new();
        for seg in s.split(';').filter(|seg| !seg.is_empty()) {
            match seg.split_once('=') {
                Some((k, v)) if !k.is_empty() => out.push((k.to_string(), v.to_string())),
                _ => return Err(Error::env("CNI_ARGS: invalid pair").with_details(format!("{seg:?} is not KEY=VALUE"))),
            }
        }
        Ok(CniArgs(out))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_and_last_key_wins() {
        let a = CniArgs::parse("IgnoreUnknown=1;IP=10.0.0.9;K8S_POD_NAME=web;IP=10.0.0.8").unwrap();
        assert_eq!(a.get("IP"), Some("10.0.0.8"));
        assert_eq!(a.get("K8S_POD_NAME"), Some("web"));
        assert_eq!(a.get("nope"), None);
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
        assert_eq!(CniArgs::parse("A=b=c").unwrap().get("A"), Some("b=c"));
    }

    #[test]
    fn malformed_pairs_are_code_4() {
        assert_eq!(CniArgs::parse("IP").unwrap_err().code, crate::Code::InvalidEnvironment);
        assert_eq!(CniArgs::parse("=x").unwrap_err().code, crate::Code::InvalidEnvironment);
    }
}
