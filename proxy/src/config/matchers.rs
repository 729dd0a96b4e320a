//! Matchers that routes, RBAC policies and SAN checks share: strings, regexes and headers, and
//! how they match (as Envoy's: case folded in ASCII, regexes on the whole input).

use std::sync::Arc;

use serde::{Serialize, Serializer};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeaderMatcher {
    /// Lowercase; `:method`, `:authority`, `:scheme` and `:path` name the pseudo-headers.
    pub name: Arc<str>,
    pub matches: HeaderMatch,
    pub invert: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderMatch {
    /// `true`: the header is present; `false`: it is absent.
    Present(bool),
    Value(StringMatch),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueryMatcher {
    pub name: Arc<str>,
    /// `None`: the parameter is present.
    pub value: Option<StringMatch>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StringMatch {
    Exact { value: Arc<str>, ignore_case: bool },
    Prefix { value: Arc<str>, ignore_case: bool },
    Suffix { value: Arc<str>, ignore_case: bool },
    Contains { value: Arc<str>, ignore_case: bool },
    Regex(Pattern),
}

/// A regular expression that must match the whole input (Envoy's `safe_regex`).
#[derive(Clone, Debug)]
pub struct Pattern {
    pub source: Arc<str>,
    pub regex: regex::Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, regex::Error> {
        Ok(Pattern {
            source: source.into(),
            regex: regex::Regex::new(&format!("^(?:{source})$"))?,
        })
    }

    /// A pattern that may match anywhere (for rewrites).
    pub fn unanchored(source: &str) -> Result<Pattern, regex::Error> {
        Ok(Pattern {
            source: source.into(),
            regex: regex::Regex::new(source)?,
        })
    }

    pub fn matches(&self, input: &str) -> bool {
        self.regex.is_match(input)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

// === impl StringMatch ===

impl StringMatch {
    /// Whether `input` matches. With `ignore_case` the stored value is already lowercase and
    /// the input is compared in place, folding ASCII only (Envoy's rule), without a copy.
    pub fn matches(&self, input: &str) -> bool {
        let (value, ignore_case) = match self {
            StringMatch::Regex(p) => return p.matches(input),
            StringMatch::Exact { value, ignore_case }
            | StringMatch::Prefix { value, ignore_case }
            | StringMatch::Suffix { value, ignore_case }
            | StringMatch::Contains { value, ignore_case } => (value.as_bytes(), *ignore_case),
        };
        let input = input.as_bytes();
        let eq = |a: &[u8]| {
            if ignore_case {
                a.eq_ignore_ascii_case(value)
            } else {
                a == value
            }
        };
        let n = value.len();
        match self {
            StringMatch::Exact { .. } => eq(input),
            StringMatch::Prefix { .. } => input.len() >= n && eq(&input[..n]),
            StringMatch::Suffix { .. } => input.len() >= n && eq(&input[input.len() - n..]),
            StringMatch::Contains { .. } => n == 0 || input.windows(n).any(eq),
            StringMatch::Regex(_) => unreachable!("handled above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_match_as_envoy_matches_them() {
        let exact = |v: &str, ic| StringMatch::Exact {
            value: v.into(),
            ignore_case: ic,
        };
        assert!(exact("abc", false).matches("abc"));
        assert!(!exact("abc", false).matches("ABC"));
        assert!(exact("abc", true).matches("AbC"));
        let prefix = StringMatch::Prefix {
            value: "/api".into(),
            ignore_case: true,
        };
        assert!(prefix.matches("/API/v1") && !prefix.matches("/ap"));
        let suffix = StringMatch::Suffix {
            value: ".com".into(),
            ignore_case: false,
        };
        assert!(suffix.matches("a.com") && !suffix.matches("a.COM") && !suffix.matches("com"));
        let contains = StringMatch::Contains {
            value: "mid".into(),
            ignore_case: true,
        };
        assert!(contains.matches("aMIDb") && !contains.matches("mi"));
        let re = StringMatch::Regex(Pattern::new("a+b").expect("valid"));
        assert!(re.matches("aab") && !re.matches("aabc"), "whole input");
    }
}
