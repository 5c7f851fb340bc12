//! Compares one family's filter table, as `iptables -S` prints it, with what
//! install makes: our jump alone at the top of INPUT, and our chain holding
//! exactly our rules. Pure functions over the text, testable without root.

use super::{Family, CHAIN};
use crate::config::model::Step;

/// What `iptables -S` shows of our part of the filter table.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Seen {
    /// How many INPUT rules come before our first jump (all of them when
    /// there is none).
    pub above: usize,
    /// How many INPUT rules are our jump.
    pub jumps: usize,
    /// Our chain's rules, or `None` when the chain does not exist.
    pub chain: Option<Vec<String>>,
}

impl Seen {
    /// Whether INPUT starts with our jump and holds no second one.
    pub fn jump_in_place(&self) -> bool {
        self.jumps == 1 && self.above == 0
    }
}

/// The `-A INPUT -j XKNOCKD` line.
fn jump_line() -> String {
    format!("-A INPUT -j {CHAIN}")
}

/// Reads our part of `iptables -S` (the whole filter table).
pub(super) fn parse(text: &str) -> Seen {
    let mut seen = Seen::default();
    let new_chain = format!("-N {CHAIN}");
    let ours = format!("-A {CHAIN} ");
    for line in text.lines().map(str::trim_end) {
        if line == jump_line() {
            seen.jumps += 1;
        } else if line.starts_with("-A INPUT ") && seen.jumps == 0 {
            seen.above += 1;
        } else if line == new_chain {
            seen.chain.get_or_insert_with(Vec::new);
        } else if line.starts_with(&ours) {
            seen.chain.get_or_insert_with(Vec::new).push(line.to_string());
        }
    }
    seen
}

/// Our chain's rules for `ports`, as `iptables -S` prints them back: the
/// implicit `-m tcp`/`-m udp` shows up, and conntrack states in bit order.
pub(super) fn expected(family: Family, ports: &[Step]) -> Vec<String> {
    let set = family.set();
    ports
        .iter()
        .flat_map(|step| {
            let (proto, port) = (step.proto.as_str(), step.port);
            let head = format!("-A {CHAIN} -p {proto} -m {proto} --dport {port}");
            [
                format!("{head} -m set --match-set {set} src,dst -j RETURN"),
                format!("{head} -m conntrack --ctstate {} -j DROP", super::DROPPED_STATES),
            ]
        })
        .collect()
}

/// One phrase per way `seen` differs from what install leaves.
pub(super) fn findings(family: Family, seen: &Seen, ports: &[Step]) -> Vec<String> {
    let mut out = Vec::new();
    match seen.jumps {
        0 => out.push(format!("INPUT does not jump to {CHAIN}")),
        _ if seen.above > 0 => out.push(format!("{} rule(s) above our jump in INPUT", seen.above)),
        _ => {}
    }
    if seen.jumps > 1 {
        out.push(format!("INPUT jumps to {CHAIN} {} times", seen.jumps));
    }
    match &seen.chain {
        None => out.push(format!("chain {CHAIN} is gone")),
        Some(rules) => {
            let want = expected(family, ports);
            if *rules != want {
                out.push(format!("chain {CHAIN} holds {} rules, not our {}", rules.len(), want.len()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::Proto;

    const SSH: Step = Step { port: 2222, proto: Proto::Tcp };

    /// `iptables -S` in a namespace right after install for `2222/tcp`.
    const INSTALLED: &str = "\
-P INPUT ACCEPT
-P FORWARD ACCEPT
-P OUTPUT ACCEPT
-N XKNOCKD
-A INPUT -j XKNOCKD
-A XKNOCKD -p tcp -m tcp --dport 2222 -m set --match-set xknockd4 src,dst -j RETURN
-A XKNOCKD -p tcp -m tcp --dport 2222 -m conntrack --ctstate INVALID,NEW,UNTRACKED -j DROP
";

    fn check(text: &str) -> Vec<String> {
        findings(Family::V4, &parse(text), &[SSH])
    }

    #[test]
    fn a_fresh_install_is_clean() {
        let seen = parse(INSTALLED);
        assert!(seen.jump_in_place());
        assert_eq!(seen.chain.as_ref().map(Vec::len), Some(2));
        assert!(check(INSTALLED).is_empty());
    }

    #[test]
    fn a_rule_inserted_above_the_jump_is_found() {
        let text = INSTALLED.replace("-A INPUT -j XKNOCKD\n", "-A INPUT -j ACCEPT\n-A INPUT -j XKNOCKD\n");
        let seen = parse(&text);
        assert_eq!((seen.above, seen.jumps), (1, 1));
        assert_eq!(check(&text), ["1 rule(s) above our jump in INPUT"]);
    }

    #[test]
    fn rules_below_the_jump_are_someone_elses_business() {
        let text = INSTALLED.replace("-A INPUT -j XKNOCKD\n", "-A INPUT -j XKNOCKD\n-A INPUT -j DROP\n");
        assert!(check(&text).is_empty());
    }

    #[test]
    fn a_deleted_or_doubled_jump_is_found() {
        let gone = INSTALLED.replace("-A INPUT -j XKNOCKD\n", "-A INPUT -i lo -j ACCEPT\n");
        assert_eq!(check(&gone), ["INPUT does not jump to XKNOCKD"]);
        let twice = INSTALLED.replace("-A INPUT -j XKNOCKD\n", "-A INPUT -j XKNOCKD\n-A INPUT -j XKNOCKD\n");
        assert_eq!(check(&twice), ["INPUT jumps to XKNOCKD 2 times"]);
    }

    #[test]
    fn a_flushed_or_changed_chain_is_found() {
        let flushed: String =
            INSTALLED.lines().filter(|l| !l.starts_with("-A XKNOCKD")).map(|l| l.to_owned() + "\n").collect();
        assert_eq!(check(&flushed), ["chain XKNOCKD holds 0 rules, not our 2"]);
        let old = INSTALLED.replace("INVALID,NEW,UNTRACKED", "NEW");
        assert_eq!(check(&old), ["chain XKNOCKD holds 2 rules, not our 2"]);
    }

    #[test]
    fn a_missing_chain_is_found() {
        assert_eq!(
            check("-P INPUT ACCEPT\n-A INPUT -j ACCEPT\n"),
            ["INPUT does not jump to XKNOCKD", "chain XKNOCKD is gone"]
        );
    }

    #[test]
    fn v6_rules_name_the_v6_set() {
        let want = expected(Family::V6, &[Step { port: 53, proto: Proto::Udp }]);
        assert_eq!(
            want[0],
            "-A XKNOCKD -p udp -m udp --dport 53 -m set --match-set xknockd6 src,dst -j RETURN"
        );
    }
}
