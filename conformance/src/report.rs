//! Rendering check results: an aligned table or JSON, both on stdout.

use serde_json::{json, Value};

use crate::checks::{CheckResult, Verdict};

/// Counts (pass, fail, skip).
pub fn counts(rs: &[CheckResult]) -> (usize, usize, usize) {
    let c = |v| rs.iter().filter(|r| r.verdict == v).count();
    (c(Verdict::Pass), c(Verdict::Fail), c(Verdict::Skip))
}

/// The table: name, result, detail; notes above, a summary line below.
pub fn table(title: &str, notes: &[String], rs: &[CheckResult]) -> String {
    let w = rs.iter().map(|r| r.name.len()).max().unwrap_or(5).max(5);
    let mut s = format!("{title}\n");
    for n in notes {
        s.push_str(&format!("note: {n}\n"));
    }
    s.push_str(&format!("{:<w$}  {:<6}  {:>6}  detail\n", "check", "result", "secs"));
    s.push_str(&format!("{}  {}  {}  {}\n", "-".repeat(w), "-".repeat(6), "-".repeat(6), "-".repeat(40)));
    for r in rs {
        s.push_str(&format!(
            "{:<w$}  {:<6}  {:>6.2}  {}\n",
            r.name,
            r.verdict.as_str(),
            r.seconds,
            r.detail.replace('\n', " ")
        ));
    }
    let (p, f, k) = counts(rs);
    s.push_str(&format!("{p} passed, {f} failed, {k} skipped\n"));
    s
}

pub fn to_json(title: &str, extra: Value, notes: &[String], rs: &[CheckResult]) -> Value {
    let (p, f, k) = counts(rs);
    json!({
        "title": title,
        "info": extra,
        "notes": notes,
        "results": rs.iter().map(|r| json!({
            "name": r.name,
            "result": match r.verdict { Verdict::Pass => "pass", Verdict::Fail => "fail", Verdict::Skip => "skip" },
            "detail": r.detail,
            "seconds": r.seconds,
        })).collect::<Vec<_>>(),
        "summary": {"passed": p, "failed": f, "skipped": k},
    })
}
