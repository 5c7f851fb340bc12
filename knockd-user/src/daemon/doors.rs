//! What the config means for the kernel maps and the tracker: pure
//! functions, unit-tested without root.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use knockd_common::{PortKey, PortRule, ADDR_LOCAL, ADDR_TARGET, PORT_STEALTH};

use crate::{
    config::model::{Config, Door, Proto},
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
/// each door's exact rule. A shared port is stealthy only if every door on
/// it is.
pub fn kernel_ports(cfg: &Config) -> BTreeMap<PortKey, PortRule> {
    let mut out: BTreeMap<PortKey, PortRule> = BTreeMap::new();
    for door in &cfg.doors {
        let stealth = if door.stealth.unwrap_or(cfg.options.stealth) { PORT_STEALTH } else { 0 };
        for step in &door.sequence {
            let key = PortKey::new(step.port, step.proto.number());
            let (must_set, must_clear) = match step.proto {
                Proto::Tcp => (door.tcp_flags.must_set, door.tcp_flags.must_clear),
                Proto::Udp => (0, 0),
            };
            let rule = PortRule { must_set, must_clear, flags: stealth, _pad: 0 };
            out.entry(key)
                .and_modify(|r| {
                    r.must_set &= rule.must_set;
                    r.must_clear &= rule.must_clear;
                    r.flags &= rule.flags;
                })
                .or_insert(rule);
        }
    }
    out
}

/// The address maps: the host's addresses plus every door target. With
/// `only_v4` (knockd's -4) IPv6 addresses are left out, so the kernel never
/// reports an IPv6 knock.
pub fn kernel_addrs(local: &BTreeSet<IpAddr>, doors: &[Door], only_v4: bool) -> HashMap<IpAddr, u8> {
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

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, time::Duration};

    use super::*;
    use crate::config::model::{Backend, Format, Options, Step, TcpFlags};

    fn door(name: &str, steps: &[(u16, Proto)], flags: TcpFlags, target: Option<&str>) -> Door {
        Door {
            name: name.into(),
            sequence: steps.iter().map(|&(port, proto)| Step { port, proto }).collect(),
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

    fn cfg(doors: Vec<Door>, stealth: bool) -> Config {
        Config {
            path: PathBuf::from("t.yaml"),
            format: Format::Yaml,
            options: Options {
                interfaces: vec![],
                log_file: None,
                use_syslog: false,
                pid_file: None,
                max_sources: 10,
                default_backend: Backend::Nftables,
                stealth,
                bpffs_dir: PathBuf::from("/sys/fs/bpf/xknockd"),
                open_rate: 10,
                open_burst: 20,
            },
            doors,
        }
    }

    fn rule(must_set: u8, must_clear: u8, flags: u8) -> PortRule {
        PortRule { must_set, must_clear, flags, _pad: 0 }
    }

    const SYN_NOT_ACK: TcpFlags = TcpFlags { must_set: 0x02, must_clear: 0x10 };
    const SYN_ONLY: TcpFlags = TcpFlags { must_set: 0x02, must_clear: 0 };
    const FIN: TcpFlags = TcpFlags { must_set: 0x01, must_clear: 0 };

    #[test]
    fn ports_take_each_doors_flags_and_udp_has_none() {
        let c = cfg(vec![door("a", &[(7000, Proto::Tcp), (8000, Proto::Udp)], SYN_NOT_ACK, None)], false);
        let m = kernel_ports(&c);
        assert_eq!(m.len(), 2);
        assert_eq!(m[&PortKey::new(7000, 6)], rule(0x02, 0x10, 0));
        assert_eq!(m[&PortKey::new(8000, 17)], PortRule::default());
    }

    #[test]
    fn shared_ports_keep_only_common_demands() {
        let c = cfg(
            vec![
                door("a", &[(7000, Proto::Tcp)], SYN_NOT_ACK, None),
                door("b", &[(7000, Proto::Tcp)], SYN_ONLY, None),
                door("c", &[(9000, Proto::Tcp)], SYN_ONLY, None),
                door("d", &[(9000, Proto::Tcp)], FIN, None),
            ],
            false,
        );
        let m = kernel_ports(&c);
        assert_eq!(m[&PortKey::new(7000, 6)], rule(0x02, 0, 0));
        assert_eq!(m[&PortKey::new(9000, 6)], PortRule::default());
    }

    #[test]
    fn stealth_comes_from_the_door_or_the_default_and_must_be_unanimous() {
        let mut visible = door("v", &[(7000, Proto::Tcp)], SYN_ONLY, None);
        visible.stealth = Some(false);
        let hidden = door("h", &[(7000, Proto::Tcp), (8000, Proto::Udp)], SYN_ONLY, None);
        let m = kernel_ports(&cfg(vec![visible, hidden.clone()], true));
        assert_eq!(m[&PortKey::new(7000, 6)].flags, 0, "one visible door keeps the port visible");
        assert_eq!(m[&PortKey::new(8000, 17)].flags, PORT_STEALTH);
        assert_eq!(kernel_ports(&cfg(vec![hidden], false))[&PortKey::new(8000, 17)].flags, 0);
    }

    #[test]
    fn addrs_mark_local_and_targets_and_honour_only_v4() {
        let local: BTreeSet<IpAddr> = ["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()].into();
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

    /// The daemon relies on std's canonical form to make a mapped IPv6
    /// source and its IPv4 address one knocker.
    #[test]
    fn mapped_v6_becomes_v4() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(mapped.to_canonical(), "10.1.2.3".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(v6.to_canonical(), "fd00::1".parse::<IpAddr>().unwrap());
    }
}
