//! ICMP echo steps end to end: `ping -s N` (and `xknock HOST icmp:N`) mixed
//! with port knocks opens a door over IPv4 and IPv6, the wrong length does
//! not, and a stealthy door answers no echo request it records.

use std::time::Duration;

use xknock_tests::{
    daemon::{Server, TempDir},
    netns::{CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6},
    privileged, wait_until,
};

const WAIT: Duration = Duration::from_secs(10);

const CONFIG: &str = "\
doors:
  mixed:
    sequence: [7000, \"icmp:64\", \"8000:udp\"]
    seq_timeout: 5
    start_command: /bin/sh -c 'echo mixed %IP% >> {DIR}/out'
  hidden:
    sequence: [\"icmp:100\", 9000]
    seq_timeout: 5
    stealth: true
    start_command: /bin/sh -c 'echo hidden %IP% >> {DIR}/out'
";

fn out(dir: &TempDir) -> Vec<String> {
    std::fs::read_to_string(dir.path("out")).unwrap_or_default().lines().map(String::from).collect()
}

fn expect_out(srv: &Server, want: &[String]) {
    wait_until(WAIT, || out(&srv.dir).len() >= want.len());
    assert_eq!(out(&srv.dir), want, "daemon output:\n{}", srv.daemon.output().join("\n"));
}

/// `ping -c 1 -W 1 -s LEN HOST` from the client: whether a reply came.
fn ping(srv: &Server, host: &str, len: u16) -> bool {
    let mut cmd = srv.pair.client_cmd("ping");
    let family = if host.contains(':') { "-6" } else { "-4" };
    cmd.args([family, "-c", "1", "-W", "1", "-s", &len.to_string(), host]);
    cmd.output().expect("ping").status.success()
}

fn xknock(srv: &Server, args: &[&str]) {
    srv.knock(args);
}

#[test]
fn ping_and_port_knocks_open_a_mixed_door_on_both_families_and_the_wrong_length_does_not() {
    if !privileged("icmp_mixed") {
        return;
    }
    let srv = Server::start("x.yaml", CONFIG, &[]).expect("xknockd");
    let v4 = format!("mixed {CLIENT_V4}");

    xknock(&srv, &[SERVER_V4, "7000"]);
    assert!(ping(&srv, SERVER_V4, 64), "a visible door lets ping have its reply");
    xknock(&srv, &[SERVER_V4, "8000:udp"]);
    expect_out(&srv, std::slice::from_ref(&v4));

    // 65 bytes is no step: the UDP knock then finds nothing to complete.
    // The control, sent by xknock over IPv6, must be the next line.
    xknock(&srv, &[SERVER_V4, "7000"]);
    assert!(ping(&srv, SERVER_V4, 65));
    xknock(&srv, &[SERVER_V4, "8000:udp"]);
    let v6 = format!("mixed {CLIENT_V6}");
    xknock(&srv, &["-6", SERVER_V6, "7000", "icmp:64", "8000:udp"]);
    expect_out(&srv, &[v4.clone(), v6.clone()]);

    xknock(&srv, &["-6", SERVER_V6, "7000"]);
    assert!(ping(&srv, SERVER_V6, 64));
    xknock(&srv, &["-6", SERVER_V6, "8000:udp"]);
    expect_out(&srv, &[v4, v6.clone(), v6]);
}

#[test]
fn a_stealthy_door_answers_no_echo_it_records() {
    if !privileged("icmp_stealth") {
        return;
    }
    let srv = Server::start("x.yaml", CONFIG, &[]).expect("xknockd");
    assert!(ping(&srv, SERVER_V4, 99), "the server answers pings of other lengths");
    assert!(!ping(&srv, SERVER_V4, 100), "the knock length gets no reply");
    // It was recorded all the same: the next step opens.
    xknock(&srv, &[SERVER_V4, "9000"]);
    expect_out(&srv, &[format!("hidden {CLIENT_V4}")]);
}
