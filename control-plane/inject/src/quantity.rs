//! Resource quantities (`100m`, `128Mi`, `1.5`, `1e3`), checked as Kubernetes parses them, so
//! a bad `sidecar.istio.io/proxyCPU` fails here, naming the annotation, and not at the API
//! server.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A non-negative quantity, as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Written", into = "String")]
pub struct Quantity(String);

#[derive(Deserialize)]
#[serde(untagged)]
enum Written {
    Text(String),
    Integer(u64),
    Number(f64),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a resource quantity (a number with an optional suffix: m, k, M, G, Ki, Mi, Gi, …)"
)]
pub struct QuantityError(pub String);

impl Quantity {
    pub fn parse(text: &str) -> Result<Quantity, QuantityError> {
        let bad = || QuantityError(text.to_string());
        let rest = text.strip_prefix('+').unwrap_or(text);
        // The number: digits with at most one point, at least one digit.
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(end);
        if !number.bytes().any(|b| b.is_ascii_digit()) || number.matches('.').count() > 1 {
            return Err(bad());
        }
        let suffix_ok = match suffix {
            "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
            "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => true,
            exponent => exponent
                .strip_prefix(['e', 'E'])
                .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
                .is_some_and(|digits| {
                    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
                }),
        };
        if suffix_ok {
            Ok(Quantity(text.to_string()))
        } else {
            Err(bad())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<Written> for Quantity {
    type Error = QuantityError;
    fn try_from(w: Written) -> Result<Quantity, QuantityError> {
        match w {
            Written::Text(text) => Quantity::parse(&text),
            Written::Integer(n) => Ok(Quantity(n.to_string())),
            Written::Number(n) => Quantity::parse(&n.to_string()),
        }
    }
}

impl From<Quantity> for String {
    fn from(q: Quantity) -> String {
        q.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_quantities() {
        for good in [
            "100m", "1", "1.5", ".5", "2.", "128Mi", "1Gi", "1e3", "1E-2", "+1k", "500M",
        ] {
            assert!(Quantity::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "", "-1", "1.2.3", "100 m", "1GB", "m", "e3", "1e", "1e+", "1Kib", "abc",
        ] {
            assert!(Quantity::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_in_yaml_are_quantities() {
        let q: Quantity = serde_yaml_ng::from_str("2").unwrap();
        assert_eq!(q.as_str(), "2");
        let q: Quantity = serde_yaml_ng::from_str("0.5").unwrap();
        assert_eq!(q.as_str(), "0.5");
        assert!(serde_yaml_ng::from_str::<Quantity>("-1").is_err());
    }
}
