//! Protection belongs to the config, and window state never locks anyone
//! out (issue 8, items 2 and 4), per backend with a real listener: a used-up
//! one-time door keeps its port closed, across a restart too; a flood of
//! completions from many addresses opens at most the door's burst; the XDP
//! window map never fills with ended windows.

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use knockd_common::{AllowKey, AllowValue, MAX_WINDOWS};
use xknock::{
    bpf::{gate::XdpGate, XdpKnocker},
    config::model::{Proto, Step},
    gate::Gate,
};
use xknock_tests::{
    daemon::{bin, Captured, Server, TempDir},
    netns::{connect_from, echoes, BpffsMount, EchoServer, CLIENT2_V4, CLIENT_V4, SERVER_V4},
    privileged, wait_until,
};

const PORT: u16 = 2222;
const FILE: &str = "xknockd.yaml";
const WAIT: Duration = Duration::from_secs(10);
const CONNECT: Duration = Duration::from_secs(1);
/// The knock sequence, as `xknock` and a one-time line spell it.
const SEQUENCE: [&str; 3] = ["7000", "8000:udp", "9000"];
const ONE_TIME_LINE: &str = "7000:tcp,8000:udp,9000:tcp\n";
const EXHAUSTED: &str =
    "no more sequences left in the one time sequences file for door ssh --> disabling the door";
const OVER_LIMIT: &str = "opens over the rate limit in the last second, not opened";

/// xknockd on a config of our own, an echo server behind `PORT`, and a
/// directory for files the config names (one-time sequences, command output).
struct Policy {
    srv: Server,
    _echo: EchoServer,
    files: TempDir,
    // Dropped last: the daemon must die before its pins go.
    _bpffs: Option<BpffsMount>,
}

impl Policy {
    /// `door` is the `ssh` door's body (indented four spaces, `{FILES}` for
    /// the files dir); its `open` block on `backend` is added here.
    fn start(backend: &str, options: &[&str], door: &str, duration: u64, files: TempDir) -> Self {
        let bpffs = (backend == "xdp").then(|| BpffsMount::new().unwrap());
        let mut yaml = String::from("options:\n");
        if let Some(b) = &bpffs {
            yaml += &format!("  bpffs_dir: {}\n", b.0.join("xknockd").display());
        }
        for o in options {
            yaml += &format!("  {o}\n");
        }
        yaml += &format!(
            "doors:\n  ssh:\n{}    open:\n      ports: [\"{PORT}/tcp\"]\n      duration: {duration}\n      backend: {backend}\n",
            door.replace("{FILES}", files.0.to_str().unwrap())
        );
        let srv = Server::start(FILE, &yaml, &[]).unwrap();
        let echo = EchoServer::start(&srv.pair.server, &format!("[::]:{PORT}")).unwrap();
        Self { srv, _echo: echo, files, _bpffs: bpffs }
    }

    /// Whether a connect from `src` to the protected port gets in. "Not in"
    /// must be a timeout (a silent drop) while the echo server listens: a
    /// refusal or a dead listener fails the test instead.
    fn connects(&self, src: &str) -> bool {
        let dst = SocketAddr::new(SERVER_V4.parse().unwrap(), PORT);
        match connect_from(&self.srv.pair.client, Some(src.parse().unwrap()), dst, CONNECT).unwrap() {
            Ok(mut conn) => {
                assert!(echoes(&mut conn, b"ping"), "connected from {src} but no echo");
                true
            }
            Err(e) if e.kind() == ErrorKind::TimedOut => {
                assert!(self.listening(), "nothing listens on {PORT}: the timeout proves nothing");
                false
            }
            Err(e) => panic!("connect from {src}: {e} ({:?}); a gate drops silently", e.kind()),
        }
    }

    fn listening(&self) -> bool {
        let filter = format!("sport = :{PORT}");
        let out = self.srv.pair.in_ns(&self.srv.pair.server, &["ss", "-Hltn", &filter]).unwrap();
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    }

    /// `xknock SERVER SEQUENCE` from the client's primary address.
    fn knock(&self) {
        let mut args = vec![SERVER_V4];
        args.extend(SEQUENCE);
        self.srv.knock(&args);
    }

    /// Knocks the sequence from `src` with our own sockets: a SYN per TCP
    /// step (the knock port answers RST), a datagram per UDP step.
    fn knock_from(&self, src: &str) {
        let src: IpAddr = src.parse().unwrap();
        let server: IpAddr = SERVER_V4.parse().unwrap();
        xknock_tests::netns::in_netns(&self.srv.pair.client, move || {
            for (port, udp) in [(7000, false), (8000, true), (9000, false)] {
                let dst = SocketAddr::new(server, port);
                if udp {
                    UdpSocket::bind((src, 0)).unwrap().send_to(b"k", dst).unwrap();
                } else {
                    let sock =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
                    sock.bind(&SocketAddr::new(src, 0).into()).unwrap();
                    let _ = sock.connect_timeout(&dst.into(), Duration::from_millis(300));
                }
            }
        })
        .unwrap();
    }

    fn opens_for(&self, src: &str) -> usize {
        self.srv.daemon.count(&format!("{src}: ssh: OPEN SESAME"))
    }

    /// The refusals the daemon reported, summed over its rate-limit lines.
    fn refused(&self) -> u64 {
        let lines = self.srv.daemon.output();
        let counts = lines.iter().filter_map(|l| l.split("ssh: ").nth(1)?.strip_suffix(OVER_LIMIT));
        counts.map(|n| n.trim().parse::<u64>().unwrap()).sum()
    }

    /// Stops xknockd cleanly and starts it again on the same config; returns
    /// once it listens.
    fn restart(&mut self) {
        let status = self.srv.daemon.child.signal_and_wait(libc::SIGTERM, WAIT);
        assert!(status.is_some_and(|s| s.success()), "xknockd did not stop cleanly: {status:?}");
        assert!(!self.connects(CLIENT2_V4), "open while no daemon runs");
        let mut cmd = self.srv.pair.server_cmd(bin("xknockd").to_str().unwrap());
        cmd.arg("-v")
            .arg("-c")
            .arg(self.srv.config_path(FILE))
            .args(["-i", &self.srv.pair.server_if, "-p"])
            .arg(self.srv.dir.path("pid"));
        self.srv.daemon = Captured::spawn(cmd).unwrap();
        self.srv.daemon.wait_for("starting up, listening on", Duration::from_secs(20)).unwrap();
    }
}

/// A one-time sequences file holding `text`, readable by its owner only.
fn one_time_file(files: &TempDir, text: &str) -> PathBuf {
    let path = files.path("otp");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

macro_rules! per_backend {
    ($scenario:ident: $($name:ident = $backend:literal),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                if privileged(stringify!($name)) {
                    $scenario($backend)
                }
            }
        )+
    };
}

per_backend!(one_time_exhaustion:
    nftables_used_up_one_time_door_keeps_its_port_closed = "nftables",
    iptables_used_up_one_time_door_keeps_its_port_closed = "iptables",
    xdp_used_up_one_time_door_keeps_its_port_closed = "xdp");

/// The last one-time line opens the window for the knocker only; then the
/// port is closed to everyone, stays closed when the line is knocked again,
/// and across a restart on the used-up file.
fn one_time_exhaustion(backend: &str) {
    let files = TempDir::new();
    one_time_file(&files, ONE_TIME_LINE);
    let door = "    one_time_sequences: {FILES}/otp\n    seq_timeout: 5\n    tcp_flags: syn\n";
    let mut p = Policy::start(backend, &[], door, 3, files);
    assert!(!p.connects(CLIENT_V4), "open before the knock");

    p.knock();
    p.srv.daemon.wait_for(&format!("{CLIENT_V4}: ssh: OPEN SESAME"), WAIT).unwrap();
    p.srv.daemon.wait_for(EXHAUSTED, WAIT).unwrap();
    assert!(wait_until(WAIT, || p.connects(CLIENT_V4)), "the last line did not open the window");
    assert!(!p.connects(CLIENT2_V4), "the window is open to an address that never knocked");
    assert!(wait_until(WAIT, || !p.connects(CLIENT_V4)), "the window never ended");
    assert!(!p.connects(CLIENT2_V4), "open to everyone after the last one-time sequence");

    // The used-up line is dead: knocking it again opens nothing.
    p.knock();
    assert!(!wait_until(CONNECT * 2, || p.connects(CLIENT_V4)), "a burnt sequence opened the door");
    assert_eq!(p.opens_for(CLIENT_V4), 1);

    p.restart();
    p.srv.daemon.wait_for("used up", WAIT).unwrap();
    assert!(!p.connects(CLIENT_V4), "open after a restart on the used-up file");
    assert!(!p.connects(CLIENT2_V4), "open after a restart on the used-up file");
}

per_backend!(rate_limit:
    nftables_a_flood_of_completions_opens_at_most_the_burst = "nftables",
    iptables_a_flood_of_completions_opens_at_most_the_burst = "iptables",
    xdp_a_flood_of_completions_opens_at_most_the_burst = "xdp");

const BURST: usize = 3;
const FLOOD: usize = 8;

/// `FLOOD` addresses complete the sequence within a fraction of a second:
/// at most `BURST` (plus one a second) get a window and run the start
/// command, the rest are counted in the rate-limit line and stay out, and an
/// address holding a window re-knocks while the bucket is empty.
fn rate_limit(backend: &str) {
    let door =
        "    sequence: [\"7000\", \"8000:udp\", \"9000\"]\n    seq_timeout: 5\n    tcp_flags: syn\n    \
                start_command: \"echo %IP% >> {FILES}/opened\"\n";
    let options = ["open_rate: 1", &format!("open_burst: {BURST}")];
    let mut p = Policy::start(backend, &options, door, 30, TempDir::new());
    let flood: Vec<String> = (0..FLOOD).map(|i| format!("10.77.0.{}", 10 + i)).collect();
    for a in &flood {
        let cidr = format!("{a}/24");
        p.srv
            .pair
            .in_ns(&p.srv.pair.client, &["ip", "addr", "add", &cidr, "dev", &p.srv.pair.client_if])
            .unwrap();
    }

    let t0 = Instant::now();
    flood.iter().for_each(|a| p.knock_from(a));
    let took = t0.elapsed();
    let decided = || flood.iter().map(|a| p.opens_for(a)).sum::<usize>() + p.refused() as usize;
    assert!(wait_until(WAIT, || decided() == FLOOD), "{} of {FLOOD} completions decided", decided());
    let (opened, refused): (Vec<&String>, Vec<&String>) = flood.iter().partition(|a| p.opens_for(a) == 1);
    let bound = BURST + took.as_secs() as usize + 1;
    assert!(
        (BURST..=bound).contains(&opened.len()),
        "{} windows opened by {FLOOD} completions in {took:?}; burst {BURST}",
        opened.len()
    );

    // Refused completions neither open the gate nor run the command.
    assert!(p.connects(opened[0]), "{} got OPEN SESAME but no window", opened[0]);
    for a in refused.iter().take(2) {
        assert!(!p.connects(a), "{a} was refused by the limit but got in");
    }
    let ran = || std::fs::read_to_string(p.files.path("opened")).unwrap_or_default();
    assert!(wait_until(WAIT, || ran().lines().count() == opened.len()), "start commands: {:?}", ran());
    let mut ran_for: Vec<String> = ran().lines().map(String::from).collect();
    ran_for.sort();
    assert_eq!(ran_for, opened.iter().map(|a| a.to_string()).collect::<Vec<_>>());

    // Empty the bucket again, then re-knock from an address with a window.
    let before = p.refused();
    refused.iter().for_each(|a| p.knock_from(a));
    p.knock_from(opened[0]);
    let reknocked = p.srv.daemon.wait_for_n(&format!("{}: ssh: OPEN SESAME", opened[0]), 2, WAIT);
    assert!(reknocked.is_ok(), "a re-knock by an open address was refused");
    assert!(
        wait_until(WAIT, || p.refused() > before),
        "the bucket was not empty: the re-knock proves nothing"
    );
    assert!(p.connects(opened[0]));
}

/// The open-window map of a gate pinned in `dir`, read directly.
fn allow_map(dir: &Path) -> HashMap<MapData, AllowKey, AllowValue> {
    let map = MapData::from_pin(dir.join("GATE_ALLOW")).unwrap();
    HashMap::try_from(Map::HashMap(map)).unwrap()
}

fn entries(dir: &Path) -> usize {
    allow_map(dir).keys().count()
}

fn addr(i: u32) -> IpAddr {
    IpAddr::V4((0x0a00_0000 + i).into())
}

/// A map full of ended windows still takes a new one (they are evicted);
/// a map full of live windows refuses it and evicts none; and a new gate's
/// first check sweeps ended windows an earlier run left.
#[test]
fn xdp_window_map_evicts_only_ended_windows() {
    if !privileged("xdp_window_map_evicts_only_ended_windows") {
        return;
    }
    let bpffs = BpffsMount::new().unwrap();
    let dir = bpffs.0.join("xknockd");
    let _knocker = XdpKnocker::load(Some(&dir)).unwrap();
    let port = [Step { port: PORT, proto: Proto::Tcp }];
    let mut gate = XdpGate::from_pins(&dir).unwrap();

    for i in 0..MAX_WINDOWS {
        gate.open("old", addr(i), &port, Duration::ZERO).unwrap();
    }
    assert_eq!(entries(&dir), MAX_WINDOWS as usize);
    let knocker: IpAddr = CLIENT_V4.parse().unwrap();
    gate.open("ssh", knocker, &port, Duration::from_secs(60)).expect("ended windows were not evicted");
    assert_eq!(entries(&dir), 1);
    assert_eq!(gate.windows().unwrap()[0].src, knocker);

    for i in 1..MAX_WINDOWS {
        gate.open("live", addr(i), &port, Duration::from_secs(60)).unwrap();
    }
    let err = gate.open("ssh", CLIENT2_V4.parse().unwrap(), &port, Duration::from_secs(60));
    assert!(err.is_err(), "a full map of live windows took one more");
    assert_eq!(entries(&dir), MAX_WINDOWS as usize);
    assert!(gate.windows().unwrap().iter().any(|w| w.src == knocker), "a live window was evicted");

    // An earlier run's ended windows go at the next gate's first check.
    gate.close_windows().unwrap();
    for i in 0..100 {
        gate.open("old", addr(i), &port, Duration::ZERO).unwrap();
    }
    gate.open("ssh", knocker, &port, Duration::from_secs(60)).unwrap();
    let mut next = XdpGate::from_pins(&dir).unwrap();
    assert!(next.repair(&[]).unwrap().is_empty());
    assert_eq!(entries(&dir), 1, "ended windows were not swept");
}

/// A one-time line written at runtime that knocks on the protected port is
/// never armed: the XDP gate never gates a knock port, so arming it would
/// open the port to everyone. The door is disabled instead, still closed.
#[test]
fn xdp_a_one_time_line_on_a_protected_port_disables_the_door() {
    if !privileged("xdp_a_one_time_line_on_a_protected_port_disables_the_door") {
        return;
    }
    let files = TempDir::new();
    let otp = one_time_file(&files, ONE_TIME_LINE);
    let door = "    one_time_sequences: {FILES}/otp\n    seq_timeout: 5\n    tcp_flags: syn\n";
    let mut p = Policy::start("xdp", &[], door, 3, files);
    std::fs::write(&otp, format!("{ONE_TIME_LINE}7001:tcp,{PORT}:tcp\n")).unwrap();

    p.knock();
    p.srv.daemon.wait_for(&format!("{CLIENT_V4}: ssh: OPEN SESAME"), WAIT).unwrap();
    // The line is burnt before the window opens, so the next line is armed
    // (or refused) by the time the knocker gets in.
    assert!(wait_until(WAIT, || p.connects(CLIENT_V4)), "the first line did not open the window");
    assert!(!p.connects(CLIENT2_V4), "the protected port became a knock port, open to everyone");
    p.srv.daemon.wait_for("the next one-time sequence is refused", WAIT).unwrap();
    assert!(wait_until(WAIT, || !p.connects(CLIENT_V4)), "the window never ended");
    assert!(!p.connects(CLIENT2_V4), "open to everyone after the refused line");
}
