//! docs/bgp.md against the code: every NOTIFICATION of the RFC 7606 table is a registered
//! one, and the FSM's numbers are the code's.

use bgp::fsm::{Config, OPEN_HOLD_TIME};
use bgp::packet::notification_name;
use bgp::rib::{Step, DEFAULT_LOCAL_PREF};

#[test]
fn error_table_names_registered_notifications() {
    let t = docs_check::table_under("docs/bgp.md", "RFC 7606 as implemented");
    assert!(t.rows.len() >= 25, "{} rows", t.rows.len());
    let mut resets = 0;
    for row in &t.rows {
        let outcome = row.last().map(|c| c.text.clone()).unwrap_or_default();
        if let Some(rest) = outcome.strip_prefix("reset ") {
            let code = rest.split([',', ' ']).next().unwrap_or_default();
            let (c, s) = code.split_once('/').unwrap_or_else(|| panic!("{outcome:?}"));
            let (c, s): (u8, u8) = (c.parse().expect("code"), s.parse().expect("subcode"));
            let name = notification_name(c, s);
            assert!(!name.contains("nknown"), "{outcome:?}: {name}");
            resets += 1;
        } else {
            assert!(
                ["treat-as-withdraw", "attribute discard", "kept", "later copies discarded"]
                    .iter()
                    .any(|p| outcome.starts_with(p)),
                "{outcome:?}"
            );
        }
    }
    assert!(resets >= 15);
}

#[test]
fn fsm_numbers() {
    let page = docs_check::read("docs/bgp.md");
    let c = Config::new(65000, 65001, [10, 0, 0, 1].into());
    assert!(page.contains(&format!("hold time {} s, connect retry {} s", c.hold_time, c.connect_retry_time)));
    assert!(page.contains(&format!("hold timer {OPEN_HOLD_TIME} s while waiting for the OPEN")));
    let idle = c.idle_hold_time.expect("automatic start by default");
    assert!(page.contains(&format!("default `Some({idle})`: the FSM restarts {idle} s after a failure")));
}

#[test]
fn best_path_table_is_the_code_order() {
    let t = docs_check::table_under("docs/bgp.md", "Best path");
    let documented: Vec<String> =
        t.rows.iter().filter_map(|r| r.first()).map(|c| c.text.trim_matches('`').to_string()).collect();
    let code: Vec<String> = Step::ORDER.iter().map(|s| format!("{s:?}")).collect();
    assert_eq!(documented, code);
    let page = docs_check::read("docs/bgp.md");
    assert!(page.contains(&format!("highest LOCAL_PREF (none: {DEFAULT_LOCAL_PREF})")));
}
