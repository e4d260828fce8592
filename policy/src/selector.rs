//! Label selectors: Calico's selector expressions (parsed here, hand-written because no
//! maintained crate parses Calico's grammar) and Kubernetes' `LabelSelector`
//! (`matchLabels` / `matchExpressions`), both mapped onto one [`Selector`] type.
//!
//! Semantics, from Calico's selector reference: `k == 'v'`, `k in {…}`, `contains`,
//! `starts with` and `ends with` need the label; `k != 'v'` and `k not in {…}` also match
//! when the label is absent (as Kubernetes' `NotIn` does); `all()` matches everything;
//! `global()` matches non-namespaced resources, and every endpoint here has a namespace, so it
//! matches none.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Labels of an endpoint or a namespace.
pub type Labels = BTreeMap<String, String>;

/// A parsed selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// `all()`
    All,
    /// `global()`: non-namespaced resources (none here).
    Global,
    /// `has(k)`
    Has(String),
    /// `k == 'v'`
    Eq(String, String),
    /// `k != 'v'` (also true when `k` is absent)
    Ne(String, String),
    /// `k in {…}`
    In(String, BTreeSet<String>),
    /// `k not in {…}` (also true when `k` is absent)
    NotIn(String, BTreeSet<String>),
    /// `k contains 's'`
    Contains(String, String),
    /// `k starts with 's'`
    StartsWith(String, String),
    /// `k ends with 's'`
    EndsWith(String, String),
    /// `!e`
    Not(Box<Selector>),
    /// `a && b && …`
    And(Vec<Selector>),
    /// `a || b || …`
    Or(Vec<Selector>),
}

/// A selector that does not parse: where (1-based column, in characters) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector {input:?}: column {column}: {message}")]
pub struct SelectorError {
    pub input: String,
    pub column: usize,
    pub message: String,
}

impl Selector {
    /// Parses a Calico selector. An empty (or blank) selector is `all()`, as Calico's
    /// policy `selector` defaults to it.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        let mut p = Parser { chars: input.chars().collect(), pos: 0, input };
        p.skip_ws();
        if p.at_end() {
            return Ok(Selector::All);
        }
        let s = p.or()?;
        p.skip_ws();
        if !p.at_end() {
            return Err(p.err("unexpected text after the expression"));
        }
        Ok(s)
    }

    /// Whether labels match.
    pub fn matches(&self, labels: &Labels) -> bool {
        let get = |k: &str| labels.get(k).map(String::as_str);
        match self {
            Selector::All => true,
            Selector::Global => false,
            Selector::Has(k) => labels.contains_key(k),
            Selector::Eq(k, v) => get(k) == Some(v),
            Selector::Ne(k, v) => get(k) != Some(v),
            Selector::In(k, set) => get(k).is_some_and(|x| set.contains(x)),
            Selector::NotIn(k, set) => !get(k).is_some_and(|x| set.contains(x)),
            Selector::Contains(k, s) => get(k).is_some_and(|x| x.contains(s.as_str())),
            Selector::StartsWith(k, s) => get(k).is_some_and(|x| x.starts_with(s.as_str())),
            Selector::EndsWith(k, s) => get(k).is_some_and(|x| x.ends_with(s.as_str())),
            Selector::Not(e) => !e.matches(labels),
            Selector::And(v) => v.iter().all(|e| e.matches(labels)),
            Selector::Or(v) => v.iter().any(|e| e.matches(labels)),
        }
    }

    /// A Kubernetes `LabelSelector`: all of `matchLabels` and `matchExpressions` (ANDed); an
    /// empty one selects everything.
    pub fn from_k8s(sel: &K8sLabelSelector) -> Result<Selector, String> {
        let mut parts = Vec::new();
        for (k, v) in &sel.match_labels {
            parts.push(Selector::Eq(k.clone(), v.clone()));
        }
        for e in &sel.match_expressions {
            let values: BTreeSet<String> = e.values.iter().cloned().collect();
            let needs_values = matches!(e.operator, K8sOperator::In | K8sOperator::NotIn);
            if needs_values && values.is_empty() {
                return Err(format!("matchExpressions key {:?}: operator {:?} needs values", e.key, e.operator));
            }
            if !needs_values && !values.is_empty() {
                return Err(format!("matchExpressions key {:?}: operator {:?} takes no values", e.key, e.operator));
            }
            parts.push(match e.operator {
                K8sOperator::In => Selector::In(e.key.clone(), values),
                K8sOperator::NotIn => Selector::NotIn(e.key.clone(), values),
                K8sOperator::Exists => Selector::Has(e.key.clone()),
                K8sOperator::DoesNotExist => Selector::Not(Box::new(Selector::Has(e.key.clone()))),
            });
        }
        Ok(match parts.len() {
            0 => Selector::All,
            1 => parts.pop().expect("one part"),
            _ => Selector::And(parts),
        })
    }
}

/// Kubernetes' `LabelSelector` as it appears in a file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct K8sLabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<K8sSelectorRequirement>,
}

/// A `matchExpressions` operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum K8sOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sSelectorRequirement {
    pub key: String,
    pub operator: K8sOperator,
    #[serde(default)]
    pub values: Vec<String>,
}

fn quote(s: &str) -> String {
    if s.contains('\'') {
        format!("\"{s}\"")
    } else {
        format!("'{s}'")
    }
}

impl fmt::Display for Selector {
    /// Calico syntax that parses back to the same selector (as long as no string holds both
    /// quote characters, which the grammar cannot express).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |s: &BTreeSet<String>| s.iter().map(|x| quote(x)).collect::<Vec<_>>().join(", ");
        // Parentheses only where the parser needed them (an `&&` or `||` inside `&&`, an `||`
        // inside `||`, either under `!`), so printing never nests deeper than the input did.
        let paren = |e: &Selector, needs: bool| if needs { format!("({e})") } else { e.to_string() };
        let and_or = |e: &Selector| matches!(e, Selector::And(_) | Selector::Or(_));
        match self {
            Selector::All => write!(f, "all()"),
            Selector::Global => write!(f, "global()"),
            Selector::Has(k) => write!(f, "has({k})"),
            Selector::Eq(k, v) => write!(f, "{k} == {}", quote(v)),
            Selector::Ne(k, v) => write!(f, "{k} != {}", quote(v)),
            Selector::In(k, s) => write!(f, "{k} in {{{}}}", set(s)),
            Selector::NotIn(k, s) => write!(f, "{k} not in {{{}}}", set(s)),
            Selector::Contains(k, v) => write!(f, "{k} contains {}", quote(v)),
            Selector::StartsWith(k, v) => write!(f, "{k} starts with {}", quote(v)),
            Selector::EndsWith(k, v) => write!(f, "{k} ends with {}", quote(v)),
            Selector::Not(e) => write!(f, "!{}", paren(e, and_or(e))),
            Selector::And(v) => {
                write!(f, "{}", v.iter().map(|e| paren(e, and_or(e))).collect::<Vec<_>>().join(" && "))
            }
            Selector::Or(v) => write!(
                f,
                "{}",
                v.iter().map(|e| paren(e, matches!(e, Selector::Or(_)))).collect::<Vec<_>>().join(" || ")
            ),
        }
    }
}

/// Nesting limit: a selector is a line in a policy, not a program; the limit keeps a hostile
/// file from overflowing the stack.
const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    chars: Vec<char>,
    pos: usize,
    input: &'a str,
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

impl Parser<'_> {
    fn err(&self, message: impl Into<String>) -> SelectorError {
        SelectorError { input: self.input.to_string(), column: self.pos + 1, message: message.into() }
    }
    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }
    /// Consumes `tok` (after blanks) if it is next.
    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        let n = tok.chars().count();
        if self.chars.len() >= self.pos + n && self.chars[self.pos..self.pos + n].iter().copied().eq(tok.chars()) {
            self.pos += n;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, tok: &str, what: &str) -> Result<(), SelectorError> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(self.err(format!("expected {what}")))
        }
    }
    /// A word (label key or keyword) without consuming it.
    fn peek_word(&mut self) -> String {
        self.skip_ws();
        self.chars[self.pos..].iter().take_while(|c| is_key_char(**c)).collect()
    }
    fn word(&mut self) -> String {
        let w = self.peek_word();
        self.pos += w.chars().count();
        w
    }
    fn depth_check(&self, depth: usize) -> Result<(), SelectorError> {
        if depth > MAX_DEPTH {
            Err(self.err(format!("nested deeper than {MAX_DEPTH} levels")))
        } else {
            Ok(())
        }
    }

    fn or(&mut self) -> Result<Selector, SelectorError> {
        self.or_at(0)
    }
    fn or_at(&mut self, depth: usize) -> Result<Selector, SelectorError> {
        self.depth_check(depth)?;
        let mut v = vec![self.and_at(depth)?];
        while self.eat("||") {
            v.push(self.and_at(depth)?);
        }
        Ok(if v.len() == 1 { v.pop().expect("one") } else { Selector::Or(v) })
    }
    fn and_at(&mut self, depth: usize) -> Result<Selector, SelectorError> {
        let mut v = vec![self.unary(depth)?];
        while self.eat("&&") {
            v.push(self.unary(depth)?);
        }
        Ok(if v.len() == 1 { v.pop().expect("one") } else { Selector::And(v) })
    }
    fn unary(&mut self, depth: usize) -> Result<Selector, SelectorError> {
        self.depth_check(depth)?;
        self.skip_ws();
        // `!` but not the start of `!=` (which cannot start an expression anyway).
        if self.peek() == Some('!') && self.chars.get(self.pos + 1) != Some(&'=') {
            self.pos += 1;
            return Ok(Selector::Not(Box::new(self.unary(depth + 1)?)));
        }
        self.primary(depth)
    }
    fn primary(&mut self, depth: usize) -> Result<Selector, SelectorError> {
        self.skip_ws();
        if self.eat("(") {
            let e = self.or_at(depth + 1)?;
            self.expect(")", "`)`")?;
            return Ok(e);
        }
        let start = self.pos;
        let key = self.word();
        if key.is_empty() {
            return Err(self.err(match self.peek() {
                None => "expected an expression, found the end".to_string(),
                Some(c) => format!("expected a label key, `(`, `!`, `has(`, `all()`, found {c:?}"),
            }));
        }
        self.skip_ws();
        if self.peek() == Some('(') {
            self.pos += 1;
            return match key.as_str() {
                "all" => self.expect(")", "`)` after `all(`").map(|()| Selector::All),
                "global" => self.expect(")", "`)` after `global(`").map(|()| Selector::Global),
                "has" => {
                    let k = self.word();
                    if k.is_empty() {
                        return Err(self.err("expected a label key in has()"));
                    }
                    self.expect(")", "`)` after the key of has(")?;
                    Ok(Selector::Has(k))
                }
                _ => {
                    self.pos = start;
                    Err(self.err(format!("unknown function {key}() (all, global, has)")))
                }
            };
        }
        if self.eat("==") {
            return Ok(Selector::Eq(key, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Selector::Ne(key, self.string()?));
        }
        let op_pos = self.pos;
        match self.word().as_str() {
            "in" => Ok(Selector::In(key, self.set()?)),
            "not" => {
                if self.word() != "in" {
                    return Err(self.err("expected `in` after `not`"));
                }
                Ok(Selector::NotIn(key, self.set()?))
            }
            "contains" => Ok(Selector::Contains(key, self.string()?)),
            "starts" => {
                if self.word() != "with" {
                    return Err(self.err("expected `with` after `starts`"));
                }
                Ok(Selector::StartsWith(key, self.string()?))
            }
            "ends" => {
                if self.word() != "with" {
                    return Err(self.err("expected `with` after `ends`"));
                }
                Ok(Selector::EndsWith(key, self.string()?))
            }
            _ => {
                self.pos = op_pos;
                self.skip_ws();
                Err(self.err(format!(
                    "expected an operator after label {key:?} (==, !=, in, not in, contains, starts with, ends with)"
                )))
            }
        }
    }
    fn string(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let q = match self.peek() {
            Some(c @ ('\'' | '"')) => c,
            _ => return Err(self.err("expected a string in '…' or \"…\"")),
        };
        let open = self.pos;
        self.pos += 1;
        let mut s = String::new();
        loop {
            match self.peek() {
                None => {
                    self.pos = open;
                    return Err(self.err("string not closed"));
                }
                Some(c) if c == q => {
                    self.pos += 1;
                    return Ok(s);
                }
                Some(c) => {
                    s.push(c);
                    self.pos += 1;
                }
            }
        }
    }
    fn set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        self.expect("{", "`{`")?;
        let mut set = BTreeSet::new();
        if self.eat("}") {
            return Ok(set);
        }
        loop {
            set.insert(self.string()?);
            if self.eat("}") {
                return Ok(set);
            }
            self.expect(",", "`,` or `}`")?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn display_parses_back() {
        for s in [
            "a == 'x' && (b != \"y'z\" || !has(c)) && d in {'1', '2'}",
            "!(a == 'b') || k not in {} || all() || global()",
            "x contains 'a' && y starts with 'b' && z ends with 'c'",
        ] {
            let p = Selector::parse(s).unwrap();
            assert_eq!(Selector::parse(&p.to_string()).unwrap(), p, "{s} -> {p}");
        }
    }

    #[test]
    fn printing_never_nests_deeper_than_the_input() {
        // Up to the 64 levels the parser takes: the printed form must parse too.
        let bangs = format!("{}k == 'v'", "!".repeat(64));
        let mut alt = "z == '0'".to_string();
        for i in 0..40 {
            alt = format!("x{i} == 'a' || y{i} == 'b' && ({alt})");
        }
        for s in [bangs, alt] {
            let p = Selector::parse(&s).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(Selector::parse(&p.to_string()).unwrap(), p);
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let s = format!("{}all(){}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(Selector::parse(&s).unwrap_err().message.contains("nested deeper"));
        let s = format!("{}all()", "!".repeat(10_000));
        assert!(Selector::parse(&s).is_err());
    }

    #[test]
    fn keys_may_hold_dots_slashes_and_dashes() {
        let s = Selector::parse("projectcalico.org/namespace == 'a-b' && app.kubernetes.io/name in {'x'}").unwrap();
        assert!(s.matches(&labels(&[("projectcalico.org/namespace", "a-b"), ("app.kubernetes.io/name", "x")])));
    }
}
