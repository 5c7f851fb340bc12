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
    assert_eq!(
        (err.line, err.key.as_deref()),
        (Some(8), Some("sequence")),
        "{err}"
    );
    assert!(
        err.message
            .starts_with("doors `a` and `c` have the same sequence (1:tcp,2:tcp)"),
        "{err}"
    );
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
    let err = yaml_err(
        "doors:\n  one:\n    sequence: 7000\n  more:\n    sequence:\n      - 7000\n      - 8000\n",
    );
    assert_eq!(
        (err.line, err.key.as_deref()),
        (Some(5), Some("sequence")),
        "{err}"
    );
    assert!(
        err.message
            .starts_with("door `one`'s whole sequence (7000:tcp) is the start of door `more`'s"),
        "{err}"
    );
}

#[test]
fn shared_start_without_prefix_is_fine() {
    conf("[a]\nsequence = 1,2,3\n[b]\nsequence = 1,2,4\n[c]\nsequence = 2,1\n");
}
