//! One-time sequence files: which line is active, knockd's in-place `#` retirement,
//! edits under our feet, and how config loading uses them.

use std::fs;

use super::support::{parse, tcp, udp, TempDir};
use crate::config::{load, OneTimeFile};

const SEQS: &str = "# used ones get a leading #\n\n   # indented comment\n 1000,2000:udp\n 3000,4000\n5000\n";

#[test]
fn first_live_line_is_active() {
    let dir = TempDir::new();
    let path = dir.write("otp", SEQS);
    let file = OneTimeFile::open(&path).unwrap();
    let (line, offset, steps) = file.active().unwrap();
    assert_eq!((line, offset), (4, SEQS.find(" 1000").unwrap() as u64));
    assert_eq!(steps, [tcp(1000), udp(2000)]);
    assert!(file.invalid_lines().is_empty());
}

#[test]
fn unparsable_lines_are_skipped_and_reported() {
    let dir = TempDir::new();
    let path = dir.write("otp", "70000,1\n 1:sctp\n 7,8\n junk\n");
    let file = OneTimeFile::open(&path).unwrap();
    assert_eq!(file.active().map(|a| (a.0, a.2)), Some((3, vec![tcp(7), tcp(8)])));
    let bad: Vec<_> = file.invalid_lines().iter().map(|l| (l.line_no, l.message.as_str())).collect();
    assert_eq!(
        bad,
        [
            (1, "port 70000 is outside 1-65535"),
            (2, "unknown protocol `sctp` in `1:sctp` (use tcp or udp)"),
            (4, "`junk` is not a port number"),
        ]
    );
}

#[test]
fn consume_writes_a_hash_over_the_first_byte_like_knockd() {
    let dir = TempDir::new();
    let path = dir.write("otp", SEQS);
    let mut file = OneTimeFile::open(&path).unwrap();
    assert_eq!(file.consume_active().unwrap(), Some(vec![tcp(3000), tcp(4000)]));
    let expected = SEQS.replace(" 1000,2000:udp", "#1000,2000:udp");
    assert_eq!(fs::read_to_string(&path).unwrap(), expected);
    assert_eq!(file.active().unwrap().0, 5);

    assert_eq!(file.consume_active().unwrap(), Some(vec![tcp(5000)]));
    // A line without a leading space loses its first digit, as with knockd.
    assert_eq!(file.consume_active().unwrap(), None);
    let expected = expected.replace(" 3000,4000", "#3000,4000").replace("\n5000\n", "\n#000\n");
    assert_eq!(fs::read_to_string(&path).unwrap(), expected);
    assert_eq!(file.active(), None);
    assert_eq!(file.consume_active().unwrap(), None, "nothing left: nothing written");
    assert_eq!(fs::read_to_string(&path).unwrap(), expected);
}

#[test]
fn consume_follows_edits_made_since_reading() {
    let dir = TempDir::new();
    let path = dir.write("otp", " 1,2\n 3,4\n");
    let mut file = OneTimeFile::open(&path).unwrap();
    // An editor inserts lines above: the cached offset now points elsewhere.
    fs::write(&path, "# new header\n 9,9,9\n 1,2\n 3,4\n").unwrap();
    assert_eq!(file.consume_active().unwrap(), Some(vec![tcp(9), tcp(9), tcp(9)]));
    assert_eq!(fs::read_to_string(&path).unwrap(), "# new header\n 9,9,9\n#1,2\n 3,4\n");
}

#[test]
fn consume_writes_nothing_if_the_line_is_gone() {
    let dir = TempDir::new();
    let path = dir.write("otp", " 1,2\n 3,4\n");
    let mut file = OneTimeFile::open(&path).unwrap();
    fs::write(&path, " 3,4\n").unwrap();
    assert_eq!(file.consume_active().unwrap(), Some(vec![tcp(3), tcp(4)]));
    assert_eq!(fs::read_to_string(&path).unwrap(), " 3,4\n");
}

#[test]
fn file_without_trailing_newline() {
    let dir = TempDir::new();
    let path = dir.write("otp", "#x\n 5,6");
    let mut file = OneTimeFile::open(&path).unwrap();
    assert_eq!(file.active().unwrap().1, 3);
    assert_eq!(file.consume_active().unwrap(), None);
    assert_eq!(fs::read_to_string(&path).unwrap(), "#x\n#5,6");
}

#[test]
fn config_takes_the_active_sequence_relative_to_the_config_dir() {
    let dir = TempDir::new();
    dir.write("otp", SEQS);
    let conf = dir.write("knockd.conf", "[d]\nsequence = 9,9\nOne_Time_Sequences = otp\n");
    let c = load(&conf).unwrap();
    let door = &c.doors[0];
    assert_eq!(door.sequence, [tcp(1000), udp(2000)], "the one-time file wins over `sequence`");
    assert_eq!(door.one_time_sequences.as_deref(), Some(dir.path().join("otp").as_path()));

    let yaml = dir.write("x.yaml", "doors:\n  d:\n    one_time_sequences: otp\n");
    assert_eq!(load(&yaml).unwrap().doors[0].sequence, [tcp(1000), udp(2000)]);
    assert_eq!(fs::read_to_string(dir.path().join("otp")).unwrap(), SEQS, "loading writes nothing");
}

#[test]
fn a_missing_file_is_an_error_at_the_key() {
    let dir = TempDir::new();
    let missing = dir.path().join("missing");
    let text = format!("[d]\n\nOne_Time_Sequences = {}\n", missing.display());
    let err = parse(&text, "knockd.conf").unwrap_err();
    assert_eq!((err.line, err.key.as_deref()), (Some(3), Some("One_Time_Sequences")), "{err}");
    assert!(err.message.starts_with("cannot read one-time sequences file"), "{err}");
}

/// Issue 8, item 2: refusing the config would leave the ports open once the gate
/// is gone, so a used-up file gives a door that never opens but still protects.
#[test]
fn a_used_up_file_gives_a_disabled_door_that_still_protects() {
    let dir = TempDir::new();
    let used = dir.write("used", "#1,2\n\n # 3\n");
    let text = format!(
        "doors:\n  a:\n    sequence: [1]\n  d:\n    one_time_sequences: {}\n    open:\n      ports: [22]\n      duration: 5\n",
        used.display()
    );
    let c = parse(&text, "x.yaml").unwrap();
    let d = &c.doors[1];
    assert!(d.sequence.is_empty());
    assert_eq!(d.one_time_sequences.as_deref(), Some(used.as_path()));
    assert_eq!(d.open.as_ref().map(|o| o.ports.clone()), Some(vec![tcp(22)]));
    // An empty sequence is no prefix of `a`'s, and a second used-up door is no twin.
    let two = text
        .replace("  a:\n    sequence: [1]\n", &format!("  a:\n    one_time_sequences: {}\n", used.display()));
    assert_eq!(parse(&two, "x.yaml").unwrap().doors[0].sequence, []);
    // Its protected ports still count against knock ports.
    let err = parse(&text.replace("sequence: [1]", "sequence: [22]"), "x.yaml").unwrap_err();
    assert_eq!((err.line, err.key.as_deref()), (Some(3), Some("sequence")), "{err}");
}

#[test]
fn one_time_door_clashing_with_another_is_reported_at_its_file_key() {
    let dir = TempDir::new();
    let otp = dir.write("otp", " 1,2\n");
    let text = format!("[a]\nsequence = 1,2\n[b]\nOne_Time_Sequences = {}\n", otp.display());
    let err = parse(&text, "knockd.conf").unwrap_err();
    assert_eq!((err.line, err.key.as_deref()), (Some(4), Some("One_Time_Sequences")), "{err}");
}

fn with_mode(path: &std::path::Path, mode: u32) {
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// Issue 8, item 8: whoever can write the file can add sequences or revive used ones.
#[test]
fn files_other_users_can_write_are_refused_and_readable_ones_warned_about() {
    let dir = TempDir::new();
    let path = dir.write("otp", " 1,2\n");
    with_mode(&path, 0o600);
    assert_eq!(OneTimeFile::open(&path).unwrap().warning(), None);
    with_mode(&path, 0o644);
    let file = OneTimeFile::open(&path).unwrap();
    assert!(
        file.warning().unwrap().starts_with("other users can read it (mode 0644)"),
        "{:?}",
        file.warning()
    );
    for mode in [0o666, 0o620, 0o602] {
        with_mode(&path, mode);
        let err = OneTimeFile::open(&path).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(err.to_string().starts_with("refused: other users can write it"), "{err}");
    }
}

#[test]
fn a_symlink_is_refused_at_load_and_at_every_burn() {
    let dir = TempDir::new();
    let real = dir.write("real", " 1,2\n 3,4\n");
    with_mode(&real, 0o600);
    let link = dir.path().join("otp");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let err = OneTimeFile::open(&link).unwrap_err();
    assert_eq!(err.to_string(), "refused: is a symbolic link; name the file itself");

    // Swapped in after the file was read: the burn writes nothing through it.
    let path = dir.write("swapped", " 1,2\n");
    with_mode(&path, 0o600);
    let mut file = OneTimeFile::open(&path).unwrap();
    fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&real, &path).unwrap();
    assert!(file.consume_active().is_err());
    assert_eq!(fs::read_to_string(&real).unwrap(), " 1,2\n 3,4\n");
}

#[test]
fn a_file_owned_by_another_user_is_refused() {
    let dir = TempDir::new();
    let path = dir.write("otp", " 1,2\n");
    with_mode(&path, 0o600);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Only root can give a file away (the rule itself is unit-tested in file_safety).
        return;
    }
    std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
    let err = OneTimeFile::open(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        "refused: it is owned by uid 65534, neither root nor the daemon's user (uid 0)"
    );
}
