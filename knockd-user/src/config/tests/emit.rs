//! `to_yaml` round-trips: parsing its output gives back the same doors and options.

use std::{path::Path, time::Duration};

use super::{
    conf::DEBIAN,
    support::{conf, yaml, TempDir},
};
use crate::config::{parse_str, to_yaml, Config, Format};

const GATE: &str = "\
options:
  backend: iptables
doors:
  gate:
    sequence: [\"2222:udp\", 3333, 4444]
    tcp_flags: syn,!ack,!rst
    open:
      ports: [22/tcp, 53/udp]
      duration: 5m
      backend: xdp
";

pub(super) fn round_trip(config: &Config) -> String {
    let text = to_yaml(config);
    let back = parse_str(&text, &config.path).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back.format, Format::Yaml);
    assert_eq!(back.options, config.options, "{text}");
    assert_eq!(back.doors, config.doors, "{text}");
    text
}

#[test]
fn debian_example_round_trips() {
    let text = round_trip(&conf(DEBIAN));
    let expected = "\
# xknockd configuration
options:
  use_syslog: true
doors:
  openSSH:
    sequence: [\"7000:tcp\", \"8000:tcp\", \"9000:tcp\"]
    seq_timeout: 5
    tcp_flags: \"syn\"
    start_command: \"/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\"
";
    assert!(text.starts_with(expected), "{text}");
    assert!(text.contains("    stop_command: \"/usr/local/sbin/knock_add -d -i -c INPUT -p tcp -d 443 -f %IP%\"\n    cmd_timeout: 10\n"), "{text}");
}

#[test]
fn everything_round_trips() {
    let mut c = yaml(GATE);
    c.options.interfaces = vec!["eth0".into(), "wg0".into()];
    c.options.log_file = Some("/var/log/x \"quoted\".log".into());
    c.options.pid_file = Some("/run/x.pid".into());
    c.options.max_sources = 12;
    c.options.stealth = true;
    c.options.bpffs_dir = "/sys/fs/bpf/elsewhere".into();
    c.options.open_rate = 3;
    c.options.open_burst = 7;
    let door = &mut c.doors[0];
    door.name = "yes: odd # name".into();
    door.seq_timeout = Duration::from_millis(1500);
    door.cmd_timeout = Duration::from_nanos(7);
    door.target = Some("2001:db8::7".parse().unwrap());
    door.start_command = Some("printf 'a\\tb' \"%IP%\" # \u{7}\n".into());
    door.stop_command_6 = Some("echo six".into());
    door.stealth = Some(false);
    round_trip(&c);
}

#[test]
fn one_time_doors_write_the_file_not_the_sequence() {
    let dir = TempDir::new();
    let otp = dir.write("otp", " 4,5\n");
    let text = format!("[d]\nOne_Time_Sequences = {}\n", otp.display());
    let c = parse_str(&text, Path::new("k.conf")).unwrap();
    let text = round_trip(&c);
    assert!(!text.contains("sequence:"), "{text}");
    // Used up: still a door (disabled), written the same way.
    std::fs::write(&otp, "#4,5\n").unwrap();
    let c = parse_str(&text, Path::new("k.yaml")).unwrap();
    assert!(c.doors[0].sequence.is_empty());
    assert_eq!(round_trip(&c), text);
}
