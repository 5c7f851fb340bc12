//! Broken disks (issue 12, item 4): the one-time sequences file, the SPA
//! replay cache and the log file on a small tmpfs of the test's own that is
//! full or read-only, and a log file deleted under the daemon. (A log file cannot turn read-only
//! under the daemon: the kernel refuses to remount a filesystem read-only
//! while a file on it is open for writing.) A burn that cannot be written keeps
//! the door shut (fail closed) and is logged, and so does an SPA packet
//! whose digest cannot be stored; a log that cannot be written
//! is reported on stderr while the daemon keeps serving.

#[path = "support/faults.rs"]
mod faults;

use faults::{Faulty, Tmpfs, WAIT};
use xknock_tests::{
    daemon::{bin, TempDir},
    netns::{CLIENT2_V4, CLIENT_V4, SERVER_V4},
    privileged,
    spa::{HMAC, KEY},
    wait_until,
};

const PORT: u16 = 2222;
const FIRST: [&str; 2] = ["7000", "7100"];
const SECOND: [&str; 2] = ["7200", "7300"];
const SEQUENCES: &str = " 7000,7100\n 7200,7300\n";

const ONE_TIME: &str = r#"
doors:
  once:
    one_time_sequences: {DIR}/fs/sequences
    seq_timeout: 5
    tcp_flags: syn
    open:
      ports: ["2222/tcp"]
      duration: 60
      backend: nftables
"#;

/// The one-time file on a tmpfs that exists before the daemon starts.
/// Dropped in order: the daemon, then the tmpfs, then its directory.
fn one_time_rig() -> (Faulty, Tmpfs, TempDir) {
    let dir = TempDir::new();
    let fs = Tmpfs::new(dir.path("fs"), 64);
    std::fs::write(fs.0.join("sequences"), SEQUENCES).unwrap();
    let config = ONE_TIME.replace("{DIR}", dir.0.to_str().unwrap());
    (Faulty::start(&config, &[PORT], &[]), fs, dir)
}

fn first_line(fs: &Tmpfs) -> String {
    std::fs::read_to_string(fs.0.join("sequences")).unwrap().lines().next().unwrap().to_string()
}

#[test]
fn a_burn_on_a_read_only_filesystem_keeps_the_door_shut() {
    if !privileged("a_burn_on_a_read_only_filesystem_keeps_the_door_shut") {
        return;
    }
    let (mut f, fs, _dir) = one_time_rig();
    fs.remount(true);
    f.knock(&FIRST);
    let refused = "once: cannot update one-time sequences file";
    f.daemon.wait_for(refused, WAIT).unwrap();
    let line = f.daemon.output().into_iter().find(|l| l.contains(refused)).unwrap();
    assert!(line.contains("Read-only file system") && line.contains("not opening"), "{line}");
    // OPEN SESAME still says the sequence was completed, as knockd does;
    // the refusal above says the door stays shut.
    assert!(!f.connects(None, PORT), "the door opened although the burn failed");
    assert_eq!(first_line(&fs), " 7000,7100", "the line changed on a read-only filesystem");
    f.assert_alive();

    // Writable again: the same line is still the live one, and now burns.
    fs.remount(false);
    f.knock(&FIRST);
    f.daemon.wait_for_n(&format!("{CLIENT_V4}: once: OPEN SESAME"), 2, WAIT).unwrap();
    assert!(wait_until(WAIT, || f.connects(None, PORT)), "the door never opened");
    assert_eq!(first_line(&fs), "#7000,7100");
}

/// A burn is one byte written in place: it takes no new space, so a full
/// filesystem does not stop it. What must hold is that the door opens only
/// with the line burnt on disk, so the sequence cannot be replayed.
#[test]
fn a_burn_on_a_full_filesystem_is_durable_before_the_door_opens() {
    if !privileged("a_burn_on_a_full_filesystem_is_durable_before_the_door_opens") {
        return;
    }
    let (mut f, fs, _dir) = one_time_rig();
    fs.fill(&[]);
    f.knock(&FIRST);
    f.daemon.wait_for(&format!("{CLIENT_V4}: once: OPEN SESAME"), WAIT).unwrap();
    assert_eq!(first_line(&fs), "#7000,7100", "opened without the burn on disk");
    assert!(wait_until(WAIT, || f.connects(None, PORT)), "the door never opened");
    assert!(!f.connects(Some(CLIENT2_V4), PORT), "the door opened for everyone");
    // The used line is gone for good: knocking it again opens nothing.
    // The next line then opens once; events are handled in order, so by
    // then the replay has been heard.
    f.knock(&FIRST);
    f.knock(&SECOND);
    f.daemon.wait_for_n(&format!("{CLIENT_V4}: once: OPEN SESAME"), 2, WAIT).unwrap();
    let lines = std::fs::read_to_string(fs.0.join("sequences")).unwrap();
    assert_eq!(lines, "#7000,7100\n#7200,7300\n", "a burnt sequence opened again, or the next did not burn");
    assert_eq!(f.daemon.count("once: OPEN SESAME"), 2, "{:?}", f.daemon.output());
    f.assert_alive();
}

const LOGGED: &str = r#"
options:
  log_file: {LOG}
doors:
  gate:
    sequence: ["7000", "7100"]
    seq_timeout: 5
    tcp_flags: syn
    open:
      ports: ["2222/tcp"]
      duration: 60
      backend: nftables
"#;

/// xknockd logging to `log`, which the test then breaks with `breaks`; a
/// knock must still open, and stderr must say what went wrong.
fn broken_log(log: &std::path::Path, breaks: impl FnOnce(), says: &str) -> Faulty {
    let mut f = Faulty::start(&LOGGED.replace("{LOG}", log.to_str().unwrap()), &[PORT], &[]);
    f.daemon.wait_for("starting up", WAIT).unwrap();
    breaks();
    f.knock(&FIRST);
    f.daemon.wait_for(&format!("{CLIENT_V4}: gate: OPEN SESAME"), WAIT).unwrap();
    f.daemon.wait_for(says, WAIT).unwrap();
    assert!(wait_until(WAIT, || f.connects(None, PORT)), "the door never opened");
    f.assert_alive();
    f
}

#[test]
fn a_log_file_on_a_full_filesystem_is_reported_on_stderr() {
    if !privileged("a_log_file_on_a_full_filesystem_is_reported_on_stderr") {
        return;
    }
    let dir = TempDir::new();
    let fs = Tmpfs::new(dir.path("fs"), 64);
    let log = fs.0.join("knock.log");
    let says = "cannot write to log file: No space left on device";
    drop(broken_log(&log, || fs.fill(&[&log]), says));
}

#[test]
fn a_deleted_log_file_is_reported_and_created_again() {
    if !privileged("a_deleted_log_file_is_reported_and_created_again") {
        return;
    }
    let dir = TempDir::new();
    let log = dir.path("knock.log");
    let rm = || std::fs::remove_file(&log).unwrap();
    let _f = broken_log(&log, rm, "was deleted; created it again");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!("{CLIENT_V4}: gate: OPEN SESAME")), "{text}");
}

const SPA: &str = r#"
options:
  state_dir: {DIR}/fs/state
doors:
  ssh:
    spa:
      port: 62201
      key_base64: "{KEY}"
      hmac_key_base64: "{HMAC}"
    open:
      ports: ["2222/tcp"]
      duration: 60
      backend: nftables
"#;

/// A fresh `xknock --spa` packet from the client for 2222/tcp.
fn spa_knock(f: &Faulty) {
    let mut cmd = f.pair.client_cmd(bin("xknock").to_str().unwrap());
    cmd.args(["--spa", "--key-base64-rijndael", KEY, "--key-base64-hmac", HMAC, "-A", "tcp/2222"]);
    let out = cmd.args(["-a", CLIENT_V4, SERVER_V4]).output().unwrap();
    assert!(out.status.success(), "xknock --spa: {}", String::from_utf8_lossy(&out.stderr));
}

/// An authentic packet whose digest cannot be stored would be replayable
/// after a restart, so it opens nothing; once the disk is writable again a
/// fresh packet opens as usual.
#[test]
fn an_spa_replay_cache_that_cannot_be_written_keeps_the_door_shut() {
    if !privileged("an_spa_replay_cache_that_cannot_be_written_keeps_the_door_shut") {
        return;
    }
    let dir = TempDir::new();
    let fs = Tmpfs::new(dir.path("fs"), 64);
    let config = SPA.replace("{KEY}", KEY).replace("{HMAC}", HMAC).replace("{DIR}", dir.0.to_str().unwrap());
    let mut f = Faulty::start(&config, &[PORT], &[]);
    let refused = format!("{CLIENT_V4}: ssh: SPA refused: replay cache unwritable");
    // Full, then read-only as well: each refused, the door shut.
    fs.fill(&[]);
    spa_knock(&f);
    f.daemon.wait_for_n(&refused, 1, WAIT).unwrap();
    assert!(!f.connects(None, PORT), "opened although the digest was not stored (full)");
    fs.remount(true);
    spa_knock(&f);
    // Logged, or held back for a second and then summed up.
    let refusals = |f: &Faulty| {
        let out = f.daemon.output();
        let summed = out.iter().filter(|l| l.contains("more refused (replay cache unwritable)"));
        let held: usize =
            summed.filter_map(|l| l.split("SPA: ").nth(1)?.split(' ').next()?.parse::<usize>().ok()).sum();
        f.daemon.count(&refused) + held
    };
    assert!(wait_until(WAIT, || refusals(&f) == 2), "{:?}", f.daemon.output());
    // The full disk's half-written copy was removed, so a logged read-only
    // refusal names the real cause.
    let spa_lines: Vec<String> = f.daemon.output().into_iter().filter(|l| l.contains("SPA")).collect();
    assert!(!spa_lines.iter().any(|l| l.contains("File exists")), "{spa_lines:#?}");
    assert!(!f.connects(None, PORT), "opened although the digest was not stored (read-only)");
    fs.remount(false);
    std::fs::remove_file(fs.0.join("filler")).unwrap();
    spa_knock(&f);
    f.daemon.wait_for(&format!("{CLIENT_V4}: ssh: SPA accepted"), WAIT).unwrap();
    assert!(wait_until(WAIT, || f.connects(None, PORT)), "a fresh packet did not open");
    assert!(!f.connects(Some(CLIENT2_V4), PORT), "the door opened for everyone");
    f.assert_alive();
}
