//! Regexes as Envoy runs them: RE2 syntax, which lacks some of what Rust's `regex` accepts.
//! Checking here turns what would be an Envoy NACK into a validation error.

use regex_syntax::ast::{self, Ast, ClassSetBinaryOp, Flag, FlagsItemKind, Visitor};

struct Re2Only;

impl Visitor for Re2Only {
    type Output = ();
    type Err = String;

    fn finish(self) -> Result<(), String> {
        Ok(())
    }

    fn visit_pre(&mut self, ast: &Ast) -> Result<(), String> {
        let flags = match ast {
            Ast::Flags(set) => Some(&set.flags),
            Ast::Group(group) => match &group.kind {
                ast::GroupKind::NonCapturing(flags) => Some(flags),
                _ => None,
            },
            Ast::Assertion(a) => {
                use ast::AssertionKind::*;
                if matches!(
                    a.kind,
                    WordBoundaryStart
                        | WordBoundaryEnd
                        | WordBoundaryStartAngle
                        | WordBoundaryEndAngle
                        | WordBoundaryStartHalf
                        | WordBoundaryEndHalf
                ) {
                    return Err(
                        "RE2 (Envoy's regex engine) supports only \\b and \\B word boundaries"
                            .into(),
                    );
                }
                None
            }
            _ => None,
        };
        for item in flags.into_iter().flat_map(|f| &f.items) {
            if let FlagsItemKind::Flag(
                flag @ (Flag::IgnoreWhitespace | Flag::Unicode | Flag::CRLF),
            ) = item.kind
            {
                let letter = match flag {
                    Flag::IgnoreWhitespace => 'x',
                    Flag::Unicode => 'u',
                    _ => 'R',
                };
                return Err(format!(
                    "RE2 (Envoy's regex engine) has no ({letter}) flag; it supports i, m, s and U"
                ));
            }
        }
        Ok(())
    }

    fn visit_class_set_binary_op_pre(&mut self, _op: &ClassSetBinaryOp) -> Result<(), String> {
        Err("RE2 (Envoy's regex engine) has no character class set operations (&&, --, ~~)".into())
    }
}

/// Refuses syntax that Rust's regex accepts but RE2 does not. Assumes the pattern already
/// compiled with Rust's `regex`.
pub fn check(pattern: &str) -> Result<(), String> {
    let parsed = ast::parse::Parser::new()
        .parse(pattern)
        .map_err(|e| e.to_string())?;
    ast::visit(&parsed, Re2Only)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_re2_accepts() {
        for ok in [
            "/search/[a-z]+",
            "(?i)^/api/v[0-9]+/.*",
            "a|b",
            r"\bword\b",
            r"\p{Greek}+",
            "(?s:.)",
        ] {
            assert!(check(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_rust_only_syntax() {
        assert!(
            check("(?x) a b # comment")
                .unwrap_err()
                .contains("(x) flag")
        );
        assert!(check("(?u:.)").unwrap_err().contains("(u) flag"));
        assert!(
            check("[a-z&&[^aeiou]]")
                .unwrap_err()
                .contains("set operations")
        );
        assert!(
            check(r"\b{start}x")
                .unwrap_err()
                .contains("word boundaries")
        );
    }
}
