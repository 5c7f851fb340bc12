//! The iptables gate end to end: xknockd in the server namespace guards a TCP
//! echo service with real iptables, ip6tables and ipset rules, and the client
//! namespace knocks and connects. Nothing here runs outside the test
//! namespaces.

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use xknock::config::model::{Proto, Step};
use xknock::gate::{iptables::IptablesGate, Gate, Protected, Window};
use xknock_tests::{
    daemon::{bin, Captured, Server},
    netns::{
        connect_from, echoes, in_netns, EchoServer, NetPair, CLIENT2_V4, CLIENT2_V6, CLIENT_V4, CLIENT_V6,
        SERVER_V4, SERVER_V6,
    },
    privileged, wait_until,
};

const CONFIG_FILE: &str = "xknockd.yaml";
const CONFIG: &str = r#"
options:
  bpffs_dir: {DIR}/bpf
doors:
  ssh:
    sequence: ["7000", "8000:udp", "9000"]
    seq_timeout: 5
    tcp_flags: syn
    open:
      ports: ["2222/tcp"]
      duration: 3
      backend: iptables
"#;
const PORT: u16 = 2222;
const DURATION: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(10);
const CONNECT: Duration = Duration::from_secs(1);
/// How long past `DURATION` a window may take to be seen closed: each failed
/// probe takes its 1 s connect timeout.
const SLACK: Duration = Duration::from_secs(4);

/// Whether a TCP connect from `src` in the client namespace to the protected
/// port succeeds within 1 s.
fn connects(pair: &NetPair, src: &str, dst: &str) -> bool {
    stream_from(pair, src, dst).is_ok()
}

fn stream_from(pair: &NetPair, src: &str, dst: &str) -> std::io::Result<TcpStream> {
    let dst = SocketAddr::new(dst.parse().unwrap(), PORT);
    connect_from(&pair.client, Some(src.parse().unwrap()), dst, CONNECT).unwrap()
}

fn echo_server(pair: &NetPair) -> EchoServer {
    EchoServer::start(&pair.server, &format!("[::]:{PORT}")).unwrap()
}

fn knock(srv: &mut Server, server: &str) {
    let n = srv.daemon.count("OPEN SESAME") + 1;
    srv.knock(&[server, "7000", "8000:udp", "9000"]);
    srv.daemon.wait_for_n("OPEN SESAME", n, WAIT).unwrap();
}

/// The windows the kernel holds now, read by the backend in the namespace.
fn windows(pair: &NetPair) -> Vec<Window> {
    in_netns(&pair.server, || IptablesGate::new()?.windows()).unwrap().unwrap()
}

fn out(pair: &NetPair, argv: &[&str]) -> String {
    String::from_utf8(pair.in_ns(&pair.server, argv).unwrap().stdout).unwrap()
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
                format!("-A XKNOCKD -p tcp -m tcp --dport {PORT} -m conntrack --ctstate NEW -j DROP"),
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

/// Polls until the client is refused again and returns how long that took.
fn time_until_closed(pair: &NetPair, src: &str, dst: &str, since: Instant) -> Duration {
    let closed = wait_until(DURATION + SLACK, || !connects(pair, src, dst));
    assert!(closed, "{src} still connects {:?} after the knock", since.elapsed());
    since.elapsed()
}

/// The whole story for one address family.
fn knock_cycle(server: &str, client: &str, client2: &str) {
    let mut srv = Server::start(CONFIG_FILE, CONFIG, &[]).unwrap();
    let _echo = echo_server(&srv.pair);
    assert_installed(&srv.pair);
    assert!(!connects(&srv.pair, client, server), "open before the knock");

    knock(&mut srv, server);
    let opened = Instant::now();
    let w = await_window(&srv.pair, client);
    assert_eq!((w.door.as_str(), w.port), ("ssh", tcp(PORT)));
    assert!(connects(&srv.pair, client, server), "closed after the knock");
    assert!(!connects(&srv.pair, client2, server), "open to a second address");
    let mut inside = stream_from(&srv.pair, client, server).expect("connect inside the window");
    assert!(echoes(&mut inside, b"ping"));

    let took = time_until_closed(&srv.pair, client, server, opened);
    assert!(took >= DURATION - Duration::from_secs(1), "closed after {took:?}");
    assert!(echoes(&mut inside, b"still there"), "the connection opened inside the window died");
    assert!(!connects(&srv.pair, client2, server));
    assert!(windows(&srv.pair).is_empty());
}

const fn tcp(port: u16) -> Step {
    Step { port, proto: Proto::Tcp }
}

#[test]
fn v4_knock_opens_for_the_knocker_only_until_the_window_ends() {
    if !privileged("gate_iptables_v4") {
        return;
    }
    knock_cycle(SERVER_V4, CLIENT_V4, CLIENT2_V4);
}

#[test]
fn v6_knock_opens_for_the_knocker_only_until_the_window_ends() {
    if !privileged("gate_iptables_v6") {
        return;
    }
    knock_cycle(SERVER_V6, CLIENT_V6, CLIENT2_V6);
}

#[test]
fn a_reknock_extends_one_entry_and_duplicates_nothing() {
    if !privileged("gate_iptables_reknock") {
        return;
    }
    let mut srv = Server::start(CONFIG_FILE, CONFIG, &[]).unwrap();
    knock(&mut srv, SERVER_V4);
    await_window(&srv.pair, CLIENT_V4);
    let before = rules(&srv.pair);
    // Let the first window run down, so the re-knock's timeout is visibly new.
    let ran_down =
        wait_until(WAIT, || await_window(&srv.pair, CLIENT_V4).remaining <= Duration::from_secs(1));
    assert!(ran_down);

    knock(&mut srv, SERVER_V4);
    let renewed = wait_until(WAIT, || await_window(&srv.pair, CLIENT_V4).remaining >= Duration::from_secs(2));
    assert!(renewed, "the re-knock did not extend the window");
    assert_eq!(windows(&srv.pair).len(), 1, "{:?}", windows(&srv.pair));
    let saved = out(&srv.pair, &["ipset", "list", "xknockd4", "-output", "save"]);
    assert_eq!(saved.lines().filter(|l| l.starts_with("add ")).count(), 1, "{saved}");
    assert_eq!(rules(&srv.pair), before);
    assert_installed(&srv.pair);
}

#[test]
fn after_a_sigkill_the_window_still_ends_on_time() {
    if !privileged("gate_iptables_sigkill") {
        return;
    }
    let mut srv = Server::start(CONFIG_FILE, CONFIG, &[]).unwrap();
    let _echo = echo_server(&srv.pair);
    knock(&mut srv, SERVER_V4);
    let opened = Instant::now();
    await_window(&srv.pair, CLIENT_V4);
    assert!(srv.daemon.child.signal_and_wait(libc::SIGKILL, WAIT).is_some());

    let status = admin(&srv, "--status");
    assert!(status.contains(&format!("ssh\t{CLIENT_V4}\t{PORT}/tcp\t")), "{status}");
    assert!(!connects(&srv.pair, CLIENT2_V4, SERVER_V4), "open to others after the kill");
    let took = time_until_closed(&srv.pair, CLIENT_V4, SERVER_V4, opened);
    assert!(took <= DURATION + SLACK, "closed after {took:?}");
    assert!(!connects(&srv.pair, CLIENT2_V4, SERVER_V4));
    assert_installed(&srv.pair);
    assert!(windows(&srv.pair).is_empty());
}

/// Runs `xknockd FLAG -c CONFIG` in the server namespace, as an admin
/// would, and returns its stdout.
fn admin(srv: &Server, flag: &str) -> String {
    let out = srv
        .pair
        .server_cmd(bin("xknockd").to_str().unwrap())
        .arg(flag)
        .arg("-c")
        .arg(srv.config_path(CONFIG_FILE))
        .output()
        .unwrap();
    assert!(out.status.success(), "xknockd {flag}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Starts another xknockd on the same namespace and config.
fn start_again(srv: &Server) -> Captured {
    let mut cmd = srv.pair.server_cmd(bin("xknockd").to_str().unwrap());
    cmd.arg("-v")
        .arg("-c")
        .arg(srv.config_path(CONFIG_FILE))
        .args(["-i", &srv.pair.server_if, "-p"])
        .arg(srv.dir.path("pid"));
    let mut daemon = Captured::spawn(cmd).unwrap();
    daemon.wait_for("starting up, listening on", Duration::from_secs(20)).unwrap();
    daemon
}

#[test]
fn restarts_adopt_the_gate_and_a_clean_stop_closes_windows() {
    if !privileged("gate_iptables_restart") {
        return;
    }
    let mut srv = Server::start(CONFIG_FILE, CONFIG, &[]).unwrap();
    let _echo = echo_server(&srv.pair);
    let installed = rules(&srv.pair);
    knock(&mut srv, SERVER_V4);
    await_window(&srv.pair, CLIENT_V4);

    // A crashed run's window stays valid under the next run.
    assert!(srv.daemon.child.signal_and_wait(libc::SIGKILL, WAIT).is_some());
    srv.daemon = start_again(&srv);
    assert_eq!(rules(&srv.pair), installed);
    assert_eq!(windows(&srv.pair).len(), 1);

    let stopped = srv.daemon.child.signal_and_wait(libc::SIGTERM, WAIT);
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
    assert!(windows(&srv.pair).is_empty(), "a clean stop left windows open");
    assert!(!connects(&srv.pair, CLIENT_V4, SERVER_V4), "open after a clean stop");
    assert_eq!(rules(&srv.pair), installed);

    srv.daemon = start_again(&srv);
    assert_eq!(rules(&srv.pair), installed);
    assert_installed(&srv.pair);
}

#[test]
fn flush_removes_the_gate() {
    if !privileged("gate_iptables_flush") {
        return;
    }
    let mut srv = Server::start(CONFIG_FILE, CONFIG, &[]).unwrap();
    let _echo = echo_server(&srv.pair);
    assert!(!connects(&srv.pair, CLIENT2_V4, SERVER_V4));
    let stopped = srv.daemon.child.signal_and_wait(libc::SIGTERM, WAIT);
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");

    let said = admin(&srv, "--flush");
    assert!(said.contains("Iptables: flushed"), "{said}");
    let left = rules(&srv.pair) + &out(&srv.pair, &["ipset", "-n", "list"]);
    assert!(!left.contains("XKNOCKD") && !left.contains("xknockd"), "{left}");
    assert!(connects(&srv.pair, CLIENT2_V4, SERVER_V4), "still closed after --flush");
    assert!(connects(&srv.pair, CLIENT2_V6, SERVER_V6), "still closed after --flush");
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
