//! The capture lists, as Istio's `traffic.sidecar.istio.io/*` annotations and the
//! `strait-proxy iptables` flags write them, and the init container's arguments.
//!
//! Lists are comma-separated, items trimmed, empty items dropped; `*` (alone) means all. The
//! rules are `strait-proxy iptables`'s (its `Cidr` parser and messages), so a list accepted
//! here is accepted there.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use strait_iptables::settings::{Cidr, Problem};

/// A bad list: the item at fault and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{item:?}: {problem}")]
pub struct ListError {
    pub item: String,
    pub problem: String,
}

/// Ports other than 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

/// Address ranges (`10.0.0.0/8`, `2001:db8::/32`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<Cidr>);

/// `*` (all) or a list; an empty list selects nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection<L> {
    All,
    Only(L),
}

/// A list's text in YAML: a string, or a lone port written as a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Number(u64),
}

fn items(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn problem(item: &str, problem: impl fmt::Display) -> ListError {
    ListError {
        item: item.to_string(),
        problem: problem.to_string(),
    }
}

fn port(item: &str) -> Result<u16, ListError> {
    // Digits only, as strait-proxy iptables takes them: `u16::from_str` would accept `+80`.
    if !item.bytes().all(|b| b.is_ascii_digit()) {
        return Err(problem(item, Problem::NotAPort));
    }
    match item.parse::<u16>() {
        Ok(0) => Err(problem(item, Problem::PortZero)),
        Ok(p) => Ok(p),
        Err(_) => Err(problem(item, Problem::NotAPort)),
    }
}

// === impl PortList ===

impl PortList {
    /// The ports of `self`, then those of `other` not already in it.
    pub fn merged(&self, other: &PortList) -> PortList {
        let mut ports = self.0.clone();
        for p in &other.0 {
            if !ports.contains(p) {
                ports.push(*p);
            }
        }
        PortList(ports)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for PortList {
    type Err = ListError;

    fn from_str(text: &str) -> Result<PortList, ListError> {
        items(text)
            .map(port)
            .collect::<Result<_, _>>()
            .map(PortList)
    }
}

impl fmt::Display for PortList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        join(f, &self.0)
    }
}

// === impl CidrList ===

impl CidrList {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn has_ipv6(&self) -> bool {
        self.0.iter().any(|c| c.is_ipv6())
    }
}

impl FromStr for CidrList {
    type Err = ListError;

    fn from_str(text: &str) -> Result<CidrList, ListError> {
        if text.trim() == "*" {
            // Istio: "invalid value for OUTBOUND_IP_RANGES_EXCLUDE".
            return Err(problem("*", Problem::WildcardExcluded));
        }
        items(text)
            .map(|item| item.parse::<Cidr>().map_err(|p| problem(item, p)))
            .collect::<Result<_, _>>()
            .map(CidrList)
    }
}

impl fmt::Display for CidrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        join(f, &self.0)
    }
}

// === impl Selection ===

impl Selection<CidrList> {
    pub fn has_ipv6(&self) -> bool {
        matches!(self, Selection::Only(list) if list.has_ipv6())
    }
}

impl<L: FromStr<Err = ListError>> FromStr for Selection<L> {
    type Err = ListError;

    fn from_str(text: &str) -> Result<Selection<L>, ListError> {
        if text.trim() == "*" {
            return Ok(Selection::All);
        }
        if items(text).any(|item| item == "*") {
            return Err(problem(text.trim(), Problem::WildcardInList));
        }
        text.parse().map(Selection::Only)
    }
}

impl<L: fmt::Display> fmt::Display for Selection<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selection::All => f.write_str("*"),
            Selection::Only(list) => list.fmt(f),
        }
    }
}

fn join<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        item.fmt(f)?;
    }
    Ok(())
}

// serde: lists are written as text, as in the annotations.

impl Scalar {
    fn parse<T: FromStr<Err = ListError>>(self) -> Result<T, ListError> {
        match self {
            Scalar::Text(text) => text.parse(),
            Scalar::Number(n) => n.to_string().parse(),
        }
    }
}

macro_rules! text_serde {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Scalar::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

text_serde!(PortList, CidrList, Selection<PortList>, Selection<CidrList>);

/// Everything the init container's `strait-proxy iptables` is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    pub proxy_uid: i64,
    pub proxy_gid: i64,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub include_outbound_cidrs: Selection<CidrList>,
    pub exclude_outbound_cidrs: CidrList,
    pub include_outbound_ports: PortList,
    pub exclude_outbound_ports: PortList,
    pub include_inbound_ports: Selection<PortList>,
    pub exclude_inbound_ports: PortList,
    pub ipv6: bool,
}

impl Capture {
    /// `iptables --proxy-uid 1337 …`: every flag that matters is given, so the pod spec says
    /// what is captured whatever strait-proxy's defaults become; empty optional lists are left
    /// out.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["iptables".to_string()];
        let mut flag = |name: &str, value: String| {
            args.push(format!("--{name}"));
            args.push(value);
        };
        flag("proxy-uid", self.proxy_uid.to_string());
        flag("proxy-gid", self.proxy_gid.to_string());
        flag("outbound-port", self.outbound_port.to_string());
        flag("inbound-port", self.inbound_port.to_string());
        flag(
            "include-outbound-cidrs",
            self.include_outbound_cidrs.to_string(),
        );
        if !self.exclude_outbound_cidrs.is_empty() {
            flag(
                "exclude-outbound-cidrs",
                self.exclude_outbound_cidrs.to_string(),
            );
        }
        if !self.include_outbound_ports.is_empty() {
            flag(
                "include-outbound-ports",
                self.include_outbound_ports.to_string(),
            );
        }
        if !self.exclude_outbound_ports.is_empty() {
            flag(
                "exclude-outbound-ports",
                self.exclude_outbound_ports.to_string(),
            );
        }
        flag(
            "include-inbound-ports",
            self.include_inbound_ports.to_string(),
        );
        if !self.exclude_inbound_ports.is_empty() {
            flag(
                "exclude-inbound-ports",
                self.exclude_inbound_ports.to_string(),
            );
        }
        if self.ipv6 {
            args.push("--ipv6".to_string());
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_as_strait_proxy_iptables_takes_them() {
        assert_eq!(" 80, ,443 ".parse::<PortList>().unwrap().0, [80, 443]);
        assert_eq!("".parse::<PortList>().unwrap(), PortList::default());
        let bad = |text: &str| text.parse::<PortList>().unwrap_err().to_string();
        assert_eq!(bad("80,http"), "\"http\": not a port number (1-65535)");
        assert_eq!(bad("0"), "\"0\": port 0 cannot be captured or excluded");
        assert_eq!(bad("+80"), "\"+80\": not a port number (1-65535)");
        assert_eq!(bad("65536"), "\"65536\": not a port number (1-65535)");

        let cidrs = "10.0.0.0/8, 2001:db8::/32".parse::<CidrList>().unwrap();
        assert_eq!(cidrs.to_string(), "10.0.0.0/8,2001:db8::/32");
        assert!(cidrs.has_ipv6());
        let bad = |text: &str| text.parse::<CidrList>().unwrap_err().to_string();
        assert_eq!(
            bad("10.0.0.0/33"),
            "\"10.0.0.0/33\": prefix length 33 is longer than 32"
        );
        assert_eq!(
            bad("10.0.0.1"),
            "\"10.0.0.1\": not a CIDR: expected ADDRESS/LENGTH"
        );
        assert_eq!(bad("*"), "\"*\": `*` (all) cannot be excluded");
    }

    #[test]
    fn a_selection_is_all_or_a_list() {
        assert_eq!("*".parse::<Selection<PortList>>().unwrap(), Selection::All);
        assert_eq!(
            "".parse::<Selection<PortList>>().unwrap(),
            Selection::Only(PortList::default())
        );
        assert_eq!(
            "9080,*".parse::<Selection<PortList>>().unwrap_err().problem,
            "`*` means all and stands alone, not in a list"
        );
        assert_eq!(
            " * ".parse::<Selection<CidrList>>().unwrap().to_string(),
            "*"
        );
    }

    #[test]
    fn merged_keeps_order_and_drops_repeats() {
        let a: PortList = "15000,15090".parse().unwrap();
        let b: PortList = "15090,8080".parse().unwrap();
        assert_eq!(a.merged(&b).to_string(), "15000,15090,8080");
    }

    #[test]
    fn lists_read_from_yaml_text_or_a_number() {
        let ports: PortList = serde_yaml_ng::from_str("15020").unwrap();
        assert_eq!(ports.0, [15020]);
        let ports: PortList = serde_yaml_ng::from_str("'15020, 15021'").unwrap();
        assert_eq!(ports.0, [15020, 15021]);
        let err = serde_yaml_ng::from_str::<PortList>("'x'").unwrap_err();
        assert!(err.to_string().contains("not a port number"), "{err}");
        assert_eq!(
            serde_yaml_ng::to_string(&Selection::<CidrList>::All).unwrap(),
            "'*'\n"
        );
    }
}
