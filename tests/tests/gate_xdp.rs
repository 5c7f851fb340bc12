//! The XDP gate end to end: a real TCP listener behind a protected port in
//! the server namespace, real knocks and connects from the client namespace.

use std::{net::SocketAddr, time::Duration};

use xknock::gate::Gate;
use xknock_tests::{
    gate::{Family, Rig, WAIT},
    netns::{connect_from, echoes, CLIENT2_V4, SERVER_V4},
    wait_until,
};

const CONNECT: Duration = Duration::from_millis(700);

fn start(test: &str, duration: u64, stealth: bool) -> Option<Rig> {
    let rig = Rig::start_pinned(test, "xdp", duration, &[&format!("stealth: {stealth}")]);
    rig.map(|rig| rig.connect_timeout(CONNECT))
}

fn windows(rig: &Rig) -> usize {
    xknock::bpf::gate::XdpGate::from_pins(&rig.pins()).unwrap().windows().unwrap().len()
}

fn closed_open_closed(test: &str, f: &Family) {
    let Some(mut rig) = start(test, 3, false) else { return };
    let (server, other) = (f.server, f.client2);
    assert!(!rig.connects(None, server), "closed before the knock");
    rig.knock(server);
    let mut inside = rig.stream_from(None, server).expect("open after the knock");
    assert!(echoes(&mut inside, b"hello"));
    assert!(!rig.connects(Some(other), server), "another address stays refused");
    assert!(rig.closes_within(None, server, WAIT), "closed again after the window");
    assert!(echoes(&mut inside, b"still here"), "a connection made inside the window keeps working");
}

xknock_tests::per_family!(closed_open_closed:
    ipv4_closed_knock_open_closed_again = "xdp_gate_v4",
    ipv6_closed_knock_open_closed_again = "xdp_gate_v6");

#[test]
fn reknock_keeps_one_entry() {
    let Some(mut rig) = start("xdp_gate_reknock", 30, false) else { return };
    rig.knock(SERVER_V4);
    rig.knock(SERVER_V4);
    assert_eq!(windows(&rig), 1);
}

#[test]
fn sigkill_leaves_the_gate_closed_and_the_window_ends_on_time() {
    let Some(mut rig) = start("xdp_gate_sigkill", 3, false) else { return };
    rig.knock(SERVER_V4);
    rig.stop(libc::SIGKILL);
    assert!(rig.connects(None, SERVER_V4), "the window outlives the daemon");
    assert!(!rig.connects(Some(CLIENT2_V4), SERVER_V4), "others still refused");
    assert!(rig.closes_within(None, SERVER_V4, WAIT), "the window ends without the daemon");
}

#[test]
fn clean_stop_ends_windows_restart_takes_over_and_flush_removes_everything() {
    let Some(mut rig) = start("xdp_gate_lifecycle", 60, false) else { return };
    rig.knock(SERVER_V4);
    assert!(rig.stop(libc::SIGTERM).success());
    assert_eq!(windows(&rig), 0, "a clean stop ends windows");
    assert!(!rig.connects(None, SERVER_V4), "and keeps the port closed");

    // A second daemon takes over the pinned link: still exactly one program.
    let mut again = rig.spawn_daemon("pid2");
    again.wait_for("took over the pinned XDP link", WAIT).unwrap();
    again.wait_for("starting up", WAIT).unwrap();
    rig.send_knock(SERVER_V4);
    again.wait_for("ssh: OPEN SESAME", WAIT).unwrap();
    assert!(rig.connects(None, SERVER_V4));
    again.child.signal_and_wait(libc::SIGTERM, WAIT);

    rig.admin("--flush");
    assert!(!rig.pins().join("GATE_ALLOW").exists());
    assert!(wait_until(WAIT, || rig.connects(Some(CLIENT2_V4), SERVER_V4)), "no gate after --flush");
}

#[test]
fn stealth_knock_ports_do_not_answer() {
    for (stealth, refused) in [(true, false), (false, true)] {
        let Some(mut rig) = start("xdp_stealth", 3, stealth) else { return };
        let dst = SocketAddr::new(SERVER_V4.parse().unwrap(), 7000);
        let res = connect_from(&rig.pair().client, None, dst, rig.connect).unwrap();
        let kind = res.err().map(|e| e.kind());
        if refused {
            assert_eq!(kind, Some(std::io::ErrorKind::ConnectionRefused), "RST without stealth");
        } else {
            assert_eq!(kind, Some(std::io::ErrorKind::TimedOut), "no answer with stealth");
        }
        // The kernel kept the connect as the first step: the second brings both.
        rig.srv.knock(&[SERVER_V4, "8000:udp"]);
        rig.srv.daemon.wait_for("ssh: Stage 2", WAIT).unwrap();
    }
}

/// The panic a probe from `src` ends in; a verdict instead fails the test.
fn probe_panic(rig: &Rig, src: Option<&str>) -> String {
    let probe = std::panic::AssertUnwindSafe(|| rig.connects(src, SERVER_V4));
    let verdict = std::panic::catch_unwind(probe);
    let payload = verdict.expect_err("the probe gave a verdict");
    payload.downcast_ref::<String>().cloned().unwrap_or_default()
}

/// The probes cannot mistake a refusal for a closed gate: once the
/// listener is gone, the knocker's connect gets an RST and the probe fails.
#[test]
fn a_refusal_is_not_taken_for_a_closed_gate() {
    let Some(mut rig) = start("xdp_probe_refusal", 30, false) else { return };
    rig.knock(SERVER_V4);
    assert!(rig.connects(None, SERVER_V4), "open after the knock");
    rig.stop_listener();
    let said = probe_panic(&rig, None);
    assert!(said.contains("not a closed gate"), "{said}");
}

/// Nor a timeout without a listener, which proves nothing.
#[test]
fn a_timeout_without_a_listener_is_not_taken_for_a_closed_gate() {
    let Some(mut rig) = start("xdp_probe_no_listener", 30, false) else { return };
    rig.stop_listener();
    let said = probe_panic(&rig, Some(CLIENT2_V4));
    assert!(said.contains("nothing listens"), "{said}");
}
