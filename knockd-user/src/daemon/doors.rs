//! What the config means for the kernel maps and the tracker: pure
//! functions, unit-tested without root.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use knockd_common::{PortKey, PortRule, ADDR_LOCAL, ADDR_TARGET};

use crate::{
    config::model::{Door, Proto},
    tracker::DoorSpec,
};

pub fn door_spec(door: &Door) -> DoorSpec {
    DoorSpec {
        name: Arc::from(door.name.as_str()),
        sequence: door.sequence.clone(),
        seq_timeout: door.seq_timeout,
        tcp_flags: door.tcp_flags,
        target: door.target,
    }
}

/// The knock-port map. Where doors share a port with different flag rules,
/// the kernel keeps only what all of them demand; the tracker then applies
/// each door's exact rule.
pub fn kernel_ports(doors: &[Door]) -> BTreeMap<PortKey, PortRule> {
    let mut out: BTreeMap<PortKey, PortRule> = BTreeMap::new();
    for door in doors {
        for step in &door.sequence {
            let key = PortKey::new(step.port, step.proto.number());
            let rule = match step.proto {
                Proto::Tcp => PortRule {
                    must_set: door.tcp_flags.must_set,
                    must_clear: door.tcp_flags.must_clear,
                    _pad: [0; 2],
                },
                Proto::Udp => PortRule::default(),
            };
            out.entry(key)
                .and_modify(|r| {
                    r.must_set &= rule.must_set;
                    r.must_clear &= rule.must_clear;
                })
                .or_insert(rule);
        }
    }
    out
}

/// The address maps: the host's addresses plus every door target. With
/// `only_v4` (knockd's -4) IPv6 addresses are left out, so the kernel never
/// reports an IPv6 knock.
pub fn kernel_addrs(
    local: &BTreeSet<IpAddr>,
    doors: &[Door],
    only_v4: bool,
) -> HashMap<IpAddr, u8> {
    let mut out = HashMap::new();
    for ip in local {
        *out.entry(*ip).or_insert(0) |= ADDR_LOCAL;
    }
    for ip in doors.iter().filter_map(|d| d.target) {
        *out.entry(ip).or_insert(0) |= ADDR_TARGET;
    }
    if only_v4 {
        out.retain(|ip, _| ip.is_ipv4());
    }
    out
}

/// Writes IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) as plain IPv4, so one
/// knocker is one source whichever way the stack reported it.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::model::{Step, TcpFlags};

    fn door(name: &str, steps: &[(u16, Proto)], flags: TcpFlags, target: Option<&str>) -> Door {
        Door {
            name: name.into(),
            sequence: steps
                .iter()
                .map(|&(port, proto)| Step { port, proto })
                .collect(),
            one_time_sequences: None,
            seq_timeout: Duration::from_secs(5),
            tcp_flags: flags,
            target: target.map(|t| t.parse().unwrap()),
            start_command: None,
            start_command_6: None,
            cmd_timeout: Duration::from_secs(10),
            stop_command: None,
            stop_command_6: None,
            open: None,
            stealth: None,
        }
    }

    const SYN_NOT_ACK: TcpFlags = TcpFlags {
        must_set: 0x02,
        must_clear: 0x10,
    };
    const SYN_ONLY: TcpFlags = TcpFlags {
        must_set: 0x02,
        must_clear: 0,
    };
    const FIN: TcpFlags = TcpFlags {
        must_set: 0x01,
        must_clear: 0,
    };

    #[test]
    fn ports_take_each_doors_flags_and_udp_has_none() {
        let doors = [door(
            "a",
            &[(7000, Proto::Tcp), (8000, Proto::Udp)],
            SYN_NOT_ACK,
            None,
        )];
        let m = kernel_ports(&doors);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[&PortKey::new(7000, 6)],
            PortRule {
                must_set: 0x02,
                must_clear: 0x10,
                _pad: [0; 2]
            }
        );
        assert_eq!(m[&PortKey::new(8000, 17)], PortRule::default());
    }

    #[test]
    fn shared_ports_keep_only_common_demands() {
        let doors = [
            door("a", &[(7000, Proto::Tcp)], SYN_NOT_ACK, None),
            door("b", &[(7000, Proto::Tcp)], SYN_ONLY, None),
            door("c", &[(9000, Proto::Tcp)], SYN_ONLY, None),
            door("d", &[(9000, Proto::Tcp)], FIN, None),
        ];
        let m = kernel_ports(&doors);
        assert_eq!(
            m[&PortKey::new(7000, 6)],
            PortRule {
                must_set: 0x02,
                must_clear: 0,
                _pad: [0; 2]
            }
        );
        assert_eq!(m[&PortKey::new(9000, 6)], PortRule::default());
    }

    #[test]
    fn addrs_mark_local_and_targets_and_honour_only_v4() {
        let local: BTreeSet<IpAddr> =
            ["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()].into();
        let doors = [
            door("a", &[(1, Proto::Tcp)], SYN_ONLY, Some("10.0.0.1")),
            door("b", &[(2, Proto::Tcp)], SYN_ONLY, Some("192.0.2.7")),
        ];
        let m = kernel_addrs(&local, &doors, false);
        assert_eq!(m[&"10.0.0.1".parse().unwrap()], ADDR_LOCAL | ADDR_TARGET);
        assert_eq!(m[&"192.0.2.7".parse().unwrap()], ADDR_TARGET);
        assert_eq!(m[&"fd00::1".parse().unwrap()], ADDR_LOCAL);
        let v4 = kernel_addrs(&local, &doors, true);
        assert!(v4.keys().all(IpAddr::is_ipv4) && v4.len() == 2);
    }

    #[test]
    fn mapped_v6_becomes_v4() {
        assert_eq!(
            canonical("::ffff:10.1.2.3".parse().unwrap()),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            canonical("fd00::1".parse().unwrap()),
            "fd00::1".parse::<IpAddr>().unwrap()
        );
    }
}
