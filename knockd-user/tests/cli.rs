//! The two binaries seen from outside: exit codes, messages and flags. No root
//! needed: nothing here loads XDP, and the only packets go to 127.0.0.1.

use std::{
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

const XKNOCKD: &str = env!("CARGO_BIN_EXE_xknockd");
const XKNOCK: &str = env!("CARGO_BIN_EXE_xknock");

/// A fresh directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("xknock-cli-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// With `mode`, as one-time sequence files must be kept (0600) or not.
    fn write_mode(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.write(name, text);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(bin: &str, args: &[&str]) -> Ran {
    let Output { status, stdout, stderr } = Command::new(bin).args(args).output().unwrap();
    Ran {
        code: status.code(),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

fn xknockd(args: &[&str]) -> Ran {
    run(XKNOCKD, args)
}

fn check(path: &Path) -> Ran {
    xknockd(&["--check", "-c", path.to_str().unwrap()])
}

fn workspace_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

const GOOD_YAML: &str = r#"
options:
  log_file: /var/log/xknockd.log
doors:
  openSSH:
    sequence: ["7000", "8000:udp", "9000"]
    seq_timeout: 5
    tcp_flags: syn
    start_command: /usr/sbin/nft add element inet filter ssh_ok { %IP% }
"#;

#[test]
fn check_accepts_a_good_config() {
    let dir = Dir::new();
    let path = dir.write("good.yaml", GOOD_YAML);
    let out = check(&path);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, format!("{}: OK (1 door)\n", path.display()));
    let out = check(&workspace_file("configs/knockd.conf"));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

/// (file name, text, line and key as reported, the message's start)
const BAD: &[(&str, &str, &str, &str)] = &[
    (
        "port.yaml",
        "doors:\n  a:\n    sequence: [7000, 70000]\n",
        ":3: key `sequence`: ",
        "port 70000 is outside 1-65535",
    ),
    (
        "port.conf",
        "[a]\n  sequence = 7000,70000:udp\n",
        ":2: key `sequence`: ",
        "port 70000 is outside 1-65535",
    ),
    ("empty.yaml", "doors:\n  a:\n    sequence: []\n", ":3: key `sequence`: ", "the sequence is empty"),
    ("empty.conf", "[options]\n\tUseSyslog\n[a]\nSequence =\n", ":4: key `Sequence`: ", "the sequence is empty"),
    (
        "unknown.yaml",
        "doors:\n  a:\n    sequence: [1]\n    seq_timout: 5\n",
        ":4: key `seq_timout`: ",
        "unknown key `seq_timout` (did you mean `seq_timeout`?)",
    ),
    (
        "unknown.conf",
        "[a]\nsequence = 1\nseq_timout = 5\n",
        ":3: key `seq_timout`: ",
        "unknown key `seq_timout` (did you mean `Seq_Timeout`?)",
    ),
    (
        "flag.yaml",
        "doors:\n  a:\n    sequence: [1]\n    tcp_flags: syn,sin\n",
        ":4: key `tcp_flags`: ",
        "unknown tcp flag `sin` (valid: fin, syn, rst, psh, ack, urg)",
    ),
    (
        "flag.conf",
        "[a]\nsequence = 1\nTCPFlags = syn,!fni\n",
        ":3: key `TCPFlags`: ",
        "unknown tcp flag `fni`",
    ),
    (
        "onetime.yaml",
        "doors:\n  a:\n    one_time_sequences: missing.txt\n",
        ":3: key `one_time_sequences`: ",
        "cannot read one-time sequences file ",
    ),
    (
        "onetime.conf",
        "[a]\nOne_Time_Sequences = missing.txt\n",
        ":2: key `One_Time_Sequences`: ",
        "cannot read one-time sequences file ",
    ),
    (
        "same.yaml",
        "doors:\n  a:\n    sequence: [1, \"2:udp\"]\n  b:\n    sequence: [1, \"2:udp\"]\n",
        ":5: key `sequence`: ",
        "doors `a` and `b` have the same sequence (1:tcp,2:udp)",
    ),
    (
        "prefix.conf",
        "[long]\nsequence = 1,2,3\n\n[short]\nsequence = 1,2\n",
        ":5: key `sequence`: ",
        "door `short`'s whole sequence (1:tcp,2:tcp) is the start of door `long`'s",
    ),
    (
        "gates.yaml",
        "doors:\n  a:\n    sequence: [1]\n    open: {ports: [22], duration: 30, backend: xdp}\n  b:\n    sequence: [2]\n    open:\n      ports: [22/tcp]\n      duration: 30\n",
        ":7: key `open`: ",
        "door `b` protects 22:tcp with the nftables backend, but door `a` protects it with xdp",
    ),
    (
        "knockport.yaml",
        "doors:\n  a:\n    sequence: [7000, 2222]\n  b:\n    sequence: [1]\n    open:\n      ports: [2222/tcp]\n      duration: 30\n",
        ":3: key `sequence`: ",
        "door `a` knocks on 2222:tcp, which door `b` protects (",
    ),
    (
        "windows.yaml",
        "options:\n  open_burst: 100\ndoors:\n  a:\n    sequence: [1]\n    open:\n      ports: [22]\n      duration: 2h\n      backend: xdp\n",
        ":8: key `open.duration`: ",
        "the doors using the xdp backend could hold up to 72100 windows at once",
    ),
];

#[test]
fn check_names_file_line_and_key_for_each_error_class() {
    let dir = Dir::new();
    for (name, text, at, message) in BAD {
        let path = dir.write(name, text);
        let out = check(&path);
        assert_eq!(out.code, Some(1), "{name}: {}{}", out.stdout, out.stderr);
        let want = format!("{}{at}{message}", path.display());
        assert!(out.stderr.starts_with(&want), "{name}:\n got {:?}\nwant {want:?}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{name}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{name}: {}", out.stdout);
    }
}

/// Issue 8, item 3, for a one-time file: the error names that file and its line.
#[test]
fn check_refuses_a_one_time_line_that_knocks_on_a_protected_port() {
    let dir = Dir::new();
    let otp = dir.write_mode("otp", " 1,2\n 3,22\n", 0o600);
    let text = "doors:\n  a:\n    one_time_sequences: otp\n  b:\n    sequence: [9]\n    open:\n      ports: [22]\n      duration: 30\n";
    let out = check(&dir.write("x.yaml", text));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let want = format!("{}:2: this one-time sequence of door `a`", otp.display());
    assert!(out.stderr.starts_with(&want), "got {:?}\nwant {want:?}", out.stderr);
    assert!(out.stderr.contains("knocks on 22:tcp, which door `b` protects"), "{}", out.stderr);
}

/// Issue 8, item 2: a used-up one-time file is no reason to refuse the config.
#[test]
fn check_accepts_a_used_up_one_time_file_with_a_warning() {
    let dir = Dir::new();
    let otp = dir.write_mode("otp", "#1,2\n", 0o600);
    let text =
        "doors:\n  once:\n    one_time_sequences: otp\n    open:\n      ports: [22]\n      duration: 30\n";
    let out = check(&dir.write("x.yaml", text));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let warning = format!(
        "one-time sequences file {} is used up: door once is disabled; its protected ports stay closed",
        otp.display()
    );
    assert!(out.stderr.contains(&warning), "{}", out.stderr);
}

/// Issue 8, item 8: one-time files other users can write are refused, ones they
/// can read are warned about, and a symlink is never followed.
#[test]
fn check_guards_one_time_files_against_other_users() {
    let dir = Dir::new();
    let config = dir.write("x.yaml", "doors:\n  a:\n    one_time_sequences: otp\n");
    let otp = dir.write_mode("otp", " 1,2\n", 0o600);
    let out = check(&config);
    assert_eq!((out.code, out.stderr.as_str()), (Some(0), ""));

    dir.write_mode("otp", " 1,2\n", 0o644);
    let out = check(&config);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "one-time sequences file {}: other users can read it (mode 0644)",
            otp.display()
        )),
        "{}",
        out.stderr
    );

    dir.write_mode("otp", " 1,2\n", 0o666);
    let out = check(&config);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let want = format!("{}:3: key `one_time_sequences`: cannot read one-time sequences file {}: refused: other users can write it (mode 0666)", config.display(), otp.display());
    assert!(out.stderr.starts_with(&want), "got {:?}\nwant {want:?}", out.stderr);

    let real = dir.write_mode("real", " 1,2\n", 0o600);
    std::fs::remove_file(&otp).unwrap();
    std::os::unix::fs::symlink(&real, &otp).unwrap();
    let out = check(&config);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("refused: is a symbolic link"), "{}", out.stderr);
}

/// Issue 8, item 8: a second daemon fails on the locked pid file and leaves it as
/// it was. The interface does not exist, so even a broken lock attaches nothing.
#[test]
fn a_second_daemon_fails_on_the_pid_file_and_leaves_it_alone() {
    let dir = Dir::new();
    let config = dir.write("x.yaml", "doors:\n  a:\n    sequence: [7000, 8000]\n");
    let pid_path = dir.0.join("xknockd.pid");
    let held = xknock::pidfile::PidFile::create(&pid_path).unwrap();
    let ours = format!("{}\n", std::process::id());
    let args = ["-c", config.to_str().unwrap(), "-p", pid_path.to_str().unwrap(), "-i", "xk-absent0"];
    let out = xknockd(&args);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let want = format!("xknockd is already running as pid {} ({})", std::process::id(), pid_path.display());
    assert!(out.stderr.contains(&want), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&pid_path).unwrap(), ours);
    drop(held);
}

#[test]
fn a_missing_config_file_is_an_error() {
    let out = check(Path::new("/nonexistent/xknockd.yaml"));
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.starts_with("/nonexistent/xknockd.yaml: cannot read the config file"),
        "{}",
        out.stderr
    );
    // --convert stops there too. (The daemon itself is never started here: it
    // would attach to the host's interfaces.)
    let out = xknockd(&["--convert", "-c", "/nonexistent/xknockd.yaml"]);
    assert_eq!(out.code, Some(1));
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("/nonexistent/xknockd.yaml: cannot read the config file"), "{}", out.stderr);
}

/// Every knockd.conf key, in knockd's spellings and mixed case.
const FULL_CONF: &str = "\
# every key knockd 0.8 knows
[options]
\tUseSyslog
\tLogFile = /var/log/knockd.log
\tPidFile = /run/knockd.pid
\tinterface = eth1

[openSSH]
\tSequence    = 7000,8000:UDP,9000:tcp
\tSeq_Timeout = 7
\tTCPFlags    = syn,!ack
\tTarget      = 192.0.2.10
\tCommand     = /sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
\tStart_Command_6 = /sbin/ip6tables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
\tCmd_Timeout = 15
\tStop_Command = /sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
\tStop_Command_6 = /sbin/ip6tables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT

[once]
\tOne_Time_Sequences = seqs.txt
\tTimeout = 3
\tcommand = echo \"quotes\" and # not a comment: %IP%
";

#[test]
fn convert_prints_yaml_that_check_accepts_and_that_has_the_same_doors() {
    let dir = Dir::new();
    dir.write_mode("seqs.txt", "#1,2,3\n 4000,5000:udp\n 6000\n", 0o600);
    let full = dir.write("full.conf", FULL_CONF);
    for (i, conf) in [full, workspace_file("configs/knockd.conf")].iter().enumerate() {
        let out = xknockd(&["--convert", "-c", conf.to_str().unwrap()]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert!(out.stdout.contains("\ndoors:\n"), "{}", out.stdout);
        let yaml = dir.write(&format!("converted{i}.yaml"), &out.stdout);
        let checked = check(&yaml);
        assert_eq!(checked.code, Some(0), "{}\n{}", checked.stderr, out.stdout);

        let from_conf = xknock::config::load(conf).unwrap();
        let from_yaml = xknock::config::load(&yaml).unwrap();
        assert_eq!(from_yaml.format, xknock::config::Format::Yaml);
        assert_eq!(from_conf.options, from_yaml.options);
        assert_eq!(from_conf.doors, from_yaml.doors, "{}", out.stdout);
    }
    // Spot checks on the full one: knockd's defaults and spellings became ours.
    let cfg = xknock::config::load(&dir.0.join("converted0.yaml")).unwrap();
    let once = cfg.doors.iter().find(|d| d.name == "once").unwrap();
    assert_eq!(once.sequence.len(), 2, "the first live line of seqs.txt");
    assert_eq!(once.seq_timeout, Duration::from_secs(3));
    assert_eq!(once.cmd_timeout, Duration::from_secs(10));
    assert_eq!(once.start_command.as_deref(), Some("echo \"quotes\" and # not a comment: %IP%"));
    assert_eq!(cfg.options.interfaces, ["eth1"]);
}

#[test]
fn convert_and_check_refuse_a_broken_file_alike() {
    let dir = Dir::new();
    let path = dir.write("bad.conf", "[a]\nsequence = 1,99999\n");
    for flag in ["--convert", "--check"] {
        let out = xknockd(&[flag, "-c", path.to_str().unwrap()]);
        assert_eq!(out.code, Some(1), "{flag}");
        assert!(out.stdout.is_empty(), "{flag}: {}", out.stdout);
        assert!(out.stderr.contains(":2: key `sequence`: port 99999 is outside 1-65535"), "{}", out.stderr);
    }
}

#[test]
fn version_and_help_list_knockds_flags() {
    for flag in ["-V", "--version"] {
        let out = xknockd(&[flag]);
        assert_eq!(out.code, Some(0));
        assert_eq!(out.stdout, format!("xknockd {}\n", env!("CARGO_PKG_VERSION")));
    }
    for flag in ["-h", "--help"] {
        let out = xknockd(&[flag]);
        assert_eq!(out.code, Some(0));
        for want in [
            "-c, --config",
            "-i, --interface",
            "--iface",
            "-d, --daemon",
            "-D, --debug",
            "-v, --verbose",
            "-l, --lookup",
            "-p, --pidfile",
            "-g, --logfile",
            "-4, --only-ip-v4",
            "-V, --version",
            "-h, --help",
            "--check",
            "--convert",
            "--xdp-mode",
            "/etc/xknockd/xknockd.yaml",
        ] {
            assert!(out.stdout.contains(want), "{flag}: {want:?} missing from\n{}", out.stdout);
        }
    }
    let out = run(XKNOCK, &["--help"]);
    assert_eq!(out.code, Some(0));
    for want in [
        "-u, --udp",
        "-d, --delay",
        "-4, --ipv4",
        "-6, --ipv6",
        "-v, --verbose",
        "-V, --version",
        "-h, --help",
    ] {
        assert!(out.stdout.contains(want), "xknock: {want:?} missing from\n{}", out.stdout);
    }
    let out = run(XKNOCK, &["-V"]);
    assert_eq!(out.stdout, format!("xknock {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn an_unknown_daemon_flag_is_a_usage_error() {
    let out = xknockd(&["--no-such-flag"]);
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("--no-such-flag"), "{}", out.stderr);
}

/// Runs xknock and insists it fails with exactly `message` on stderr.
fn knock_fails(args: &[&str], message: &str) {
    let out = run(XKNOCK, args);
    assert_eq!(out.code, Some(1), "xknock {args:?}: {}", out.stderr);
    assert_eq!(out.stderr, format!("xknock: {message}\n"), "xknock {args:?}");
}

#[test]
fn xknock_fails_clearly_on_bad_hosts_and_ports() {
    knock_fails(&["no-such-host.invalid", "7000"], "cannot resolve host `no-such-host.invalid`");
    knock_fails(&["127.0.0.1", "70000"], "invalid knock `70000`: port must be 1-65535");
    knock_fails(&["127.0.0.1", "0"], "invalid knock `0`: port must be 1-65535");
    knock_fails(&["127.0.0.1", "abc"], "invalid knock `abc`: port is not a number");
    knock_fails(&["127.0.0.1", "80:icmp"], "invalid knock `80:icmp`: protocol must be tcp or udp");
    knock_fails(&["127.0.0.1"], "no knocks given: name ports, or a door with -c FILE --door NAME");
    // -6 with an IPv4 literal: nothing to send to.
    knock_fails(&["-6", "127.0.0.1", "7000"], "cannot resolve host `127.0.0.1`");
}

fn udp_listener() -> (UdpSocket, u16) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = s.local_addr().unwrap().port();
    (s, port)
}

/// Whether a datagram is already queued. xknock has exited by the time we
/// look, and loopback delivery is synchronous, so "nothing yet" is "nothing".
fn has_datagram(s: &UdpSocket) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 8];
    let got = s.recv(&mut buf).is_ok();
    s.set_nonblocking(false).unwrap();
    got
}

#[test]
fn every_knock_is_checked_before_any_is_sent() {
    let (rx, port) = udp_listener();
    knock_fails(&["127.0.0.1", &format!("{port}:udp"), "abc"], "invalid knock `abc`: port is not a number");
    assert!(!has_datagram(&rx));
}

#[test]
fn xknock_knocks_a_doors_sequence_from_the_config() {
    let listeners: Vec<(UdpSocket, u16)> = (0..4).map(|_| udp_listener()).collect();
    let p: Vec<u16> = listeners.iter().map(|l| l.1).collect();
    let dir = Dir::new();
    let cfg = dir.write(
        "knock.yaml",
        &format!(
            "doors:\n  udp-only:\n    sequence: [\"{}:udp\", \"{}:udp\", \"{}:udp\"]\n  other:\n    sequence: [\"{}:udp\"]\n",
            p[0], p[1], p[2], p[3]
        ),
    );
    let cfg = cfg.to_str().unwrap();
    let out = run(XKNOCK, &["-v", "-c", cfg, "--door", "udp-only", "127.0.0.1"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // In the door's order.
    let want: Vec<String> = p[..3].iter().map(|port| format!("hitting udp 127.0.0.1:{port}")).collect();
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), want);
    for (rx, port) in &listeners[..3] {
        let mut buf = [9u8; 8];
        let (n, from) = rx.recv_from(&mut buf).unwrap_or_else(|e| panic!("port {port}: {e}"));
        assert_eq!((n, buf[0]), (1, 0), "one zero byte, as knock sends");
        assert!(from.ip().is_loopback());
        assert!(!has_datagram(rx), "port {port} got a second datagram");
    }
    assert!(!has_datagram(&listeners[3].0), "the other door's port was knocked");

    knock_fails(&["-c", cfg, "--door", "nope", "127.0.0.1"], "no door `nope` in the config");
}
