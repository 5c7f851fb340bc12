//! The nftables gate end to end: xknockd in the server namespace owns
//! `table inet xknockd`, a TCP echo server listens on the protected port, and
//! the client connects before, during and after a knock's window. nft only
//! ever runs inside the test's own namespaces.

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use xknock::{
    config::model::{Proto, Step},
    gate::{nftables::NftGate, Gate, Protected, Window},
};
use xknock_tests::{
    daemon::{bin, Captured, Server},
    netns::{in_netns, NetPair, CLIENT2_V4, CLIENT2_V6, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6},
    privileged, wait_until,
};

const CONFIG: &str = r#"
doors:
  ssh:
    sequence: ["7000", "8000:udp", "9000"]
    seq_timeout: 5
    tcp_flags: syn
    open:
      ports: ["2222/tcp"]
      duration: 3
      backend: nftables
"#;
const FILE: &str = "xknockd.yaml";
const PORT: u16 = 2222;
const DURATION: Duration = Duration::from_secs(3);
const CONNECT: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(10);

/// A TCP echo server on `[::]:PORT` (v4 and v6) in the server namespace,
/// stopped on drop.
struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start(pair: &NetPair) -> Self {
        // A socket stays in the namespace it was made in, so only the bind
        // needs the namespace thread.
        let listener = in_netns(&pair.server, || TcpListener::bind(("::", PORT))).unwrap().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        std::thread::spawn(move || echo(s));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(_) => return,
                }
            }
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn echo(mut s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let mut buf = [0u8; 512];
    while let Ok(n @ 1..) = s.read(&mut buf) {
        if s.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// A connection from the client's primary address, if the server lets it in.
fn connect(pair: &NetPair, server: &str) -> Option<TcpStream> {
    let addr = SocketAddr::new(server.parse().unwrap(), PORT);
    in_netns(&pair.client, move || TcpStream::connect_timeout(&addr, CONNECT).ok()).unwrap()
}

/// Whether a connection from the client's second address gets in. A
/// refusal must be a timeout (the SYN dropped), not some other failure.
fn connects_from(pair: &NetPair, src: &str, server: &str) -> bool {
    let port = PORT.to_string();
    let args = ["-v", "-z", "-w", "1", "-s", src, server, &port];
    let out = pair.client_cmd("nc").args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() || err.contains("timed out"), "nc from {src}: {err}");
    out.status.success()
}

fn carries_data(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 4];
    stream.write_all(b"ping").is_ok() && stream.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

fn nft(pair: &NetPair, args: &[&str]) -> String {
    let mut argv = vec!["nft"];
    argv.extend_from_slice(args);
    let out = pair.in_ns(&pair.server, &argv).unwrap();
    String::from_utf8(out.stdout).unwrap()
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

fn knock(srv: &mut Server, server: &str, client: &str) -> Instant {
    let line = format!("{client}: ssh: OPEN SESAME");
    let before = srv.daemon.count(&line);
    srv.knock(&[server, "7000", "8000:udp", "9000"]);
    srv.daemon.wait_for_n(&line, before + 1, WAIT).unwrap();
    Instant::now()
}

/// Polls until a connect from the client fails, and says when that was.
fn closes_after(pair: &NetPair, server: &str, opened: Instant) -> Duration {
    let closed = wait_until(DURATION + WAIT, || connect(pair, server).is_none());
    assert!(closed, "the window never ended");
    opened.elapsed()
}

/// Starts xknockd again in the same namespaces with the same config.
fn restart(srv: &mut Server) {
    let mut cmd = srv.pair.server_cmd(bin("xknockd").to_str().unwrap());
    cmd.arg("-v")
        .arg("-c")
        .arg(srv.config_path(FILE))
        .args(["-i", &srv.pair.server_if, "-p"])
        .arg(srv.dir.path("pid"));
    srv.daemon = Captured::spawn(cmd).unwrap();
    srv.daemon.wait_for("starting up, listening on", WAIT).unwrap();
}

fn stop(srv: &mut Server, sig: i32) {
    let status = srv.daemon.child.signal_and_wait(sig, WAIT);
    assert!(status.is_some(), "xknockd did not exit on signal {sig}");
}

/// Closed before the knock, open after it for the knocker only, closed
/// again after `duration` while the connection made inside stays up.
fn window_scenario(server: &str, client: &str, client2: &str) {
    let mut srv = Server::start(FILE, CONFIG, &[]).unwrap();
    let _echo = Echo::start(&srv.pair);
    assert!(connect(&srv.pair, server).is_none(), "open before the knock");

    let opened = knock(&mut srv, server, client);
    let mut inside = None;
    assert!(wait_until(WAIT, || {
        inside = connect(&srv.pair, server);
        inside.is_some()
    }));
    let mut inside = inside.unwrap();
    assert!(carries_data(&mut inside));
    assert!(!connects_from(&srv.pair, client2, server), "{client2} got in");
    assert_eq!(elements_for(&srv.pair, client), 1);

    let took = closes_after(&srv.pair, server, opened);
    assert!(
        took >= DURATION - Duration::from_millis(500) && took <= DURATION + CONNECT * 3,
        "window lasted {took:?}, configured {DURATION:?}"
    );
    assert!(carries_data(&mut inside), "the inside connection died");
    assert_eq!(elements_for(&srv.pair, client), 0);
}

#[test]
fn ipv4_window_opens_for_the_knocker_only_and_ends_on_time() {
    if !privileged("gate_nftables_v4") {
        return;
    }
    window_scenario(SERVER_V4, CLIENT_V4, CLIENT2_V4);
}

#[test]
fn ipv6_window_opens_for_the_knocker_only_and_ends_on_time() {
    if !privileged("gate_nftables_v6") {
        return;
    }
    window_scenario(SERVER_V6, CLIENT_V6, CLIENT2_V6);
}

#[test]
fn reknock_extends_the_window_and_keeps_one_element() {
    if !privileged("gate_nftables_reknock") {
        return;
    }
    let mut srv = Server::start(FILE, CONFIG, &[]).unwrap();
    knock(&mut srv, SERVER_V4, CLIENT_V4);
    assert!(wait_until(WAIT, || elements_for(&srv.pair, CLIENT_V4) == 1));
    // Let the first window run down, so an extension is visible.
    assert!(wait_until(WAIT, || windows(&srv.pair).iter().all(|w| w.remaining <= Duration::from_secs(1))));
    knock(&mut srv, SERVER_V4, CLIENT_V4);
    assert!(wait_until(WAIT, || windows(&srv.pair).iter().any(|w| w.remaining >= Duration::from_secs(2))));
    assert_eq!(elements_for(&srv.pair, CLIENT_V4), 1);
    let w = windows(&srv.pair);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].door, "ssh");
    assert_eq!(w[0].src, CLIENT_V4.parse::<IpAddr>().unwrap());
    assert_eq!(w[0].port, Step { port: PORT, proto: Proto::Tcp });
}

#[test]
fn after_sigkill_the_window_still_ends_on_time_and_stays_closed() {
    if !privileged("gate_nftables_sigkill") {
        return;
    }
    let mut srv = Server::start(FILE, CONFIG, &[]).unwrap();
    let _echo = Echo::start(&srv.pair);
    let opened = knock(&mut srv, SERVER_V4, CLIENT_V4);
    assert!(wait_until(WAIT, || elements_for(&srv.pair, CLIENT_V4) == 1));
    stop(&mut srv, libc::SIGKILL);

    assert!(connect(&srv.pair, SERVER_V4).is_some(), "window lost with the daemon");
    assert!(!connects_from(&srv.pair, CLIENT2_V4, SERVER_V4));
    let took = closes_after(&srv.pair, SERVER_V4, opened);
    assert!(took <= DURATION + CONNECT * 3, "window lasted {took:?}");
    assert!(!connects_from(&srv.pair, CLIENT2_V4, SERVER_V4));
    assert!(connect(&srv.pair, SERVER_V4).is_none());
}

#[test]
fn restarts_adopt_the_table_and_a_clean_stop_leaves_it_closed() {
    if !privileged("gate_nftables_restart") {
        return;
    }
    let mut srv = Server::start(FILE, CONFIG, &[]).unwrap();
    let _echo = Echo::start(&srv.pair);
    let first = layout(&srv.pair);
    assert_eq!(first.matches("table ").count(), 1, "{first}");
    assert_eq!(first.matches("chain ").count(), 1, "{first}");
    assert_eq!(first.matches(" drop").count(), 1, "{first}");

    // A window from the killed run survives the next install.
    knock(&mut srv, SERVER_V4, CLIENT_V4);
    assert!(wait_until(WAIT, || elements_for(&srv.pair, CLIENT_V4) == 1));
    stop(&mut srv, libc::SIGKILL);
    restart(&mut srv);
    assert_eq!(layout(&srv.pair), first);
    assert_eq!(elements_for(&srv.pair, CLIENT_V4), 1);
    let protected = nft(&srv.pair, &["list", "set", "inet", "xknockd", "protected"]);
    assert_eq!(protected.matches("tcp . 2222").count(), 1, "{protected}");

    // A clean stop ends the window and keeps the port closed.
    stop(&mut srv, libc::SIGTERM);
    assert_eq!(layout(&srv.pair), first);
    assert!(windows(&srv.pair).is_empty());
    assert!(connect(&srv.pair, SERVER_V4).is_none(), "open after SIGTERM");

    restart(&mut srv);
    assert_eq!(layout(&srv.pair), first);
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
    if !privileged("gate_nftables_status_flush") {
        return;
    }
    let mut srv = Server::start(FILE, CONFIG, &[]).unwrap();
    let _echo = Echo::start(&srv.pair);
    knock(&mut srv, SERVER_V4, CLIENT_V4);
    assert!(wait_until(WAIT, || elements_for(&srv.pair, CLIENT_V4) == 1));
    stop(&mut srv, libc::SIGKILL);
    let admin = |flag: &str| {
        let cfg = srv.config_path(FILE);
        let out = srv.pair.server_cmd(bin("xknockd").to_str().unwrap()).arg("-c").arg(cfg).arg(flag).output();
        let out = out.unwrap();
        assert!(out.status.success(), "{flag}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let status = admin("--status");
    let row = status.lines().find(|l| l.contains(CLIENT_V4)).unwrap_or_else(|| panic!("{status}"));
    assert!(row.contains("ssh") && row.contains("2222/tcp"), "{status}");
    admin("--flush");
    assert_eq!(layout(&srv.pair), "");
    // With the gate gone the port is plain open, even to a non-knocker.
    assert!(connects_from(&srv.pair, CLIENT2_V4, SERVER_V4));
    assert!(connects_from(&srv.pair, CLIENT2_V6, SERVER_V6));
}
