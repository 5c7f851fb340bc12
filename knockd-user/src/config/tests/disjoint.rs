//! Issue 8, item 3: a knock step that is also a protected port is refused.

use std::path::Path;

use super::support::{parse, yaml, yaml_err, TempDir};
use crate::config::{check_disjoint, load};

const CLASH: &str = "\
doors:
  a:
    sequence: [7000, 2222]
  b:
    sequence: [3, 4]
    open:
      ports: [22, 2222]
      duration: 30
";

#[test]
fn a_knock_step_that_is_protected_is_refused_at_the_sequence_line() {
    let err = yaml_err(CLASH);
    assert_eq!((err.line, err.key.as_deref()), (Some(3), Some("sequence")), "{err}");
    assert_eq!(
        err.message,
        "door `a` knocks on 2222:tcp, which door `b` protects (x.yaml:7: `open.ports`): knock ports are never gated, so it would be open to everyone; use another knock port"
    );
}

#[test]
fn protocol_matters_and_a_door_may_not_knock_on_its_own_port() {
    let udp = CLASH.replace("2222]\n  b", "\"2222:udp\"]\n  b");
    yaml(&udp);
    let err = yaml_err(&udp.replace("[3, 4]", "[3, 22]"));
    assert_eq!((err.line, err.key.as_deref()), (Some(5), Some("sequence")), "{err}");
    assert!(err.message.starts_with("door `b` knocks on 22:tcp, which door `b` protects"), "{err}");
}

#[test]
fn every_live_line_of_a_one_time_file_counts() {
    let dir = TempDir::new();
    let otp = dir.write("otp", "#2222\n 1,2\n 5,6\n 7,2222\n");
    let text = CLASH.replace("sequence: [7000, 2222]", &format!("one_time_sequences: {}", otp.display()));
    let err = parse(&text, "x.yaml").unwrap_err();
    assert_eq!((err.path.as_path(), err.line, err.key.as_deref()), (otp.as_path(), Some(4), None), "{err}");
    assert!(
        err.message.starts_with(
            "this one-time sequence of door `a` (`one_time_sequences` in x.yaml) knocks on 2222:tcp"
        ),
        "{err}"
    );
    // A retired line does not count.
    std::fs::write(&otp, "#2222\n 1,2\n").unwrap();
    parse(&text, "x.yaml").unwrap();
}

#[test]
fn check_disjoint_rereads_one_time_files() {
    let dir = TempDir::new();
    let otp = dir.write("otp", " 1,2\n");
    let conf = dir.write("x.yaml", &CLASH.replace("sequence: [7000, 2222]", "one_time_sequences: otp"));
    let cfg = load(&conf).unwrap();
    check_disjoint(&cfg).unwrap();
    // A line appended at run time, e.g. by a rotation tool.
    std::fs::write(&otp, " 1,2\n 2222\n").unwrap();
    let err = check_disjoint(&cfg).unwrap_err();
    assert_eq!((err.path.as_path(), err.line), (otp.as_path(), Some(2)), "{err}");
    std::fs::remove_file(&otp).unwrap();
    let err = check_disjoint(&cfg).unwrap_err();
    assert_eq!(
        (err.path.as_path(), err.key.as_deref()),
        (conf.as_path(), Some("one_time_sequences")),
        "{err}"
    );
}

#[test]
fn check_disjoint_on_a_loaded_config_names_the_key() {
    let mut cfg = yaml(&CLASH.replace("2222]\n  b", "2223]\n  b"));
    cfg.doors[0].sequence[1].port = 2222;
    let err = check_disjoint(&cfg).unwrap_err();
    assert_eq!(
        (err.path.as_path(), err.line, err.key.as_deref()),
        (Path::new("x.yaml"), None, Some("sequence"))
    );
}
