//! Cross-door rules, in both formats: doors a knock cannot tell apart are refused.

use super::support::{conf, conf_err, yaml, yaml_err};

#[test]
fn identical_sequences_conf() {
    let err = conf_err("[a]\nsequence = 1,2:udp\n\n[b]\ntcpflags = syn\nsequence = 1,2:udp\n[c]\nseq_timeout = 9\nsequence = 1, 2:UDP\n");
    assert_eq!(
        err.to_string(),
        "knockd.conf:9: key `sequence`: doors `a` and `c` have the same sequence (1:tcp,2:udp) with the same tcp_flags and target, so their knocks cannot be told apart"
    );
}

#[test]
fn identical_sequences_yaml() {
    let err = yaml_err("doors:\n  a:\n    sequence: [1, 2]\n  b:\n    target: 192.0.2.1\n    sequence: [1, 2]\n  c:\n    sequence: [1, 2]\n");
    assert_eq!((err.line, err.key.as_deref()), (Some(8), Some("sequence")), "{err}");
    assert!(err.message.starts_with("doors `a` and `c` have the same sequence (1:tcp,2:tcp)"), "{err}");
}

#[test]
fn flags_and_target_tell_doors_apart() {
    conf("[a]\nsequence = 1,2\n[b]\nsequence = 1,2\ntcpflags = syn\n");
    conf("[a]\nsequence = 1,2\ntarget = 192.0.2.1\n[b]\nsequence = 1,2\ntarget = 192.0.2.2\n");
    yaml("doors:\n  a:\n    sequence: [1, 2, 3]\n  b:\n    sequence: [1, 2]\n    tcp_flags: syn\n");
}

#[test]
fn flags_do_not_tell_udp_sequences_apart() {
    let err = conf_err("[a]\nsequence = 1:udp\n[b]\nsequence = 1:udp\ntcpflags = syn\n");
    assert_eq!(err.line, Some(4), "{err}");
}

#[test]
fn prefix_is_refused_whichever_comes_first() {
    let err = conf_err("[long]\nsequence = 1,2,3\n[short]\nsequence = 1,2\n");
    assert_eq!(
        err.to_string(),
        "knockd.conf:4: key `sequence`: door `short`'s whole sequence (1:tcp,2:tcp) is the start of door `long`'s (1:tcp,2:tcp,3:tcp) with the same tcp_flags and target: knocking `long` always opens `short` first"
    );
    let err =
        yaml_err("doors:\n  one:\n    sequence: 7000\n  more:\n    sequence:\n      - 7000\n      - 8000\n");
    assert_eq!((err.line, err.key.as_deref()), (Some(5), Some("sequence")), "{err}");
    assert!(
        err.message.starts_with("door `one`'s whole sequence (7000:tcp) is the start of door `more`'s"),
        "{err}"
    );
}

#[test]
fn shared_start_without_prefix_is_fine() {
    conf("[a]\nsequence = 1,2,3\n[b]\nsequence = 1,2,4\n[c]\nsequence = 2,1\n");
}

/// Issue 4: a protected port is guarded by one backend only.
const GATES: &str = "\
options:
  backend: nftables
doors:
  ssh:
    sequence: [1, 2]
    open:
      ports: [22/tcp, 443]
      duration: 30
  web:
    sequence: [3, 4]
    open:
      backend: BACKEND
      ports: [\"8443:tcp\", 443/tcp]
      duration: 30
";

fn gates(default: &str, backend: &str) -> String {
    GATES.replace("backend: nftables", &format!("backend: {default}")).replace("BACKEND", backend)
}

#[test]
fn overlapping_ports_with_different_backends_name_the_second_open_line() {
    let err = yaml_err(&gates("nftables", "iptables"));
    assert_eq!(
        err.to_string(),
        "x.yaml:11: key `open`: door `web` protects 443:tcp with the iptables backend, but door `ssh` protects it with nftables: a port can be guarded by one backend only"
    );
}

#[test]
fn a_door_without_a_backend_uses_the_default_one() {
    // ssh takes options.backend (xdp), web says nftables: they differ.
    let err = yaml_err(&gates("xdp", "nftables"));
    assert_eq!((err.line, err.key.as_deref()), (Some(11), Some("open")));
    assert!(err.message.contains("with the nftables backend, but door `ssh` protects it with xdp"), "{err}");
    // Without options.backend the default is nftables, the same as web's here.
    let text = gates("nftables", "nftables").replace("options:\n  backend: nftables\n", "");
    yaml(&text);
    let err = yaml_err(&text.replace("backend: nftables", "backend: xdp"));
    assert_eq!((err.line, err.key.as_deref()), (Some(9), Some("open")), "{err}");
}

#[test]
fn shared_ports_with_the_same_backend_are_fine() {
    yaml(&gates("iptables", "iptables"));
    yaml(&gates("xdp", "xdp"));
}

#[test]
fn different_backends_on_different_ports_are_fine() {
    // 443/udp is not 443/tcp.
    yaml(&gates("nftables", "iptables").replace("443/tcp]", "443/udp]"));
    yaml(&gates("nftables", "xdp").replace(", 443]", "]"));
}

#[test]
fn the_conflict_is_found_between_non_adjacent_doors() {
    let text = "\
doors:
  a:
    sequence: [1]
    open: {ports: [22], duration: 5, backend: xdp}
  b:
    sequence: [2]
    start_command: echo
  c:
    sequence: [3]
    open:
      ports: [80, 22]
      duration: 5
";
    let err = yaml_err(text);
    assert_eq!(
        err.to_string(),
        "x.yaml:10: key `open`: door `c` protects 22:tcp with the nftables backend, but door `a` protects it with xdp: a port can be guarded by one backend only"
    );
}
