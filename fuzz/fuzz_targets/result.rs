//! Any JSON as a result: decoding never panics, and whatever decodes
//! survives an encode/decode round trip in every version unchanged (modulo
//! the fields an older version cannot carry).
#![no_main]

use cni_core::version::SUPPORTED;
use cni_core::CniResult;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(r) = CniResult::from_json(&v) else { return };
    for ver in SUPPORTED {
        let enc = r.to_json(ver);
        let back = CniResult::from_json(&enc).expect("our own encoding decodes");
        assert_eq!(back.ips, r.ips, "ips changed through {ver}");
        assert_eq!(back.dns, r.dns);
        assert_eq!(back.routes.len(), r.routes.len());
    }
});
