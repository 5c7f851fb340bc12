//! Reading our table back from a `nft -j list table` document: the
//! windows in the allow sets, and the pieces `check` compares.

use std::time::Duration;

use serde_json::Value;

use super::{ALLOW4, ALLOW6, FAMILY, TABLE};
use crate::{
    config::model::{Proto, Step},
    gate::Window,
};

/// Every object of a listing, as (kind, body) pairs.
pub(super) fn entries(listing: &Value) -> impl Iterator<Item = (&String, &Value)> {
    listing["nftables"].as_array().into_iter().flatten().filter_map(|e| e.as_object()).flat_map(|o| o.iter())
}

/// The elements of our allow sets in a `nft -j list table` (or `list set`)
/// document.
fn allow_elements(listing: &Value) -> impl Iterator<Item = &Value> {
    entries(listing)
        .filter(|(k, _)| k.as_str() == "set")
        .map(|(_, s)| s)
        .filter(|s| s["family"] == FAMILY && s["table"] == TABLE)
        .filter(|s| s["name"] == ALLOW4 || s["name"] == ALLOW6)
        .flat_map(|s| s["elem"].as_array().into_iter().flatten())
}

/// The windows in a listing, saying which elements are not ours.
pub(super) fn parse_windows(listing: &Value) -> Vec<Window> {
    allow_elements(listing)
        .filter_map(|e| {
            let w = parse_elem(e);
            if w.is_none() {
                log::warn!("nftables: ignoring an element we did not write: {e}");
            }
            w
        })
        .collect()
}

/// The windows in a listing, quietly: a repair looks twice a second.
pub(super) fn known_windows(listing: &Value) -> Vec<Window> {
    allow_elements(listing).filter_map(parse_elem).collect()
}

/// `{"elem": {"val": {"concat": [addr, proto, port]}, "expires": s,
/// "comment": door}}`, or a bare `{"concat": ...}` without timeout or
/// comment. An element without `expires` never ends: its time left is
/// `Duration::MAX`.
fn parse_elem(e: &Value) -> Option<Window> {
    let (val, meta) = match e.get("elem") {
        Some(inner) => (&inner["val"], inner),
        None => (e, &Value::Null),
    };
    let [addr, proto, port] = val["concat"].as_array()?.as_slice() else {
        return None;
    };
    Some(Window {
        door: meta["comment"].as_str().unwrap_or_default().to_string(),
        src: addr.as_str()?.parse().ok()?,
        port: Step { port: parse_port(port)?, proto: parse_proto(proto)? },
        remaining: meta["expires"].as_u64().map_or(Duration::MAX, Duration::from_secs),
    })
}

/// `"tcp"` or `6`, `"udp"` or `17`, as nft may print a protocol.
pub(super) fn parse_proto(v: &Value) -> Option<Proto> {
    match v {
        Value::String(s) if s == "tcp" => Some(Proto::Tcp),
        Value::String(s) if s == "udp" => Some(Proto::Udp),
        Value::Number(n) if n.as_u64() == Some(6) => Some(Proto::Tcp),
        Value::Number(n) if n.as_u64() == Some(17) => Some(Proto::Udp),
        _ => None,
    }
}

pub(super) fn parse_port(v: &Value) -> Option<u16> {
    match v {
        Value::Number(n) => u16::try_from(n.as_u64()?).ok(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tcp(port: u16) -> Step {
        Step { port, proto: Proto::Tcp }
    }

    fn udp(port: u16) -> Step {
        Step { port, proto: Proto::Udp }
    }

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    /// What nft 1.0.6 prints for our table with two windows, one bare
    /// element and one element of a foreign shape.
    const LISTING: &str = r#"{"nftables": [
      {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
      {"table": {"family": "inet", "name": "xknockd", "handle": 1}},
      {"set": {"family": "inet", "name": "allow4", "table": "xknockd",
               "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 1, "flags": ["timeout"],
               "elem": [{"elem": {"val": {"concat": ["10.77.0.2", "tcp", 2222]}, "timeout": 30, "expires": 27, "comment": "ssh"}},
                        {"concat": ["10.77.0.9", "udp", 53]}]}},
      {"set": {"family": "inet", "name": "allow6", "table": "xknockd",
               "type": ["ipv6_addr", "inet_proto", "inet_service"], "handle": 2, "flags": ["timeout"],
               "elem": [{"elem": {"val": {"concat": ["fd77::2", "udp", 60001]}, "timeout": 3, "expires": 1, "comment": "web"}},
                        {"elem": {"val": {"concat": ["fd77::3", "sctp", 1]}, "timeout": 3, "expires": 1}}]}},
      {"set": {"family": "inet", "name": "protected", "table": "xknockd",
               "type": ["inet_proto", "inet_service"], "handle": 3, "elem": [{"concat": ["tcp", 2222]}]}},
      {"chain": {"family": "inet", "table": "xknockd", "name": "input", "handle": 4,
                 "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}},
      {"rule": {"family": "inet", "table": "xknockd", "chain": "input", "handle": 5, "expr": []}}
    ]}"#;

    #[test]
    fn listing_parses_into_windows() {
        let w = |door: &str, src: &str, port, remaining| Window {
            door: door.into(),
            src: src.parse().unwrap(),
            port,
            remaining,
        };
        let want = vec![
            w("ssh", "10.77.0.2", tcp(2222), Duration::from_secs(27)),
            w("", "10.77.0.9", udp(53), Duration::MAX),
            w("web", "fd77::2", udp(60001), Duration::from_secs(1)),
        ];
        assert_eq!(parse_windows(&parse(LISTING)), want);
    }

    #[test]
    fn shape_is_ours_only_with_exactly_our_sets_and_chain() {
        use super::super::check::shape_matches;
        let listing = parse(LISTING);
        assert!(shape_matches(&listing));
        let mut other_prio = listing.clone();
        other_prio["nftables"][5]["chain"]["prio"] = json!(0);
        assert!(!shape_matches(&other_prio));
        let mut extra = listing.clone();
        let stray = json!({"chain": {"family": "inet", "table": "xknockd", "name": "old", "handle": 9}});
        extra["nftables"].as_array_mut().unwrap().push(stray);
        assert!(!shape_matches(&extra));
        let mut missing = listing;
        missing["nftables"].as_array_mut().unwrap().remove(4);
        assert!(!shape_matches(&missing));
    }
}
