//! The iptables gate end to end: xknockd in the server namespace guards a TCP
//! echo service with real iptables, ip6tables and ipset rules, and the client
//! namespace knocks and connects. Nothing here runs outside the test
//! namespaces.

use std::time::Duration;

use xknock::config::model::{Proto, Step};
use xknock::gate::{iptables::IptablesGate, Gate, Protected, Window};
use xknock_tests::{
    gate::{server_out as out, Family, Rig, PORT, WAIT},
    netns::{echoes, in_netns, NetPair, CLIENT2_V4, CLIENT2_V6, CLIENT_V4, SERVER_V4, SERVER_V6},
    privileged, wait_until,
};

const DURATION: Duration = Duration::from_secs(3);
/// How long past `DURATION` a window may take to be seen closed: each failed
/// probe takes its 1 s connect timeout.
const SLACK: Duration = Duration::from_secs(4);

fn start(test: &str) -> Option<Rig> {
    Rig::start(test, "iptables", DURATION.as_secs(), &["bpffs_dir: {DIR}/bpf"])
}

/// The windows the kernel holds now, read by the backend in the namespace.
fn windows(pair: &NetPair) -> Vec<Window> {
    in_netns(&pair.server, || IptablesGate::new()?.windows()).unwrap().unwrap()
}

/// Every iptables and ip6tables rule of the server namespace, as `-S` prints it.
fn rules(pair: &NetPair) -> String {
    out(pair, &["iptables", "-w", "-S"]) + &out(pair, &["ip6tables", "-w", "-S"])
}

fn count(text: &str, line: &str) -> usize {
    text.lines().filter(|l| *l == line).count()
}

/// The rules one protected port gets, in both families, with one jump each.
fn assert_installed(pair: &NetPair) {
    let v4 = out(pair, &["iptables", "-w", "-S"]);
    let v6 = out(pair, &["ip6tables", "-w", "-S"]);
    for (text, set) in [(&v4, "xknockd4"), (&v6, "xknockd6")] {
        assert_eq!(count(text, "-A INPUT -j XKNOCKD"), 1, "{text}");
        let ours: Vec<&str> = text.lines().filter(|l| l.starts_with("-A XKNOCKD")).collect();
        assert_eq!(
            ours,
            [
                format!("-A XKNOCKD -p tcp -m tcp --dport {PORT} -m set --match-set {set} src,dst -j RETURN"),
                format!("-A XKNOCKD -p tcp -m tcp --dport {PORT} -m conntrack --ctstate INVALID,NEW,UNTRACKED -j DROP"),
            ],
            "{text}"
        );
    }
}

/// Waits until the knock's window is in the kernel: OPEN SESAME is logged
/// before the daemon adds it.
fn await_window(pair: &NetPair, src: &str) -> Window {
    let src: std::net::IpAddr = src.parse().unwrap();
    let mut found = None;
    let ok = wait_until(WAIT, || {
        found = windows(pair).into_iter().find(|w| w.src == src);
        found.is_some()
    });
    assert!(ok, "no window for {src}");
    found.unwrap()
}

/// The whole story for one address family.
fn knock_cycle(test: &str, f: &Family) {
    let Some(mut rig) = start(test) else { return };
    let (server, client, client2) = (f.server, f.client, f.client2);
    assert_installed(rig.pair());
    assert!(!rig.connects(Some(client), server), "open before the knock");

    let opened = rig.knock(server);
    let w = await_window(rig.pair(), client);
    assert_eq!((w.door.as_str(), w.port), ("ssh", tcp(PORT)));
    assert!(rig.connects(Some(client), server), "closed after the knock");
    assert!(!rig.connects(Some(client2), server), "open to a second address");
    let mut inside = rig.stream_from(Some(client), server).expect("connect inside the window");
    assert!(echoes(&mut inside, b"ping"));

    let took = rig.time_until_closed(Some(client), server, opened, DURATION + SLACK);
    assert!(took >= DURATION - Duration::from_secs(1), "closed after {took:?}");
    assert!(echoes(&mut inside, b"still there"), "the connection opened inside the window died");
    assert!(!rig.connects(Some(client2), server));
    assert!(windows(rig.pair()).is_empty());
}

const fn tcp(port: u16) -> Step {
    Step { port, proto: Proto::Tcp }
}

xknock_tests::per_family!(knock_cycle:
    v4_knock_opens_for_the_knocker_only_until_the_window_ends = "gate_iptables_v4",
    v6_knock_opens_for_the_knocker_only_until_the_window_ends = "gate_iptables_v6");

#[test]
fn a_reknock_extends_one_entry_and_duplicates_nothing() {
    let Some(mut rig) = start("gate_iptables_reknock") else { return };
    rig.knock(SERVER_V4);
    await_window(rig.pair(), CLIENT_V4);
    let before = rules(rig.pair());
    // Let the first window run down, so the re-knock's timeout is visibly new.
    let ran_down =
        wait_until(WAIT, || await_window(rig.pair(), CLIENT_V4).remaining <= Duration::from_secs(1));
    assert!(ran_down);

    rig.knock(SERVER_V4);
    let renewed =
        wait_until(WAIT, || await_window(rig.pair(), CLIENT_V4).remaining >= Duration::from_secs(2));
    assert!(renewed, "the re-knock did not extend the window");
    assert_eq!(windows(rig.pair()).len(), 1, "{:?}", windows(rig.pair()));
    let saved = out(rig.pair(), &["ipset", "list", "xknockd4", "-output", "save"]);
    assert_eq!(saved.lines().filter(|l| l.starts_with("add ")).count(), 1, "{saved}");
    assert_eq!(rules(rig.pair()), before);
    assert_installed(rig.pair());
}

#[test]
fn after_a_sigkill_the_window_still_ends_on_time() {
    let Some(mut rig) = start("gate_iptables_sigkill") else { return };
    let opened = rig.knock(SERVER_V4);
    await_window(rig.pair(), CLIENT_V4);
    rig.stop(libc::SIGKILL);

    let status = rig.admin("--status");
    assert!(status.contains(&format!("ssh\t{CLIENT_V4}\t{PORT}/tcp\t")), "{status}");
    assert!(!rig.connects(Some(CLIENT2_V4), SERVER_V4), "open to others after the kill");
    let took = rig.time_until_closed(Some(CLIENT_V4), SERVER_V4, opened, DURATION + SLACK);
    assert!(took <= DURATION + SLACK, "closed after {took:?}");
    assert!(!rig.connects(Some(CLIENT2_V4), SERVER_V4));
    assert_installed(rig.pair());
    assert!(windows(rig.pair()).is_empty());
}

#[test]
fn restarts_adopt_the_gate_and_a_clean_stop_closes_windows() {
    let Some(mut rig) = start("gate_iptables_restart") else { return };
    let installed = rules(rig.pair());
    rig.knock(SERVER_V4);
    await_window(rig.pair(), CLIENT_V4);

    // A crashed run's window stays valid under the next run.
    rig.stop(libc::SIGKILL);
    rig.restart(Duration::from_secs(20));
    assert_eq!(rules(rig.pair()), installed);
    assert_eq!(windows(rig.pair()).len(), 1);

    let stopped = rig.stop(libc::SIGTERM);
    assert!(stopped.success(), "{stopped:?}");
    assert!(windows(rig.pair()).is_empty(), "a clean stop left windows open");
    assert!(!rig.connects(Some(CLIENT_V4), SERVER_V4), "open after a clean stop");
    assert_eq!(rules(rig.pair()), installed);

    rig.restart(Duration::from_secs(20));
    assert_eq!(rules(rig.pair()), installed);
    assert_installed(rig.pair());
}

#[test]
fn flush_removes_the_gate() {
    let Some(mut rig) = start("gate_iptables_flush") else { return };
    assert!(!rig.connects(Some(CLIENT2_V4), SERVER_V4));
    let stopped = rig.stop(libc::SIGTERM);
    assert!(stopped.success(), "{stopped:?}");

    let said = rig.admin("--flush");
    assert!(said.contains("Iptables: flushed"), "{said}");
    let left = rules(rig.pair()) + &out(rig.pair(), &["ipset", "-n", "list"]);
    assert!(!left.contains("XKNOCKD") && !left.contains("xknockd"), "{left}");
    assert!(rig.connects(Some(CLIENT2_V4), SERVER_V4), "still closed after --flush");
    assert!(rig.connects(Some(CLIENT2_V6), SERVER_V6), "still closed after --flush");
}

/// The backend alone, driven from a thread in the server namespace.
#[test]
fn install_is_idempotent_and_flush_removes_everything() {
    if !privileged("gate_iptables_backend") {
        return;
    }
    let pair = NetPair::new().unwrap();
    let p = |port| Protected { door: "ssh".into(), port };
    let udp = Step { port: 5353, proto: Proto::Udp };
    in_netns(&pair.server, move || -> Result<(), xknock::gate::GateError> {
        let mut gate = IptablesGate::new()?;
        gate.install(&[p(tcp(PORT)), p(udp)])?;
        gate.open("ssh", CLIENT_V4.parse().unwrap(), &[tcp(PORT)], DURATION)?;
        gate.install(&[p(tcp(PORT))])?;
        gate.install(&[p(tcp(PORT))])?;
        Ok(())
    })
    .unwrap()
    .unwrap();
    assert_installed(&pair);
    assert_eq!(windows(&pair).len(), 1, "install dropped an open window");

    in_netns(&pair.server, || -> Result<(), xknock::gate::GateError> {
        let mut gate = IptablesGate::new()?;
        gate.flush()?;
        gate.flush()
    })
    .unwrap()
    .unwrap();
    let left = rules(&pair) + &out(&pair, &["ipset", "-n", "list"]);
    assert!(!left.contains("XKNOCKD") && !left.contains("xknockd"), "{left}");
    assert!(windows(&pair).is_empty());
}
