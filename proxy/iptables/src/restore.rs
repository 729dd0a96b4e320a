//! The iptables-restore transactions that install or remove a rule set, planned from what
//! `iptables-save -t nat` shows now. Pure: the text in, the transaction out.

use std::fmt::Write as _;

use crate::rules::{Chain, RuleSet};

/// The nat table as `iptables-save -t nat` prints it, reduced to what planning needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatTable {
    /// Every chain declared (`:NAME POLICY [counters]`).
    pub chains: Vec<String>,
    /// Every rule, as its `-A CHAIN ...` line.
    pub rules: Vec<SavedRule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedRule {
    pub chain: String,
    pub line: String,
}

// === impl NatTable ===

impl NatTable {
    /// Reads the `*nat` section of iptables-save output; other tables and comments are skipped.
    pub fn parse(save: &str) -> NatTable {
        let mut table = NatTable::default();
        let mut in_nat = false;
        for line in save.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('*') {
                in_nat = name.trim() == "nat";
            } else if line == "COMMIT" {
                in_nat = false;
            } else if !in_nat || line.starts_with('#') {
                continue;
            } else if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split_whitespace().next() {
                    table.chains.push(name.to_string());
                }
            } else if let Some(chain) = line
                .strip_prefix("-A ")
                .and_then(|rest| rest.split_whitespace().next())
            {
                table.rules.push(SavedRule {
                    chain: chain.to_string(),
                    line: normalize(line),
                });
            }
        }
        table
    }

    /// Whether any of the chains this tool owns exists.
    pub fn has_owned_chains(&self) -> bool {
        self.chains.iter().any(|c| is_owned(c))
    }

    /// Rules outside the owned chains that jump to one of them (Strait's or Istio's own jumps,
    /// in whatever form a previous run wrote them).
    fn references(&self) -> impl Iterator<Item = &SavedRule> {
        self.rules
            .iter()
            .filter(|r| !is_owned(&r.chain) && jump_target(&r.line).is_some_and(is_owned))
    }
}

fn is_owned(name: &str) -> bool {
    Chain::OWNED.iter().any(|c| c.name() == name)
}

fn normalize(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn jump_target(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    while let Some(word) = words.next() {
        if matches!(word, "-j" | "--jump" | "-g" | "--goto") {
            return words.next();
        }
    }
    None
}

/// `-A CHAIN spec` -> `-D CHAIN spec`: deletes the first rule with that spec.
fn delete(rule: &SavedRule) -> String {
    let spec = rule.line.strip_prefix("-A ").unwrap_or(&rule.line);
    format!("-D {spec}")
}

fn declare_owned(out: &mut String) {
    out.push_str("*nat\n");
    for chain in Chain::OWNED {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
}

/// One transaction that leaves the table holding exactly `set` besides what is not ours:
/// the owned chains are declared (created, or flushed under `--noflush`), jumps into them that
/// `set` does not have are deleted, and a jump that is already there as `set` has it is kept
/// where it is, so a rerun with the same settings changes nothing.
pub fn install(set: &RuleSet, current: &NatTable) -> String {
    let wanted: Vec<String> = set
        .rules
        .iter()
        .filter(|r| !r.chain.is_owned())
        .map(|r| r.to_string())
        .collect();
    let mut kept = vec![false; wanted.len()];
    let mut deletes = Vec::new();
    for rule in current.references() {
        let same = wanted
            .iter()
            .zip(kept.iter_mut())
            .find(|(w, k)| !**k && **w == rule.line);
        match same {
            Some((_, k)) => *k = true,
            None => deletes.push(delete(rule)),
        }
    }

    let mut out = String::new();
    declare_owned(&mut out);
    for d in deletes {
        let _ = writeln!(out, "{d}");
    }
    for rule in &set.rules {
        let line = rule.to_string();
        let present = (!rule.chain.is_owned())
            .then(|| wanted.iter().position(|w| *w == line))
            .flatten()
            .filter(|&i| kept[i]);
        if let Some(i) = present {
            // Already there; keep it (and forget it, in case the set has it twice).
            kept[i] = false;
            continue;
        }
        let _ = writeln!(out, "{line}");
    }
    out.push_str("COMMIT\n");
    out
}

/// The transaction that removes the owned chains and every jump into them, or None when the
/// table has neither. Other chains and rules are left as they are.
pub fn clean(current: &NatTable) -> Option<String> {
    let deletes: Vec<String> = current.references().map(delete).collect();
    if deletes.is_empty() && !current.has_owned_chains() {
        return None;
    }
    let mut out = String::new();
    // Declaring flushes them (or creates a missing one), so nothing refers to them once the
    // outside jumps are gone, and each can be deleted.
    declare_owned(&mut out);
    for d in deletes {
        let _ = writeln!(out, "{d}");
    }
    for chain in Chain::OWNED {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;

    use super::*;
    use crate::rules::{self, Family};
    use crate::settings::{Raw, Settings};

    const EMPTY: &str =
        "# Generated by iptables-save v1.8.9 (nf_tables) on Wed Dec  2 21:35:30 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
# Completed on Wed Dec  2 21:35:30 2026
";

    /// What iptables-save shows after the default install, with a stranger's rule kept.
    const INSTALLED: &str = "*filter
:INPUT ACCEPT [0:0]
-A INPUT -j ISTIO_OUTPUT_NOT_NAT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [5:300]
:POSTROUTING ACCEPT [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
";

    fn default_set() -> RuleSet {
        rules::build_family(&Settings::default(), Family::V4)
    }

    #[test]
    fn parses_only_the_nat_table() {
        let t = NatTable::parse(INSTALLED);
        assert_eq!(t.chains.len(), 9);
        assert!(t.has_owned_chains());
        assert_eq!(t.rules[0].chain, "PREROUTING");
        assert_eq!(t.rules[0].line, "-A PREROUTING -p tcp -j ISTIO_INBOUND");
        assert!(t.rules.iter().all(|r| !r.line.contains("NOT_NAT")));
        let refs: Vec<&str> = t.references().map(|r| r.line.as_str()).collect();
        assert_eq!(
            refs,
            vec![
                "-A PREROUTING -p tcp -j ISTIO_INBOUND",
                "-A OUTPUT -j ISTIO_OUTPUT"
            ]
        );
        assert!(!NatTable::parse(EMPTY).has_owned_chains());
        assert_eq!(NatTable::parse(""), NatTable::default());
    }

    #[test]
    fn install_into_an_empty_table_is_the_rule_set() {
        let set = default_set();
        assert_eq!(install(&set, &NatTable::parse(EMPTY)), set.to_restore());
    }

    #[test]
    fn reinstall_keeps_the_jumps_and_refills_the_chains() {
        let set = default_set();
        let text = install(&set, &NatTable::parse(INSTALLED));
        let expected: String = set
            .to_restore()
            .lines()
            .filter(|l| {
                *l != "-A PREROUTING -p tcp -j ISTIO_INBOUND" && *l != "-A OUTPUT -j ISTIO_OUTPUT"
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(text, expected);
    }

    #[test]
    fn other_settings_replace_stale_jumps() {
        // No inbound capture now, and an older Istio's `-p tcp` form of the OUTPUT jump.
        let saved = INSTALLED.replace(
            "-A OUTPUT -j ISTIO_OUTPUT",
            "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
        );
        let raw = Raw {
            include_inbound_ports: "",
            ..Raw::default()
        };
        let set = rules::build_family(&Settings::parse(&raw).expect("valid"), Family::V4);
        let text = install(&set, &NatTable::parse(&saved));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..7],
            [
                "*nat",
                ":ISTIO_INBOUND - [0:0]",
                ":ISTIO_REDIRECT - [0:0]",
                ":ISTIO_IN_REDIRECT - [0:0]",
                ":ISTIO_OUTPUT - [0:0]",
                "-D PREROUTING -p tcp -j ISTIO_INBOUND",
                "-D OUTPUT -p tcp -j ISTIO_OUTPUT",
            ]
        );
        assert!(lines.contains(&"-A OUTPUT -j ISTIO_OUTPUT"));
        assert!(!lines.iter().any(|l| l.starts_with("-A PREROUTING")));
        assert!(
            !text.contains("KUBE-SERVICES"),
            "other rules are not touched"
        );
    }

    #[test]
    fn a_duplicated_jump_is_reduced_to_one() {
        let saved = INSTALLED.replace(
            "-A OUTPUT -j ISTIO_OUTPUT\n",
            "-A OUTPUT -j ISTIO_OUTPUT\n-A OUTPUT -j ISTIO_OUTPUT\n",
        );
        let text = install(&default_set(), &NatTable::parse(&saved));
        assert_eq!(text.matches("-D OUTPUT -j ISTIO_OUTPUT\n").count(), 1);
        assert_eq!(text.matches("-A OUTPUT -j ISTIO_OUTPUT\n").count(), 0);
    }

    #[test]
    fn clean_removes_owned_chains_and_jumps_only() {
        assert_eq!(
            clean(&NatTable::parse(INSTALLED)).as_deref(),
            Some(
                "*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_REDIRECT - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
-D PREROUTING -p tcp -j ISTIO_INBOUND
-D OUTPUT -j ISTIO_OUTPUT
-X ISTIO_INBOUND
-X ISTIO_REDIRECT
-X ISTIO_IN_REDIRECT
-X ISTIO_OUTPUT
COMMIT
"
            )
        );
        assert_eq!(clean(&NatTable::parse(EMPTY)), None);
    }
}
