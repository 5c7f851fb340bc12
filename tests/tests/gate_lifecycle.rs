//! The gate's life around the daemon: reloads that move the protected port
//! between backends, an interface deleted and created again, the boot-time
//! `--install-gate`, and devices XDP cannot parse. Every check is made with
//! a real listener behind the protected port: "closed" is a connect that
//! times out (a silent drop) while the listener is still there.

use std::{
    collections::VecDeque,
    io::ErrorKind,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Output,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use socket2::{Domain, Socket, Type};

use xknock_tests::{
    daemon::{bin, Captured, TempDir},
    gate::{config, Rig, FILE, PORT, SEQUENCE, WAIT},
    netns::{
        connect_from, in_netns, BpffsMount, EchoServer, NetPair, CLIENT2_V4, CLIENT_V4, CLIENT_V6, SERVER_V4,
        SERVER_V6,
    },
    privileged, wait_until,
};

/// A probe's connect timeout: long enough for a veth round trip many times
/// over, short enough to probe often during a transition.
const PROBE: Duration = Duration::from_millis(400);
/// Windows outlast every test.
const DURATION: u64 = 60;

fn sh(pair: &NetPair, ns: &str, argv: &[&str]) -> Output {
    pair.in_ns(ns, argv).unwrap_or_else(|e| panic!("{argv:?} in {ns}: {e:#}"))
}

/// Whether `argv` succeeds in the server namespace.
fn server_ok(pair: &NetPair, argv: &[&str]) -> bool {
    pair.server_cmd(argv[0]).args(&argv[1..]).output().is_ok_and(|o| o.status.success())
}

/// Whether `backend`'s gate is in the kernel of the rig's server namespace.
fn present(pair: &NetPair, pins: &Path, backend: &str) -> bool {
    match backend {
        "nftables" => server_ok(pair, &["nft", "list", "table", "inet", "xknockd"]),
        "iptables" => server_ok(pair, &["iptables", "-w", "-S", "XKNOCKD"]),
        "xdp" => pins.join("GATED").exists(),
        other => panic!("unknown backend {other}"),
    }
}

/// One connect from `src` to the protected port: `Ok(true)` in, `Ok(false)`
/// a timeout (dropped), `Err` anything else (a refusal is no gate's doing).
fn probe(pair: &NetPair, src: &str, dst: &str) -> Result<bool, std::io::Error> {
    let dst = SocketAddr::new(dst.parse().unwrap(), PORT);
    match connect_from(&pair.client, Some(src.parse::<IpAddr>().unwrap()), dst, PROBE).unwrap() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::TimedOut => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the echo server still listens: what tells a drop from a
/// listener gone away.
fn listening(pair: &NetPair) -> bool {
    let out = sh(pair, &pair.server, &["ss", "-Hltn", &format!("sport = :{PORT}")]);
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

/// Asserts the port is closed to `src`: a silent drop, with the listener up.
fn assert_closed(pair: &NetPair, src: &str, dst: &str, what: &str) {
    match probe(pair, src, dst) {
        Ok(false) => assert!(listening(pair), "{what}: the listener died"),
        Ok(true) => panic!("{what}: {src} got in"),
        Err(e) => panic!("{what}: {src}: {e} ({:?}), not a silent drop", e.kind()),
    }
}

/// A connect attempt from a non-knocker every [`PROBE_EVERY`] in the
/// background, each judged [`PROBE_AGE`] later: a SYN-ACK (the socket
/// connected) or an RST is recorded. Non-blocking sockets, so the sampling
/// is that fine-grained and "at no point" means at no 5 ms.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(usize, Vec<String>)>>,
}

const PROBE_EVERY: Duration = Duration::from_millis(5);
/// A veth round trip is well under a millisecond.
const PROBE_AGE: Duration = Duration::from_millis(200);

impl Prober {
    fn start(pair: &NetPair, src: &'static str, dst: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, client) = (stop.clone(), pair.client.clone());
        let thread = std::thread::spawn(move || in_netns(&client, move || sample(src, dst, &flag)).unwrap());
        Self { stop, thread: Some(thread) }
    }

    /// Stops probing; returns the number of probes and what answered.
    fn into_results(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }

    /// Stops probing; insists there were probes and none got an answer.
    fn finish(self, what: &str) {
        let (n, answers) = self.into_results();
        assert!(n > 10, "{what}: only {n} probes ran");
        assert!(answers.is_empty(), "{what}: {answers:?} in {n} probes");
        eprintln!("{what}: {n} SYNs from a non-knocker, one every {PROBE_EVERY:?}, all dropped");
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs in the client namespace until `stop`; returns the number of probes
/// and what answered.
fn sample(src: &str, dst: &str, stop: &AtomicBool) -> (usize, Vec<String>) {
    let src = SocketAddr::new(src.parse().unwrap(), 0);
    let dst = SocketAddr::new(dst.parse().unwrap(), PORT);
    let (mut pending, mut n, mut answers) = (VecDeque::<(Instant, Socket)>::new(), 0, Vec::new());
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if !stopping {
            pending.push_back((Instant::now(), syn(src, dst)));
            n += 1;
        }
        while pending.front().is_some_and(|(t, _)| t.elapsed() >= PROBE_AGE) {
            let (_, sock) = pending.pop_front().unwrap();
            if let Some(answer) = answered(&sock) {
                answers.push(answer);
            }
        }
        if stopping && pending.is_empty() {
            return (n, answers);
        }
        std::thread::sleep(PROBE_EVERY);
    }
}

/// A non-blocking connect: its SYN is on the wire when this returns.
fn syn(src: SocketAddr, dst: SocketAddr) -> Socket {
    let sock = Socket::new(Domain::for_address(dst), Type::STREAM, None).unwrap();
    sock.set_nonblocking(true).unwrap();
    sock.bind(&src.into()).unwrap();
    match sock.connect(&dst.into()) {
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => sock,
        other => panic!("a non-blocking connect to {dst} returned {other:?}"),
    }
}

fn answered(sock: &Socket) -> Option<String> {
    match sock.take_error() {
        Ok(Some(e)) => Some(format!("an error, not a drop: {e}")),
        Err(e) => Some(format!("SO_ERROR: {e}")),
        Ok(None) => sock.peer_addr().is_ok().then(|| "a SYN-ACK".to_string()),
    }
}

fn rig(test: &str, backend: &str) -> Option<Rig> {
    Rig::start_pinned(test, backend, DURATION, &[]).map(|r| r.connect_timeout(PROBE))
}

/// After a knock the knocker gets in; the non-knocker stays dropped.
fn knock_opens_for_the_knocker_only(rig: &mut Rig, what: &str) {
    rig.knock(SERVER_V4);
    let pair = rig.pair();
    assert!(
        wait_until(WAIT, || probe(pair, CLIENT_V4, SERVER_V4).unwrap()),
        "{what}: the knocker never got in"
    );
    assert_closed(pair, CLIENT2_V4, SERVER_V4, what);
}

/// Moves the door from backend `from` to `to` by SIGHUP while a
/// non-knocker probes the port the whole time.
fn transition(test: &str, from: &str, to: &str) {
    let Some(mut rig) = rig(test, from) else { return };
    let what = format!("{from} -> {to}");
    let pins = rig.pins();
    assert!(present(rig.pair(), &pins, from));
    assert_closed(rig.pair(), CLIENT2_V4, SERVER_V4, &format!("{what}, before"));

    let prober = Prober::start(rig.pair(), CLIENT2_V4, SERVER_V4);
    let options = format!("bpffs_dir: {}", pins.display());
    std::fs::write(rig.srv.config_path(FILE), config(to, DURATION, &[&options])).unwrap();
    rig.srv.signal(libc::SIGHUP);
    let moved = wait_until(WAIT, || present(rig.pair(), &pins, to) && !present(rig.pair(), &pins, from));
    assert!(moved, "{what}: the gate did not move; output:\n{}", rig.srv.daemon.output().join("\n"));
    knock_opens_for_the_knocker_only(&mut rig, &what);
    prober.finish(&what);
    let output = rig.srv.daemon.output();
    assert!(
        !output.iter().any(|l| l.contains("keeping the running config")),
        "{what}: {}",
        output.join("\n")
    );
}

#[test]
fn reload_nftables_to_iptables() {
    transition("lifecycle_nft_ipt", "nftables", "iptables");
}

#[test]
fn reload_iptables_to_nftables() {
    transition("lifecycle_ipt_nft", "iptables", "nftables");
}

#[test]
fn reload_nftables_to_xdp() {
    transition("lifecycle_nft_xdp", "nftables", "xdp");
}

#[test]
fn reload_xdp_to_nftables() {
    transition("lifecycle_xdp_nft", "xdp", "nftables");
}

#[test]
fn reload_iptables_to_xdp() {
    transition("lifecycle_ipt_xdp", "iptables", "xdp");
}

#[test]
fn reload_xdp_to_iptables() {
    transition("lifecycle_xdp_ipt", "xdp", "iptables");
}

/// Deletes the server's veth end (which takes the pair with it) and makes
/// the pair again under the same names and addresses.
fn recreate_pair(pair: &NetPair) {
    sh(pair, &pair.server, &["ip", "link", "del", &pair.server_if]);
    xknock_tests::netns::run(&[
        "ip",
        "link",
        "add",
        &pair.server_if,
        "netns",
        &pair.server,
        "type",
        "veth",
        "peer",
        "name",
        &pair.client_if,
        "netns",
        &pair.client,
    ])
    .unwrap();
    let server = [&format!("{SERVER_V4}/24"), &format!("{SERVER_V6}/64")];
    let client = [&format!("{CLIENT_V4}/24"), &format!("{CLIENT_V6}/64"), &format!("{CLIENT2_V4}/24")];
    for (ns, ifc, addrs) in
        [(&pair.server, &pair.server_if, &server[..]), (&pair.client, &pair.client_if, &client[..])]
    {
        for cidr in addrs {
            sh(pair, ns, &["ip", "addr", "add", cidr, "dev", ifc, "nodad"]);
        }
        sh(pair, ns, &["ip", "link", "set", ifc, "up"]);
    }
}

/// The `N` of "... N ms after it went away".
fn gap_ms(line: &str) -> u64 {
    let before = line.split(" ms after it went away").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("no gap in {line:?}"))
}

fn interface_recreated(test: &str, backend: &str) {
    let Some(mut rig) = rig(test, backend) else { return };
    let iface = rig.pair().server_if.clone();
    recreate_pair(rig.pair());
    let back = format!("{iface}: interface back");
    rig.srv.daemon.wait_for(&format!("{iface}: interface gone"), WAIT).unwrap();
    rig.srv.daemon.wait_for(&back, WAIT).unwrap();
    let output = rig.srv.daemon.output();
    let line = output.iter().find(|l| l.contains(&back)).unwrap();
    eprintln!("{backend}: {iface} recreated; daemon: {line}; gap {} ms", gap_ms(line));

    // The protected port is closed, and knocks are heard again.
    let pair = rig.pair();
    assert!(listening(pair));
    assert_closed(pair, CLIENT_V4, SERVER_V4, &format!("{backend}, after the interface came back"));
    knock_opens_for_the_knocker_only(&mut rig, &format!("{backend}, after the interface came back"));
    if backend == "xdp" {
        let pinned = rig.pins().join(format!("link_{iface}"));
        assert!(pinned.exists(), "the new link is pinned, so the gate outlives the daemon");
    }
}

#[test]
fn interface_recreated_nftables() {
    interface_recreated("lifecycle_iface_nft", "nftables");
}

#[test]
fn interface_recreated_iptables() {
    interface_recreated("lifecycle_iface_ipt", "iptables");
}

#[test]
fn interface_recreated_xdp() {
    interface_recreated("lifecycle_iface_xdp", "xdp");
}

/// Namespaces, a config and a listener, and no daemon yet: what a host
/// looks like at boot.
struct Boot {
    _echo: EchoServer,
    dir: TempDir,
    // Dropped after every daemon: the pins go with the mount.
    bpffs: BpffsMount,
    pair: NetPair,
}

impl Boot {
    fn new(backend: &str) -> Self {
        let bpffs = BpffsMount::new().unwrap();
        let pair = NetPair::new().unwrap();
        let dir = TempDir::new();
        let options = format!("bpffs_dir: {}", bpffs.0.join("xknockd").display());
        std::fs::write(dir.path(FILE), config(backend, 3, &[&options])).unwrap();
        let echo = EchoServer::start(&pair.server, &format!("[::]:{PORT}")).unwrap();
        Self { _echo: echo, dir, bpffs, pair }
    }

    fn xknockd(&self, args: &[&str], iface: &str) -> Output {
        let mut cmd = self.pair.server_cmd(bin("xknockd").to_str().unwrap());
        cmd.args(args).arg("-c").arg(self.dir.path(FILE)).args(["-i", iface]).output().unwrap()
    }

    fn knock(&self) {
        let out =
            self.pair.client_cmd(bin("xknock").to_str().unwrap()).arg(SERVER_V4).args(SEQUENCE).output();
        assert!(out.unwrap().status.success());
    }
}

fn install_gate_closes_before_the_daemon(test: &str, backend: &str) {
    if !privileged(test) {
        return;
    }
    let boot = Boot::new(backend);
    let pair = &boot.pair;
    assert!(probe(pair, CLIENT2_V4, SERVER_V4).unwrap(), "without a gate the port answers: the probe works");

    let out = boot.xknockd(&["--install-gate"], &pair.server_if);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "--install-gate: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    eprintln!("--install-gate:\n{stdout}");
    for src in [CLIENT_V4, CLIENT2_V4] {
        assert_closed(pair, src, SERVER_V4, &format!("{backend}: after --install-gate, no daemon"));
    }
    let prober = Prober::start(pair, CLIENT2_V4, SERVER_V4);

    // The daemon adopts the gate: still closed, and knocks open it.
    let mut cmd = pair.server_cmd(bin("xknockd").to_str().unwrap());
    cmd.arg("-v")
        .arg("-c")
        .arg(boot.dir.path(FILE))
        .args(["-i", &pair.server_if, "-p"])
        .arg(boot.dir.path("pid"));
    let mut daemon = Captured::spawn(cmd).unwrap();
    daemon.wait_for("starting up, listening on", WAIT).unwrap();
    if backend == "xdp" {
        daemon.wait_for("took over the pinned XDP link", WAIT).unwrap();
    }
    assert_closed(pair, CLIENT2_V4, SERVER_V4, &format!("{backend}: daemon adopted the gate"));
    boot.knock();
    daemon.wait_for(&format!("{CLIENT_V4}: ssh: OPEN SESAME"), WAIT).unwrap();
    assert!(wait_until(WAIT, || probe(pair, CLIENT_V4, SERVER_V4).unwrap()), "the knocker gets in");
    assert_closed(pair, CLIENT2_V4, SERVER_V4, &format!("{backend}: the non-knocker after the knock"));
    prober.finish(&format!("{backend}: from --install-gate through the daemon's adoption"));
}

#[test]
fn install_gate_xdp() {
    install_gate_closes_before_the_daemon("lifecycle_install_xdp", "xdp");
}

#[test]
fn install_gate_nftables() {
    install_gate_closes_before_the_daemon("lifecycle_install_nft", "nftables");
}

#[test]
fn install_gate_iptables() {
    install_gate_closes_before_the_daemon("lifecycle_install_ipt", "iptables");
}

#[test]
fn non_ethernet_device_is_refused_with_the_reason() {
    if !privileged("lifecycle_non_ethernet") {
        return;
    }
    let boot = Boot::new("xdp");
    let pair = &boot.pair;
    sh(pair, &pair.server, &["ip", "tuntap", "add", "mode", "tun", "name", "xkt0"]);
    sh(pair, &pair.server, &["ip", "link", "set", "xkt0", "up"]);
    let pid = boot.dir.path("pid");
    for (what, args) in
        [("--install-gate", vec!["--install-gate"]), ("the daemon", vec!["-p", pid.to_str().unwrap()])]
    {
        let out = boot.xknockd(&args, "xkt0");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what} accepted a tun device: {stderr}");
        assert!(
            stderr.contains("xkt0: not an Ethernet device") && stderr.contains("tun"),
            "{what}: unclear error: {stderr}"
        );
    }
    let show = sh(pair, &pair.server, &["ip", "link", "show", "xkt0"]);
    assert!(!String::from_utf8_lossy(&show.stdout).contains("xdp"), "nothing is attached to it");
}

/// The prober itself: with no gate at all it must see the SYN-ACKs, or its
/// "all dropped" above would prove nothing.
#[test]
fn prober_sees_an_open_port() {
    if !privileged("lifecycle_prober") {
        return;
    }
    let boot = Boot::new("nftables");
    let prober = Prober::start(&boot.pair, CLIENT2_V4, SERVER_V4);
    std::thread::sleep(PROBE_AGE);
    let (n, answers) = prober.into_results();
    assert!(n > 0 && answers.len() == n, "{} of {n} probes answered", answers.len());
    assert!(answers.iter().all(|a| a == "a SYN-ACK"), "{answers:?}");
}

fn xdp_attached(pair: &NetPair) -> bool {
    let show = sh(pair, &pair.server, &["ip", "link", "show", "dev", &pair.server_if]);
    String::from_utf8_lossy(&show.stdout).contains("xdp")
}

/// Moving off xdp removes the pins but not our attachment; a clean stop
/// then detaches (no xdp door), while the nftables gate stays in place.
#[test]
fn clean_stop_after_moving_off_xdp_detaches_and_keeps_the_port_closed() {
    let Some(mut rig) = rig("lifecycle_stop_after_xdp", "xdp") else { return };
    let (pins, iface) = (rig.pins(), rig.pair().server_if.clone());
    assert!(pins.join(format!("link_{iface}")).exists());
    let options = format!("bpffs_dir: {}", pins.display());
    std::fs::write(rig.srv.config_path(FILE), config("nftables", DURATION, &[&options])).unwrap();
    rig.srv.signal(libc::SIGHUP);
    assert!(wait_until(WAIT, || present(rig.pair(), &pins, "nftables") && !present(rig.pair(), &pins, "xdp")));
    assert!(!pins.join(format!("link_{iface}")).exists(), "the link pin went with the xdp gate");
    assert!(xdp_attached(rig.pair()), "but the daemon's own link keeps the detector attached");

    assert!(rig.stop(libc::SIGTERM).success());
    assert!(!xdp_attached(rig.pair()), "a clean stop with no xdp door detaches");
    assert_closed(rig.pair(), CLIENT_V4, SERVER_V4, "nftables gate after a clean stop");
}

/// A daemon killed with the xdp gate pinned, the interface recreated while
/// it was down: the restarted daemon must replace the pin of the dead link
/// (taking it over would attach to nothing) and gate the new device.
#[test]
fn restart_after_the_interface_was_recreated_replaces_the_stale_pin() {
    let Some(mut rig) = rig("lifecycle_stale_pin", "xdp") else { return };
    rig.stop(libc::SIGKILL);
    recreate_pair(rig.pair());
    rig.restart(WAIT);
    let out = rig.srv.daemon.output();
    assert!(out.iter().any(|l| l.contains("replacing the stale pinned XDP link")), "{}", out.join("\n"));
    assert!(!out.iter().any(|l| l.contains("took over the pinned XDP link")), "{}", out.join("\n"));
    assert!(xdp_attached(rig.pair()));
    assert_closed(rig.pair(), CLIENT2_V4, SERVER_V4, "after a restart on the recreated interface");
    knock_opens_for_the_knocker_only(&mut rig, "after a restart on the recreated interface");
}

/// A daemon killed with the xdp gate pinned, restarted on a config that
/// moved the door to nftables: it takes the pinned link over (no second
/// attach fails), drops the old gate's pins, and the port stays closed.
#[test]
fn restart_without_an_xdp_door_removes_the_old_xdp_gate() {
    let Some(mut rig) = rig("lifecycle_restart_off_xdp", "xdp") else { return };
    let pins = rig.pins();
    rig.stop(libc::SIGKILL);
    let options = format!("bpffs_dir: {}", pins.display());
    std::fs::write(rig.srv.config_path(FILE), config("nftables", DURATION, &[&options])).unwrap();
    rig.restart(WAIT);
    rig.srv.daemon.wait_for("took over the pinned XDP link", WAIT).unwrap();
    assert!(!present(rig.pair(), &pins, "xdp"), "the old gate's maps are unpinned");
    let link = pins.join(format!("link_{}", rig.pair().server_if));
    assert!(!link.exists(), "and so is its link");
    assert_closed(rig.pair(), CLIENT2_V4, SERVER_V4, "nftables after the restart");
    knock_opens_for_the_knocker_only(&mut rig, "nftables after the restart");
    assert!(rig.stop(libc::SIGTERM).success());
    assert!(!xdp_attached(rig.pair()), "a clean stop with no xdp door detaches");
}

/// At network-pre a NIC may not exist yet: --install-gate waits a little,
/// then says so and exits 0 with the gate maps pinned for the daemon.
#[test]
fn install_gate_skips_a_missing_interface_with_a_warning() {
    if !privileged("lifecycle_install_missing") {
        return;
    }
    let boot = Boot::new("xdp");
    let out = boot.xknockd(&["--install-gate"], "xkmissing0");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("warning: xkmissing0 does not exist"), "{stdout}");
    assert!(boot.bpffs.0.join("xknockd/GATED").exists(), "the gate maps wait for the daemon");
}
