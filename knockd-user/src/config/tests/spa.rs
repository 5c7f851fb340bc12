//! The `spa` block: keys, defaults, key files, and where errors point.

use std::{os::unix::fs::PermissionsExt, time::Duration};

use super::support::{parse, yaml, yaml_err, TempDir};
use crate::{
    config::{spa::KeyRef, to_yaml},
    spa::SpaKeys,
};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const HMAC: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==";

/// Lines 1-6: a door with only `spa`; `extra` goes inside the block.
fn door(extra: &str) -> String {
    format!(
        "doors:\n  ssh:\n    open: {{ ports: [\"22/tcp\"], duration: 30 }}\n    spa:\n      key_base64: \"{KEY}\"\n      hmac_key_base64: \"{HMAC}\"\n{extra}"
    )
}

fn err_at(text: &str) -> (Option<usize>, Option<String>, String) {
    let e = yaml_err(text);
    (e.line, e.key, e.message)
}

#[test]
fn a_door_may_have_spa_alone_with_fwknop_defaults() {
    let c = yaml(&door(""));
    let spa = c.doors[0].spa.as_ref().unwrap();
    assert!(c.doors[0].sequence.is_empty());
    assert_eq!((spa.port, spa.max_age, spa.require_source_address), (62201, Duration::from_secs(120), true));
    assert_eq!(spa.users, None);
    assert_eq!(spa.keys, SpaKeys::from_base64(KEY, HMAC).unwrap());
    assert_eq!(c.options.state_dir, std::path::Path::new("/var/lib/xknockd"));
    let p = spa.policy(&c.doors[0]);
    assert_eq!((p.ports.len(), p.duration), (1, Duration::from_secs(30)));
}

#[test]
fn every_key_is_read() {
    let c = yaml(&format!(
        "options:\n  state_dir: /tmp/xk\n{}      port: 5000\n      max_age: 2m\n      require_source_address: false\n      users: [alice, bob]\n",
        door("").replace("doors:\n  ssh:\n", "doors:\n  ssh:\n    sequence: [7000, 8000]\n")
    ));
    let spa = c.doors[0].spa.as_ref().unwrap();
    assert_eq!((spa.port, spa.max_age, spa.require_source_address), (5000, Duration::from_secs(120), false));
    assert_eq!(spa.users.as_deref(), Some(&["alice".to_string(), "bob".to_string()][..]));
    assert_eq!(c.doors[0].sequence.len(), 2);
    assert_eq!(c.options.state_dir, std::path::Path::new("/tmp/xk"));
    // What --convert writes reads back the same.
    let again = yaml(&to_yaml(&c));
    assert_eq!((again.doors, again.options), (c.doors, c.options));
}

#[test]
fn key_errors_name_the_key_and_its_line() {
    let bad = door("").replace(&format!("key_base64: \"{KEY}\""), "key_base64: \"not*base64\"");
    let (line, key, msg) = err_at(&bad);
    assert_eq!((line, key.as_deref()), (Some(5), Some("spa.key_base64")), "{msg}");
    assert!(msg.contains("KEY_BASE64 is not base64"), "{msg}");
    let long = door("").replace(HMAC, &crate::spa::keys::to_base64(&[7; 129]));
    let (line, key, msg) = err_at(&long);
    assert_eq!((line, key.as_deref()), (Some(6), Some("spa.hmac_key_base64")), "{msg}");
    assert!(msg.contains("129 bytes"), "{msg}");
    let same = door("").replace(HMAC, KEY);
    assert_eq!(err_at(&same).1.as_deref(), Some("spa.hmac_key_base64"));
    let missing = door("").replace(&format!("      hmac_key_base64: \"{HMAC}\"\n"), "");
    let (line, key, msg) = err_at(&missing);
    assert_eq!(
        (line, key.as_deref(), msg.as_str()),
        (Some(4), Some("spa"), "`spa` needs `hmac_key_base64` or `hmac_key_file`")
    );
    let both = door("      key_file: k\n");
    assert_eq!(err_at(&both).2, "give `key_base64` or `key_file`, not both");
}

#[test]
fn value_errors_point_at_the_value() {
    assert_eq!(err_at(&door("      port: 0\n")).0, Some(7));
    assert_eq!(err_at(&door("      port: 70000\n")).0, Some(7));
    assert_eq!(err_at(&door("      max_age: 0\n")).1.as_deref(), Some("spa.max_age"));
    assert_eq!(err_at(&door("      users: [\"a:b\"]\n")).1.as_deref(), Some("spa.users"));
    assert_eq!(err_at(&door("      users: []\n")).1.as_deref(), Some("spa.users"));
    let (line, key, msg) = err_at(&door("      hmac_key: x\n"));
    assert_eq!((line, key.as_deref()), (Some(7), Some("hmac_key")));
    assert!(msg.starts_with("unknown key `hmac_key`"), "{msg}");
}

#[test]
fn spa_ports_are_never_protected_nor_knocked() {
    let protected = door("      port: 53\n").replace("[\"22/tcp\"]", "[\"22/tcp\", \"53/udp\"]");
    let (line, key, msg) = err_at(&protected);
    assert_eq!((line, key.as_deref()), (Some(7), Some("spa.port")));
    assert!(msg.contains("protected by door `ssh`"), "{msg}");
    let knocked = format!("{}  other:\n    sequence: [\"62201:udp\"]\n", door(""));
    assert!(err_at(&knocked).2.contains("knock step of door `other`"));
    // The same port as TCP is another port.
    let tcp = format!("{}  other:\n    sequence: [62201]\n", door(""));
    assert!(parse(&tcp, "x.yaml").is_ok());
    // Two SPA doors may share a port (each has its own keys).
    let two = format!(
        "{}  web:\n    open: {{ ports: [\"443/tcp\"], duration: 9 }}\n    spa: {{ key_base64: \"{KEY}\", hmac_key_base64: \"aGk\" }}\n",
        door("")
    );
    assert_eq!(yaml(&two).doors.len(), 2);
}

#[test]
fn a_spa_door_needs_open() {
    let text =
        door("").replace("    open: { ports: [\"22/tcp\"], duration: 30 }\n", "    command: /bin/true\n");
    let (_, key, msg) = err_at(&text);
    assert_eq!(key.as_deref(), Some("spa"), "{msg}");
}

#[test]
fn key_files_are_read_relative_to_the_config_and_must_be_private() {
    let dir = TempDir::new();
    let k = dir.write("enc.key", &format!("{KEY}\n"));
    let h = dir.write("hmac.key", HMAC);
    for f in [&k, &h] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let text = "doors:\n  ssh:\n    open: { ports: [22], duration: 5 }\n    spa:\n      key_file: enc.key\n      hmac_key_file: hmac.key\n";
    let cfg_path = dir.path().join("x.yaml");
    let c = crate::config::parse_str(text, &cfg_path).unwrap();
    let spa = c.doors[0].spa.as_ref().unwrap();
    assert_eq!(spa.keys, SpaKeys::from_base64(KEY, HMAC).unwrap());
    assert_eq!(spa.key, KeyRef::File("enc.key".into()));
    std::fs::set_permissions(&h, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = crate::config::parse_str(text, &cfg_path).unwrap_err();
    assert_eq!((e.line, e.key.as_deref()), (Some(6), Some("spa.hmac_key_file")), "{e}");
    assert!(e.message.contains("other users can read it"), "{e}");
    std::fs::remove_file(&k).unwrap();
    let e = crate::config::parse_str(text, &cfg_path).unwrap_err();
    assert_eq!((e.line, e.key.as_deref()), (Some(5), Some("spa.key_file")), "{e}");
}
