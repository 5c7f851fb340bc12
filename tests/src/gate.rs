//! What the gate tests (`gate_nftables.rs`, `gate_iptables.rs`,
//! `gate_xdp.rs`) share: one door protecting a TCP port, xknockd in the
//! server namespace with an echo server behind that port, and the client
//! namespace knocking and connecting. Only the backend, the window's length
//! and the `options:` differ between them.

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, TcpStream},
    path::PathBuf,
    process::{Command, ExitStatus},
    time::{Duration, Instant},
};

use crate::{
    daemon::{bin, Captured, Server, TempDir},
    netns::{
        connect_from, BpffsMount, EchoServer, NetPair, CLIENT2_V4, CLIENT2_V6, CLIENT_V4, CLIENT_V6,
        SERVER_V4, SERVER_V6,
    },
    privileged, wait_until,
};

/// The protected port, where the echo server listens.
pub const PORT: u16 = 2222;
/// The config's file name in the server's temp dir.
pub const FILE: &str = "xknockd.yaml";
/// The bound on every wait for the daemon or the kernel.
pub const WAIT: Duration = Duration::from_secs(10);
/// The default connect timeout of a probe.
pub const CONNECT: Duration = Duration::from_secs(1);
/// The door's knock sequence, as `xknock` takes it after the host.
pub const SEQUENCE: [&str; 3] = ["7000", "8000:udp", "9000"];

/// The `ssh` door opening `PORT/tcp` for `duration` seconds through
/// `backend`, with `options` (`key: value` lines, `{DIR}` allowed) under
/// `options:` when there are any.
pub fn config(backend: &str, duration: u64, options: &[&str]) -> String {
    let mut yaml = String::from("\n");
    if !options.is_empty() {
        yaml.push_str("options:\n");
        for line in options {
            yaml.push_str(&format!("  {line}\n"));
        }
    }
    yaml + &format!(
        r#"doors:
  ssh:
    sequence: {SEQUENCE:?}
    seq_timeout: 5
    tcp_flags: syn
    open:
      ports: ["{PORT}/tcp"]
      duration: {duration}
      backend: {backend}
"#
    )
}

/// One address family's addresses: the server, the client that knocks,
/// and the client's second address, which never knocks.
pub struct Family {
    pub server: &'static str,
    pub client: &'static str,
    pub client2: &'static str,
}

pub const V4: Family = Family { server: SERVER_V4, client: CLIENT_V4, client2: CLIENT2_V4 };
pub const V6: Family = Family { server: SERVER_V6, client: CLIENT_V6, client2: CLIENT2_V6 };

/// Two `#[test]`s, `$v4` and `$v6`, running `$scenario(TAG, &FAMILY)` over
/// IPv4 and IPv6; `TAG` names the test for [`crate::privileged`].
#[macro_export]
macro_rules! per_family {
    ($scenario:ident: $v4:ident = $tag4:literal, $v6:ident = $tag6:literal $(,)?) => {
        #[test]
        fn $v4() {
            $scenario($tag4, &$crate::gate::V4)
        }

        #[test]
        fn $v6() {
            $scenario($tag6, &$crate::gate::V6)
        }
    };
}

/// The client address a knock to `server` comes from: the client's primary
/// address of the same family.
pub fn knocker(server: &str) -> &'static str {
    if server.parse::<IpAddr>().unwrap().is_ipv4() {
        CLIENT_V4
    } else {
        CLIENT_V6
    }
}

/// Runs `argv` in the server namespace, insists it succeeds, and returns its
/// stdout.
pub fn server_out(pair: &NetPair, argv: &[&str]) -> String {
    String::from_utf8(pair.in_ns(&pair.server, argv).unwrap().stdout).unwrap()
}

/// xknockd on [`config`] in fresh namespaces, and an echo server on
/// `[::]:PORT` in the server namespace.
pub struct Rig {
    pub srv: Server,
    /// The connect timeout of every probe.
    pub connect: Duration,
    echo: Option<EchoServer>,
    // Dropped last: the daemon must die before its pins go.
    bpffs: Option<BpffsMount>,
}

impl Rig {
    /// The rig for `test`, or `None` (the test skips) without privileges.
    pub fn start(test: &str, backend: &str, duration: u64, options: &[&str]) -> Option<Self> {
        privileged(test).then(|| Self::start_with(None, backend, duration, options))
    }

    /// Like [`Rig::start`], with a bpffs of its own and `bpffs_dir` set to
    /// [`Rig::pins`] inside it.
    pub fn start_pinned(test: &str, backend: &str, duration: u64, options: &[&str]) -> Option<Self> {
        privileged(test)
            .then(|| Self::start_with(Some(BpffsMount::new().unwrap()), backend, duration, options))
    }

    /// Like [`Rig::start_pinned`], but stops short of starting xknockd, so
    /// a test can see the port before any gate exists.
    pub fn prepare_pinned(test: &str, backend: &str, duration: u64, options: &[&str]) -> Option<Unstarted> {
        privileged(test).then(|| Unstarted::new(Some(BpffsMount::new().unwrap()), backend, duration, options))
    }

    /// Like [`Rig::start`], but stops short of starting xknockd.
    pub fn prepare(test: &str, backend: &str, duration: u64, options: &[&str]) -> Option<Unstarted> {
        privileged(test).then(|| Unstarted::new(None, backend, duration, options))
    }

    fn start_with(bpffs: Option<BpffsMount>, backend: &str, duration: u64, options: &[&str]) -> Self {
        Unstarted::new(bpffs, backend, duration, options).start()
    }

    /// Probes connect with `timeout` instead of [`CONNECT`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect = timeout;
        self
    }

    pub fn pair(&self) -> &NetPair {
        &self.srv.pair
    }

    /// Where xknockd pins its maps, for a rig from [`Rig::start_pinned`].
    pub fn pins(&self) -> PathBuf {
        pins_in(self.bpffs.as_ref().expect("a rig with its own bpffs"))
    }

    /// A TCP connection from the client namespace to `dst`'s protected
    /// port, from `src` if given, within the connect timeout.
    pub fn stream_from(&self, src: Option<&str>, dst: &str) -> std::io::Result<TcpStream> {
        let dst = SocketAddr::new(dst.parse().unwrap(), PORT);
        let src = src.map(|s| s.parse::<IpAddr>().unwrap());
        connect_from(&self.srv.pair.client, src, dst, self.connect).unwrap()
    }

    /// Whether [`Rig::stream_from`] gets in. Every gate drops silently, so
    /// "not in" must be a connect timeout while the echo server still
    /// listens; a refusal (RST), a failed bind or a dead listener fails the
    /// test instead of passing for a closed gate.
    pub fn connects(&self, src: Option<&str>, dst: &str) -> bool {
        match self.stream_from(src, dst) {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::TimedOut => {
                self.assert_listening();
                false
            }
            Err(e) => panic!(
                "connect from {src:?} to {dst} port {PORT}: {e} ({:?}); a gate drops silently, \
                 so this is not a closed gate",
                e.kind()
            ),
        }
    }

    /// The same as [`Rig::connects`], which has become as strict.
    pub fn connects_or_times_out(&self, src: Option<&str>, dst: &str) -> bool {
        self.connects(src, dst)
    }

    /// Stops the echo server, so the probes' own checks can be seen to fail.
    pub fn stop_listener(&mut self) {
        self.echo = None;
        let pair = self.pair();
        assert!(wait_until(WAIT, || !pair.listening(&pair.server, PORT).unwrap()));
    }

    /// Insists the echo server still listens on [`PORT`], so a timeout
    /// means a dropped SYN and not a listener gone away.
    pub fn assert_listening(&self) {
        let pair = self.pair();
        let up = pair.listening(&pair.server, PORT).unwrap();
        assert!(up, "nothing listens on port {PORT} in the server namespace: the probe proves nothing");
    }

    /// Whether connects from `src` to `dst` fail within `bound`.
    pub fn closes_within(&self, src: Option<&str>, dst: &str, bound: Duration) -> bool {
        wait_until(bound, || !self.connects(src, dst))
    }

    /// Polls until connects from `src` to `dst` fail, within `bound`, and
    /// says how long after `since` that was.
    pub fn time_until_closed(
        &self,
        src: Option<&str>,
        dst: &str,
        since: Instant,
        bound: Duration,
    ) -> Duration {
        let closed = self.closes_within(src, dst, bound);
        assert!(
            closed,
            "the window never ended: {src:?} still connects {:?} after the knock",
            since.elapsed()
        );
        since.elapsed()
    }

    /// Runs `xknock SERVER SEQUENCE` in the client namespace.
    pub fn send_knock(&self, server: &str) {
        let mut args = vec![server];
        args.extend(SEQUENCE);
        self.srv.knock(&args);
    }

    /// Knocks on `server` and waits for the next `<knocker>: ssh: OPEN
    /// SESAME`; returns when it was logged.
    pub fn knock(&mut self, server: &str) -> Instant {
        let line = format!("{}: ssh: OPEN SESAME", knocker(server));
        let before = self.srv.daemon.count(&line);
        self.send_knock(server);
        self.srv.daemon.wait_for_n(&line, before + 1, WAIT).unwrap();
        Instant::now()
    }

    /// Sends `sig` to xknockd and insists it exits within [`WAIT`].
    pub fn stop(&mut self, sig: i32) -> ExitStatus {
        let status = self.srv.daemon.child.signal_and_wait(sig, WAIT);
        status.unwrap_or_else(|| panic!("xknockd did not exit on signal {sig}"))
    }

    /// Starts another `xknockd -v` in the same namespaces on the same
    /// config, with its pid file at `pid_file` in the temp dir.
    pub fn spawn_daemon(&self, pid_file: &str) -> Captured {
        Captured::spawn(xknockd(&self.srv.pair, &self.srv.dir, pid_file)).unwrap()
    }

    /// Replaces the (stopped) daemon by a new one and waits, up to
    /// `timeout`, for it to be listening.
    pub fn restart(&mut self, timeout: Duration) {
        self.srv.daemon = self.spawn_daemon("pid");
        self.srv.daemon.wait_for("starting up, listening on", timeout).unwrap();
    }

    /// Runs `xknockd FLAG -c CONFIG` in the server namespace, as an admin
    /// would, insists it succeeds, and returns its stdout.
    pub fn admin(&self, flag: &str) -> String {
        let mut cmd = self.srv.pair.server_cmd(bin("xknockd").to_str().unwrap());
        let out = cmd.arg(flag).arg("-c").arg(self.srv.config_path(FILE)).output().unwrap();
        assert!(out.status.success(), "xknockd {flag}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

/// A rig whose xknockd has not started: the namespaces, the config file
/// and the echo server are in place, and no gate exists yet.
pub struct Unstarted {
    echo: EchoServer,
    dir: TempDir,
    pair: NetPair,
    bpffs: Option<BpffsMount>,
}

impl Unstarted {
    fn new(bpffs: Option<BpffsMount>, backend: &str, duration: u64, options: &[&str]) -> Self {
        let pins = bpffs.as_ref().map(|b| format!("bpffs_dir: {}", pins_in(b).display()));
        let options: Vec<&str> = pins.iter().map(String::as_str).chain(options.iter().copied()).collect();
        let pair = NetPair::new().unwrap();
        let dir = TempDir::new();
        let yaml = config(backend, duration, &options).replace("{DIR}", dir.0.to_str().unwrap());
        std::fs::write(dir.path(FILE), yaml).unwrap();
        let echo = EchoServer::start(&pair.server, &format!("[::]:{PORT}")).unwrap();
        Self { echo, dir, pair, bpffs }
    }

    pub fn pair(&self) -> &NetPair {
        &self.pair
    }

    /// The config file xknockd will read, to extend before [`Unstarted::start`].
    pub fn config_path(&self) -> PathBuf {
        self.dir.path(FILE)
    }

    /// Starts xknockd and waits until it listens.
    pub fn start(self) -> Rig {
        let mut daemon = Captured::spawn(xknockd(&self.pair, &self.dir, "pid")).unwrap();
        daemon.wait_for("starting up, listening on", Duration::from_secs(20)).unwrap();
        let srv = Server { daemon, dir: self.dir, pair: self.pair };
        Rig { srv, connect: CONNECT, echo: Some(self.echo), bpffs: self.bpffs }
    }
}

/// `xknockd -v` on the rig's config in the server namespace, with its pid
/// file at `pid_file` in `dir`.
fn xknockd(pair: &NetPair, dir: &TempDir, pid_file: &str) -> Command {
    let mut cmd = pair.server_cmd(bin("xknockd").to_str().unwrap());
    cmd.arg("-v").arg("-c").arg(dir.path(FILE)).args(["-i", &pair.server_if, "-p"]).arg(dir.path(pid_file));
    cmd
}

fn pins_in(bpffs: &BpffsMount) -> PathBuf {
    bpffs.0.join("xknockd")
}
