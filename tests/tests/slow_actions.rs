//! Nothing slow runs on the daemon's event loop (issue 9, item 3).
//!
//! A door's nftables window is slowed on purpose: a stand-in `nft` early in
//! xknockd's PATH sleeps before it applies the batch that opens a window.
//! Another door knocked meanwhile must still be heard and logged, long
//! before the slow open ends; and the slow door must open in the end. Also:
//! a single-step door under a spoofed SYN flood runs its command only as
//! often as the rate limit allows.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use xknock_tests::{
    daemon::{bin, Captured, TempDir},
    netns::{connect_from, EchoServer, NetPair, CLIENT_V4, SERVER_V4},
    privileged,
    rawsock::{syn_frame, Link},
    wait_until,
};

/// How long the stand-in holds a window opening: long beside a knock, but
/// inside the 5 s deadline the gate gives every firewall tool.
const SLOW: Duration = Duration::from_secs(4);
/// The bound on another door's OPEN SESAME while the slow open runs: far
/// below [`SLOW`], far above a knock's own time.
const QUICK: Duration = Duration::from_secs(2);
/// The bound on every other wait.
const WAIT: Duration = Duration::from_secs(10);
/// The slow door's protected port, where an echo server listens.
const PORT: u16 = 2222;

const CONFIG: &str = r#"
doors:
  slow:
    sequence: ["7000", "8000:udp", "9000"]
    seq_timeout: 5
    tcp_flags: syn
    open:
      ports: ["2222/tcp"]
      duration: 30
      backend: nftables
  quick:
    sequence: ["7300", "7400"]
    seq_timeout: 5
    tcp_flags: syn
"#;

/// The stand-in: every call goes to the real nft, but the one batch that
/// opens a window (the only one with a `delete element`) first marks
/// `slow-started`, sleeps, and after nft returns marks `slow-done`.
fn stand_in(real: &str, dir: &Path, slow: Duration) -> String {
    let dir = dir.display();
    let secs = slow.as_secs();
    format!(
        r#"#!/bin/sh
if [ "$*" = "-j -f -" ]; then
  doc=$(cat)
  case "$doc" in
  *'{{"delete":{{"element"'*)
    touch {dir}/slow-started
    sleep {secs}
    printf '%s' "$doc" | {real} "$@"; rc=$?
    touch {dir}/slow-done
    exit $rc;;
  esac
  printf '%s' "$doc" | exec {real} "$@"
fi
exec {real} "$@"
"#
    )
}

/// The real nft, found before our stand-in shadows it.
fn real_nft() -> String {
    let out = Command::new("sh").args(["-c", "command -v nft"]).output().unwrap();
    let path = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(out.status.success() && !path.is_empty(), "nft is not installed");
    path
}

/// xknockd on a config in fresh namespaces, with an echo server behind
/// [`PORT`], and the slow `nft` stand-in first in its PATH if asked for.
struct Slowed {
    daemon: Captured,
    dir: TempDir,
    _echo: EchoServer,
    // Dropped last: the daemon must die before its namespace goes.
    pair: NetPair,
}

impl Slowed {
    fn start(config: &str, slow_nft: bool) -> Self {
        let pair = NetPair::new().unwrap();
        let dir = TempDir::new();
        let cfg = dir.path("xknockd.yaml");
        std::fs::write(&cfg, config.replace("{DIR}", dir.0.to_str().unwrap())).unwrap();
        let mut cmd = pair.server_cmd(bin("xknockd").to_str().unwrap());
        cmd.arg("-v").arg("-c").arg(&cfg).args(["-i", &pair.server_if, "-p"]).arg(dir.path("pid"));
        if slow_nft {
            let stubs = dir.path("bin");
            std::fs::create_dir_all(&stubs).unwrap();
            let script = stubs.join("nft");
            std::fs::write(&script, stand_in(&real_nft(), &dir.0, SLOW)).unwrap();
            std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", stubs.display()));
        }
        let echo = EchoServer::start(&pair.server, &format!("[::]:{PORT}")).unwrap();
        let mut daemon = Captured::spawn(cmd).unwrap();
        daemon.wait_for("starting up, listening on", Duration::from_secs(20)).unwrap();
        Self { daemon, dir, _echo: echo, pair }
    }

    /// Runs `xknock SERVER ports...` in the client namespace.
    fn knock(&self, ports: &[&str]) {
        self.pair.xknock(&[&[SERVER_V4], ports].concat());
    }

    fn marked(&self, name: &str) -> bool {
        self.dir.path(name).exists()
    }

    /// Whether the client gets through to the protected port within 1 s.
    /// "Not through" must be a silent drop while the echo server listens;
    /// a refusal or a dead listener fails the test instead.
    fn connects(&self) -> bool {
        let dst = SocketAddr::new(SERVER_V4.parse().unwrap(), PORT);
        match connect_from(&self.pair.client, None, dst, Duration::from_secs(1)).unwrap() {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                assert!(self.pair.listening(&self.pair.server, PORT).unwrap(), "the echo server is gone");
                false
            }
            Err(e) => panic!("connect to port {PORT}: {e}: not what a closed gate does"),
        }
    }
}

#[test]
fn a_slow_gate_does_not_delay_other_knocks() {
    if !privileged("a_slow_gate_does_not_delay_other_knocks") {
        return;
    }
    let mut s = Slowed::start(CONFIG, true);
    assert!(!s.marked("slow-started"), "the stand-in slowed something at start");
    assert!(!s.connects(), "the protected port is open before any knock");

    s.knock(&["7000", "8000:udp", "9000"]);
    assert!(wait_until(WAIT, || s.marked("slow-started")), "the window opening never reached nft");
    // OPEN SESAME means the window is in the kernel, so it waits for nft.
    let slow_sesame = format!("{CLIENT_V4}: slow: OPEN SESAME");
    assert_eq!(s.daemon.count(&slow_sesame), 0, "OPEN SESAME logged before the window was in place");

    let t0 = Instant::now();
    s.knock(&["7300", "7400"]);
    s.daemon.wait_for(&format!("{CLIENT_V4}: quick: OPEN SESAME"), QUICK).unwrap();
    let took = t0.elapsed();
    assert!(!s.marked("slow-done"), "the other door was logged only after the slow open ended");
    assert!(took < QUICK, "the other door took {took:?} while a gate opened");
    assert!(!s.connects(), "the slow door's window is open before nft applied it");

    // The slow door opens in the end.
    assert!(wait_until(SLOW + WAIT, || s.marked("slow-done")), "the slow open never ended");
    s.daemon.wait_for(&slow_sesame, WAIT).unwrap();
    assert!(wait_until(WAIT, || s.connects()), "the slow door never opened");
    assert_eq!(s.daemon.count("opening the gate for"), 0, "{:?}", s.daemon.output());
}

/// A single-step door: every spoofed SYN to its port completes it.
const FLOODED: &str = r#"
options:
  open_rate: 1
  open_burst: 3
doors:
  single:
    sequence: ["7500"]
    seq_timeout: 5
    tcp_flags: syn
    start_command: "echo %IP% >> {DIR}/ran"
"#;

const FLOOD: u32 = 500;

/// The refusals the daemon reported, summed over its rate-limit lines.
fn refused(daemon: &Captured) -> u64 {
    let tail = " opens over the rate limit in the last second";
    let count = |l: &String| -> Option<u64> { l.split(tail).next()?.rsplit(' ').next()?.parse().ok() };
    daemon.output().iter().filter(|l| l.contains(tail)).filter_map(count).sum()
}

#[test]
fn a_spoofed_flood_on_a_single_step_door_spawns_within_the_limit() {
    if !privileged("a_spoofed_flood_on_a_single_step_door_spawns_within_the_limit") {
        return;
    }
    let s = Slowed::start(FLOODED, false);
    let link = Link::open(&s.pair.client, &s.pair.client_if).unwrap();
    let macs = (
        s.pair.mac(&s.pair.client, &s.pair.client_if).unwrap(),
        s.pair.mac(&s.pair.server, &s.pair.server_if).unwrap(),
    );
    let server: IpAddr = SERVER_V4.parse().unwrap();
    let t0 = Instant::now();
    for i in 0..FLOOD {
        // Spoofed sources from a documentation range, none of them ours.
        let src = IpAddr::V4(Ipv4Addr::from(0xc633_6400 + i));
        link.send(&syn_frame(macs, src, server, 40000 + i as u16, 7500)).unwrap();
    }
    let sent_in = t0.elapsed();
    let opened = || s.daemon.count(": single: OPEN SESAME");
    let decided = || opened() as u64 + refused(&s.daemon);
    assert!(
        wait_until(WAIT, || decided() == u64::from(FLOOD)),
        "{} of {FLOOD} completions decided: {} opened, {} refused",
        decided(),
        opened(),
        refused(&s.daemon)
    );
    let bound = 3 + sent_in.as_secs() as usize + 1;
    assert!((3..=bound).contains(&opened()), "{} opens from {FLOOD} spoofed SYNs in {sent_in:?}", opened());
    let ran = || std::fs::read_to_string(s.dir.path("ran")).unwrap_or_default().lines().count();
    assert!(wait_until(WAIT, || ran() == opened()), "{} commands for {} opens", ran(), opened());
}
