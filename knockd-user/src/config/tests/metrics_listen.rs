//! Issue 12: `metrics_listen`.

use super::{emit::round_trip, support::yaml, yaml::assert_err};

fn with(options: &str) -> String {
    format!("options:\n{options}doors:\n  d:\n    sequence: [7000, 8000]\n")
}

#[test]
fn off_unless_given() {
    assert_eq!(yaml(&with("")).options.metrics_listen, None);
    let c = yaml(&with("  metrics_listen: \"127.0.0.1:9707\"\n"));
    assert_eq!(c.options.metrics_listen, Some("127.0.0.1:9707".parse().unwrap()));
    assert!(round_trip(&c).contains("metrics_listen: \"127.0.0.1:9707\""));
    let v6 = yaml(&with("  metrics_listen: \"[::1]:9707\"\n"));
    assert_eq!(v6.options.metrics_listen, Some("[::1]:9707".parse().unwrap()));
}

#[test]
fn a_bad_address_is_an_error_with_its_line_and_key() {
    let message = "`localhost` is not an address and port like \"127.0.0.1:9707\" or \"[::1]:9707\"";
    assert_err(
        &with("  use_syslog: false\n  metrics_listen: localhost\n"),
        Some(3),
        Some("metrics_listen"),
        message,
    );
    let no_port = "`127.0.0.1` is not an address and port like \"127.0.0.1:9707\" or \"[::1]:9707\"";
    assert_err(&with("  metrics_listen: 127.0.0.1\n"), Some(2), Some("metrics_listen"), no_port);
}
