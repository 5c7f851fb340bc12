//! Compares our table, as `nft -j list table` prints it, with what install
//! makes, and says in words what differs. Pure functions over the listing,
//! so every way the table can be tampered with is testable without root.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::{chain, entries, parse_port, parse_proto, rules, sets, CHAIN, FAMILY, PROTECTED, TABLE};
use crate::config::model::Step;

/// What a check found: one phrase per difference.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Findings {
    pub lines: Vec<String>,
    /// Something there was changed or does not belong: install only adds
    /// what is missing, so only replacing the whole table removes it.
    pub replace: bool,
}

impl Findings {
    fn missing(&mut self, line: String) {
        self.lines.push(line);
    }

    fn foreign(&mut self, line: String) {
        self.lines.push(line);
        self.replace = true;
    }
}

/// Everything about `listing` (`None`: no table) that differs from the
/// table install would leave for `ports`; set elements aside from the
/// protected set's, since windows come and go.
pub(super) fn inspect(listing: Option<&Value>, ports: &BTreeSet<Step>) -> Findings {
    let Some(listing) = listing else {
        let mut f = Findings::default();
        f.missing(format!("table {FAMILY} {TABLE} is gone"));
        return f;
    };
    let mut f = objects(listing);
    // A missing or changed object already means a rewrite of the chain.
    if f.lines.is_empty() {
        if let Some(line) = rules_differ(listing) {
            f.missing(line);
        }
        if let Some(line) = protected_differs(listing, ports) {
            f.missing(line);
        }
    }
    f
}

/// Whether the table holds exactly our sets and chain (rules and elements
/// aside). Anything else there is not ours to merge into.
pub(super) fn shape_matches(listing: &Value) -> bool {
    objects(listing).lines.is_empty()
}

/// An object as it is compared: (kind, name, JSON without handle and
/// elements).
type Shape = (String, String, String);

fn shape(kind: &str, v: &Value) -> Shape {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("handle");
        o.remove("elem");
    }
    let name = v["name"].as_str().unwrap_or_default().to_string();
    (kind.to_string(), name, json!({ kind: v }).to_string())
}

/// Sets, chains and whatever else the table holds, against ours.
fn objects(listing: &Value) -> Findings {
    let found: Vec<Shape> = entries(listing)
        .filter(|(k, _)| !matches!(k.as_str(), "metainfo" | "table" | "rule"))
        .map(|(k, v)| shape(k, v))
        .collect();
    let mut want: Vec<Shape> = sets().iter().map(|s| shape("set", s)).collect();
    want.push(shape("chain", &chain()));
    let same_name = |a: &Shape, b: &Shape| a.0 == b.0 && a.1 == b.1;
    let mut f = Findings::default();
    for w in want.iter().filter(|w| !found.contains(w)) {
        match found.iter().any(|x| same_name(x, w)) {
            true => f.foreign(format!("{} {} was changed", w.0, w.1)),
            false => f.missing(format!("{} {} is gone", w.0, w.1)),
        }
    }
    for x in found.iter().filter(|x| !want.iter().any(|w| same_name(x, w))) {
        f.foreign(format!("{} {} does not belong in our table", x.0, x.1));
    }
    f
}

/// Our chain's rules must be ours, all of them, in order.
fn rules_differ(listing: &Value) -> Option<String> {
    let found: Vec<&Value> = entries(listing)
        .filter(|(k, r)| k.as_str() == "rule" && r["chain"] == CHAIN)
        .map(|(_, r)| &r["expr"])
        .collect();
    let want: Vec<Value> = rules().iter().map(|r| r["expr"].clone()).collect();
    let same = found.len() == want.len() && found.iter().zip(&want).all(|(f, w)| *f == w);
    (!same).then(|| format!("chain {CHAIN} holds {} rules, not our {}", found.len(), want.len()))
}

fn protected_differs(listing: &Value, ports: &BTreeSet<Step>) -> Option<String> {
    let elems: Vec<&Value> = entries(listing)
        .filter(|(k, s)| k.as_str() == "set" && s["name"] == PROTECTED)
        .flat_map(|(_, s)| s["elem"].as_array().into_iter().flatten())
        .collect();
    let parsed: BTreeSet<Step> = elems.iter().filter_map(|e| parse_step(e)).collect();
    let same = parsed.len() == elems.len() && parsed == *ports;
    let list = |s: &BTreeSet<Step>| s.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ");
    (!same).then(|| {
        format!("set {PROTECTED} holds {} elements [{}], not [{}]", elems.len(), list(&parsed), list(ports))
    })
}

/// `{"concat": ["tcp", 22]}`, as the protected set lists its elements.
fn parse_step(e: &Value) -> Option<Step> {
    let [proto, port] = e["concat"].as_array()?.as_slice() else { return None };
    Some(Step { port: parse_port(port)?, proto: parse_proto(proto)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::Proto;

    const SSH: Step = Step { port: 2222, proto: Proto::Tcp };

    /// Our table as nft 1.0.6 lists it after install for `2222/tcp`.
    fn listing() -> Value {
        let mut items = vec![
            json!({"metainfo": {"version": "1.0.6", "json_schema_version": 1}}),
            json!({"table": {"family": "inet", "name": "xknockd", "handle": 1}}),
        ];
        items.extend(sets().into_iter().map(|mut s| {
            s["handle"] = json!(2);
            json!({ "set": s })
        }));
        items[4]["set"]["elem"] = json!([{"concat": ["tcp", 2222]}]);
        items.push(json!({ "chain": chain() }));
        for r in rules() {
            let mut r = r.clone();
            r["handle"] = json!(7);
            items.push(json!({ "rule": r }));
        }
        json!({ "nftables": items })
    }

    fn ports() -> BTreeSet<Step> {
        BTreeSet::from([SSH])
    }

    fn items(l: &mut Value) -> &mut Vec<Value> {
        l["nftables"].as_array_mut().unwrap()
    }

    #[test]
    fn a_fresh_install_is_clean() {
        assert_eq!(inspect(Some(&listing()), &ports()), Findings::default());
    }

    #[test]
    fn a_missing_table_is_found() {
        let f = inspect(None, &ports());
        assert_eq!(f.lines, ["table inet xknockd is gone"]);
        assert!(!f.replace);
    }

    #[test]
    fn a_flushed_chain_is_found() {
        let mut l = listing();
        items(&mut l).truncate(6);
        let f = inspect(Some(&l), &ports());
        assert_eq!(f.lines, ["chain input holds 0 rules, not our 3"]);
        assert!(!f.replace);
    }

    #[test]
    fn the_old_new_only_drop_rule_is_found() {
        let mut l = listing();
        l["nftables"][8]["rule"]["expr"][1]["match"]["right"] = json!("new");
        assert_eq!(inspect(Some(&l), &ports()).lines, ["chain input holds 3 rules, not our 3"]);
    }

    #[test]
    fn a_rule_inserted_first_is_found() {
        let mut l = listing();
        let accept = json!({"rule": {"family": "inet", "table": "xknockd", "chain": "input", "expr": [{"accept": null}]}});
        items(&mut l).insert(6, accept);
        assert_eq!(inspect(Some(&l), &ports()).lines, ["chain input holds 4 rules, not our 3"]);
    }

    #[test]
    fn deleted_chain_and_set_are_gone_not_foreign() {
        let mut l = listing();
        items(&mut l).truncate(5);
        items(&mut l).remove(2);
        let f = inspect(Some(&l), &ports());
        assert_eq!(f.lines, ["set allow4 is gone", "chain input is gone"]);
        assert!(!f.replace);
    }

    #[test]
    fn a_changed_chain_or_a_stray_object_needs_a_replace() {
        let mut l = listing();
        l["nftables"][5]["chain"]["policy"] = json!("drop");
        let stray = json!({"chain": {"family": "inet", "table": "xknockd", "name": "sneaky", "handle": 9}});
        items(&mut l).push(stray);
        let f = inspect(Some(&l), &ports());
        assert_eq!(f.lines, ["chain input was changed", "chain sneaky does not belong in our table"]);
        assert!(f.replace);
        assert!(!shape_matches(&l));
    }

    #[test]
    fn protected_elements_must_be_exactly_the_ports() {
        let mut l = listing();
        l["nftables"][4]["set"]["elem"] = json!([]);
        let f = inspect(Some(&l), &ports());
        assert_eq!(f.lines, ["set protected holds 0 elements [], not [2222:tcp]"]);
        l["nftables"][4]["set"]["elem"] = json!([{"concat": ["tcp", 2222]}, {"concat": ["sctp", 1]}]);
        assert_eq!(inspect(Some(&l), &ports()).lines.len(), 1);
        l["nftables"][4]["set"]["elem"] = json!([{"concat": [6, "2222"]}]);
        assert_eq!(inspect(Some(&l), &ports()), Findings::default());
    }
}
