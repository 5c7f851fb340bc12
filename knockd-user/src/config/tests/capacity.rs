//! Issue 8, item 4: `open_rate`/`open_burst`, and the bound they put on live windows.

use super::{
    support::{yaml, yaml_err},
    yaml::assert_err,
};

/// `ports` and `duration` of a door on `backend`, under `options`.
fn gate(options: &str, backend: &str, ports: &str, duration: &str) -> String {
    format!(
        "options:\n{options}doors:\n  ssh:\n    sequence: [1, 2]\n    open:\n      ports: [{ports}]\n      duration: {duration}\n      backend: {backend}\n"
    )
}

#[test]
fn rate_options_must_be_whole_numbers_of_at_least_one() {
    let c = yaml(&gate("  open_rate: 1\n  open_burst: 4294967295\n", "nftables", "22", "5"));
    assert_eq!((c.options.open_rate, c.options.open_burst), (1, u32::MAX));
    for bad in ["0", "-1", "4294967296"] {
        let text = gate(&format!("  open_rate: {bad}\n"), "xdp", "22", "5");
        let message = format!("must be a whole number from 1 to 4294967295, not {bad}");
        assert_err(&text, Some(2), Some("open_rate"), &message);
    }
    let text = gate("  open_burst: lots\n", "xdp", "22", "5");
    assert_err(&text, Some(2), Some("open_burst"), "`lots` is not a whole number");
}

#[test]
fn xdp_windows_must_fit_the_map() {
    // Defaults: (20 + 10 * 6553) * 1 = 65550 > 65536; 6551 s gives 65530.
    yaml(&gate("", "xdp", "22", "6551"));
    let err = yaml_err(&gate("", "xdp", "22", "6553"));
    assert_eq!((err.line, err.key.as_deref()), (Some(7), Some("open.duration")), "{err}");
    assert!(err.message.starts_with("the doors using the xdp backend could hold up to 65550 windows at once (with open_rate 10 and open_burst 20"), "{err}");
    assert!(
        err.message
            .ends_with("more than its 65536: lower options.open_rate, options.open_burst or open.duration"),
        "{err}"
    );
    // A lower rate makes the same door fit; a part second counts as a whole one.
    yaml(&gate("  open_rate: 1\n", "xdp", "22", "6553"));
    let err = yaml_err(&gate("  open_rate: 1\n  open_burst: 1\n", "xdp", "22, 23", "\"32767500ms\""));
    assert!(err.message.contains("up to 65538 windows"), "{err}");
}

#[test]
fn ports_and_doors_add_up_per_backend() {
    // 2 ports * (20 + 10 * 3000) = 60040 fits; a second door of 3000 s on one port does not.
    let one = gate("", "iptables", "22, 443", "3000");
    yaml(&one);
    let second = "  web:\n    sequence: [3]\n    open:\n      ports: [80]\n      duration: 3000\n      backend: iptables\n";
    let err = yaml_err(&format!("{one}{second}"));
    assert_eq!((err.line, err.key.as_deref()), (Some(13), Some("open.duration")), "{err}");
    assert!(err.message.contains("iptables backend could hold up to 90060 windows"), "{err}");
    // On another backend the second door counts there, not here.
    yaml(&format!("{one}{}", second.replace("443", "444").replace("backend: iptables", "backend: xdp")));
}

#[test]
fn nftables_sets_have_no_size_limit() {
    yaml(&gate("", "nftables", "22, 443, 53/udp", "8760h"));
}
