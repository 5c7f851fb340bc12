use super::*;
use crate::spa::message::{AccessSpec, MessageType};

const NOW: u64 = 1_800_000_000;

fn tcp(port: u16) -> Step {
    Step { port, proto: Proto::Tcp }
}

fn udp(port: u16) -> Step {
    Step { port, proto: Proto::Udp }
}

fn policy() -> SpaPolicy {
    SpaPolicy {
        max_age: DEFAULT_MAX_AGE,
        require_source_address: true,
        users: None,
        ports: vec![tcp(22), udp(53), tcp(443)],
        duration: Duration::from_secs(30),
    }
}

fn msg(allow: &str, access: &[&str]) -> SpaMessage {
    SpaMessage {
        rand: "1234567890123456".into(),
        user: "alice".into(),
        timestamp: NOW as u32,
        version: "3.0.0".into(),
        kind: MessageType::Access,
        allow_ip: allow.parse().unwrap(),
        access: access.iter().map(|a| a.parse::<AccessSpec>().unwrap()).collect(),
        client_timeout: None,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn grants_the_intersection_for_the_source() {
    let g = policy().check(&msg("10.0.0.2", &["tcp/22", "tcp/80", "udp/53", "icmp/1"]), ip("10.0.0.2"), NOW);
    assert_eq!(
        g,
        Ok(Grant { ip: ip("10.0.0.2"), ports: vec![tcp(22), udp(53)], duration: Duration::from_secs(30) })
    );
    let none = policy().check(&msg("10.0.0.2", &["tcp/80", "udp/22", "none/0"]), ip("10.0.0.2"), NOW);
    assert_eq!(none, Err(Refusal::AccessNotAllowed));
}

#[test]
fn age_bounds_both_ways() {
    let p = policy();
    let at = |ts: u64| {
        p.check(&SpaMessage { timestamp: ts as u32, ..msg("10.0.0.2", &["tcp/22"]) }, ip("10.0.0.2"), NOW)
    };
    assert!(at(NOW - 120).is_ok() && at(NOW + 120).is_ok(), "the bound itself is in");
    assert_eq!(at(NOW - 121), Err(Refusal::TooOld(Duration::from_secs(121))));
    assert_eq!(at(NOW + 121), Err(Refusal::FromFuture(Duration::from_secs(121))));
    assert!(matches!(at(0), Err(Refusal::TooOld(_))));
}

#[test]
fn source_rules() {
    let p = policy();
    let other = p.check(&msg("10.0.0.9", &["tcp/22"]), ip("10.0.0.2"), NOW);
    assert!(matches!(other, Err(Refusal::SourceMismatch { .. })));
    let any = p.check(&msg("0.0.0.0", &["tcp/22"]), ip("10.0.0.2"), NOW);
    assert!(
        matches!(any, Err(Refusal::SourceMismatch { .. })),
        "0.0.0.0 is refused when the source is required"
    );
    let mapped = p.check(&msg("10.0.0.2", &["tcp/22"]), ip("::ffff:10.0.0.2"), NOW);
    assert_eq!(mapped.unwrap().ip, ip("10.0.0.2"), "v4-mapped sources compare as IPv4");
    let v6 = p.check(&msg("fd77::2", &["tcp/22"]), ip("fd77::2"), NOW);
    assert_eq!(v6.unwrap().ip, ip("fd77::2"));

    let loose = SpaPolicy { require_source_address: false, ..policy() };
    assert_eq!(loose.check(&msg("0.0.0.0", &["tcp/22"]), ip("fd77::2"), NOW).unwrap().ip, ip("fd77::2"));
    assert_eq!(loose.check(&msg("10.0.0.9", &["tcp/22"]), ip("10.0.0.2"), NOW).unwrap().ip, ip("10.0.0.9"));
}

#[test]
fn users_allow_list() {
    let p = SpaPolicy { users: Some(vec!["bob".into(), "carol".into()]), ..policy() };
    assert_eq!(
        p.check(&msg("10.0.0.2", &["tcp/22"]), ip("10.0.0.2"), NOW),
        Err(Refusal::User("alice".into()))
    );
    let bob = SpaMessage { user: "bob".into(), ..msg("10.0.0.2", &["tcp/22"]) };
    assert!(p.check(&bob, ip("10.0.0.2"), NOW).is_ok());
}

#[test]
fn client_timeout_only_shortens() {
    let d = Duration::from_secs(30);
    assert_eq!(window(d, Some(10)), Duration::from_secs(10));
    assert_eq!(window(d, Some(3000)), d);
    assert_eq!(window(d, Some(0)), d);
    assert_eq!(window(d, None), d);
}
