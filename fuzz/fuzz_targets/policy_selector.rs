//! Any Calico selector string: parsing never panics (nor overflows the stack), a parsed
//! selector prints as text that parses back to the same selector, and matching never panics.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use policy::Selector;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(sel) = Selector::parse(s) else { return };
    let printed = sel.to_string();
    assert_eq!(Selector::parse(&printed).as_ref(), Ok(&sel), "{s:?} printed as {printed:?}");
    let labels: BTreeMap<String, String> =
        [("app", "web"), ("a", ""), ("x", "'\"")].map(|(k, v)| (k.to_string(), v.to_string())).into();
    let _ = sel.matches(&labels);
    let _ = sel.matches(&BTreeMap::new());
});
