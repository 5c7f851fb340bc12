//! End to end over veth: real packets from the client namespace reach the
//! daemon through XDP and the ring buffer, carrying the client's address.

use std::time::Duration;

use xknock_tests::{
    daemon::Server,
    netns::{CLIENT_V4, CLIENT_V6, OTHER_V4, OTHER_V6, SERVER_V4, SERVER_V6},
    privileged,
};

const CONFIG: &str = r#"
doors:
  tcp-door:
    sequence: ["7000"]
    start_command: echo "opened tcp-door for %IP%"
  udp-door:
    sequence: ["8000:udp"]
    start_command: echo "opened udp-door for %IP%"
"#;

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn tcp_and_udp_over_ipv4_and_ipv6_reach_the_daemon() {
    if !privileged("pipeline_v4_v6") {
        return;
    }
    let mut rig = Server::start("xknockd.yaml", CONFIG, &[]).unwrap();
    // --xdp-mode auto picks skb on veth, whose native path drops under load.
    rig.daemon.wait_for("veth, attaching in skb mode", WAIT).unwrap();
    let link = rig.pair.in_ns(&rig.pair.server, &["ip", "link", "show", &rig.pair.server_if]).unwrap();
    assert!(String::from_utf8_lossy(&link.stdout).contains("xdpgeneric"), "generic XDP on the veth");
    for (server, client) in [(SERVER_V4, CLIENT_V4), (SERVER_V6, CLIENT_V6)] {
        rig.knock(&[server, "7000"]);
        rig.daemon.wait_for(&format!("knock {client} -> {server} 7000:tcp"), WAIT).unwrap();
        rig.daemon.wait_for(&format!("opened tcp-door for {client}"), WAIT).unwrap();
        rig.knock(&[server, "8000:udp"]);
        rig.daemon.wait_for(&format!("knock {client} -> {server} 8000:udp"), WAIT).unwrap();
        rig.daemon.wait_for(&format!("opened udp-door for {client}"), WAIT).unwrap();
        rig.daemon.wait_for(&format!("{client}: tcp-door: OPEN SESAME"), WAIT).unwrap();
    }
    // SIGUSR1 reports the kernel counters: four knocks were seen.
    rig.signal(libc::SIGUSR1);
    rig.daemon.wait_for("stats: frames=", WAIT).unwrap();
    let line = rig.daemon.output().into_iter().find(|l| l.contains("stats: frames=")).unwrap();
    let hits: u64 = line.split("knock_hits=").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert_eq!(hits, 4, "{line}");
}

#[test]
fn packets_to_an_address_that_is_not_ours_are_not_knocks() {
    if !privileged("pipeline_not_local") {
        return;
    }
    let mut rig = Server::start("xknockd.yaml", CONFIG, &[]).unwrap();
    for (other, server) in [(OTHER_V4, SERVER_V4), (OTHER_V6, SERVER_V6)] {
        rig.knock(&[other, "7000"]);
        // A knock to a real address afterwards: once it shows up, the earlier
        // packet has certainly been through XDP too.
        rig.knock(&[server, "8000:udp"]);
        rig.daemon.wait_for(&format!("-> {server} 8000:udp"), WAIT).unwrap();
        assert_eq!(rig.daemon.count(&format!("-> {other} ")), 0, "{:#?}", rig.daemon.output());
    }
}

#[test]
fn sigterm_detaches_and_removes_the_pid_file() {
    if !privileged("pipeline_sigterm") {
        return;
    }
    let mut rig = Server::start("xknockd.yaml", CONFIG, &[]).unwrap();
    let pid = rig.dir.path("pid");
    assert!(pid.exists());
    let status = rig.daemon.child.signal_and_wait(libc::SIGTERM, WAIT).expect("daemon exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(rig.daemon.output().iter().any(|l| l.contains("shutting down")));
    assert!(!pid.exists(), "pid file removed");
    let links = rig.pair.in_ns(&rig.pair.server, &["ip", "link", "show", &rig.pair.server_if]).unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("xdp"), "XDP detached");
}
