//! What the config means for the kernel maps and the tracker: pure
//! functions, unit-tested without root.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use knockd_common::{
    port_slot, FirstOf, PortKey, PortRule, SecondOf, StepDoors, ADDR_LOCAL, ADDR_TARGET, DOOR_ALL,
    MAX_STEP_DOORS, PORT_STEALTH, SCOPE_HOST, SCOPE_TARGET,
};

use crate::{
    bpf::{BpfError, XdpKnocker},
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
                Proto::Udp | Proto::Icmp => (0, 0),
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

/// What the kernel knows of each knock port's doors, so it can keep first
/// steps to itself; and the doors it cannot describe, whose knocks all
/// reach the daemon as before (correct, but not flood-proof).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KernelSteps {
    pub ports: BTreeMap<u32, StepDoors>,
    pub undescribed: Vec<String>,
}

/// Door ids are indexes in `cfg.doors`. In config order, each door with
/// two or more steps takes an entry at its first and second ports; a door
/// that finds either full, has an id or timeout the kernel cannot hold,
/// reports every knock on all its ports instead, as single-step doors do.
pub fn kernel_steps(cfg: &Config) -> KernelSteps {
    let mut out = KernelSteps::default();
    let mut emit: BTreeSet<u32> = BTreeSet::new();
    for (id, door) in cfg.doors.iter().enumerate() {
        let slot = |i: usize| port_slot(door.sequence[i].port, door.sequence[i].proto.number());
        match door.sequence.len() {
            0 => continue,
            1 => {
                emit.insert(slot(0));
                continue;
            }
            _ => {}
        }
        if describe(&mut out.ports, door, id, slot(0), slot(1)) {
            // Later steps need an entry too, if only to say "no role here":
            // a port with none reports every knock.
            for i in 2..door.sequence.len() {
                out.ports.entry(slot(i)).or_default();
            }
        } else {
            out.undescribed.push(door.name.clone());
            emit.extend((0..door.sequence.len()).map(slot));
        }
    }
    for slot in emit {
        out.ports.entry(slot).or_default().emit = 1;
    }
    out
}

fn describe(ports: &mut BTreeMap<u32, StepDoors>, door: &Door, id: usize, first: u32, second: u32) -> bool {
    let (Ok(id), Ok(timeout_ms)) = (u16::try_from(id), u32::try_from(door.seq_timeout.as_millis())) else {
        return false;
    };
    let full = |slot: u32, f: fn(&StepDoors) -> u8| {
        ports.get(&slot).is_some_and(|d| f(d) as usize >= MAX_STEP_DOORS)
    };
    if id == DOOR_ALL || full(first, |d| d.n_first) || full(second, |d| d.n_second) {
        return false;
    }
    let flags = |step: usize| match door.sequence[step].proto {
        Proto::Tcp => (door.tcp_flags.must_set, door.tcp_flags.must_clear),
        Proto::Udp | Proto::Icmp => (0, 0),
    };
    let scope = if door.target.is_some() { SCOPE_TARGET } else { SCOPE_HOST };
    let (must_set, must_clear) = flags(0);
    let f = ports.entry(first).or_default();
    f.first[f.n_first as usize] = FirstOf { door: id, must_set, must_clear, timeout_ms, scope, _pad: [0; 3] };
    f.n_first += 1;
    let (must_set, must_clear) = flags(1);
    let step = door.sequence[0];
    let s = ports.entry(second).or_default();
    s.second[s.n_second as usize] = SecondOf {
        door: id,
        must_set,
        must_clear,
        timeout_ms,
        first_port: step.port,
        first_proto: step.proto.number(),
        first_flags: flags(0).0,
        scope,
        _pad: [0; 3],
    };
    s.n_second += 1;
    true
}

/// Writes the doors per knock port and the sweep limit into the kernel;
/// names at start (and on reload) the doors whose first steps it cannot keep.
pub fn apply_kernel_steps(knocker: &mut XdpKnocker, cfg: &Config) -> Result<(), BpfError> {
    let steps = kernel_steps(cfg);
    for name in &steps.undescribed {
        log::warn!(
            "{name}: more than {MAX_STEP_DOORS} doors share its first or second port: \
             all its knocks reach the daemon (not protected from first-step floods)"
        );
    }
    knocker.set_step_doors(&steps.ports)?;
    knocker.set_sweep_limit(cfg.options.sweep_limit)
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
    use crate::config::model::{Format, Options, Step, TcpFlags};

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
            spa: None,
            dynamic: None,
        }
    }

    fn cfg(doors: Vec<Door>, stealth: bool) -> Config {
        Config {
            path: PathBuf::from("t.yaml"),
            format: Format::Yaml,
            options: Options {
                max_sources: 10,
                stealth,
                bpffs_dir: PathBuf::from("/sys/fs/bpf/xknockd"),
                state_dir: PathBuf::from("/nonexistent"),
                ..crate::config::default_options()
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

    fn steps(doors: Vec<Door>) -> KernelSteps {
        kernel_steps(&cfg(doors, false))
    }

    #[test]
    fn a_door_is_described_at_its_first_two_ports() {
        let d = door("a", &[(7000, Proto::Tcp), (8000, Proto::Udp), (9000, Proto::Tcp)], SYN_NOT_ACK, None);
        let k = steps(vec![d]);
        assert!(k.undescribed.is_empty());
        assert_eq!(k.ports[&port_slot(9000, 6)], StepDoors::default(), "the third port has no role");
        let first = &k.ports[&port_slot(7000, 6)];
        assert_eq!((first.n_first, first.n_second, first.emit), (1, 0, 0));
        let want = FirstOf {
            door: 0,
            must_set: 0x02,
            must_clear: 0x10,
            timeout_ms: 5000,
            scope: SCOPE_HOST,
            _pad: [0; 3],
        };
        assert_eq!(first.first[0], want);
        let second = &k.ports[&port_slot(8000, 17)];
        let want = SecondOf {
            door: 0,
            must_set: 0,
            must_clear: 0,
            timeout_ms: 5000,
            first_port: 7000,
            first_proto: 6,
            first_flags: 0x02,
            scope: SCOPE_HOST,
            _pad: [0; 3],
        };
        assert_eq!((second.n_second, second.second[0]), (1, want));
    }

    #[test]
    fn single_step_ports_emit_and_a_fifth_door_on_a_port_is_undescribed() {
        let mut doors = vec![door("one", &[(6000, Proto::Tcp)], SYN_ONLY, None)];
        for i in 0..5 {
            doors.push(door(&format!("d{i}"), &[(7000, Proto::Tcp), (8000 + i, Proto::Tcp)], SYN_ONLY, None));
        }
        let k = steps(doors);
        assert_eq!(k.ports[&port_slot(6000, 6)].emit, 1);
        assert_eq!(k.undescribed, vec!["d4".to_string()]);
        let first = &k.ports[&port_slot(7000, 6)];
        assert_eq!((first.n_first, first.emit), (4, 1), "the port the fifth door shares emits too");
        assert_eq!(k.ports[&port_slot(8004, 6)].emit, 1);
        assert_eq!(k.ports[&port_slot(8003, 6)].emit, 0);
    }

    #[test]
    fn a_used_up_door_has_no_entry() {
        let mut d = door("a", &[(7000, Proto::Tcp), (8000, Proto::Tcp)], SYN_ONLY, None);
        d.sequence.clear();
        assert_eq!(steps(vec![d]), KernelSteps::default());
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
