//! Issue 9: `first_step_slots` and `sweep_limit`.

use super::{emit::round_trip, support::yaml, yaml::assert_err};
use crate::config::model::{DEFAULT_FIRST_STEP_SLOTS, DEFAULT_SWEEP_LIMIT};

fn with(options: &str) -> String {
    format!("options:\n{options}doors:\n  d:\n    sequence: [7000, 8000]\n")
}

#[test]
fn defaults_are_a_mebislot_table_and_a_limit_of_two() {
    let c = yaml(&with(""));
    assert_eq!(c.options.first_step_slots, DEFAULT_FIRST_STEP_SLOTS);
    assert_eq!(c.options.sweep_limit, Some(DEFAULT_SWEEP_LIMIT));
}

#[test]
fn first_step_slots_must_be_a_power_of_two_in_range() {
    assert_eq!(yaml(&with("  first_step_slots: 4096\n")).options.first_step_slots, 4096);
    for bad in ["1000", "512", "536870912", "-4"] {
        let message = format!("first_step_slots must be a power of two from 1024 to 268435456, not {bad}");
        assert_err(
            &with(&format!("  first_step_slots: {bad}\n")),
            Some(2),
            Some("first_step_slots"),
            &message,
        );
    }
}

#[test]
fn sweep_limit_is_a_number_or_off() {
    assert_eq!(yaml(&with("  sweep_limit: off\n")).options.sweep_limit, None);
    assert_eq!(yaml(&with("  sweep_limit: 0\n")).options.sweep_limit, Some(0));
    assert_eq!(yaml(&with("  sweep_limit: \"7\"\n")).options.sweep_limit, Some(7));
    assert_err(
        &with("  sweep_limit: never\n"),
        Some(2),
        Some("sweep_limit"),
        "`never` is not a number or `off`",
    );
    let message = "sweep_limit must be `off` or a number from 0 to 65534, not 65535";
    assert_err(&with("  sweep_limit: 65535\n"), Some(2), Some("sweep_limit"), message);
}

#[test]
fn both_round_trip() {
    let c = yaml(&with("  first_step_slots: 2048\n  sweep_limit: off\n"));
    let text = round_trip(&c);
    assert!(text.contains("first_step_slots: 2048") && text.contains("sweep_limit: off"), "{text}");
    let c = yaml(&with("  sweep_limit: 5\n"));
    assert!(round_trip(&c).contains("sweep_limit: 5"));
}
