//! knockd 0.8 behaviour end to end: real packets from the client namespace,
//! xknockd in the server namespace, commands writing to files.

use std::{
    net::{Ipv4Addr, UdpSocket},
    time::Duration,
};

use xknock_tests::{
    daemon::Server,
    netns::{in_netns, send_tcp_flags, CLIENT2_V4, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6},
    privileged, wait_until,
};

const WAIT: Duration = Duration::from_secs(10);
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// A three-step door writing start/stop lines to `{DIR}/out`, and a
/// one-step marker door used to prove earlier knocks were fully processed.
const CONFIG: &str = r#"
doors:
  main:
    sequence: ["7000", "8000:udp", "9000"]
    seq_timeout: 3
    tcp_flags: "syn,!ack"
    start_command: echo "start %IP%" >> {DIR}/out
    cmd_timeout: 1
    stop_command: echo "stop %IP%" >> {DIR}/out
  marker:
    sequence: ["6000:udp"]
"#;

fn start() -> Server {
    Server::start("xknockd.yaml", CONFIG, &[]).unwrap()
}

fn out_lines(srv: &Server) -> Vec<String> {
    std::fs::read_to_string(srv.dir.path("out")).unwrap_or_default().lines().map(String::from).collect()
}

/// Knocks the marker door from the second client address and waits for its
/// OPEN SESAME: the tracker handles events in order, so everything sent
/// before it has been handled and logged by then.
fn barrier(srv: &mut Server) {
    let before = srv.daemon.count("marker: OPEN SESAME");
    in_netns(&srv.pair.client, || {
        let s = UdpSocket::bind((CLIENT2_V4.parse::<Ipv4Addr>().unwrap(), 0)).unwrap();
        s.send_to(&[0], (SERVER_V4, 6000)).unwrap();
    })
    .unwrap();
    srv.daemon.wait_for_n("marker: OPEN SESAME", before + 1, WAIT).unwrap();
}

fn full_knock(srv: &Server, host: &str) {
    srv.knock(&[host, "7000", "8000:udp", "9000"]);
}

#[test]
fn start_then_stop_command_with_the_knockers_address() {
    if !privileged("parity_commands") {
        return;
    }
    let mut srv = start();
    full_knock(&srv, SERVER_V4);
    srv.daemon.wait_for(&format!("{CLIENT_V4}: main: Stage 3"), WAIT).unwrap();
    srv.daemon.wait_for(&format!("{CLIENT_V4}: main: OPEN SESAME"), WAIT).unwrap();
    srv.daemon.wait_for("main: running command: echo \"start 10.77.0.2\"", WAIT).unwrap();
    assert!(wait_until(WAIT, || out_lines(&srv).len() >= 2), "{:?}", out_lines(&srv));
    assert_eq!(out_lines(&srv), [format!("start {CLIENT_V4}"), format!("stop {CLIENT_V4}")]);
}

#[test]
fn ipv6_knock_opens_with_the_v6_address() {
    if !privileged("parity_ipv6") {
        return;
    }
    let mut srv = start();
    full_knock(&srv, SERVER_V6);
    srv.daemon.wait_for(&format!("{CLIENT_V6}: main: OPEN SESAME"), WAIT).unwrap();
    assert!(wait_until(WAIT, || out_lines(&srv).contains(&format!("start {CLIENT_V6}"))));
}

#[test]
fn wrong_port_mid_sequence_invalidates_and_does_not_restart() {
    if !privileged("parity_wrong_port") {
        return;
    }
    let mut srv = start();
    srv.knock(&[SERVER_V4, "7000", "9000", "8000:udp", "9000"]);
    barrier(&mut srv);
    assert_eq!(srv.daemon.count("main: OPEN SESAME"), 0, "{:#?}", srv.daemon.output());
    // knockd logs Stage 1 here; xknockd never logs a source that did not
    // get past its first step (the kernel keeps first steps, issue 9).
    assert_eq!(srv.daemon.count("main: Stage 1"), 0);
    assert_eq!(srv.daemon.count("main: Stage 2"), 0);
}

#[test]
fn sequence_times_out_from_the_first_knock() {
    if !privileged("parity_timeout") {
        return;
    }
    let mut srv = start();
    srv.knock(&[SERVER_V4, "7000", "8000:udp"]);
    // The purge timer reports it without waiting for another packet.
    srv.daemon.wait_for(&format!("{CLIENT_V4}: main: sequence timeout (stage 2)"), WAIT).unwrap();
    srv.knock(&[SERVER_V4, "9000"]);
    barrier(&mut srv);
    assert_eq!(srv.daemon.count("main: OPEN SESAME"), 0, "{:#?}", srv.daemon.output());
}

#[test]
fn flag_mismatch_neither_advances_nor_resets() {
    if !privileged("parity_flags") {
        return;
    }
    let mut srv = start();
    // The kernel keeps the first step: "Stage 1" is logged with the second.
    srv.knock(&[SERVER_V4, "7000"]);
    let server: Ipv4Addr = SERVER_V4.parse().unwrap();
    in_netns(&srv.pair.client, move || {
        send_tcp_flags(server, 9000, ACK).unwrap();
        send_tcp_flags(server, 9000, SYN | ACK).unwrap();
        send_tcp_flags(server, 7000, ACK).unwrap();
    })
    .unwrap();
    srv.knock(&[SERVER_V4, "8000:udp", "9000"]);
    srv.daemon.wait_for("main: OPEN SESAME", WAIT).unwrap();
}

#[test]
fn duplicate_syn_does_not_reset_the_sequence() {
    if !privileged("parity_dup") {
        return;
    }
    let mut srv = start();
    // knockd #72/#90/#92: a retransmitted SYN reset the sequence.
    srv.knock(&[SERVER_V4, "7000", "7000", "8000:udp", "8000:udp", "9000"]);
    srv.daemon.wait_for("main: OPEN SESAME", WAIT).unwrap();
}

#[test]
fn sighup_with_a_broken_config_keeps_serving_and_a_good_one_applies() {
    if !privileged("parity_sighup") {
        return;
    }
    let mut srv = start();
    let path = srv.config_path("xknockd.yaml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("\"7000\"", "\"70000\"")).unwrap();
    srv.signal(libc::SIGHUP);
    srv.daemon.wait_for("keeping the running config", WAIT).unwrap();
    full_knock(&srv, SERVER_V4);
    srv.daemon.wait_for("main: OPEN SESAME", WAIT).unwrap();

    std::fs::write(&path, good.replace("\"7000\"", "\"7100\"")).unwrap();
    srv.signal(libc::SIGHUP);
    srv.daemon.wait_for_n("re-reading config file", 2, WAIT).unwrap();
    barrier(&mut srv);
    srv.knock(&[SERVER_V4, "7100", "8000:udp", "9000"]);
    srv.daemon.wait_for_n("main: OPEN SESAME", 2, WAIT).unwrap();
}

#[test]
fn one_time_sequences_are_burnt_and_replays_refused_for_v4_and_v6() {
    if !privileged("parity_one_time") {
        return;
    }
    let dir = xknock_tests::daemon::TempDir::new();
    let seqs = dir.path("seqs");
    std::fs::write(&seqs, " 7001,8001:udp,9001\n 7002,8002:udp,9002\n").unwrap();
    let cfg = format!(
        "doors:\n  once:\n    one_time_sequences: {}\n    seq_timeout: 5\n  marker:\n    sequence: [\"6000:udp\"]\n",
        seqs.display()
    );
    let mut srv = Server::start("xknockd.yaml", &cfg, &[]).unwrap();
    srv.knock(&[SERVER_V4, "7001", "8001:udp", "9001"]);
    srv.daemon.wait_for("once: OPEN SESAME", WAIT).unwrap();
    let text = std::fs::read_to_string(&seqs).unwrap();
    assert!(text.starts_with("#7001,8001:udp,9001\n"), "{text:?}");
    // Replay of the burnt sequence: refused.
    srv.knock(&[SERVER_V4, "7001", "8001:udp", "9001"]);
    barrier(&mut srv);
    assert_eq!(srv.daemon.count("once: OPEN SESAME"), 1);
    // The next line is live at once, over IPv6 too (knockd forgets that filter).
    srv.knock(&[SERVER_V6, "7002", "8002:udp", "9002"]);
    srv.daemon.wait_for_n("once: OPEN SESAME", 2, WAIT).unwrap();
    srv.daemon
        .wait_for(
            "no more sequences left in the one time sequences file for door once --> disabling the door",
            WAIT,
        )
        .unwrap();
    assert!(std::fs::read_to_string(&seqs).unwrap().ends_with("#7002,8002:udp,9002\n"));
}
