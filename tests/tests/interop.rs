//! Interop with the real thing, end to end with real packets: Debian's `knock`
//! against xknockd running an unchanged knockd.conf, our `xknock` against
//! Debian's `knockd`, the `--convert`ed YAML against the same knock, and the
//! `-d`/pid-file lifecycle. Everything runs inside the test namespaces.

use std::{
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use xknock_tests::{
    daemon::{bin, Captured, Server, TempDir},
    netns::{NetPair, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6},
    privileged, wait_until,
};

const WAIT: Duration = Duration::from_secs(10);

/// Debian's example knockd.conf (configs/knockd.conf) in shape and spelling,
/// with commands that record the knocker in `{DIR}/out` instead of touching
/// iptables. Read by xknockd and by Debian's knockd alike.
const KNOCKD_CONF: &str = "\
[options]
\tUseSyslog

[openSSH]
\tsequence    = 7000,8000,9000
\tseq_timeout = 5
\ttcpflags    = syn
\tstart_command = /bin/sh -c 'echo open %IP% >> {DIR}/out'
\tcmd_timeout = 1
\tstop_command = /bin/sh -c 'echo close %IP% >> {DIR}/out'

[closeSSH]
\tsequence    = 9000,8000,7000
\tseq_timeout = 5
\tcommand     = /bin/sh -c 'echo closeSSH %IP% >> {DIR}/out'
\ttcpflags    = syn

[udpDoor]
\tsequence    = 7100:udp,7200:udp,7300:udp
\tseq_timeout = 5
\tcommand     = /bin/sh -c 'echo udp %IP% >> {DIR}/out'
";

/// For Debian's knockd: logs to a file in the temp dir, and a mixed TCP/UDP door.
const KNOCKD_SERVER_CONF: &str = "\
[options]
\tLogFile = {DIR}/knockd.log

[openSSH]
\tsequence    = 7000,8000:udp,9000
\tseq_timeout = 5
\ttcpflags    = syn
\tstart_command = /bin/sh -c 'echo open %IP% >> {DIR}/out'
\tcmd_timeout = 1
\tstop_command = /bin/sh -c 'echo close %IP% >> {DIR}/out'
";

fn out_lines(dir: &TempDir) -> Vec<String> {
    std::fs::read_to_string(dir.path("out")).unwrap_or_default().lines().map(String::from).collect()
}

/// Waits until `{DIR}/out` holds exactly `want`, in order.
fn expect_out(dir: &TempDir, want: &[String]) {
    wait_until(WAIT, || out_lines(dir).len() >= want.len());
    assert_eq!(out_lines(dir), want);
}

fn succeed(mut cmd: Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs Debian's `knock ARGS` in the client namespace.
fn debian_knock(srv: &Server, args: &[&str]) {
    let mut cmd = srv.pair.client_cmd("knock");
    cmd.args(args);
    succeed(cmd);
}

fn open_close(ip: &str) -> Vec<String> {
    vec![format!("open {ip}"), format!("close {ip}")]
}

#[test]
fn debian_knock_opens_an_xknockd_door_from_an_unchanged_knockd_conf() {
    if !privileged("interop_knock_tcp") {
        return;
    }
    let mut srv = Server::start("knockd.conf", KNOCKD_CONF, &[]).unwrap();
    debian_knock(&srv, &[SERVER_V4, "7000", "8000", "9000"]);
    for stage in 1..=3 {
        let line = format!("{CLIENT_V4}: openSSH: Stage {stage}");
        srv.daemon.wait_for(&line, WAIT).unwrap();
    }
    srv.daemon.wait_for(&format!("{CLIENT_V4}: openSSH: OPEN SESAME"), WAIT).unwrap();
    srv.daemon
        .wait_for(&format!("openSSH: running command: /bin/sh -c 'echo open {CLIENT_V4} >> "), WAIT)
        .unwrap();
    expect_out(&srv.dir, &open_close(CLIENT_V4));
    // The reverse sequence is another door, as in Debian's example.
    debian_knock(&srv, &[SERVER_V4, "9000", "8000", "7000"]);
    srv.daemon.wait_for(&format!("{CLIENT_V4}: closeSSH: OPEN SESAME"), WAIT).unwrap();
    let mut want = open_close(CLIENT_V4);
    want.push(format!("closeSSH {CLIENT_V4}"));
    expect_out(&srv.dir, &want);
}

#[test]
fn debian_knock_udp_opens_an_xknockd_udp_door() {
    if !privileged("interop_knock_udp") {
        return;
    }
    let mut srv = Server::start("knockd.conf", KNOCKD_CONF, &[]).unwrap();
    debian_knock(&srv, &["-u", SERVER_V4, "7100", "7200", "7300"]);
    srv.daemon.wait_for(&format!("{CLIENT_V4}: udpDoor: OPEN SESAME"), WAIT).unwrap();
    expect_out(&srv.dir, &[format!("udp {CLIENT_V4}")]);
    assert_eq!(srv.daemon.count("openSSH: Stage"), 0);
}

#[test]
fn debian_knock_over_ipv6_opens_an_xknockd_door() {
    if !privileged("interop_knock_v6") {
        return;
    }
    let mut srv = Server::start("knockd.conf", KNOCKD_CONF, &[]).unwrap();
    debian_knock(&srv, &["-6", SERVER_V6, "7000", "8000", "9000"]);
    srv.daemon.wait_for(&format!("{CLIENT_V6}: openSSH: OPEN SESAME"), WAIT).unwrap();
    // No Start_Command_6: the plain command runs with the v6 address, as in knockd.
    expect_out(&srv.dir, &open_close(CLIENT_V6));
}

/// Debian's knockd in the server namespace, in the foreground (no `-d`), so
/// the guard inside `Captured` kills it when the test ends.
struct Knockd {
    proc: Captured,
    dir: TempDir,
    // Dropped last: knockd must die before its namespace goes.
    pair: NetPair,
}

impl Knockd {
    fn start(conf: &str) -> Knockd {
        // NetPair has set the addresses up: knockd reads them once, at start.
        let pair = NetPair::new().unwrap();
        let dir = TempDir::new();
        let path = dir.path("knockd.conf");
        std::fs::write(&path, conf.replace("{DIR}", dir.0.to_str().unwrap())).unwrap();
        let mut cmd = pair.server_cmd("knockd");
        // -v prints knockd's lines on stdout; -p keeps any pid file in the temp dir.
        cmd.args(["-v", "-i", &pair.server_if, "-c"]).arg(&path).arg("-p").arg(dir.path("knockd.pid"));
        let mut proc = Captured::spawn(cmd).unwrap();
        proc.wait_for("listening on", WAIT).unwrap();
        Knockd { proc, dir, pair }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("knockd.log")).unwrap_or_default()
    }

    /// Our client, in the client namespace.
    fn xknock(&self, args: &[&str]) {
        let mut cmd = self.pair.client_cmd(bin("xknock").to_str().unwrap());
        cmd.args(args);
        succeed(cmd);
    }
}

#[test]
fn xknock_opens_a_debian_knockd_door() {
    if !privileged("interop_xknock_to_knockd") {
        return;
    }
    let mut knockd = Knockd::start(KNOCKD_SERVER_CONF);
    // knockd prints "listening on" just before it logs "starting up".
    assert!(wait_until(WAIT, || knockd.log().contains("starting up, listening on")), "{}", knockd.log());
    knockd.xknock(&[SERVER_V4, "7000", "8000:udp", "9000"]);
    knockd.proc.wait_for(&format!("{CLIENT_V4}: openSSH: OPEN SESAME"), WAIT).unwrap();
    expect_out(&knockd.dir, &open_close(CLIENT_V4));
    let log = knockd.log();
    for want in [
        format!("] {CLIENT_V4}: openSSH: Stage 1\n"),
        format!("] {CLIENT_V4}: openSSH: OPEN SESAME\n"),
        format!("] openSSH: running command: /bin/sh -c 'echo open {CLIENT_V4} >> "),
    ] {
        assert!(log.contains(&want), "{want:?} not in\n{log}");
    }
}

#[test]
fn xknock_over_ipv6_opens_a_debian_knockd_door() {
    if !privileged("interop_xknock_to_knockd_v6") {
        return;
    }
    let mut knockd = Knockd::start(KNOCKD_SERVER_CONF);
    knockd.xknock(&["-6", SERVER_V6, "7000", "8000:udp", "9000"]);
    knockd.proc.wait_for(&format!("{CLIENT_V6}: openSSH: OPEN SESAME"), WAIT).unwrap();
    expect_out(&knockd.dir, &open_close(CLIENT_V6));
}

/// A knockd-format log file with its `[YYYY-MM-DD HH:MM] ` prefixes checked
/// and cut, blank lines dropped (knockd writes one after each command line),
/// and the run's temp dir and interface replaced by placeholders.
fn log_lines(text: &str, dir: &TempDir, iface: &str) -> Vec<String> {
    let dir = dir.0.to_str().unwrap();
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let b = l.as_bytes();
            let shape = b"[0000-00-00 00:00] ";
            let prefix_ok = b.len() > shape.len()
                && shape.iter().zip(b).all(|(s, c)| match s {
                    b'0' => c.is_ascii_digit(),
                    s => s == c,
                });
            assert!(prefix_ok, "no knockd timestamp prefix: {l:?}");
            l[shape.len()..].replace(dir, "{DIR}").replace(iface, "{IF}")
        })
        .collect()
}

#[test]
fn xknockd_logs_what_knockd_logs_for_the_same_knock() {
    if !privileged("interop_same_log") {
        return;
    }
    let knock = [SERVER_V4, "7000", "8000:udp", "9000"];
    let done = format!("running command: /bin/sh -c 'echo close {CLIENT_V4}");
    let knockd = Knockd::start(KNOCKD_SERVER_CONF);
    knockd.xknock(&knock);
    assert!(wait_until(WAIT, || knockd.log().contains(&done)));
    let theirs = log_lines(&knockd.log(), &knockd.dir, &knockd.pair.server_if);
    drop(knockd);

    let srv = Server::start("knockd.conf", KNOCKD_SERVER_CONF, &[]).unwrap();
    let ours = || std::fs::read_to_string(srv.dir.path("knockd.log")).unwrap_or_default();
    srv.knock(&knock);
    assert!(wait_until(WAIT, || ours().contains(&done)));
    let ours = log_lines(&ours(), &srv.dir, &srv.pair.server_if);
    assert_eq!(ours, theirs);
}

/// `xknockd --convert -c knockd.conf`, as text. `{DIR}` survives conversion
/// (it sits inside quoted commands), so `Server::start` fills it in later.
fn convert(conf: &str) -> String {
    let dir = TempDir::new();
    let path = dir.path("knockd.conf");
    std::fs::write(&path, conf).unwrap();
    let mut cmd = Command::new(bin("xknockd"));
    cmd.arg("--convert").arg("-c").arg(&path);
    String::from_utf8(succeed(cmd).stdout).unwrap()
}

#[test]
fn converted_yaml_opens_the_same_doors_for_the_same_knocks() {
    if !privileged("interop_convert") {
        return;
    }
    let yaml = convert(KNOCKD_CONF);
    for want in ["doors:\n", "  openSSH:\n", "  closeSSH:\n", "  udpDoor:\n"] {
        assert!(yaml.contains(want), "{want:?} not in\n{yaml}");
    }
    let mut runs = Vec::new();
    for (name, text) in [("knockd.conf", KNOCKD_CONF), ("xknockd.yaml", yaml.as_str())] {
        let mut srv = Server::start(name, text, &[]).unwrap();
        debian_knock(&srv, &[SERVER_V4, "7000", "8000", "9000"]);
        srv.daemon.wait_for(&format!("{CLIENT_V4}: openSSH: OPEN SESAME"), WAIT).unwrap();
        debian_knock(&srv, &["-u", SERVER_V6, "7100", "7200", "7300"]);
        srv.daemon.wait_for(&format!("{CLIENT_V6}: udpDoor: OPEN SESAME"), WAIT).unwrap();
        wait_until(WAIT, || out_lines(&srv.dir).len() >= 3);
        let mut lines = out_lines(&srv.dir);
        lines.sort();
        runs.push((name, lines, knock_log(&srv.daemon.output())));
    }
    assert_eq!(runs[0].1, runs[1].1, "{runs:#?}");
    assert_eq!(runs[0].2, runs[1].2, "{runs:#?}");
    assert_eq!(
        runs[0].1,
        [format!("close {CLIENT_V4}"), format!("open {CLIENT_V4}"), format!("udp {CLIENT_V6}")]
    );
}

/// The knockd-worded lines about knocks (stages and openings), without
/// env_logger's timestamps, for comparing two runs.
fn knock_log(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| {
            let at = l.find(": Stage ").or_else(|| l.find(": OPEN SESAME"))?;
            let start = l[..at].rfind([' ', ']'])? + 1;
            Some(l[start..].to_string())
        })
        .collect()
}

/// SIGKILLs a detached daemon (not our child) if the test fails before it
/// has been stopped, so nothing outlives the namespace.
struct PidGuard(Option<i32>);

impl Drop for PidGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: plain kill(2) on the pid the daemon wrote.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

#[test]
fn daemon_mode_detaches_and_the_pid_file_lives_as_long_as_the_daemon() {
    if !privileged("interop_daemon_mode") {
        return;
    }
    let pair = NetPair::new().unwrap();
    let dir = TempDir::new();
    let cfg = dir.path("xknockd.yaml");
    std::fs::write(&cfg, "doors:\n  d:\n    sequence: [7000]\n").unwrap();
    let pid_path = dir.path("pid");
    let log_path = dir.path("xknockd.log");
    let mut cmd = pair.server_cmd(bin("xknockd").to_str().unwrap());
    cmd.arg("-d")
        .arg("-c")
        .arg(&cfg)
        .args(["-i", &pair.server_if])
        .arg("-p")
        .arg(&pid_path)
        .arg("-g")
        .arg(&log_path);
    let started = std::time::Instant::now();
    let status = cmd.status().unwrap();
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < WAIT, "-d must return at once");

    let mut guard = PidGuard(None);
    assert!(wait_until(WAIT, || std::fs::read_to_string(&pid_path).is_ok_and(|t| t.ends_with('\n'))));
    let pid: i32 = std::fs::read_to_string(&pid_path).unwrap().trim().parse().unwrap();
    guard.0 = Some(pid);
    assert!(alive(pid), "pid {pid} from the pid file is not running");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "xknockd");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(wait_until(WAIT, || log().contains("starting up, listening on")), "{}", log());
    // Detached: reparented, no longer a child of anything we started.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    assert_ne!(fields[1], std::process::id().to_string(), "ppid");

    // SAFETY: signalling the daemon we started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(wait_until(WAIT, || !pid_path.exists()), "pid file left behind");
    assert!(wait_until(WAIT, || !alive(pid)), "daemon still running");
    guard.0 = None;
    assert!(log().contains("shutting down"), "{}", log());
}
