//! `dynamic` doors and `icmp:N` steps in YAML.

use std::{fs, os::unix::fs::PermissionsExt};

use super::support::{conf_err, tcp, TempDir};
use crate::config::{parse_str, ConfigError, Proto, Step};

const SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DP\n";

fn dir_with_secret(mode: u32) -> TempDir {
    let dir = TempDir::new();
    let secret = dir.write("ssh.secret", SECRET);
    fs::set_permissions(&secret, fs::Permissions::from_mode(mode)).unwrap();
    dir
}

fn parse_in(dir: &TempDir, text: &str) -> Result<crate::config::Config, ConfigError> {
    let path = dir.write("x.yaml", text);
    parse_str(text, &path)
}

fn door(extra: &str, dynamic: &str) -> String {
    format!(
        "doors:\n  ssh:\n    dynamic:\n{dynamic}    open: {{ ports: [\"22/tcp\"], duration: 30 }}\n{extra}"
    )
}

const BLOCK: &str =
    "      secret_file: ssh.secret\n      steps: 3\n      period: 30\n      ports: \"20000-40000\"\n";

#[test]
fn a_dynamic_door_is_read_with_its_secret_beside_the_config() {
    let dir = dir_with_secret(0o600);
    let cfg = parse_in(&dir, &door("", BLOCK)).unwrap_or_else(|e| panic!("{e}"));
    let spec = cfg.doors[0].dynamic.as_ref().unwrap();
    assert_eq!((spec.steps, spec.period, spec.lo, spec.hi, spec.proto), (3, 30, 20000, 40000, Proto::Tcp));
    assert_eq!(spec.secret_file, dir.path().join("ssh.secret"));
    assert!(cfg.doors[0].sequence.is_empty());
}

#[test]
fn ranges_that_meet_knock_or_protected_ports_are_refused_at_their_line() {
    let dir = dir_with_secret(0o600);
    let other = "  web:\n    sequence: [30000, 8000]\n";
    let e = parse_in(&dir, &door(other, BLOCK)).unwrap_err();
    assert_eq!((e.line, e.key.as_deref()), (Some(7), Some("dynamic.ports")), "{e}");
    assert!(e.message.contains("30000:tcp, a knock step of door `web`"), "{e}");

    let wide = BLOCK.replace("20000-40000", "1-40000");
    let e = parse_in(&dir, &door("", &wide)).unwrap_err();
    assert!(e.message.contains("22:tcp, which door `ssh` protects"), "{e}");

    let twin = format!("  twin:\n    dynamic:\n{}", BLOCK.replace("20000-40000", "39000-45000"));
    let e = parse_in(&dir, &door(&twin, BLOCK)).unwrap_err();
    assert!(e.message.contains("overlaps the dynamic range of door `twin`"), "{e}");
    let udp_twin = format!("{twin}      proto: udp\n");
    parse_in(&dir, &door(&udp_twin, BLOCK)).unwrap_or_else(|e| panic!("other protocol: {e}"));
}

#[test]
fn bad_blocks_are_refused() {
    let dir = dir_with_secret(0o600);
    for (block, key, words) in [
        (BLOCK.replace("period: 30", "period: 4"), "dynamic.period", "at least 5"),
        (BLOCK.replace("steps: 3", "steps: 9"), "dynamic.steps", "1-8"),
        (BLOCK.replace("20000-40000", "20000-20001"), "dynamic.ports", "fewer than 3"),
        (BLOCK.replace("20000-40000", "40000-20000"), "dynamic.ports", "port range"),
        (format!("{BLOCK}      proto: icmp\n"), "dynamic.proto", "unknown protocol"),
    ] {
        let e = parse_in(&dir, &door("", &block)).unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{e}");
        assert!(e.message.contains(words), "{e}");
    }
    let both = door("", BLOCK).replace("    dynamic:\n", "    sequence: [1000]\n    dynamic:\n");
    assert!(parse_in(&dir, &both).unwrap_err().message.contains("not both"));
}

#[test]
fn the_secret_file_is_checked_like_a_one_time_file() {
    let loose = dir_with_secret(0o666);
    let e = parse_in(&loose, &door("", BLOCK)).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("dynamic.secret_file"));
    assert!(e.message.contains("other users can write it"), "{e}");

    let dir = dir_with_secret(0o600);
    std::os::unix::fs::symlink(dir.path().join("ssh.secret"), dir.path().join("link.secret")).unwrap();
    let e = parse_in(&dir, &door("", &BLOCK.replace("ssh.secret", "link.secret"))).unwrap_err();
    assert!(e.message.contains("symbolic link"), "{e}");

    let junk = dir.write("junk.secret", "not base32!\n");
    fs::set_permissions(&junk, fs::Permissions::from_mode(0o600)).unwrap();
    let e = parse_in(&dir, &door("", &BLOCK.replace("ssh.secret", "junk.secret"))).unwrap_err();
    assert!(e.message.contains("base32"), "{e}");
}

#[test]
fn icmp_steps_mix_with_ports_in_yaml_only() {
    let dir = TempDir::new();
    let text = "doors:\n  ping:\n    sequence: [7000, \"icmp:64\", \"8000:udp\"]\n";
    let cfg = parse_in(&dir, text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.doors[0].sequence[0], tcp(7000));
    assert_eq!(cfg.doors[0].sequence[1], Step { port: 64, proto: Proto::Icmp });
    let e = parse_in(&dir, &text.replace("icmp:64", "icmp:1453")).unwrap_err();
    assert!(e.message.contains("at most 1452"), "{e}");
    let e = conf_err("[ping]\nsequence = 7000,icmp:64\ncommand = true\n");
    assert!(e.message.contains("icmp"), "knockd.conf has no ICMP steps: {e}");
}
