//! The nftables gate end to end: xknockd in the server namespace owns
//! `table inet xknockd`, a TCP echo server listens on the protected port, and
//! the client connects before, during and after a knock's window. nft only
//! ever runs inside the test's own namespaces.

use std::{net::IpAddr, time::Duration};

use xknock::{
    config::model::{Proto, Step},
    gate::{nftables::NftGate, Gate, Protected, Window},
};
use xknock_tests::{
    gate::{server_out, Family, Rig, CONNECT, PORT, WAIT},
    netns::{echoes, in_netns, NetPair, CLIENT2_V4, CLIENT2_V6, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6},
    privileged, wait_until,
};

const DURATION: Duration = Duration::from_secs(3);

fn start(test: &str) -> Option<Rig> {
    Rig::start(test, "nftables", DURATION.as_secs(), &[])
}

fn nft(pair: &NetPair, args: &[&str]) -> String {
    let mut argv = vec!["nft"];
    argv.extend_from_slice(args);
    server_out(pair, &argv)
}

/// How many allow elements hold `client`'s key for the protected port.
fn elements_for(pair: &NetPair, client: &str) -> usize {
    let key = format!(r#"["{client}", "tcp", {PORT}]"#);
    nft(pair, &["-j", "list", "ruleset"]).matches(&key).count()
}

/// The windows as the backend itself reads them from the kernel.
fn windows(pair: &NetPair) -> Vec<Window> {
    in_netns(&pair.server, || NftGate::new()?.windows()).unwrap().unwrap()
}

/// Tables, sets, chains and rules without set elements (`-t`), without
/// handles: what must be identical after every install.
fn layout(pair: &NetPair) -> String {
    nft(pair, &["-t", "list", "ruleset"])
}

xknock_tests::per_family!(window_scenario:
    ipv4_window_opens_for_the_knocker_only_and_ends_on_time = "gate_nftables_v4",
    ipv6_window_opens_for_the_knocker_only_and_ends_on_time = "gate_nftables_v6");

/// Closed before the knock, open after it for the knocker only, closed
/// again after `duration` while the connection made inside stays up.
fn window_scenario(test: &str, f: &Family) {
    let Some(mut rig) = start(test) else { return };
    let (server, client, client2) = (f.server, f.client, f.client2);
    assert!(!rig.connects(None, server), "open before the knock");

    let opened = rig.knock(server);
    let mut inside = None;
    assert!(wait_until(WAIT, || {
        inside = rig.stream_from(None, server).ok();
        inside.is_some()
    }));
    let mut inside = inside.unwrap();
    assert!(echoes(&mut inside, b"ping"));
    assert!(!rig.connects_or_times_out(Some(client2), server), "{client2} got in");
    assert_eq!(elements_for(rig.pair(), client), 1);

    let took = rig.time_until_closed(None, server, opened, DURATION + WAIT);
    assert!(
        took >= DURATION - Duration::from_millis(500) && took <= DURATION + CONNECT * 3,
        "window lasted {took:?}, configured {DURATION:?}"
    );
    assert!(echoes(&mut inside, b"ping"), "the inside connection died");
    assert_eq!(elements_for(rig.pair(), client), 0);
}

#[test]
fn reknock_extends_the_window_and_keeps_one_element() {
    let Some(mut rig) = start("gate_nftables_reknock") else { return };
    rig.knock(SERVER_V4);
    assert!(wait_until(WAIT, || elements_for(rig.pair(), CLIENT_V4) == 1));
    // Let the first window run down, so an extension is visible.
    assert!(wait_until(WAIT, || windows(rig.pair()).iter().all(|w| w.remaining <= Duration::from_secs(1))));
    rig.knock(SERVER_V4);
    assert!(wait_until(WAIT, || windows(rig.pair()).iter().any(|w| w.remaining >= Duration::from_secs(2))));
    assert_eq!(elements_for(rig.pair(), CLIENT_V4), 1);
    let w = windows(rig.pair());
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].door, "ssh");
    assert_eq!(w[0].src, CLIENT_V4.parse::<IpAddr>().unwrap());
    assert_eq!(w[0].port, Step { port: PORT, proto: Proto::Tcp });
}

#[test]
fn after_sigkill_the_window_still_ends_on_time_and_stays_closed() {
    let Some(mut rig) = start("gate_nftables_sigkill") else { return };
    let opened = rig.knock(SERVER_V4);
    assert!(wait_until(WAIT, || elements_for(rig.pair(), CLIENT_V4) == 1));
    rig.stop(libc::SIGKILL);

    assert!(rig.connects(None, SERVER_V4), "window lost with the daemon");
    assert!(!rig.connects_or_times_out(Some(CLIENT2_V4), SERVER_V4));
    let took = rig.time_until_closed(None, SERVER_V4, opened, DURATION + WAIT);
    assert!(took <= DURATION + CONNECT * 3, "window lasted {took:?}");
    assert!(!rig.connects_or_times_out(Some(CLIENT2_V4), SERVER_V4));
    assert!(!rig.connects(None, SERVER_V4));
}

#[test]
fn restarts_adopt_the_table_and_a_clean_stop_leaves_it_closed() {
    let Some(mut rig) = start("gate_nftables_restart") else { return };
    let first = layout(rig.pair());
    assert_eq!(first.matches("table ").count(), 1, "{first}");
    assert_eq!(first.matches("chain ").count(), 1, "{first}");
    assert_eq!(first.matches(" drop").count(), 1, "{first}");

    // A window from the killed run survives the next install.
    rig.knock(SERVER_V4);
    assert!(wait_until(WAIT, || elements_for(rig.pair(), CLIENT_V4) == 1));
    rig.stop(libc::SIGKILL);
    rig.restart(WAIT);
    assert_eq!(layout(rig.pair()), first);
    assert_eq!(elements_for(rig.pair(), CLIENT_V4), 1);
    let protected = nft(rig.pair(), &["list", "set", "inet", "xknockd", "protected"]);
    assert_eq!(protected.matches("tcp . 2222").count(), 1, "{protected}");

    // A clean stop ends the window and keeps the port closed.
    rig.stop(libc::SIGTERM);
    assert_eq!(layout(rig.pair()), first);
    assert!(windows(rig.pair()).is_empty());
    assert!(!rig.connects(None, SERVER_V4), "open after SIGTERM");

    rig.restart(WAIT);
    assert_eq!(layout(rig.pair()), first);
}

/// The backend on its own, driven from a thread in the server namespace:
/// every call twice, and the kernel state counted after each.
#[test]
fn backend_calls_are_idempotent() {
    if !privileged("gate_nftables_backend") {
        return;
    }
    let pair = NetPair::new().unwrap();
    let run = |f: fn(&mut NftGate)| in_netns(&pair.server, move || f(&mut NftGate::new().unwrap())).unwrap();
    let protected = |g: &mut NftGate| {
        let p = |port, proto| Protected { door: "d".into(), port: Step { port, proto } };
        g.install(&[p(2222, Proto::Tcp), p(53, Proto::Udp)]).unwrap()
    };
    run(protected);
    let first = layout(&pair);
    run(protected);
    assert_eq!(layout(&pair), first);

    let open = |g: &mut NftGate| {
        let ports = [Step { port: PORT, proto: Proto::Tcp }];
        for src in [CLIENT_V4, CLIENT_V6, CLIENT_V4] {
            let src = src.parse().unwrap();
            g.open("d", src, &ports, Duration::from_secs(60)).unwrap();
        }
    };
    run(open);
    assert_eq!(elements_for(&pair, CLIENT_V4), 1);
    assert_eq!(elements_for(&pair, CLIENT_V6), 1);
    assert_eq!(windows(&pair).len(), 2);
    run(protected);
    assert_eq!(windows(&pair).len(), 2, "install dropped windows");

    run(|g| g.close_windows().unwrap());
    assert!(windows(&pair).is_empty());
    assert_eq!(layout(&pair), first);

    run(|g| g.flush().unwrap());
    run(|g| g.flush().unwrap());
    assert_eq!(layout(&pair), "");
    run(|g| g.close_windows().unwrap());
    assert!(windows(&pair).is_empty());
}

/// A table left in another layout (here: another priority and a stray
/// chain) is replaced in one go, and its windows carry over.
#[test]
fn install_replaces_a_foreign_layout_and_keeps_its_windows() {
    if !privileged("gate_nftables_foreign") {
        return;
    }
    let pair = NetPair::new().unwrap();
    let old = "add table inet xknockd; \
        add set inet xknockd allow4 { type ipv4_addr . inet_proto . inet_service; flags timeout; }; \
        add element inet xknockd allow4 { 10.77.0.2 . tcp . 2222 timeout 60s comment \"ssh\" }; \
        add chain inet xknockd input { type filter hook input priority 0; policy accept; }; \
        add chain inet xknockd old";
    nft(&pair, &[old]);
    let install = |g: &mut NftGate| {
        let port = Step { port: PORT, proto: Proto::Tcp };
        g.install(&[Protected { door: "ssh".into(), port }]).unwrap()
    };
    in_netns(&pair.server, move || install(&mut NftGate::new().unwrap())).unwrap();

    let now = layout(&pair);
    assert!(!now.contains("chain old"), "{now}");
    assert!(now.contains("priority filter - 10"), "{now}");
    assert_eq!(now.matches("table ").count(), 1, "{now}");
    let w = windows(&pair);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!((w[0].door.as_str(), w[0].port.port), ("ssh", PORT));
    assert!(w[0].remaining >= Duration::from_secs(50), "{w:?}");
}

/// `--status` reads the windows back from the kernel, and `--flush` removes
/// the table, from separate processes while the daemon is gone.
#[test]
fn status_lists_the_window_and_flush_removes_the_table() {
    let Some(mut rig) = start("gate_nftables_status_flush") else { return };
    rig.knock(SERVER_V4);
    assert!(wait_until(WAIT, || elements_for(rig.pair(), CLIENT_V4) == 1));
    rig.stop(libc::SIGKILL);
    let status = rig.admin("--status");
    let row = status.lines().find(|l| l.contains(CLIENT_V4)).unwrap_or_else(|| panic!("{status}"));
    assert!(row.contains("ssh") && row.contains("2222/tcp"), "{status}");
    rig.admin("--flush");
    assert_eq!(layout(rig.pair()), "");
    // With the gate gone the port is plain open, even to a non-knocker.
    assert!(rig.connects_or_times_out(Some(CLIENT2_V4), SERVER_V4));
    assert!(rig.connects_or_times_out(Some(CLIENT2_V6), SERVER_V6));
}
