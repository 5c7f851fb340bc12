//! Native YAML: every key, every value form, and every error with its exact line.

use std::time::Duration;

use super::support::{tcp, udp, yaml, yaml_err};
use crate::config::{model::tcp_flag, Backend, Format, OpenAction, TcpFlags};

const FULL: &str = r#"
# every key once
options:
  interface: [eth0, wlan0]
  log_file: /var/log/xknockd.log
  use_syslog: true
  pid_file: /run/xknockd.pid
  max_sources: 1000
  backend: xdp
  stealth: true
  bpffs_dir: /sys/fs/bpf/other
  open_rate: 2
  open_burst: 5
doors:
  zeta:
    sequence: [7000, "8000:udp", 9000:TCP]
    seq_timeout: 5s
    tcp_flags: "syn, !ack"
    target: 2001:db8::1
    start_command: nft add element inet xknock allow { %IP% }
    start_command_6: echo six
    cmd_timeout: 2m
    stop_command: echo stop
    stop_command_6: echo stop6
    open:
      ports: [22, "443/tcp", "53:udp"]
      duration: 1h
      backend: iptables
    stealth: false
  alpha:
    sequence: "1000, 2000:udp"
    command: echo alias
    command_6: echo alias6
    seq_timeout: 500ms
"#;

#[test]
fn full_example() {
    let c = yaml(FULL);
    assert_eq!(c.format, Format::Yaml);
    let o = &c.options;
    assert_eq!(o.interfaces, ["eth0", "wlan0"]);
    assert_eq!(o.log_file, Some("/var/log/xknockd.log".into()));
    assert!(o.use_syslog);
    assert_eq!(o.pid_file, Some("/run/xknockd.pid".into()));
    assert_eq!((o.max_sources, o.default_backend, o.stealth), (1000, Backend::Xdp, true));
    assert_eq!(o.bpffs_dir, std::path::PathBuf::from("/sys/fs/bpf/other"));
    assert_eq!((o.open_rate, o.open_burst), (2, 5));

    let names: Vec<_> = c.doors.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["zeta", "alpha"], "file order is kept");
    let z = &c.doors[0];
    assert_eq!(z.sequence, [tcp(7000), udp(8000), tcp(9000)]);
    assert_eq!(z.seq_timeout, Duration::from_secs(5));
    assert_eq!(z.tcp_flags, TcpFlags { must_set: tcp_flag::SYN, must_clear: tcp_flag::ACK });
    assert_eq!(z.target, Some("2001:db8::1".parse().unwrap()));
    assert_eq!(z.start_command.as_deref(), Some("nft add element inet xknock allow { %IP% }"));
    assert_eq!(z.start_command_6.as_deref(), Some("echo six"));
    assert_eq!(z.cmd_timeout, Duration::from_secs(120));
    assert_eq!(z.stop_command.as_deref(), Some("echo stop"));
    assert_eq!(z.stop_command_6.as_deref(), Some("echo stop6"));
    let open = OpenAction {
        ports: vec![tcp(22), tcp(443), udp(53)],
        duration: Duration::from_secs(3600),
        backend: Some(Backend::Iptables),
    };
    assert_eq!(z.open, Some(open));
    assert_eq!(z.stealth, Some(false));

    let a = &c.doors[1];
    assert_eq!(a.sequence, [tcp(1000), udp(2000)]);
    assert_eq!(a.start_command.as_deref(), Some("echo alias"));
    assert_eq!(a.start_command_6.as_deref(), Some("echo alias6"));
    assert_eq!(a.seq_timeout, Duration::from_millis(500));
    assert_eq!((a.open.as_ref(), a.stealth), (None, None));
}

#[test]
fn defaults_and_small_forms() {
    let c = yaml("doors:\n  d:\n    sequence: 7000\n    seq_timeout: \"30\"\n    cmd_timeout: 3\n");
    let d = &c.doors[0];
    assert_eq!(d.sequence, [tcp(7000)]);
    assert_eq!(d.seq_timeout, Duration::from_secs(30));
    assert_eq!(d.cmd_timeout, Duration::from_secs(3));
    let o = &c.options;
    assert!(o.interfaces.is_empty() && !o.use_syslog && !o.stealth);
    assert_eq!((o.max_sources, o.default_backend), (65_536, Backend::Nftables));
    assert_eq!((o.open_rate, o.open_burst), (10, 20));
    let c = yaml("options:\n  interface: eth0\ndoors:\n  d:\n    sequence: [1]\n");
    assert_eq!(c.options.interfaces, ["eth0"]);
    assert_eq!(c.doors[0].seq_timeout, Duration::from_secs(25));
}

/// Checks an error's line, key and message, showing the full error on failure.
pub fn assert_err(text: &str, line: Option<usize>, key: Option<&str>, message: &str) {
    let err = yaml_err(text);
    assert_eq!((err.line, err.key.as_deref(), err.message.as_str()), (line, key, message), "{err}");
}

const HEAD: &str = "doors:\n  d:\n"; // lines 1-2

#[test]
fn port_errors_point_at_the_item() {
    let text = format!("{HEAD}    sequence:\n      - 7000\n      - 70000\n      - 9000\n");
    let err = yaml_err(&text);
    assert_eq!(err.to_string(), "x.yaml:5: key `sequence`: port 70000 is outside 1-65535");
    let text = format!("{HEAD}    sequence: [7000,\n      \"8000:sctp\"]\n");
    assert_err(&text, Some(4), Some("sequence"), "unknown protocol `sctp` in `8000:sctp` (use tcp or udp)");
    assert_err(
        &format!("{HEAD}    sequence: [1, 0]\n"),
        Some(3),
        Some("sequence"),
        "port 0 is outside 1-65535",
    );
    assert_err(
        &format!("{HEAD}    sequence: [1, -3]\n"),
        Some(3),
        Some("sequence"),
        "port -3 is outside 1-65535",
    );
    assert_err(
        &format!("{HEAD}    sequence: [1, x]\n"),
        Some(3),
        Some("sequence"),
        "`x` is not a port number",
    );
    assert_err(
        &format!("{HEAD}    sequence: [1, 2.5]\n"),
        Some(3),
        Some("sequence"),
        "`2.5` is not a port number",
    );
    assert_err(
        &format!("{HEAD}    sequence: \"1,,2\"\n"),
        Some(3),
        Some("sequence"),
        "empty item in the sequence (a stray comma?)",
    );
    let text = format!("{HEAD}    sequence: [1]\n    open:\n      duration: 5\n      ports:\n        - 22/tcp\n        - 99999\n");
    assert_err(&text, Some(8), Some("open.ports"), "port 99999 is outside 1-65535");
}

#[test]
fn value_errors_point_at_the_value() {
    let seq = format!("{HEAD}    sequence: [1]\n");
    assert_err(
        &format!("{seq}    tcp_flags: syn,ack,fim\n"),
        Some(4),
        Some("tcp_flags"),
        "unknown tcp flag `fim` (valid: fin, syn, rst, psh, ack, urg)",
    );
    assert_err(
        &format!("{seq}    tcp_flags: \"!fin,fin\"\n"),
        Some(4),
        Some("tcp_flags"),
        "tcp flag `fin` is both required and forbidden",
    );
    assert_err(
        &format!("{seq}    seq_timeout: 5 minutes\n"),
        Some(4),
        Some("seq_timeout"),
        "`5 minutes` is not a duration (use seconds, or a whole number with ns, us, ms, s, m or h)",
    );
    assert_err(
        &format!("{seq}    cmd_timeout: -5\n"),
        Some(4),
        Some("cmd_timeout"),
        "duration -5 is negative",
    );
    assert_err(
        &format!("{seq}    open:\n      ports: [1]\n      duration: 400000000\n"),
        Some(6),
        Some("open.duration"),
        "`400000000` is too long (at most 365 days)",
    );
    assert_err(
        &format!("{seq}    target: gateway\n"),
        Some(4),
        Some("target"),
        "`gateway` is not an IP address",
    );
    assert_err(
        &format!("{seq}    stealth: maybe\n"),
        Some(4),
        Some("stealth"),
        "invalid type: string \"maybe\", expected a boolean",
    );
    assert_err(
        &format!("{seq}    open:\n      ports: [22]\n      duration: 1\n      backend: pf\n"),
        Some(7),
        Some("open.backend"),
        "unknown backend `pf` (use nftables, iptables or xdp)",
    );
}

#[test]
fn option_errors() {
    let tail = "doors:\n  d:\n    sequence: [1]\n";
    assert_err(
        &format!("options:\n  max_sources: 0\n{tail}"),
        Some(2),
        Some("max_sources"),
        "max_sources must be at least 1, not 0",
    );
    assert_err(
        &format!("options:\n  backend: ebpf\n{tail}"),
        Some(2),
        Some("backend"),
        "unknown backend `ebpf` (use nftables, iptables or xdp)",
    );
    assert_err(
        &format!("options:\n  interface:\n    - eth0\n    - \"e th1\"\n{tail}"),
        Some(4),
        Some("interface"),
        "`e th1` is not a valid interface name",
    );
    assert_err(
        &format!("options:\n  use_syslog: yes\n{tail}"),
        Some(2),
        Some("use_syslog"),
        "invalid type: string \"yes\", expected a boolean",
    );
}

#[test]
fn unknown_keys_suggest_the_nearest() {
    let seq = format!("{HEAD}    sequence: [1]\n");
    assert_err(
        &format!("{seq}    seq_timout: 5\n"),
        Some(4),
        Some("seq_timout"),
        "unknown key `seq_timout` (did you mean `seq_timeout`?)",
    );
    assert_err(
        &format!("{seq}    open:\n      port: [22]\n"),
        Some(5),
        Some("port"),
        "unknown key `port` (did you mean `ports`?)",
    );
    assert_err(
        &format!("options:\n  interfaces: eth0\n{seq}"),
        Some(2),
        Some("interfaces"),
        "unknown key `interfaces` (did you mean `interface`?)",
    );
    assert_err(
        "door:\n  d:\n    sequence: [1]\n",
        Some(1),
        Some("door"),
        "unknown key `door` (did you mean `doors`?)",
    );
    assert_err(&format!("{seq}    colour: red\n"), Some(4), Some("colour"),
        "unknown key `colour` (valid keys: sequence, one_time_sequences, seq_timeout, tcp_flags, target, command, start_command, command_6, start_command_6, cmd_timeout, stop_command, stop_command_6, open, stealth, spa, dynamic)");
}

#[test]
fn repeated_keys_point_at_the_repeat() {
    let seq = format!("{HEAD}    sequence: [1]\n");
    assert_err(
        &format!("{seq}    target: 192.0.2.1\n    sequence: [2]\n"),
        Some(5),
        Some("sequence"),
        "set twice in the same block",
    );
    assert_err(
        &format!("{seq}    command: a\n    start_command: b\n"),
        Some(5),
        Some("start_command"),
        "set twice in the same block",
    );
    assert_err(
        &format!("{seq}    open:\n      ports: [1]\n      duration: 1\n      ports: [2]\n"),
        Some(7),
        Some("ports"),
        "set twice in the same block",
    );
    assert_err(
        &format!("options:\n  stealth: true\n  stealth: false\n{seq}"),
        Some(3),
        Some("stealth"),
        "set twice in the same block",
    );
    assert_err(
        &format!("{seq}  e:\n    sequence: [2]\n  d:\n    sequence: [3]\n"),
        Some(6),
        None,
        "door `d` is already defined on line 2",
    );
}

#[test]
fn structural_errors() {
    assert_err(&format!("{HEAD}    sequence: []\n"), Some(3), Some("sequence"), "the sequence is empty");
    let long: Vec<String> = (1..=33).map(|p| p.to_string()).collect();
    assert_err(
        &format!("{HEAD}    sequence: [{}]\n", long.join(", ")),
        Some(3),
        Some("sequence"),
        "the sequence has 33 steps; at most 32 are allowed",
    );
    assert_err(
        "doors:\n  a:\n    sequence: [1]\n  d:\n    command: x\n",
        Some(4),
        None,
        "door `d` has no `sequence` (nor `one_time_sequences`)",
    );
    assert_err(
        "doors:\n  a:\n    sequence: [1]\n  d:\n",
        Some(4),
        None,
        "door `d` has no `sequence` (nor `one_time_sequences`)",
    );
    assert_err(
        &format!("{HEAD}    seq_timeout: 0\n    sequence: [1]\n"),
        Some(3),
        Some("seq_timeout"),
        "must be more than 0 seconds",
    );
}

#[test]
fn open_errors() {
    let seq = format!("{HEAD}    sequence: [1]\n");
    assert_err(
        &format!("{seq}    open:\n      duration: 5\n"),
        Some(4),
        Some("open"),
        "`open` needs `ports` (the ports to open)",
    );
    assert_err(
        &format!("{seq}    open:\n      ports: [22]\n"),
        Some(4),
        Some("open"),
        "`open` needs a `duration` (how long to keep them open)",
    );
    assert_err(
        &format!("{seq}    open:\n      ports: []\n      duration: 5\n"),
        Some(5),
        Some("open.ports"),
        "`open` needs at least one port",
    );
    assert_err(
        &format!("{seq}    open:\n      ports: [22]\n      duration: 0s\n"),
        Some(6),
        Some("open.duration"),
        "must be more than 0",
    );
}

#[test]
fn no_doors() {
    assert_err("options:\n  stealth: true\ndoors: {}\n", Some(3), None, "no doors defined");
    assert_err("options:\n  stealth: true\n", None, None, "no doors defined");
    assert_err("options:\n  stealth: true\ndoors:\n", Some(3), None, "no doors defined");
}

#[test]
fn yaml_syntax_errors_carry_their_line() {
    let err = yaml_err("doors:\n  d:\n\tsequence: [1]\n");
    assert_eq!(err.line, Some(3), "{err}");
    assert!(err.message.contains("cannot start any token"), "{err}");
    let err = yaml_err("doors: [a, b]\n");
    assert_eq!((err.line, err.key.as_deref()), (Some(1), Some("doors")), "{err}");
    assert_eq!(err.message, "invalid type: sequence, expected a map of doors by name");
    let err = yaml_err("just text\n");
    assert_eq!(err.message, "invalid type: string \"just text\", expected a map with `options` and `doors`");
}
