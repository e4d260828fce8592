//! Pagination of ListVolumes / ListSnapshots.

use crate::Error;

/// Marks our pagination tokens, so that a token we did not make is ABORTED.
const TOKEN_PREFIX: &str = "after:";

/// Pagination over a list sorted by `key`. The token names the last entry
/// returned (`after:` and its key in hex), not an index: entries added or
/// removed between two calls do not shift the next page, so an entry that
/// stays in the list is returned exactly once, and the next page starts
/// after the last one returned even when that one was deleted meanwhile.
///
/// Returns the page and the next token (empty on the last page). A negative
/// `max_entries` is INVALID_ARGUMENT, a token this function did not make is
/// ABORTED, as the spec asks.
pub fn page<T>(
    all: Vec<T>,
    key: impl Fn(&T) -> &str,
    max_entries: i32,
    token: &str,
) -> Result<(Vec<T>, String), Error> {
    if max_entries < 0 {
        return Err(Error::InvalidArgument(format!("max_entries {max_entries} is negative")));
    }
    let after = match token {
        "" => None,
        t => Some(
            t.strip_prefix(TOKEN_PREFIX)
                .and_then(hex_decode)
                .ok_or_else(|| Error::Aborted(format!("starting_token {t:?} is not one this driver made")))?,
        ),
    };
    let mut rest: Vec<T> = match &after {
        None => all,
        Some(a) => all.into_iter().filter(|e| key(e) > a.as_str()).collect(),
    };
    let next = match max_entries {
        n if n > 0 && rest.len() > n as usize => {
            rest.truncate(n as usize);
            rest.last().map(|e| format!("{TOKEN_PREFIX}{}", hex_encode(key(e)))).unwrap_or_default()
        }
        _ => String::new(),
    };
    Ok((rest, next))
}

fn hex_encode(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes =
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &String) -> &str {
        s
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pages_walk_the_list_and_a_bad_token_is_aborted() {
        let all = ids(&["a", "b", "c", "d", "e"]);
        let (p1, t1) = page(all.clone(), key, 2, "").unwrap();
        assert_eq!((p1, t1.as_str()), (ids(&["a", "b"]), "after:62"));
        let (p2, t2) = page(all.clone(), key, 2, &t1).unwrap();
        assert_eq!(p2, ids(&["c", "d"]));
        assert_eq!(page(all.clone(), key, 2, &t2).unwrap(), (ids(&["e"]), String::new()));
        assert_eq!(page(all.clone(), key, 0, "").unwrap(), (all.clone(), String::new()));
        assert_eq!(page(all.clone(), key, 5, "").unwrap(), (all.clone(), String::new()));
        for bad in ["x", "6", "after:6", "after:zz", "invalid-token"] {
            assert!(matches!(page(all.clone(), key, 1, bad), Err(Error::Aborted(_))), "{bad}");
        }
        assert!(matches!(page(all, key, -1, ""), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn pages_stay_right_when_the_list_changes_between_calls() {
        let (p1, t1) = page(ids(&["b", "d", "f", "h"]), key, 2, "").unwrap();
        assert_eq!(p1, ids(&["b", "d"]));
        // "d" (the token's own entry) and "b" removed, "a", "c" (before the
        // token) and "e", "g" (after it) added: nothing that stayed is
        // repeated or skipped, and new entries after the token show up.
        let (p2, t2) = page(ids(&["a", "c", "e", "f", "g", "h"]), key, 2, &t1).unwrap();
        assert_eq!(p2, ids(&["e", "f"]));
        let (p3, t3) = page(ids(&["a", "c", "e", "f", "g", "h"]), key, 2, &t2).unwrap();
        assert_eq!((p3, t3), (ids(&["g", "h"]), String::new()));
    }
}
