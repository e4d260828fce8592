//! Any CNI_ARGS string: parsing never panics, and what parses re-joins to
//! pairs that parse back the same.
#![no_main]

use cni_core::args::CniArgs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(a) = CniArgs::parse(s) else { return };
    let joined: Vec<String> = a.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if a.0.iter().all(|(_, v)| !v.contains(';')) {
        assert_eq!(CniArgs::parse(&joined.join(";")).expect("re-parses"), a);
    }
});
