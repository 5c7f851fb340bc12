//! Broken firewall tools (issue 12, item 4): `nft`, `ipset` or
//! `iptables-restore` that fails, or hangs past xknockd's deadline, through
//! a stand-in early in xknockd's PATH. The door's open fails with a log line
//! and stays shut, the daemon keeps serving, another door opens, and the
//! knocker gets in by knocking again once the tool works.

#[path = "support/faults.rs"]
mod faults;

use std::time::{Duration, Instant};

use faults::{Faulty, TOOL_DEADLINE, WAIT};
use xknock_tests::{
    netns::{CLIENT2_V4, CLIENT_V4},
    privileged, wait_until,
};

const BROKEN_PORT: u16 = 2222;
const FINE_PORT: u16 = 2223;
const BROKEN: [&str; 2] = ["7000", "7100"];
const FINE: [&str; 2] = ["7300", "7400"];

/// Two doors on `backend`: `broken`, whose opens the stand-in breaks, and
/// `fine`, which it lets through.
fn config(backend: &str) -> String {
    format!(
        r#"
options:
  backend: {backend}
doors:
  broken:
    sequence: {BROKEN:?}
    seq_timeout: 5
    tcp_flags: syn
    open:
      ports: ["{BROKEN_PORT}/tcp"]
      duration: 60
  fine:
    sequence: {FINE:?}
    seq_timeout: 5
    tcp_flags: syn
    open:
      ports: ["{FINE_PORT}/tcp"]
      duration: 60
"#
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Fail,
    Hang,
}

impl Mode {
    fn switch(self, tool: &str) -> String {
        match self {
            Mode::Fail => format!("{tool}.fail"),
            Mode::Hang => format!("{tool}.hang"),
        }
    }

    /// What the daemon's failure line must say.
    fn reason(self) -> &'static str {
        match self {
            Mode::Fail => "failing on purpose",
            Mode::Hang => "did not finish within",
        }
    }

    /// How long a broken call may take to be reported.
    fn bound(self) -> Duration {
        match self {
            Mode::Fail => WAIT,
            Mode::Hang => TOOL_DEADLINE + WAIT,
        }
    }
}

/// A broken window-opening tool: `tool` breaks only calls that carry the
/// `broken` door (its name rides in every window as the comment).
fn open_fault(test: &str, backend: &str, tool: &str, trigger: &str, mode: Mode) {
    if !privileged(test) {
        return;
    }
    let mut f = Faulty::start(&config(backend), &[BROKEN_PORT, FINE_PORT], &[(tool, trigger)]);
    assert!(!f.connects(None, BROKEN_PORT) && !f.connects(None, FINE_PORT), "open before any knock");
    f.set(&mode.switch(tool), true);

    let t0 = Instant::now();
    f.knock(&BROKEN);
    let failed = format!("broken: opening the gate for {CLIENT_V4} failed");
    f.daemon.wait_for(&failed, mode.bound()).unwrap();
    let line = f.daemon.output().into_iter().find(|l| l.contains(&failed)).unwrap();
    assert!(line.contains(mode.reason()), "{line}");
    if mode == Mode::Hang {
        assert!(f.dir.path(&format!("{tool}.hung")).exists(), "the stand-in never hung");
        assert!(t0.elapsed() >= TOOL_DEADLINE, "killed after {:?}, before the deadline", t0.elapsed());
    }
    assert!(!f.connects(None, BROKEN_PORT), "a failed open let the knocker in");

    // The daemon keeps serving: another door opens while the tool is broken.
    f.knock(&FINE);
    f.daemon.wait_for(&format!("{CLIENT_V4}: fine: OPEN SESAME"), mode.bound()).unwrap();
    assert!(wait_until(WAIT, || f.connects(None, FINE_PORT)), "the other door never opened");
    assert!(!f.connects(Some(CLIENT2_V4), FINE_PORT), "the other door opened for everyone");
    f.assert_alive();

    // The tool works again: knocking again opens the broken door.
    f.set(&mode.switch(tool), false);
    f.knock(&BROKEN);
    let sesame = format!("{CLIENT_V4}: broken: OPEN SESAME");
    f.daemon.wait_for_n(&sesame, 2, WAIT).unwrap();
    assert!(wait_until(WAIT, || f.connects(None, BROKEN_PORT)), "the re-knock did not open the door");
    assert!(!f.connects(Some(CLIENT2_V4), BROKEN_PORT), "the door opened for everyone");
    assert_eq!(f.daemon.count(&failed), 1, "{:?}", f.daemon.output());
    f.assert_alive();
}

#[test]
fn nft_that_fails() {
    open_fault("nft_that_fails", "nftables", "nft", r#""comment":"broken""#, Mode::Fail);
}

#[test]
fn nft_that_hangs() {
    open_fault("nft_that_hangs", "nftables", "nft", r#""comment":"broken""#, Mode::Hang);
}

#[test]
fn ipset_that_fails() {
    open_fault("ipset_that_fails", "iptables", "ipset", "comment broken", Mode::Fail);
}

#[test]
fn ipset_that_hangs() {
    open_fault("ipset_that_hangs", "iptables", "ipset", "comment broken", Mode::Hang);
}

/// `iptables-restore` only runs to install or repair the gate. Broken while
/// another tool deletes our jump: the repair fails with a log line, opens
/// still land in the ipset, and once the tool works the gate is back, open
/// for the knocker only.
fn restore_fault(test: &str, mode: Mode) {
    if !privileged(test) {
        return;
    }
    let mut f = Faulty::start(&config("iptables"), &[BROKEN_PORT, FINE_PORT], &[("iptables-restore", "")]);
    f.set(&mode.switch("iptables-restore"), true);
    f.pair.in_ns(&f.pair.server, &["iptables", "-w", "-D", "INPUT", "-j", "XKNOCKD"]).unwrap();
    let failed = "checking the Iptables gate";
    f.daemon.wait_for(failed, mode.bound()).unwrap();
    let line = f.daemon.output().into_iter().find(|l| l.contains(failed)).unwrap();
    assert!(line.contains(mode.reason()), "{line}");

    f.knock(&FINE);
    // Behind at most one more broken repair.
    f.daemon.wait_for(&format!("{CLIENT_V4}: fine: OPEN SESAME"), mode.bound()).unwrap();
    f.assert_alive();

    f.set(&mode.switch("iptables-restore"), false);
    let repaired = || f.daemon.count("rewrote chain XKNOCKD") > 0;
    assert!(wait_until(mode.bound(), repaired), "no repair: {:?}", f.daemon.output());
    assert!(wait_until(WAIT, || !f.connects(Some(CLIENT2_V4), FINE_PORT)), "the gate never came back");
    assert!(f.connects(None, FINE_PORT), "the knocker's window was lost");
    assert!(!f.connects(None, BROKEN_PORT), "a door nobody opened is open");
    f.assert_alive();
}

#[test]
fn iptables_restore_that_fails() {
    restore_fault("iptables_restore_that_fails", Mode::Fail);
}

#[test]
fn iptables_restore_that_hangs() {
    restore_fault("iptables_restore_that_hangs", Mode::Hang);
}
