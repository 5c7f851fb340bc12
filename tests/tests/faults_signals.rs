//! Signals as faults (issue 12, item 4): a storm of SIGHUPs while knocking
//! loses no knock and leaks no fd, memory or child; SIGKILL at random
//! points of a door open leaves no protected port open past its window,
//! and the next xknockd adopts what the killed one left.

#[path = "support/faults.rs"]
mod faults;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use faults::{Faulty, WAIT};
use xknock_tests::{
    gate::Rig,
    netns::{CLIENT2_V4, CLIENT_V4, SERVER_V4},
    privileged, wait_until,
};

const PORT: u16 = 2222;
const SIGHUPS: usize = 100;
/// Between two SIGHUPs of the storm.
const HUP_GAP: Duration = Duration::from_millis(15);
/// What RSS may grow by across the storm: allocator noise, not a leak of
/// 100 reloads' configs, maps or tasks.
const RSS_SLACK_KIB: u64 = 2048;

const STORMED: &str = r#"
options:
  open_rate: 1000
  open_burst: 1000
doors:
  door:
    sequence: ["7000", "7100"]
    seq_timeout: 5
    tcp_flags: syn
    start_command: "echo %IP% >> {DIR}/ran"
    open:
      ports: ["2222/tcp"]
      duration: 30
      backend: nftables
"#;

/// What must stay flat: open fds, resident memory, live children.
#[derive(Debug, Clone, Copy)]
struct Usage {
    fds: usize,
    rss_kib: u64,
    children: usize,
}

fn usage(pid: u32) -> Usage {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    Usage { fds, rss_kib, children: children(pid) }
}

/// Processes whose parent is `pid`, zombies included.
fn children(pid: u32) -> usize {
    child_stats(pid).len()
}

/// The `stat` lines (pid, name, state, ...) of `pid`'s children, to say
/// which child was left when a count is off.
fn child_stats(pid: u32) -> Vec<String> {
    let ppid_of = |stat: &str| -> Option<u32> {
        // The fields after the parenthesised name: state, ppid, ...
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| ppid_of(stat) == Some(pid))
        .collect()
}

/// Knocks once and waits for the open it must cause.
fn knock_and_open(f: &mut Faulty, n: usize) {
    f.knock(&["7000", "7100"]);
    f.daemon.wait_for_n(&format!("{CLIENT_V4}: door: OPEN SESAME"), n, WAIT).unwrap();
}

/// Once commands and reloads have settled: no child left, fds back.
fn settled(f: &Faulty, base: Usage) -> Usage {
    let pid = f.pid();
    wait_until(WAIT, || {
        let now = usage(pid);
        now.children == base.children && now.fds <= base.fds
    });
    usage(pid)
}

#[test]
fn a_sighup_storm_loses_no_knock_and_leaks_nothing() {
    if !privileged("a_sighup_storm_loses_no_knock_and_leaks_nothing") {
        return;
    }
    let mut f = Faulty::start(STORMED, &[PORT], &[]);
    let pid = f.pid();
    // Warm-up: every path the storm takes, once or a few times.
    let mut opened = 0;
    for _ in 0..5 {
        opened += 1;
        knock_and_open(&mut f, opened);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    }
    f.daemon.wait_for_n("re-reading config file", 5, WAIT).unwrap();
    let base = settled(&f, Usage { fds: usize::MAX, rss_kib: 0, children: 0 });
    assert_eq!(base.children, 0, "children left after warm-up: {:?}", child_stats(pid));

    let stop = Arc::new(AtomicBool::new(false));
    let storm = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            for _ in 0..SIGHUPS {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(pid as i32, libc::SIGHUP) };
                std::thread::sleep(HUP_GAP);
            }
            stop.store(true, Ordering::Relaxed);
        })
    };
    let reloads_before = f.daemon.count("re-reading config file");
    while !stop.load(Ordering::Relaxed) {
        opened += 1;
        knock_and_open(&mut f, opened);
    }
    storm.join().unwrap();
    f.assert_alive();
    let reloads = f.daemon.count("re-reading config file") - reloads_before;
    // Signals that arrive while one is pending merge; most must be seen.
    assert!(reloads >= SIGHUPS / 4, "only {reloads} reloads for {SIGHUPS} SIGHUPs");
    assert!(opened >= 10, "only {opened} knocks during the storm: the test proves little");

    let ran = || std::fs::read_to_string(f.dir.path("ran")).unwrap_or_default().lines().count();
    assert!(wait_until(WAIT, || ran() == opened), "{} commands for {opened} opens", ran());
    assert_eq!(f.daemon.count("door: OPEN SESAME"), opened, "a knock opened twice, or one was lost");
    assert!(f.connects(None, PORT) && !f.connects(Some(CLIENT2_V4), PORT), "the gate is not as it should be");

    let after = settled(&f, base);
    assert_eq!(after.children, base.children, "children left: {base:?} -> {after:?}: {:?}", child_stats(pid));
    assert!(after.fds <= base.fds, "fds grew: {base:?} -> {after:?}");
    assert!(after.rss_kib <= base.rss_kib + RSS_SLACK_KIB, "RSS grew: {base:?} -> {after:?}");
    eprintln!("{opened} knocks, {reloads} reloads: {base:?} -> {after:?}");
}

/// The window of the SIGKILL test: long enough to see a restart adopt it,
/// short enough to wait out.
const WINDOW: u64 = 3;
const KILLS: usize = 8;
/// Kill points are spread over this many µs from the knock's start: a
/// knock and its open take a few ms here.
const KILL_SPREAD_US: u64 = 15_000;

/// xorshift64: a different kill point each run, reproducible from the seed
/// printed on failure.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn sigkill_during_opens(test: &str, backend: &str) {
    let rig = if backend == "xdp" {
        Rig::start_pinned(test, backend, WINDOW, &[])
    } else {
        Rig::start(test, backend, WINDOW, &[])
    };
    let Some(rig) = rig else { return };
    let mut rig = rig.connect_timeout(Duration::from_millis(300));
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("{test}: seed {seed}");
    let mut rng = Rng(seed);
    let mut adopted = 0;
    for i in 0..KILLS {
        // From the knock's start, so the kill lands anywhere from before
        // the first packet to after the window is in place.
        let delay = Duration::from_micros(rng.below(KILL_SPREAD_US));
        let pid = rig.srv.daemon.child.pid() as i32;
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            // SAFETY: signalling our own child, which has not been reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        let knocked = Instant::now();
        rig.send_knock(SERVER_V4);
        killer.join().unwrap();
        rig.stop(libc::SIGKILL);
        assert!(!rig.connects(Some(CLIENT2_V4), SERVER_V4), "kill {i}: open to a non-knocker with no daemon");
        let open = rig.connects(None, SERVER_V4);
        rig.restart(Duration::from_secs(20));
        assert!(!rig.connects(Some(CLIENT2_V4), SERVER_V4), "kill {i}: open to a non-knocker after restart");
        if open && knocked.elapsed() < Duration::from_secs(WINDOW - 1) {
            assert!(rig.connects(None, SERVER_V4), "kill {i}: the restart dropped an open window");
            adopted += 1;
        }
        eprintln!("kill {i} after {delay:?}: window {}", if open { "open" } else { "not open" });
        // Each kill starts with no window, so "open" above is this knock's.
        rig.time_until_closed(None, SERVER_V4, knocked, Duration::from_secs(WINDOW) + WAIT);
    }
    eprintln!("{test}: {adopted} of {KILLS} kills left a window the restart adopted");

    // A window open when the daemon dies ends on time with no daemon.
    rig.knock(SERVER_V4);
    let opened = Instant::now();
    rig.stop(libc::SIGKILL);
    assert!(rig.connects(None, SERVER_V4), "the window died with the daemon");
    let bound = Duration::from_secs(WINDOW) + WAIT;
    let closed_after = rig.time_until_closed(None, SERVER_V4, opened, bound);
    assert!(!rig.connects(Some(CLIENT2_V4), SERVER_V4), "open to a non-knocker with no daemon");
    rig.restart(Duration::from_secs(20));
    assert!(!rig.connects(None, SERVER_V4), "a restart reopened an ended window");
    eprintln!("{test}: the window closed {closed_after:?} after the knock, with no daemon");
}

#[test]
fn sigkill_during_opens_nftables() {
    sigkill_during_opens("sigkill_during_opens_nftables", "nftables");
}

#[test]
fn sigkill_during_opens_iptables() {
    sigkill_during_opens("sigkill_during_opens_iptables", "iptables");
}

#[test]
fn sigkill_during_opens_xdp() {
    sigkill_during_opens("sigkill_during_opens_xdp", "xdp");
}
