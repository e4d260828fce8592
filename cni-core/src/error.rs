//! The spec's error object and its well-known codes.
//!
//! Every failure a plugin reports ends up here, mapped once to a code; the
//! skel prints it as JSON on stdout and exits non-zero.

use serde::{Deserialize, Serialize};

/// Well-known CNI error codes (spec section "Error"). 0-99 are reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion,
    UnsupportedField,
    UnknownContainer,
    InvalidEnvironment,
    Io,
    Decode,
    InvalidConfig,
    TryAgainLater,
    /// STATUS: the plugin cannot service ADD.
    Unavailable,
    /// STATUS: unavailable and existing containers may have limited connectivity.
    UnavailableDegraded,
    /// A plugin-defined code (>= 100) or a code forwarded from a delegate.
    Other(u32),
}

impl Code {
    pub fn as_u32(self) -> u32 {
        match self {
            Code::IncompatibleVersion => 1,
            Code::UnsupportedField => 2,
            Code::UnknownContainer => 3,
            Code::InvalidEnvironment => 4,
            Code::Io => 5,
            Code::Decode => 6,
            Code::InvalidConfig => 7,
            Code::TryAgainLater => 11,
            Code::Unavailable => 50,
            Code::UnavailableDegraded => 51,
            Code::Other(n) => n,
        }
    }

    pub fn from_u32(n: u32) -> Code {
        match n {
            1 => Code::IncompatibleVersion,
            2 => Code::UnsupportedField,
            3 => Code::UnknownContainer,
            4 => Code::InvalidEnvironment,
            5 => Code::Io,
            6 => Code::Decode,
            7 => Code::InvalidConfig,
            11 => Code::TryAgainLater,
            50 => Code::Unavailable,
            51 => Code::UnavailableDegraded,
            n => Code::Other(n),
        }
    }
}

/// Generic plugin failure that is not one of the spec's codes.
pub const CODE_INTERNAL: u32 = 999;

/// A CNI error: what the runtime reads from stdout when a plugin fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct Error {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Error { code, msg: msg.into(), details: String::new() }
    }

    pub fn with_details(mut self, details: impl std::fmt::Display) -> Self {
        self.details = details.to_string();
        self
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Error::new(Code::Other(CODE_INTERNAL), msg)
    }

    pub fn io(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Error::new(Code::Io, what).with_details(e)
    }

    pub fn config(msg: impl Into<String>) -> Self {
        Error::new(Code::InvalidConfig, msg)
    }

    pub fn env(msg: impl Into<String>) -> Self {
        Error::new(Code::InvalidEnvironment, msg)
    }

    /// Prefixes the message with what was being done, keeping the code.
    pub fn context(mut self, what: impl std::fmt::Display) -> Self {
        self.msg = format!("{what}: {}", self.msg);
        self
    }

    /// The error of an ADD whose rollback also failed: the same code and
    /// message, with what could not be undone (`undo`) appended to the
    /// details. Unchanged when `undo` is empty.
    pub fn with_rollback_failures(self, undo: &[String]) -> Self {
        if undo.is_empty() {
            return self;
        }
        let details = if self.details.is_empty() { String::new() } else { format!("{}; ", self.details) };
        Error { details: format!("{details}rollback also failed: {}", undo.join("; ")), ..self }
    }

    /// The JSON object the spec prints on stdout.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let wire = WireError {
            cni_version: cni_version.to_string(),
            code: self.code.as_u32(),
            msg: self.msg.clone(),
            details: if self.details.is_empty() { None } else { Some(self.details.clone()) },
        };
        serde_json::to_value(wire).unwrap_or_default()
    }

    /// Parses the error object a delegate printed.
    pub fn from_json(bytes: &[u8]) -> Option<Error> {
        let w: WireError = serde_json::from_slice(bytes).ok()?;
        Some(Error { code: Code::from_u32(w.code), msg: w.msg, details: w.details.unwrap_or_default() })
    }
}

#[derive(Serialize, Deserialize)]
struct WireError {
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    details: Option<String>,
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::new(Code::Decode, "decode JSON").with_details(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_round_trips_with_code() {
        let e = Error::new(Code::TryAgainLater, "etcd unreachable").with_details("dial tcp");
        let j = e.to_json("1.1.0");
        assert_eq!(j["code"], 11);
        assert_eq!(j["cniVersion"], "1.1.0");
        let back = Error::from_json(j.to_string().as_bytes()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn codes_map_both_ways() {
        for n in [1, 2, 3, 4, 5, 6, 7, 11, 50, 51, 100, 999] {
            assert_eq!(Code::from_u32(n).as_u32(), n);
        }
    }

    #[test]
    fn rollback_failures_are_appended_to_the_details() {
        let e = Error::new(Code::Io, "add").with_details("disk full");
        assert_eq!(e.clone().with_rollback_failures(&[]), e);
        let r = e.with_rollback_failures(&["delete veth1: busy".into(), "release: gone".into()]);
        assert_eq!((r.code, r.msg.as_str()), (Code::Io, "add"));
        assert_eq!(r.details, "disk full; rollback also failed: delete veth1: busy; release: gone");
        let bare = Error::new(Code::Io, "add").with_rollback_failures(&["x".into()]);
        assert_eq!(bare.details, "rollback also failed: x");
    }
}
