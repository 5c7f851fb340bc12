use std::time::Duration;

use clap::Parser;

use super::*;
use crate::spa::MessageType;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const HMAC: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==";

fn args(extra: &[&str]) -> KnockArgs {
    let mut argv = vec!["xknock", "--spa", "--key-base64-rijndael", KEY, "--key-base64-hmac", HMAC];
    argv.extend_from_slice(extra);
    KnockArgs::try_parse_from(argv).unwrap()
}

fn keys() -> SpaKeys {
    SpaKeys::from_base64(KEY, HMAC).unwrap()
}

#[test]
fn flags_follow_fwknop() {
    let a = args(&[
        "-A",
        "tcp/22,UDP/53",
        "-a",
        "10.0.0.5",
        "-U",
        "alice",
        "-f",
        "45",
        "-p",
        "6000",
        "127.0.0.1",
    ]);
    let p = plan(&a).unwrap();
    assert_eq!(p.access, parse_access("tcp/22,udp/53").unwrap());
    assert_eq!(
        (p.allow_ip, p.user.as_str(), p.timeout),
        (Some("10.0.0.5".parse().unwrap()), "alice", Some(45))
    );
    assert_eq!(p.server, "127.0.0.1:6000".parse().unwrap());
    assert_eq!(p.keys, keys());
    let s = plan(&args(&["-A", "tcp/22", "-s", "127.0.0.1"])).unwrap();
    assert_eq!((s.allow_ip, s.server.port()), (Some("0.0.0.0".parse().unwrap()), 62201));
}

#[test]
fn bad_spa_invocations_say_why() {
    let no_keys = KnockArgs::try_parse_from(["xknock", "--spa", "-A", "tcp/22", "h"]).unwrap();
    assert!(plan(&no_keys).unwrap_err().to_string().contains("no keys"));
    assert!(plan(&args(&["127.0.0.1"])).unwrap_err().to_string().contains("-A"));
    assert!(matches!(plan(&args(&["-A", "tcp/0", "127.0.0.1"])), Err(KnockError::Port(..))));
    assert!(plan(&args(&["-A", "tcp/22", "127.0.0.1", "7000"])).is_err(), "knock ports in SPA mode");
    let same =
        ["xknock", "--spa", "--key-base64-rijndael", KEY, "--key-base64-hmac", KEY, "-A", "tcp/22", "h"];
    assert!(plan(&KnockArgs::try_parse_from(same).unwrap()).unwrap_err().to_string().contains("equals"));
    assert!(KnockArgs::try_parse_from(["xknock", "-A", "tcp/22", "h"]).is_err(), "SPA flags need --spa");
    assert!(KnockArgs::try_parse_from(["xknock", "--spa", "-s", "-a", "1.2.3.4", "h"]).is_err());
}

#[test]
fn literal_keys_like_fwknop() {
    let a = KnockArgs::try_parse_from([
        "xknock",
        "--spa",
        "--key-rijndael",
        "shortpw",
        "--key-hmac",
        "hmac key",
        "-A",
        "udp/53",
        "127.0.0.1",
    ])
    .unwrap();
    assert_eq!(plan(&a).unwrap().keys, SpaKeys::new(b"shortpw".to_vec(), b"hmac key".to_vec()).unwrap());
}

#[test]
fn a_door_supplies_the_ports() {
    let dir = std::env::temp_dir().join(format!("xknock-client-spa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("xknockd.yaml");
    std::fs::write(
        &cfg,
        "doors:\n  ssh:\n    sequence: [1, 2]\n    open:\n      ports: [22, \"53/udp\"]\n      duration: 5\n",
    )
    .unwrap();
    let a = args(&["-c", cfg.to_str().unwrap(), "--door", "ssh", "127.0.0.1"]);
    assert_eq!(plan(&a).unwrap().access, parse_access("tcp/22,udp/53").unwrap());
    let a = args(&["-c", cfg.to_str().unwrap(), "--door", "nope", "127.0.0.1"]);
    assert!(matches!(plan(&a), Err(KnockError::NoDoor(_))));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_doors_spa_block_supplies_keys_and_port() {
    let dir = std::env::temp_dir().join(format!("xknock-client-spa-block-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("xknockd.yaml");
    let yaml = format!(
        "doors:\n  ssh:\n    spa:\n      port: 62300\n      key_base64: \"{KEY}\"\n      \
         hmac_key_base64: \"{HMAC}\"\n    open:\n      ports: [22]\n      duration: 5\n"
    );
    std::fs::write(&cfg, yaml).unwrap();
    let argv = ["xknock", "--spa", "-c", cfg.to_str().unwrap(), "--door", "ssh", "127.0.0.1"];
    let a = KnockArgs::try_parse_from(argv).unwrap();
    let p = plan(&a).unwrap();
    assert_eq!(p.keys, keys());
    assert_eq!(p.server.port(), 62300);
    assert_eq!(p.access, parse_access("tcp/22").unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Sends for real over loopback and decodes what arrives.
fn send_and_receive(bind: &str, host: &str, extra: &[&str]) -> SpaMessage {
    let rx = UdpSocket::bind(bind).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = rx.local_addr().unwrap().port().to_string();
    let mut argv = vec!["-A", "tcp/22", "-U", "alice", "-p", &port];
    argv.extend_from_slice(extra);
    argv.push(host);
    run(&args(&argv)).unwrap();
    let mut buf = [0u8; 1500];
    let n = rx.recv(&mut buf).unwrap();
    assert!(
        buf[..n].iter().all(|b| b.is_ascii_alphanumeric() || b"+/".contains(b)),
        "no newline, no padding"
    );
    crate::spa::decode(&keys(), &buf[..n]).unwrap()
}

#[test]
fn sends_one_datagram_with_our_source_as_allow_ip() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let m = send_and_receive("127.0.0.1:0", "127.0.0.1", &[]);
    assert_eq!(
        (m.user.as_str(), m.allow_ip, m.kind),
        ("alice", "127.0.0.1".parse().unwrap(), MessageType::Access)
    );
    assert!(u64::from(m.timestamp).abs_diff(now) < 5);
    let m = send_and_receive("127.0.0.1:0", "127.0.0.1", &["-f", "20", "--time-offset-minus", "300"]);
    assert_eq!((m.kind, m.client_timeout), (MessageType::ClientTimeoutAccess, Some(20)));
    assert!(u64::from(m.timestamp).abs_diff(now - 300) < 5);
}

#[test]
fn sends_over_ipv6() {
    let m = send_and_receive("[::1]:0", "::1", &[]);
    assert_eq!(m.allow_ip, "::1".parse::<IpAddr>().unwrap(), "IPv6 allow-IP: our extension");
    let m = send_and_receive("[::1]:0", "::1", &["-s"]);
    assert_eq!(m.allow_ip, IpAddr::from([0, 0, 0, 0]), "-s: what fwknop's own client sends over IPv6");
}

#[test]
fn test_mode_sends_nothing_and_saves_the_packet() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_nonblocking(true).unwrap();
    let port = rx.local_addr().unwrap().port().to_string();
    let file = std::env::temp_dir().join(format!("xknock-spa-packet-{}", std::process::id()));
    run(&args(&["-A", "tcp/22", "-T", "-B", file.to_str().unwrap(), "-p", &port, "127.0.0.1"])).unwrap();
    let saved = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    assert!(crate::spa::decode(&keys(), &saved).is_ok());
    assert!(rx.recv(&mut [0u8; 16]).is_err(), "-T sends nothing");
}
