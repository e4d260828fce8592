//! Rendering check results: an aligned table or JSON, both on stdout.

use serde_json::{json, Value};

use crate::util::clip;

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CheckResult {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
    pub seconds: f64,
}

impl CheckResult {
    /// One line on stderr while a suite runs.
    pub fn print_progress(&self) {
        eprintln!(
            "[conformance] {:<24} {:<4} {:>5.2}s  {}",
            self.name,
            self.verdict.as_str(),
            self.seconds,
            clip(&self.detail, 120)
        );
    }
}

/// Counts (pass, fail, skip).
pub fn counts(rs: &[CheckResult]) -> (usize, usize, usize) {
    let c = |v| rs.iter().filter(|r| r.verdict == v).count();
    (c(Verdict::Pass), c(Verdict::Fail), c(Verdict::Skip))
}

/// How [`rows`] renders a result: the CNI suite shows seconds and
/// lower-case verdicts (`pass`, `FAIL`, `skip`), `conformance csi` shows
/// milliseconds and `PASS`/`FAIL`/`SKIP`.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub millis: bool,
    pub upper: bool,
}

/// The title, notes, a header and one row per result (name, result, time,
/// detail), without a summary line.
pub fn rows(title: &str, notes: &[String], rs: &[CheckResult], layout: Layout) -> String {
    let w = rs.iter().map(|r| r.name.len()).max().unwrap_or(5).max(5);
    let mut s = format!("{title}\n");
    for n in notes {
        s.push_str(&format!("note: {n}\n"));
    }
    let unit = if layout.millis { "ms" } else { "secs" };
    s.push_str(&format!("{:<w$}  {:<6}  {:>6}  detail\n", "check", "result", unit));
    s.push_str(&format!("{}  {}  {}  {}\n", "-".repeat(w), "-".repeat(6), "-".repeat(6), "-".repeat(40)));
    for r in rs {
        let verdict = if layout.upper { r.verdict.as_str().to_uppercase() } else { r.verdict.as_str().to_string() };
        let time = if layout.millis { format!("{:>6.0}", r.seconds * 1000.0) } else { format!("{:>6.2}", r.seconds) };
        s.push_str(&format!("{:<w$}  {:<6}  {}  {}\n", r.name, verdict, time, r.detail.replace('\n', " ")));
    }
    s
}

/// The table: name, result, detail; notes above, a summary line below.
pub fn table(title: &str, notes: &[String], rs: &[CheckResult]) -> String {
    let mut s = rows(title, notes, rs, Layout { millis: false, upper: false });
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
