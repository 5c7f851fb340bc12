//! The XDP gate end to end: a real TCP listener behind a protected port in
//! the server namespace, real knocks and connects from the client namespace.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use xknock::gate::Gate;
use xknock_tests::{
    daemon::Server,
    netns::{connect_from, echoes, BpffsMount, EchoServer, CLIENT2_V4, CLIENT2_V6, SERVER_V4, SERVER_V6},
    privileged, wait_until,
};

const PORT: u16 = 2222;
const WAIT: Duration = Duration::from_secs(10);
const CONNECT: Duration = Duration::from_millis(700);

fn config(pins: &std::path::Path, duration: u64, stealth: bool) -> String {
    format!(
        r#"
options:
  bpffs_dir: {}
  stealth: {stealth}
doors:
  ssh:
    sequence: ["7000", "8000:udp", "9000"]
    seq_timeout: 5
    tcp_flags: syn
    open:
      ports: ["{PORT}/tcp"]
      duration: {duration}
      backend: xdp
"#,
        pins.display()
    )
}

struct Rig {
    srv: Server,
    _echo: EchoServer,
    pins: std::path::PathBuf,
    _bpffs: BpffsMount,
}

fn start(duration: u64, stealth: bool) -> Rig {
    let bpffs = BpffsMount::new().unwrap();
    let pins = bpffs.0.join("xknockd");
    let srv = Server::start("xknockd.yaml", &config(&pins, duration, stealth), &[]).unwrap();
    let echo = EchoServer::start(&srv.pair.server, &format!("[::]:{PORT}")).unwrap();
    Rig { srv, _echo: echo, pins, _bpffs: bpffs }
}

impl Rig {
    fn connect(&self, src: Option<&str>, server: &str) -> std::io::Result<std::net::TcpStream> {
        let dst = SocketAddr::new(server.parse().unwrap(), PORT);
        let src = src.map(|s| s.parse::<IpAddr>().unwrap());
        connect_from(&self.srv.pair.client, src, dst, CONNECT).unwrap()
    }

    fn knock(&mut self, server: &str, n: usize) {
        self.srv.knock(&[server, "7000", "8000:udp", "9000"]);
        self.srv.daemon.wait_for_n("ssh: OPEN SESAME", n, WAIT).unwrap();
    }

    fn windows(&self) -> usize {
        xknock::bpf::gate::XdpGate::from_pins(&self.pins).unwrap().windows().unwrap().len()
    }
}

fn closed_open_closed(server: &str, other: &str) {
    let mut rig = start(3, false);
    assert!(rig.connect(None, server).is_err(), "closed before the knock");
    rig.knock(server, 1);
    let mut inside = rig.connect(None, server).expect("open after the knock");
    assert!(echoes(&mut inside, b"hello"));
    assert!(rig.connect(Some(other), server).is_err(), "another address stays refused");
    assert!(wait_until(WAIT, || rig.connect(None, server).is_err()), "closed again after the window");
    assert!(echoes(&mut inside, b"still here"), "a connection made inside the window keeps working");
}

#[test]
fn ipv4_closed_knock_open_closed_again() {
    if !privileged("xdp_gate_v4") {
        return;
    }
    closed_open_closed(SERVER_V4, CLIENT2_V4);
}

#[test]
fn ipv6_closed_knock_open_closed_again() {
    if !privileged("xdp_gate_v6") {
        return;
    }
    closed_open_closed(SERVER_V6, CLIENT2_V6);
}

#[test]
fn reknock_keeps_one_entry() {
    if !privileged("xdp_gate_reknock") {
        return;
    }
    let mut rig = start(30, false);
    rig.knock(SERVER_V4, 1);
    rig.knock(SERVER_V4, 2);
    assert_eq!(rig.windows(), 1);
}

#[test]
fn sigkill_leaves_the_gate_closed_and_the_window_ends_on_time() {
    if !privileged("xdp_gate_sigkill") {
        return;
    }
    let mut rig = start(3, false);
    rig.knock(SERVER_V4, 1);
    rig.srv.daemon.child.signal_and_wait(libc::SIGKILL, WAIT).expect("killed");
    assert!(rig.connect(None, SERVER_V4).is_ok(), "the window outlives the daemon");
    assert!(rig.connect(Some(CLIENT2_V4), SERVER_V4).is_err(), "others still refused");
    assert!(wait_until(WAIT, || rig.connect(None, SERVER_V4).is_err()), "the window ends without the daemon");
}

#[test]
fn clean_stop_ends_windows_restart_takes_over_and_flush_removes_everything() {
    if !privileged("xdp_gate_lifecycle") {
        return;
    }
    let mut rig = start(60, false);
    rig.knock(SERVER_V4, 1);
    assert!(rig.srv.daemon.child.signal_and_wait(libc::SIGTERM, WAIT).is_some_and(|s| s.success()));
    assert_eq!(rig.windows(), 0, "a clean stop ends windows");
    assert!(rig.connect(None, SERVER_V4).is_err(), "and keeps the port closed");

    // A second daemon takes over the pinned link: still exactly one program.
    let cfg = rig.srv.config_path("xknockd.yaml");
    let bin = xknock_tests::daemon::bin("xknockd");
    let mut cmd = rig.srv.pair.server_cmd(bin.to_str().unwrap());
    cmd.arg("-v")
        .arg("-c")
        .arg(&cfg)
        .args(["-i", &rig.srv.pair.server_if, "-p"])
        .arg(rig.srv.dir.path("pid2"));
    let mut again = xknock_tests::daemon::Captured::spawn(cmd).unwrap();
    again.wait_for("took over the pinned XDP link", WAIT).unwrap();
    again.wait_for("starting up", WAIT).unwrap();
    rig.srv.knock(&[SERVER_V4, "7000", "8000:udp", "9000"]);
    again.wait_for("ssh: OPEN SESAME", WAIT).unwrap();
    assert!(rig.connect(None, SERVER_V4).is_ok());
    again.child.signal_and_wait(libc::SIGTERM, WAIT);

    let flush =
        rig.srv.pair.server_cmd(bin.to_str().unwrap()).arg("--flush").arg("-c").arg(&cfg).output().unwrap();
    assert!(flush.status.success(), "{}", String::from_utf8_lossy(&flush.stderr));
    assert!(!rig.pins.join("GATE_ALLOW").exists());
    assert!(wait_until(WAIT, || rig.connect(Some(CLIENT2_V4), SERVER_V4).is_ok()), "no gate after --flush");
}

#[test]
fn stealth_knock_ports_do_not_answer() {
    if !privileged("xdp_stealth") {
        return;
    }
    for (stealth, refused) in [(true, false), (false, true)] {
        let rig = start(3, stealth);
        let dst = SocketAddr::new(SERVER_V4.parse().unwrap(), 7000);
        let res = connect_from(&rig.srv.pair.client, None, dst, CONNECT).unwrap();
        let kind = res.err().map(|e| e.kind());
        if refused {
            assert_eq!(kind, Some(std::io::ErrorKind::ConnectionRefused), "RST without stealth");
        } else {
            assert_eq!(kind, Some(std::io::ErrorKind::TimedOut), "no answer with stealth");
        }
        let mut srv = rig.srv;
        srv.daemon.wait_for("ssh: Stage 1", WAIT).unwrap();
    }
}
