//! The capture settings: flag text in, one validator, a typed `Settings` out. No I/O.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU16;
use std::str::FromStr;

/// Istio's defaults, as its injector passes them to `istio-iptables` for a pod with no
/// annotations (the injection template's `-p`, `-z`, `-u`, `-i`, `-b`, `-d`; `-e` is the tunnel
/// port's default in `istio-iptables` itself).
pub mod defaults {
    pub const PROXY_UID: &str = "1337";
    pub const OUTBOUND_PORT: &str = "15001";
    pub const INBOUND_PORT: &str = "15006";
    pub const INBOUND_TUNNEL_PORT: &str = "15008";
    pub const INCLUDE_OUTBOUND_CIDRS: &str = "*";
    pub const INCLUDE_INBOUND_PORTS: &str = "*";
    /// Envoy's Prometheus port, the health port and pilot-agent's status port.
    pub const EXCLUDE_INBOUND_PORTS: &str = "15090,15021,15020";
}

/// A setting, named as on the command line and in the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    ProxyUid,
    ProxyGid,
    OutboundPort,
    InboundPort,
    InboundTunnelPort,
    IncludeOutboundCidrs,
    ExcludeOutboundCidrs,
    IncludeOutboundPorts,
    ExcludeOutboundPorts,
    IncludeInboundPorts,
    ExcludeInboundPorts,
}

/// A bad value, with the flag it was given for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {value:?}: {problem}")]
pub struct SettingsError {
    pub flag: Flag,
    /// The offending item of the list (the whole value when the list itself is wrong).
    pub value: String,
    pub problem: Problem,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("not a port number (1-65535)")]
    NotAPort,
    #[error("port 0 cannot be captured or excluded")]
    PortZero,
    #[error("not a numeric id")]
    NotAnId,
    #[error("needs at least one id")]
    NoIds,
    #[error("not a CIDR: expected ADDRESS/LENGTH")]
    NoPrefixLength,
    #[error("not an IPv4 or IPv6 address")]
    NotAnAddress,
    #[error("prefix length is not a number")]
    NotALength,
    #[error("prefix length {len} is longer than {max}")]
    LengthTooLong { len: u32, max: u8 },
    #[error("an IPv6 range needs --ipv6")]
    Ipv6WithoutFlag,
    #[error("`*` (all) cannot be excluded")]
    WildcardExcluded,
    #[error("`*` means all and stands alone, not in a list")]
    WildcardInList,
}

/// The flag text, as given (after clap has applied defaults and environment variables).
#[derive(Clone, Copy, Debug)]
pub struct Raw<'a> {
    pub proxy_uid: &'a str,
    /// None: the uids, as in Istio.
    pub proxy_gid: Option<&'a str>,
    pub outbound_port: &'a str,
    pub inbound_port: &'a str,
    pub inbound_tunnel_port: &'a str,
    pub include_outbound_cidrs: &'a str,
    pub exclude_outbound_cidrs: &'a str,
    pub include_outbound_ports: &'a str,
    pub exclude_outbound_ports: &'a str,
    pub include_inbound_ports: &'a str,
    pub exclude_inbound_ports: &'a str,
    pub ipv6: bool,
}

/// Validated settings: everything `rules::build` needs, nothing it must check again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The proxy's uids and gids: their traffic is never captured.
    pub proxy_uids: Vec<u32>,
    pub proxy_gids: Vec<u32>,
    /// Where outbound traffic is redirected (ISTIO_REDIRECT).
    pub outbound_port: Port,
    /// Where inbound traffic is redirected (ISTIO_IN_REDIRECT).
    pub inbound_port: Port,
    /// The HBONE tunnel port: never captured inbound.
    pub inbound_tunnel_port: Port,
    pub include_outbound_cidrs: Selection<Cidr>,
    pub exclude_outbound_cidrs: Vec<Cidr>,
    pub include_outbound_ports: Vec<Port>,
    pub exclude_outbound_ports: Vec<Port>,
    pub include_inbound_ports: Selection<Port>,
    /// Applies only when all inbound ports are captured, as in Istio.
    pub exclude_inbound_ports: Vec<Port>,
    /// Also install the IPv6 rules (ip6tables).
    pub ipv6: bool,
}

/// `*` (all) or a list; an empty list captures nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection<T> {
    All,
    Only(Vec<T>),
}

/// A TCP port other than 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(NonZeroU16);

/// An address range with its host bits cleared: `10.0.0.0/8`, `2001:db8::/32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

// === impl Flag ===

impl Flag {
    pub fn long(self) -> &'static str {
        match self {
            Flag::ProxyUid => "proxy-uid",
            Flag::ProxyGid => "proxy-gid",
            Flag::OutboundPort => "outbound-port",
            Flag::InboundPort => "inbound-port",
            Flag::InboundTunnelPort => "inbound-tunnel-port",
            Flag::IncludeOutboundCidrs => "include-outbound-cidrs",
            Flag::ExcludeOutboundCidrs => "exclude-outbound-cidrs",
            Flag::IncludeOutboundPorts => "include-outbound-ports",
            Flag::ExcludeOutboundPorts => "exclude-outbound-ports",
            Flag::IncludeInboundPorts => "include-inbound-ports",
            Flag::ExcludeInboundPorts => "exclude-inbound-ports",
        }
    }
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--{}", self.long())
    }
}

// === impl Settings ===

impl Settings {
    /// Checks every flag before anything is built, so a bad value installs nothing.
    pub fn parse(raw: &Raw<'_>) -> Result<Settings, SettingsError> {
        let proxy_uids = ids(Flag::ProxyUid, raw.proxy_uid)?;
        let proxy_gids = match raw.proxy_gid {
            Some(gid) => ids(Flag::ProxyGid, gid)?,
            None => proxy_uids.clone(),
        };
        let cidrs = |flag, text| cidr_list(flag, text, raw.ipv6);
        let include_outbound_cidrs =
            match selection(Flag::IncludeOutboundCidrs, raw.include_outbound_cidrs)? {
                None => Selection::All,
                Some(list) => Selection::Only(cidrs(Flag::IncludeOutboundCidrs, list)?),
            };
        if selection(Flag::ExcludeOutboundCidrs, raw.exclude_outbound_cidrs)?.is_none() {
            // Istio: "invalid value for OUTBOUND_IP_RANGES_EXCLUDE".
            return Err(SettingsError {
                flag: Flag::ExcludeOutboundCidrs,
                value: raw.exclude_outbound_cidrs.trim().to_string(),
                problem: Problem::WildcardExcluded,
            });
        }
        let include_inbound_ports =
            match selection(Flag::IncludeInboundPorts, raw.include_inbound_ports)? {
                None => Selection::All,
                Some(list) => Selection::Only(ports(Flag::IncludeInboundPorts, list)?),
            };
        Ok(Settings {
            proxy_uids,
            proxy_gids,
            outbound_port: port(Flag::OutboundPort, raw.outbound_port.trim())?,
            inbound_port: port(Flag::InboundPort, raw.inbound_port.trim())?,
            inbound_tunnel_port: port(Flag::InboundTunnelPort, raw.inbound_tunnel_port.trim())?,
            include_outbound_cidrs,
            exclude_outbound_cidrs: cidrs(Flag::ExcludeOutboundCidrs, raw.exclude_outbound_cidrs)?,
            include_outbound_ports: ports(Flag::IncludeOutboundPorts, raw.include_outbound_ports)?,
            exclude_outbound_ports: ports(Flag::ExcludeOutboundPorts, raw.exclude_outbound_ports)?,
            include_inbound_ports,
            exclude_inbound_ports: ports(Flag::ExcludeInboundPorts, raw.exclude_inbound_ports)?,
            ipv6: raw.ipv6,
        })
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::parse(&Raw::default()).expect("the defaults are valid")
    }
}

impl Default for Raw<'_> {
    fn default() -> Self {
        Raw {
            proxy_uid: defaults::PROXY_UID,
            proxy_gid: None,
            outbound_port: defaults::OUTBOUND_PORT,
            inbound_port: defaults::INBOUND_PORT,
            inbound_tunnel_port: defaults::INBOUND_TUNNEL_PORT,
            include_outbound_cidrs: defaults::INCLUDE_OUTBOUND_CIDRS,
            exclude_outbound_cidrs: "",
            include_outbound_ports: "",
            exclude_outbound_ports: "",
            include_inbound_ports: defaults::INCLUDE_INBOUND_PORTS,
            exclude_inbound_ports: defaults::EXCLUDE_INBOUND_PORTS,
            ipv6: false,
        }
    }
}

/// Comma-separated items, trimmed; empty items are dropped, as Istio's `config.Split` does.
fn items(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// None for `*`, else the list text. `*` inside a list is an error rather than a silent "all".
fn selection(flag: Flag, text: &str) -> Result<Option<&str>, SettingsError> {
    if text.trim() == "*" {
        return Ok(None);
    }
    match items(text).find(|item| *item == "*") {
        Some(_) => Err(SettingsError {
            flag,
            value: text.trim().to_string(),
            problem: Problem::WildcardInList,
        }),
        None => Ok(Some(text)),
    }
}

fn ids(flag: Flag, text: &str) -> Result<Vec<u32>, SettingsError> {
    let ids = items(text)
        .map(|item| {
            item.parse::<u32>().map_err(|_| SettingsError {
                flag,
                value: item.to_string(),
                problem: Problem::NotAnId,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() {
        return Err(SettingsError {
            flag,
            value: text.to_string(),
            problem: Problem::NoIds,
        });
    }
    Ok(ids)
}

fn port(flag: Flag, item: &str) -> Result<Port, SettingsError> {
    let error = |problem| SettingsError {
        flag,
        value: item.to_string(),
        problem,
    };
    // Digits only: `u16::from_str` would take a leading `+`, iptables would not.
    if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
        return Err(error(Problem::NotAPort));
    }
    let n = item.parse::<u16>().map_err(|_| error(Problem::NotAPort))?;
    NonZeroU16::new(n)
        .map(Port)
        .ok_or_else(|| error(Problem::PortZero))
}

fn ports(flag: Flag, text: &str) -> Result<Vec<Port>, SettingsError> {
    items(text).map(|item| port(flag, item)).collect()
}

fn cidr_list(flag: Flag, text: &str, ipv6: bool) -> Result<Vec<Cidr>, SettingsError> {
    items(text)
        .map(|item| {
            let error = |problem| SettingsError {
                flag,
                value: item.to_string(),
                problem,
            };
            let cidr = item.parse::<Cidr>().map_err(error)?;
            if cidr.is_ipv6() && !ipv6 {
                return Err(error(Problem::Ipv6WithoutFlag));
            }
            Ok(cidr)
        })
        .collect()
}

// === impl Port ===

impl Port {
    pub fn get(self) -> u16 {
        self.0.get()
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

// === impl Cidr ===

impl Cidr {
    pub fn v4(addr: Ipv4Addr, len: u8) -> Cidr {
        Cidr::new(IpAddr::V4(addr), len.min(32))
    }

    pub fn v6(addr: Ipv6Addr, len: u8) -> Cidr {
        Cidr::new(IpAddr::V6(addr), len.min(128))
    }

    fn new(addr: IpAddr, len: u8) -> Cidr {
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Cidr { addr, len }
    }

    pub fn addr(self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(self) -> u8 {
        self.len
    }

    pub fn is_ipv6(self) -> bool {
        self.addr.is_ipv6()
    }

    /// In 127.0.0.0/8 or ::1: Istio then keeps the app's own loopback traffic capturable.
    pub fn is_loopback(self) -> bool {
        self.addr.is_loopback()
    }
}

impl FromStr for Cidr {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Cidr, Problem> {
        let (addr, len) = s.split_once('/').ok_or(Problem::NoPrefixLength)?;
        let addr = addr.parse::<IpAddr>().map_err(|_| Problem::NotAnAddress)?;
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Problem::NotALength);
        }
        let len = len.parse::<u32>().map_err(|_| Problem::NotALength)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > u32::from(max) {
            return Err(Problem::LengthTooLong { len, max });
        }
        Ok(Cidr::new(
            addr,
            u8::try_from(len).expect("checked against max"),
        ))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(edit: impl FnOnce(&mut Raw<'static>)) -> Result<Settings, SettingsError> {
        let mut raw = Raw::default();
        edit(&mut raw);
        Settings::parse(&raw)
    }

    fn error(edit: impl FnOnce(&mut Raw<'static>)) -> String {
        parse(edit).expect_err("should be rejected").to_string()
    }

    #[test]
    fn defaults_are_istios() {
        let s = Settings::default();
        assert_eq!(s.proxy_uids, vec![1337]);
        assert_eq!(s.proxy_gids, vec![1337], "the gid defaults to the uid");
        assert_eq!(s.outbound_port.get(), 15001);
        assert_eq!(s.inbound_port.get(), 15006);
        assert_eq!(s.inbound_tunnel_port.get(), 15008);
        assert_eq!(s.include_outbound_cidrs, Selection::All);
        assert_eq!(s.include_inbound_ports, Selection::All);
        let excluded: Vec<u16> = s.exclude_inbound_ports.iter().map(|p| p.get()).collect();
        assert_eq!(excluded, vec![15090, 15021, 15020]);
        assert!(!s.ipv6);
    }

    #[test]
    fn lists_are_trimmed_and_empty_items_dropped() {
        let s = parse(|r| {
            r.include_inbound_ports = " 6000, 7000,";
            r.proxy_uid = "3,4";
            r.proxy_gid = Some("1, 2");
            r.include_outbound_cidrs = "";
        })
        .expect("valid");
        let ports: Vec<u16> = match &s.include_inbound_ports {
            Selection::Only(p) => p.iter().map(|p| p.get()).collect(),
            Selection::All => panic!("a list"),
        };
        assert_eq!(ports, vec![6000, 7000]);
        assert_eq!(s.proxy_uids, vec![3, 4]);
        assert_eq!(s.proxy_gids, vec![1, 2]);
        assert_eq!(s.include_outbound_cidrs, Selection::Only(vec![]));
    }

    #[test]
    fn cidrs_are_normalized() {
        let c: Cidr = "10.1.2.3/8".parse().expect("valid");
        assert_eq!(c.to_string(), "10.0.0.0/8");
        let c: Cidr = "2001:db8::1/32".parse().expect("valid");
        assert_eq!(c.to_string(), "2001:db8::/32");
        let c: Cidr = "0.0.0.0/0".parse().expect("valid");
        assert_eq!(c.to_string(), "0.0.0.0/0");
        let c: Cidr = "::/0".parse().expect("valid");
        assert_eq!(c.to_string(), "::/0");
        assert!("127.1.2.3/32".parse::<Cidr>().expect("valid").is_loopback());
    }

    #[test]
    fn errors_name_the_flag_and_the_value() {
        assert_eq!(
            error(|r| r.exclude_outbound_cidrs = "10.0.0.0/8,10.0.0.0/33"),
            r#"--exclude-outbound-cidrs: "10.0.0.0/33": prefix length 33 is longer than 32"#
        );
        assert_eq!(
            error(|r| r.include_outbound_cidrs = "10.0.0.300/8"),
            r#"--include-outbound-cidrs: "10.0.0.300/8": not an IPv4 or IPv6 address"#
        );
        assert_eq!(
            error(|r| r.include_outbound_cidrs = "10.0.0.0"),
            r#"--include-outbound-cidrs: "10.0.0.0": not a CIDR: expected ADDRESS/LENGTH"#
        );
        assert_eq!(
            error(|r| r.exclude_outbound_cidrs = "10.0.0.0/x"),
            r#"--exclude-outbound-cidrs: "10.0.0.0/x": prefix length is not a number"#
        );
        assert_eq!(
            error(|r| r.include_outbound_cidrs = "2001:db8::/129"),
            r#"--include-outbound-cidrs: "2001:db8::/129": prefix length 129 is longer than 128"#
        );
        assert_eq!(
            error(|r| r.include_outbound_cidrs = "10.0.0.0/8,2001:db8::/32"),
            r#"--include-outbound-cidrs: "2001:db8::/32": an IPv6 range needs --ipv6"#
        );
        assert_eq!(
            error(|r| r.exclude_outbound_cidrs = "*"),
            r#"--exclude-outbound-cidrs: "*": `*` (all) cannot be excluded"#
        );
        assert_eq!(
            error(|r| r.include_inbound_ports = "80,*"),
            r#"--include-inbound-ports: "80,*": `*` means all and stands alone, not in a list"#
        );
        assert_eq!(
            error(|r| r.exclude_inbound_ports = "15090,0"),
            r#"--exclude-inbound-ports: "0": port 0 cannot be captured or excluded"#
        );
        assert_eq!(
            error(|r| r.include_outbound_ports = "65536"),
            r#"--include-outbound-ports: "65536": not a port number (1-65535)"#
        );
        assert_eq!(
            error(|r| r.exclude_outbound_ports = "80-90"),
            r#"--exclude-outbound-ports: "80-90": not a port number (1-65535)"#
        );
        assert_eq!(
            error(|r| r.outbound_port = "+15001"),
            r#"--outbound-port: "+15001": not a port number (1-65535)"#
        );
        assert_eq!(
            error(|r| r.inbound_port = "0"),
            r#"--inbound-port: "0": port 0 cannot be captured or excluded"#
        );
        assert_eq!(
            error(|r| r.inbound_tunnel_port = ""),
            r#"--inbound-tunnel-port: "": not a port number (1-65535)"#
        );
        assert_eq!(
            error(|r| r.proxy_uid = "istio-proxy"),
            r#"--proxy-uid: "istio-proxy": not a numeric id"#
        );
        assert_eq!(
            error(|r| r.proxy_gid = Some(" ")),
            r#"--proxy-gid: " ": needs at least one id"#
        );
    }

    #[test]
    fn ipv6_ranges_are_accepted_with_the_flag() {
        let s = parse(|r| {
            r.ipv6 = true;
            r.include_outbound_cidrs = "10.0.0.0/8,2001:db8::/32";
        })
        .expect("valid");
        let Selection::Only(list) = s.include_outbound_cidrs else {
            panic!("a list")
        };
        assert_eq!(list.len(), 2);
        assert!(list[1].is_ipv6());
    }
}
