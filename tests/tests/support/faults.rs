//! What the fault tests share: xknockd in fresh namespaces with echo
//! servers behind its protected ports, stand-ins for firewall tools early
//! in its PATH, and probes that tell a silent drop from a refusal.

#![allow(dead_code)]

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    time::Duration,
};

use xknock_tests::{
    daemon::{bin, Captured, TempDir},
    netns::{connect_from, EchoServer, NetPair, SERVER_V4},
};

/// The bound on every wait that involves no tool deadline.
pub const WAIT: Duration = Duration::from_secs(10);
/// xknockd's deadline on one firewall tool run (gate/tool.rs).
pub const TOOL_DEADLINE: Duration = Duration::from_secs(5);
/// How long a probe waits for a SYN-ACK.
pub const CONNECT: Duration = Duration::from_secs(1);

/// A stand-in for `tool` that runs `real` unless `<dir>/<tool>.fail` or
/// `<dir>/<tool>.hang` exists and the call (arguments and stdin) contains
/// `trigger` (empty: every call). Failing exits 1; hanging marks
/// `<dir>/<tool>.hung` and sleeps far past xknockd's deadline.
pub fn stand_in(tool: &str, real: &str, dir: &Path, trigger: &str) -> String {
    let dir = dir.display();
    format!(
        r#"#!/bin/sh
piped=
case "$*" in *"-f -"*|*--noflush*) input=$(cat); piped=1;; esac
case "$* $input" in
*'{trigger}'*)
  if [ -e {dir}/{tool}.fail ]; then echo "stand-in {tool}: failing on purpose" >&2; exit 1; fi
  if [ -e {dir}/{tool}.hang ]; then touch {dir}/{tool}.hung; exec sleep 600; fi;;
esac
if [ -n "$piped" ]; then printf '%s\n' "$input" | exec {real} "$@"; fi
exec {real} "$@"
"#
    )
}

/// Where `tool` is, found before any stand-in shadows it.
pub fn real(tool: &str) -> String {
    let out = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap();
    let path = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(out.status.success() && !path.is_empty(), "{tool} is not installed");
    path
}

/// The config's file name in the temp dir.
const CONFIG: &str = "xknockd.yaml";

/// Writes a stand-in (see [`stand_in`]) for each `(tool, trigger)` to
/// `<dir>/bin`.
fn install_stubs(dir: &TempDir, stubs: &[(&str, &str)]) {
    let bin_dir = dir.path("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    for (tool, trigger) in stubs {
        let script = bin_dir.join(tool);
        std::fs::write(&script, stand_in(tool, &real(tool), &dir.0, trigger)).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
}

/// `xknockd -v` on the config in `dir`, with `<dir>/bin` first in its PATH.
fn xknockd(pair: &NetPair, dir: &TempDir) -> Command {
    let mut cmd = pair.server_cmd(bin("xknockd").to_str().unwrap());
    cmd.arg("-v").arg("-c").arg(dir.path(CONFIG)).args(["-i", &pair.server_if, "-p"]).arg(dir.path("pid"));
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{}:{path}", dir.path("bin").display()));
    cmd
}

/// xknockd on a config in fresh namespaces, with echo servers on `ports`.
pub struct Faulty {
    pub daemon: Captured,
    pub dir: TempDir,
    _echoes: Vec<EchoServer>,
    // Dropped last: the daemon must die before its namespace goes.
    pub pair: NetPair,
}

impl Faulty {
    /// Writes `config` (`{DIR}` replaced by the temp dir) and starts
    /// `xknockd -v` on it with a stand-in (see [`stand_in`]) for each
    /// `(tool, trigger)` in `stubs` first in its PATH.
    pub fn start(config: &str, ports: &[u16], stubs: &[(&str, &str)]) -> Self {
        let pair = NetPair::new().unwrap();
        let dir = TempDir::new();
        install_stubs(&dir, stubs);
        std::fs::write(dir.path(CONFIG), config.replace("{DIR}", dir.0.to_str().unwrap())).unwrap();
        let echoes =
            ports.iter().map(|p| EchoServer::start(&pair.server, &format!("[::]:{p}")).unwrap()).collect();
        let mut daemon = Captured::spawn(xknockd(&pair, &dir)).unwrap();
        daemon.wait_for("starting up, listening on", Duration::from_secs(20)).unwrap();
        Self { daemon, dir, _echoes: echoes, pair }
    }

    pub fn config(&self) -> std::path::PathBuf {
        self.dir.path(CONFIG)
    }

    /// Another `xknockd -v` on the same config and stand-ins.
    pub fn spawn(&self) -> Captured {
        Captured::spawn(xknockd(&self.pair, &self.dir)).unwrap()
    }

    /// Creates (or removes) `<dir>/<name>`, the switch of a stand-in.
    pub fn set(&self, name: &str, on: bool) {
        let p = self.dir.path(name);
        if on {
            std::fs::write(p, "").unwrap();
        } else {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Runs `xknock SERVER ports...` in the client namespace.
    pub fn knock(&self, ports: &[&str]) {
        self.pair.xknock(&[&[SERVER_V4], ports].concat());
    }

    /// Whether a connect from `src` (default: the client's primary address)
    /// to `port` gets through within [`CONNECT`]. "Not through" must be a
    /// silent drop while the echo server listens; a refusal or a dead
    /// listener fails the test instead.
    pub fn connects(&self, src: Option<&str>, port: u16) -> bool {
        let dst = SocketAddr::new(SERVER_V4.parse().unwrap(), port);
        let src = src.map(|s| s.parse::<IpAddr>().unwrap());
        match connect_from(&self.pair.client, src, dst, CONNECT).unwrap() {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::TimedOut => {
                assert!(self.pair.listening(&self.pair.server, port).unwrap(), "nothing listens on {port}");
                false
            }
            Err(e) => panic!("connect to port {port}: {e}: not what a closed gate does"),
        }
    }

    /// Insists xknockd is still running.
    pub fn assert_alive(&mut self) {
        let status = self.daemon.child.0.try_wait().unwrap();
        assert!(status.is_none(), "xknockd exited ({status:?}):\n{}", self.daemon.output().join("\n"));
    }

    pub fn pid(&self) -> u32 {
        self.daemon.child.pid()
    }
}

/// A small tmpfs of the test's own at a path under its temp dir, for a
/// full or read-only filesystem that is never the host's. Lazily unmounted
/// when dropped (the daemon may still hold files on it).
pub struct Tmpfs(pub std::path::PathBuf);

impl Tmpfs {
    pub fn new(path: std::path::PathBuf, size_kib: u32) -> Self {
        std::fs::create_dir_all(&path).unwrap();
        let opts = format!("size={size_kib}k,mode=0700");
        xknock_tests::netns::run(&["mount", "-t", "tmpfs", "-o", &opts, "tmpfs", path.to_str().unwrap()])
            .unwrap();
        Self(path)
    }

    /// Remounts read-only (`ro`) or read-write. A superblock change, so the
    /// daemon's mount namespace (a slave copy) sees it too.
    pub fn remount(&self, ro: bool) {
        let opts = if ro { "remount,ro" } else { "remount,rw" };
        xknock_tests::netns::run(&["mount", "-o", opts, self.0.to_str().unwrap()]).unwrap();
    }

    /// Fills the filesystem: a filler file, then `also` (files that may
    /// already hold a partly used page), each appended to until ENOSPC.
    pub fn fill(&self, also: &[&Path]) {
        append_until_full(&self.0.join("filler"));
        also.iter().for_each(|p| append_until_full(p));
    }
}

fn append_until_full(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    loop {
        match f.write(&[b'.'; 512]) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
