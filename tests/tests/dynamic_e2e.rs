//! Dynamic doors end to end, with a 5 s period: our client, Debian's `knock`
//! sending ports derived by the independent Python implementation, burned
//! sequences (same and other address, across a restart), old and skewed
//! sequences, and a knock that spans a period boundary.
//!
//! A negative check ("this does not open") is always followed by a knock
//! that must open: the daemon handles knocks in order, so had the first
//! opened, its line would come before the control's.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use xknock_tests::{
    daemon::{bin, Captured, TempDir},
    netns::{NetPair, CLIENT_V4, SERVER_V4},
    privileged, wait_until,
};

const PERIOD: u64 = 5;
const SECRET: &str = "KRUGKIDROVUWG2ZAMJZG653OEBTG66BAKRUGKIDR\n";
const OTHER_V4: &str = "10.77.0.3";
const WAIT: Duration = Duration::from_secs(10);

fn config(dir: &Path, secret: &Path) -> String {
    format!(
        "options:\n  state_dir: {dir}/state\ndoors:\n  dyn:\n    dynamic:\n      secret_file: {secret}\n      steps: 3\n      period: {PERIOD}\n      ports: \"20000-40000\"\n    seq_timeout: 4\n    tcp_flags: syn\n    start_command: /bin/sh -c 'echo open %IP% >> {dir}/out'\n",
        dir = dir.display(),
        secret = secret.display()
    )
}

/// A namespace pair, the secret, the config and a daemon that can be restarted.
struct Rig {
    daemon: Option<Captured>,
    dir: TempDir,
    secret: PathBuf,
    cfg: PathBuf,
    pair: NetPair,
}

impl Rig {
    fn start() -> Self {
        let pair = NetPair::new().expect("namespaces");
        let dir = TempDir::new();
        let secret = dir.path("dyn.secret");
        std::fs::write(&secret, SECRET).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let cfg = dir.path("x.yaml");
        std::fs::write(&cfg, config(&dir.0, &secret)).unwrap();
        let mut rig = Rig { daemon: None, dir, secret, cfg, pair };
        rig.spawn();
        rig
    }

    fn spawn(&mut self) {
        let mut cmd = self.pair.server_cmd(bin("xknockd").to_str().unwrap());
        cmd.arg("-v")
            .arg("-c")
            .arg(&self.cfg)
            .args(["-i", &self.pair.server_if, "-p"])
            .arg(self.dir.path("pid"));
        let mut d = Captured::spawn(cmd).expect("xknockd");
        d.wait_for("starting up, listening on", Duration::from_secs(20)).unwrap();
        self.daemon = Some(d);
    }

    fn restart(&mut self) {
        let mut old = self.daemon.take().expect("running");
        old.child.signal_and_wait(libc::SIGTERM, WAIT).expect("xknockd stops on SIGTERM");
        self.spawn();
    }

    fn out(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path("out")).unwrap_or_default().lines().map(String::from).collect()
    }

    /// Waits until `{DIR}/out` holds `want.len()` lines, then compares.
    fn expect_out(&self, want: &[&str]) {
        wait_until(WAIT, || self.out().len() >= want.len());
        let want: Vec<String> = want.iter().map(|w| format!("open {w}")).collect();
        let log = self.daemon.as_ref().map(|d| d.output().join("\n")).unwrap_or_default();
        assert_eq!(self.out(), want, "daemon output:\n{log}");
    }

    /// `xknock ARGS SERVER` from the client; returns the ports it hit (-v).
    fn xknock(&self, args: &[&str]) -> Vec<u16> {
        let mut cmd = self.pair.client_cmd(bin("xknock").to_str().unwrap());
        cmd.arg("-v").args(args).arg(SERVER_V4);
        let out = succeed(cmd);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("hitting tcp {SERVER_V4}:"))?.parse().ok())
            .collect()
    }

    /// Debian's `knock` with `ports`.
    fn knock(&self, ports: &[u16]) {
        let mut cmd = self.pair.client_cmd("knock");
        cmd.arg(SERVER_V4).args(ports.iter().map(u16::to_string));
        succeed(cmd);
    }

    /// New connections from the client leave from `src`.
    fn source(&self, src: &str) {
        let c = &self.pair.client;
        let dev = &self.pair.client_if;
        // Already there on a second call: fine.
        let add = ["-n", c, "addr", "add", &format!("{OTHER_V4}/24"), "dev", dev];
        let _ = Command::new("ip").args(add).stderr(std::process::Stdio::null()).status();
        succeed_argv(&["ip", "-n", c, "route", "replace", "10.77.0.0/24", "dev", dev, "src", src]);
    }
}

fn succeed(mut cmd: Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn succeed_argv(argv: &[&str]) {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    succeed(cmd);
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn period_now() -> u64 {
    unix_ms() / 1000 / PERIOD
}

/// Waits until period `t` has begun.
fn wait_for_period(t: u64) {
    assert!(
        wait_until(Duration::from_secs(PERIOD * (t.saturating_sub(period_now()) + 1)), || period_now() >= t)
    );
}

/// The ports of period `t`, from the Python implementation of the README.
fn python_ports(secret: &Path, t: u64) -> Vec<u16> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("dynamic_ports.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg("--secret-file").arg(secret).args(["--steps", "3", "--ports", "20000-40000", "--t"]);
    cmd.arg(t.to_string());
    let out = succeed(cmd);
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(|p| p.parse().unwrap()).collect()
}

#[test]
fn python_derivation_matches_the_committed_vectors() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("dynamic_ports.py");
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/dynamic/vectors.txt");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg("--vectors").arg(vectors);
    succeed(cmd);
}

#[test]
fn our_client_then_knock_open_once_and_old_or_replayed_sequences_never() {
    if !privileged("dynamic_once") {
        return;
    }
    let rig = Rig::start();
    // Start at a fresh period, so period t0 stays live for the replays below.
    let t0 = period_now() + 1;
    wait_for_period(t0);
    let ours = rig.xknock(&["-c", rig.cfg.to_str().unwrap(), "--door", "dyn"]);
    assert_eq!(ours, python_ports(&rig.secret, t0), "the client derives what Python derives");
    rig.expect_out(&[CLIENT_V4]);

    // The next period, Debian's knock with the ports Python derives.
    wait_for_period(t0 + 1);
    let next = python_ports(&rig.secret, t0 + 1);
    rig.knock(&next);
    rig.expect_out(&[CLIENT_V4, CLIENT_V4]);

    // Both used sequences, again, from the same and from another address.
    rig.knock(&ours);
    rig.knock(&next);
    rig.source(OTHER_V4);
    rig.knock(&ours);
    rig.knock(&next);
    assert_eq!(period_now(), t0 + 1, "the replays ran while both periods were live");
    // Control: a client clock one period ahead.
    let ahead = rig.xknock(&["-c", rig.cfg.to_str().unwrap(), "--door", "dyn", "--time-offset", "5"]);
    assert_eq!(ahead, python_ports(&rig.secret, t0 + 2));
    rig.expect_out(&[CLIENT_V4, CLIENT_V4, OTHER_V4]);

    // Five periods old, then a clock one period behind (the control).
    wait_for_period(t0 + 4);
    rig.knock(&python_ports(&rig.secret, t0 - 1));
    let behind = rig.xknock(&["-c", rig.cfg.to_str().unwrap(), "--door", "dyn", "--time-offset", "-5"]);
    assert_eq!(behind, python_ports(&rig.secret, period_now() - 1));
    rig.expect_out(&[CLIENT_V4, CLIENT_V4, OTHER_V4, OTHER_V4]);
    let log = rig.daemon.as_ref().unwrap().output().join("\n");
    assert!(log.contains(&format!("{CLIENT_V4}: dyn: Stage 1")), "stages name the door:\n{log}");
}

#[test]
fn a_knock_spanning_a_period_boundary_opens() {
    if !privileged("dynamic_boundary") {
        return;
    }
    let rig = Rig::start();
    // The first knock in the last second of a period, the rest in the next.
    assert!(wait_until(Duration::from_secs(PERIOD + 1), || unix_ms() % (PERIOD * 1000) >= 4300));
    let t = period_now();
    let ports = python_ports(&rig.secret, t);
    rig.knock(&ports[..1]);
    assert_eq!(period_now(), t, "the first knock left within period {t}");
    wait_for_period(t + 1);
    rig.knock(&ports[1..]);
    rig.expect_out(&[CLIENT_V4]);
}

#[test]
fn burned_sequences_stay_burned_across_a_restart() {
    if !privileged("dynamic_restart") {
        return;
    }
    let mut rig = Rig::start();
    let t0 = period_now() + 1;
    wait_for_period(t0);
    let ours = rig.xknock(&["-c", rig.cfg.to_str().unwrap(), "--door", "dyn"]);
    rig.expect_out(&[CLIENT_V4]);
    let burned = std::fs::read_to_string(rig.dir.path("state/dynamic-burned")).unwrap();
    assert_eq!(burned, format!("dyn {t0}\n"));
    rig.restart();
    rig.knock(&ours);
    assert!(period_now() <= t0 + 1, "the replay ran while period {t0} was live");
    rig.xknock(&["-c", rig.cfg.to_str().unwrap(), "--door", "dyn", "--time-offset", "5"]);
    rig.expect_out(&[CLIENT_V4, CLIENT_V4]);
}
