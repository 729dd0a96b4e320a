//! The rule set as a typed value: a pure function of the settings, in Istio's order, rendered as
//! iptables-restore text. No I/O.

use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::settings::{Cidr, Port, Selection, Settings};

/// Which `iptables` binary family a rule set is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// The nat table's chains the rules use. Istio's names, so its tooling and docs apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chain {
    Prerouting,
    Output,
    Inbound,
    Redirect,
    InRedirect,
    IstioOutput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// One match of a rule, rendered as Istio writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    Protocol(Protocol),
    /// `[!] --dport N`: needs a `Protocol` match before it.
    DestinationPort {
        port: Port,
        negated: bool,
    },
    Destination {
        cidr: Cidr,
        negated: bool,
    },
    Source(Cidr),
    /// `-o lo`
    OutLoopback,
    Uid {
        id: u32,
        negated: bool,
    },
    Gid {
        id: u32,
        negated: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Jump(Chain),
    Return,
    /// `-j REDIRECT --to-ports N`
    Redirect(Port),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: Chain,
    pub matches: Vec<Match>,
    pub target: Target,
}

/// Every rule for one family, in the order they are appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    pub family: Family,
    pub rules: Vec<Rule>,
}

// === impl Family ===

impl Family {
    /// The inbound passthrough cluster binds this source to reach the app (127.0.0.6, ::6).
    fn passthrough_source(self) -> Cidr {
        match self {
            Family::V4 => Cidr::v4(Ipv4Addr::new(127, 0, 0, 6), 32),
            Family::V6 => Cidr::v6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6), 128),
        }
    }

    /// Istio's `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR` default, and `::1/128`.
    fn localhost(self) -> Cidr {
        match self {
            Family::V4 => Cidr::v4(Ipv4Addr::LOCALHOST, 32),
            Family::V6 => Cidr::v6(Ipv6Addr::LOCALHOST, 128),
        }
    }

    fn has(self, cidr: Cidr) -> bool {
        cidr.is_ipv6() == (self == Family::V6)
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

// === impl Chain ===

impl Chain {
    /// The chains this tool creates and owns; anything else in the table is left alone.
    pub const OWNED: [Chain; 4] = [
        Chain::Inbound,
        Chain::Redirect,
        Chain::InRedirect,
        Chain::IstioOutput,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Chain::Prerouting => "PREROUTING",
            Chain::Output => "OUTPUT",
            Chain::Inbound => "ISTIO_INBOUND",
            Chain::Redirect => "ISTIO_REDIRECT",
            Chain::InRedirect => "ISTIO_IN_REDIRECT",
            Chain::IstioOutput => "ISTIO_OUTPUT",
        }
    }

    pub fn is_owned(self) -> bool {
        Chain::OWNED.contains(&self)
    }
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// === impl Match ===

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let not = |negated: bool| if negated { "! " } else { "" };
        match *self {
            Match::Protocol(Protocol::Tcp) => f.write_str("-p tcp"),
            Match::Protocol(Protocol::Udp) => f.write_str("-p udp"),
            Match::DestinationPort { port, negated } => write!(f, "{}--dport {port}", not(negated)),
            Match::Destination { cidr, negated } => write!(f, "{}-d {cidr}", not(negated)),
            Match::Source(cidr) => write!(f, "-s {cidr}"),
            Match::OutLoopback => f.write_str("-o lo"),
            Match::Uid { id, negated } => write!(f, "-m owner {}--uid-owner {id}", not(negated)),
            Match::Gid { id, negated } => write!(f, "-m owner {}--gid-owner {id}", not(negated)),
        }
    }
}

// === impl Target ===

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Jump(chain) => write!(f, "-j {chain}"),
            Target::Return => f.write_str("-j RETURN"),
            Target::Redirect(port) => write!(f, "-j REDIRECT --to-ports {port}"),
        }
    }
}

// === impl Rule ===

impl Rule {
    fn new(chain: Chain, matches: impl Into<Vec<Match>>, target: Target) -> Rule {
        Rule {
            chain,
            matches: matches.into(),
            target,
        }
    }
}

/// `-A CHAIN matches... -j TARGET`, one line of iptables-restore input.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {}", self.chain)?;
        for m in &self.matches {
            write!(f, " {m}")?;
        }
        write!(f, " {}", self.target)
    }
}

// === impl RuleSet ===

impl RuleSet {
    /// The iptables-restore input that installs exactly this rule set into a nat table that has
    /// none of it (declaring a chain creates it, or flushes it under `--noflush`).
    pub fn to_restore(&self) -> String {
        let mut out = String::from("*nat\n");
        for chain in Chain::OWNED {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for rule in &self.rules {
            let _ = writeln!(out, "{rule}");
        }
        out.push_str("COMMIT\n");
        out
    }
}

/// The rule sets to install: IPv4, and IPv6 with `--ipv6`.
pub fn build(settings: &Settings) -> Vec<RuleSet> {
    let mut sets = vec![build_family(settings, Family::V4)];
    if settings.ipv6 {
        sets.push(build_family(settings, Family::V6));
    }
    sets
}

/// Istio's `IptablesConfigurator::Run` in REDIRECT mode, rule for rule and in its order, without
/// the features Strait does not offer (TPROXY, DNS capture, interface and owner-group filters).
pub fn build_family(s: &Settings, family: Family) -> RuleSet {
    use Chain::*;
    use Match::*;
    let tcp = Protocol(self::Protocol::Tcp);
    let udp = Protocol(self::Protocol::Udp);
    let port = |port| DestinationPort {
        port,
        negated: false,
    };
    let dest = |cidr| Destination {
        cidr,
        negated: false,
    };
    let localhost = family.localhost();
    let mut rules = Vec::new();

    // Never capture the HBONE tunnel port inbound.
    rules.push(Rule::new(
        Inbound,
        [tcp, port(s.inbound_tunnel_port)],
        Target::Return,
    ));
    rules.push(Rule::new(
        Redirect,
        [tcp],
        Target::Redirect(s.outbound_port),
    ));
    rules.push(Rule::new(
        InRedirect,
        [tcp],
        Target::Redirect(s.inbound_port),
    ));

    // Inbound.
    match &s.include_inbound_ports {
        Selection::Only(ports) if ports.is_empty() => {}
        Selection::All => {
            rules.push(Rule::new(Prerouting, [tcp], Target::Jump(Inbound)));
            for &p in &s.exclude_inbound_ports {
                rules.push(Rule::new(Inbound, [tcp, port(p)], Target::Return));
            }
            rules.push(Rule::new(Inbound, [tcp], Target::Jump(InRedirect)));
        }
        Selection::Only(ports) => {
            rules.push(Rule::new(Prerouting, [tcp], Target::Jump(Inbound)));
            for &p in ports {
                rules.push(Rule::new(Inbound, [tcp, port(p)], Target::Jump(InRedirect)));
            }
        }
    }

    // Outbound. Istio jumps for every protocol: excluded ports return UDP too.
    rules.push(Rule::new(Output, [], Target::Jump(IstioOutput)));
    for &p in &s.exclude_outbound_ports {
        rules.push(Rule::new(IstioOutput, [tcp, port(p)], Target::Return));
        rules.push(Rule::new(IstioOutput, [udp, port(p)], Target::Return));
    }
    // The inbound passthrough cluster's connections to the app.
    rules.push(Rule::new(
        IstioOutput,
        [OutLoopback, Source(family.passthrough_source())],
        Target::Return,
    ));
    // A loopback range in the include list asks for the app's own loopback traffic to be
    // captured, so the app-to-itself RETURN is left out (Istio checks both families' lists).
    let loopback_included = match &s.include_outbound_cidrs {
        Selection::All => false,
        Selection::Only(cidrs) => cidrs.iter().any(|c| c.is_loopback()),
    };
    let owners = s
        .proxy_uids
        .iter()
        .map(|&id| (Uid { id, negated: false }, Uid { id, negated: true }))
        .chain(
            s.proxy_gids
                .iter()
                .map(|&id| (Gid { id, negated: false }, Gid { id, negated: true })),
        );
    for (is_proxy, is_not_proxy) in owners {
        // The proxy calling the app through a VIP lands on the pod's own address over lo:
        // that is inbound traffic for the app, so it goes through the inbound listener.
        rules.push(Rule::new(
            IstioOutput,
            [
                OutLoopback,
                Destination {
                    cidr: localhost,
                    negated: true,
                },
                tcp,
                DestinationPort {
                    port: s.inbound_tunnel_port,
                    negated: true,
                },
                is_proxy,
            ],
            Target::Jump(InRedirect),
        ));
        // The app calling itself by its own address.
        if !loopback_included {
            rules.push(Rule::new(
                IstioOutput,
                [OutLoopback, is_not_proxy],
                Target::Return,
            ));
        }
        // Everything else the proxy sends goes out as it is.
        rules.push(Rule::new(IstioOutput, [is_proxy], Target::Return));
    }
    // Envoy-aware apps and container-to-container traffic on localhost.
    rules.push(Rule::new(IstioOutput, [dest(localhost)], Target::Return));
    for &cidr in s.exclude_outbound_cidrs.iter().filter(|c| family.has(**c)) {
        rules.push(Rule::new(IstioOutput, [dest(cidr)], Target::Return));
    }
    for &p in &s.include_outbound_ports {
        rules.push(Rule::new(
            IstioOutput,
            [tcp, port(p)],
            Target::Jump(Redirect),
        ));
    }
    match &s.include_outbound_cidrs {
        Selection::All => rules.push(Rule::new(IstioOutput, [], Target::Jump(Redirect))),
        Selection::Only(cidrs) => {
            for &cidr in cidrs.iter().filter(|c| family.has(**c)) {
                rules.push(Rule::new(IstioOutput, [dest(cidr)], Target::Jump(Redirect)));
            }
        }
    }
    RuleSet { family, rules }
}

#[cfg(test)]
mod tests {
    //! Each expected text is Istio's golden file for the same flags
    //! (`tools/istio-iptables/pkg/capture/testdata/<case>.golden`), with two differences in
    //! form: chains are declared `:NAME - [0:0]` (create-or-flush, so a rerun replaces) where
    //! Istio writes `-N NAME` after deleting its chains, and the table header is `*nat` where
    //! Istio writes `* nat`. The `-A` lines are Istio's, byte for byte.

    use pretty_assertions::assert_eq;

    use super::*;
    use crate::settings::Raw;

    fn settings(edit: impl FnOnce(&mut Raw<'static>)) -> Settings {
        let mut raw = Raw::default();
        edit(&mut raw);
        Settings::parse(&raw).expect("valid settings")
    }

    /// Istio's `constructTestConfig`: no inbound capture, no outbound ranges, uid/gid 1337.
    fn istio_test_config(raw: &mut Raw<'static>) {
        raw.include_inbound_ports = "";
        raw.exclude_inbound_ports = "";
        raw.include_outbound_cidrs = "";
    }

    fn restore(s: &Settings) -> Vec<String> {
        build(s).iter().map(RuleSet::to_restore).collect()
    }

    const HEADER: &str = "*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_REDIRECT - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
";

    const OUTPUT_1337_V4: &str = "-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
";

    const OUTPUT_1337_V6: &str = "-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d ::1/128 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d ::1/128 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d ::1/128 -j RETURN
";

    /// The injector's defaults: `-i '*' -b '*' -d 15090,15021,15020` (Istio's
    /// `inbound-ports-wildcard` plus the injector's exclusions, and `kube-virt-interfaces`'
    /// `-j ISTIO_REDIRECT` for `-i '*'`, without its interface rules).
    #[test]
    fn defaults() {
        let expected = format!(
            "{HEADER}-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
{OUTPUT_1337_V4}-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
"
        );
        assert_eq!(restore(&Settings::default()), vec![expected]);
    }

    /// Istio `empty`.
    #[test]
    fn istio_empty() {
        let s = settings(istio_test_config);
        assert_eq!(
            restore(&s),
            vec![format!("{HEADER}{OUTPUT_1337_V4}COMMIT\n")]
        );
    }

    /// Istio `inbound-ports-include`.
    #[test]
    fn istio_inbound_ports_include() {
        let s = settings(|r| {
            istio_test_config(r);
            r.include_inbound_ports = "32000,31000";
        });
        let expected = format!(
            "{HEADER}-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 32000 -j ISTIO_IN_REDIRECT
-A ISTIO_INBOUND -p tcp --dport 31000 -j ISTIO_IN_REDIRECT
{OUTPUT_1337_V4}COMMIT
"
        );
        assert_eq!(restore(&s), vec![expected]);
    }

    /// Istio `inbound-ports-wildcard`.
    #[test]
    fn istio_inbound_ports_wildcard() {
        let s = settings(|r| {
            istio_test_config(r);
            r.include_inbound_ports = "*";
        });
        let expected = format!(
            "{HEADER}-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
{OUTPUT_1337_V4}COMMIT
"
        );
        assert_eq!(restore(&s), vec![expected]);
    }

    /// Istio's `handleInboundPortsInclude`: exclusions RETURN first, only under `*` (no golden
    /// case has them in REDIRECT mode; `ipv6-ipnets` shows them ignored beside a list).
    #[test]
    fn inbound_exclusions_apply_only_to_wildcard() {
        let wildcard = settings(|r| {
            istio_test_config(r);
            r.include_inbound_ports = "*";
            r.exclude_inbound_ports = "6000,7000,";
        });
        let expected = format!(
            "{HEADER}-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 6000 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 7000 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
{OUTPUT_1337_V4}COMMIT
"
        );
        assert_eq!(restore(&wildcard), vec![expected]);

        let list = settings(|r| {
            istio_test_config(r);
            r.include_inbound_ports = "4000";
            r.exclude_inbound_ports = "6000,7000,";
        });
        let text = restore(&list).concat();
        assert!(!text.contains("6000"), "{text}");
        assert!(text.contains("-A ISTIO_INBOUND -p tcp --dport 4000 -j ISTIO_IN_REDIRECT"));
    }

    /// Istio `outbound-ports-include`: the ports come after the localhost RETURN.
    #[test]
    fn istio_outbound_ports_include() {
        let s = settings(|r| {
            istio_test_config(r);
            r.include_outbound_ports = "32000,31000";
        });
        let expected = format!(
            "{HEADER}{OUTPUT_1337_V4}-A ISTIO_OUTPUT -p tcp --dport 32000 -j ISTIO_REDIRECT
-A ISTIO_OUTPUT -p tcp --dport 31000 -j ISTIO_REDIRECT
COMMIT
"
        );
        assert_eq!(restore(&s), vec![expected]);
    }

    /// Istio's `OutboundPortsExclude` loop (no golden case sets it): TCP and UDP RETURN, first
    /// in ISTIO_OUTPUT, before the proxy's own redirect back to itself.
    #[test]
    fn outbound_ports_exclude() {
        let s = settings(|r| r.exclude_outbound_ports = "3306,6379");
        let text = restore(&s).concat();
        let output = text
            .lines()
            .skip_while(|l| !l.starts_with("-A OUTPUT "))
            .take(6)
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            output,
            "-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p tcp --dport 3306 -j RETURN
-A ISTIO_OUTPUT -p udp --dport 3306 -j RETURN
-A ISTIO_OUTPUT -p tcp --dport 6379 -j RETURN
-A ISTIO_OUTPUT -p udp --dport 6379 -j RETURN
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN"
        );
    }

    /// Istio `ipnets`.
    #[test]
    fn istio_ipnets() {
        let s = settings(|r| {
            istio_test_config(r);
            r.include_outbound_cidrs = "10.0.0.0/8";
        });
        let expected = format!(
            "{HEADER}{OUTPUT_1337_V4}-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT\nCOMMIT\n"
        );
        assert_eq!(restore(&s), vec![expected]);
    }

    /// Istio `ip-range` without `REDIRECT_DNS` (DNS capture is not offered; with it Istio's
    /// loopback rules also skip port 53): excluded ranges RETURN before included ones
    /// redirect, one rule set per uid then per gid.
    #[test]
    fn istio_ip_range_without_dns() {
        let s = settings(|r| {
            istio_test_config(r);
            r.exclude_outbound_cidrs = "1.1.0.0/16";
            r.include_outbound_cidrs = "9.9.0.0/16";
            r.proxy_uid = "3,4";
            r.proxy_gid = Some("1,2");
        });
        let expected = format!(
            "{HEADER}-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 3 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 3 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 3 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 4 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 4 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 4 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 2 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 2 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 2 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -d 1.1.0.0/16 -j RETURN
-A ISTIO_OUTPUT -d 9.9.0.0/16 -j ISTIO_REDIRECT
COMMIT
"
        );
        assert_eq!(restore(&s), vec![expected]);
    }

    /// Istio `loopback-outbound-iprange` without `REDIRECT_DNS`: a loopback range in the include
    /// list drops the `-o lo ! --uid-owner` RETURNs.
    #[test]
    fn istio_loopback_outbound_iprange_without_dns() {
        let s = settings(|r| {
            istio_test_config(r);
            r.include_outbound_cidrs = "127.1.2.3/32";
            r.proxy_uid = "3,4";
            r.proxy_gid = Some("1,2");
        });
        let expected = format!(
            "{HEADER}-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 3 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -m owner --uid-owner 3 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 4 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -m owner --uid-owner 4 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -m owner --gid-owner 1 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 2 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -m owner --gid-owner 2 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -d 127.1.2.3/32 -j ISTIO_REDIRECT
COMMIT
"
        );
        assert_eq!(restore(&s), vec![expected]);
    }

    /// Istio `ipv6-inbound-ports`: the same rules for ip6tables with ::6 and ::1.
    #[test]
    fn istio_ipv6_inbound_ports() {
        let s = settings(|r| {
            istio_test_config(r);
            r.include_inbound_ports = "4000,5000";
            r.ipv6 = true;
        });
        let inbound = "-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 4000 -j ISTIO_IN_REDIRECT
-A ISTIO_INBOUND -p tcp --dport 5000 -j ISTIO_IN_REDIRECT
";
        assert_eq!(
            restore(&s),
            vec![
                format!("{HEADER}{inbound}{OUTPUT_1337_V4}COMMIT\n"),
                format!("{HEADER}{inbound}{OUTPUT_1337_V6}COMMIT\n"),
            ]
        );
    }

    /// Istio `ipv6-empty-inbound-ports`.
    #[test]
    fn istio_ipv6_empty_inbound_ports() {
        let s = settings(|r| {
            istio_test_config(r);
            r.ipv6 = true;
        });
        assert_eq!(
            restore(&s),
            vec![
                format!("{HEADER}{OUTPUT_1337_V4}COMMIT\n"),
                format!("{HEADER}{OUTPUT_1337_V6}COMMIT\n"),
            ]
        );
    }

    /// Istio `ipv6-outbound-ports`.
    #[test]
    fn istio_ipv6_outbound_ports() {
        let s = settings(|r| {
            istio_test_config(r);
            r.include_outbound_ports = "32000,31000";
            r.ipv6 = true;
        });
        let ports = "-A ISTIO_OUTPUT -p tcp --dport 32000 -j ISTIO_REDIRECT
-A ISTIO_OUTPUT -p tcp --dport 31000 -j ISTIO_REDIRECT
";
        assert_eq!(
            restore(&s),
            vec![
                format!("{HEADER}{OUTPUT_1337_V4}{ports}COMMIT\n"),
                format!("{HEADER}{OUTPUT_1337_V6}{ports}COMMIT\n"),
            ]
        );
    }

    /// Istio `ipv6-ipnets` without its `-k eth0,eth1` interface rules: an IPv6 range goes to
    /// ip6tables only, and the IPv4 table gets no include rule at all.
    #[test]
    fn istio_ipv6_ipnets() {
        let s = settings(|r| {
            istio_test_config(r);
            r.include_inbound_ports = "4000,5000";
            r.exclude_inbound_ports = "6000,7000,";
            r.exclude_outbound_cidrs = "2001:db8::/32";
            r.include_outbound_cidrs = "2001:db8::/32";
            r.ipv6 = true;
        });
        let inbound = "-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 4000 -j ISTIO_IN_REDIRECT
-A ISTIO_INBOUND -p tcp --dport 5000 -j ISTIO_IN_REDIRECT
";
        assert_eq!(
            restore(&s),
            vec![
                format!("{HEADER}{inbound}{OUTPUT_1337_V4}COMMIT\n"),
                format!(
                    "{HEADER}{inbound}{OUTPUT_1337_V6}-A ISTIO_OUTPUT -d 2001:db8::/32 -j RETURN
-A ISTIO_OUTPUT -d 2001:db8::/32 -j ISTIO_REDIRECT
COMMIT
"
                ),
            ]
        );
    }

    /// Istio splits mixed lists by family (`config.SeparateV4V6`).
    #[test]
    fn mixed_lists_are_split_by_family() {
        let s = settings(|r| {
            r.include_outbound_cidrs = "10.0.0.0/8,fd00::/8";
            r.exclude_outbound_cidrs = "10.1.0.0/16,fd00:1::/32";
            r.ipv6 = true;
        });
        let sets = restore(&s);
        assert!(sets[0].contains("-A ISTIO_OUTPUT -d 10.1.0.0/16 -j RETURN\n"));
        assert!(sets[0].contains("-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT\n"));
        assert!(!sets[0].contains("fd00"), "{}", sets[0]);
        assert!(sets[1].contains("-A ISTIO_OUTPUT -d fd00:1::/32 -j RETURN\n"));
        assert!(sets[1].contains("-A ISTIO_OUTPUT -d fd00::/8 -j ISTIO_REDIRECT\n"));
        assert!(!sets[1].contains("10."), "{}", sets[1]);
    }

    #[test]
    fn ports_and_ids_are_configurable() {
        let s = settings(|r| {
            r.outbound_port = "16001";
            r.inbound_port = "16006";
            r.inbound_tunnel_port = "16008";
            r.proxy_uid = "101";
            r.proxy_gid = Some("102");
        });
        let text = restore(&s).concat();
        for line in [
            "-A ISTIO_INBOUND -p tcp --dport 16008 -j RETURN",
            "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001",
            "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006",
            "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 16008 -m owner --uid-owner 101 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_OUTPUT -m owner --gid-owner 102 -j RETURN",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("1337"), "{text}");
    }
}
