//! knockd.conf: the Debian example, knockd's syntax rules, and every error with its line.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::support::{conf, conf_err, tcp, udp};
use crate::config::{model::tcp_flag, Format, TcpFlags, DEFAULT_BPFFS_DIR};

pub const DEBIAN: &str = include_str!("../testdata/debian-knockd.conf");

#[test]
fn debian_example_parses() {
    let c = conf(DEBIAN);
    assert_eq!(c.format, Format::KnockdConf);
    assert!(c.options.use_syslog);
    assert!(c.options.interfaces.is_empty());
    assert_eq!(c.options.bpffs_dir, PathBuf::from(DEFAULT_BPFFS_DIR));
    let names: Vec<_> = c.doors.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["openSSH", "closeSSH", "openHTTPS"]);

    let ssh = &c.doors[0];
    assert_eq!(ssh.sequence, [tcp(7000), tcp(8000), tcp(9000)]);
    assert_eq!(ssh.seq_timeout, Duration::from_secs(5));
    assert_eq!(ssh.tcp_flags, TcpFlags { must_set: tcp_flag::SYN, must_clear: 0 });
    assert_eq!(
        ssh.start_command.as_deref(),
        Some("/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT")
    );
    assert_eq!(ssh.stop_command, None);
    assert_eq!(ssh.cmd_timeout, Duration::from_secs(10));

    let https = &c.doors[2];
    assert_eq!(https.sequence, [tcp(12345), tcp(54321), tcp(24680), tcp(13579)]);
    assert_eq!(
        https.stop_command.as_deref(),
        Some("/usr/local/sbin/knock_add -d -i -c INPUT -p tcp -d 443 -f %IP%")
    );
    assert_eq!((https.target, https.open.as_ref(), https.stealth), (None, None, None));
}

#[test]
fn defaults() {
    let c = conf("[d]\nsequence = 1\n");
    let d = &c.doors[0];
    assert_eq!(d.seq_timeout, Duration::from_secs(25));
    assert_eq!(d.cmd_timeout, Duration::from_secs(10));
    assert_eq!(d.tcp_flags, TcpFlags::default());
    assert!(!c.options.use_syslog);
    assert_eq!(c.options.max_sources, 65_536);
}

#[test]
fn syntax_rules() {
    let text = "\
  # an indented comment
[options]
logfile=/var/log/knockd.log
  PIDFILE   =   /run/knockd.pid  
Interface = eth1
[door]
SEQUENCE=7000:UDP, 8000 : Tcp,9000
Timeout = 7
Command = echo %IP% # not a comment
Command_6 = echo6 %IP%
Stop_Command=
Stop_Command_6 = stop6
Target = 192.0.2.7
UseSyslog
";
    let c = conf(text);
    assert_eq!(c.options.log_file, Some("/var/log/knockd.log".into()));
    assert_eq!(c.options.pid_file, Some("/run/knockd.pid".into()));
    assert_eq!(c.options.interfaces, ["eth1"]);
    assert!(c.options.use_syslog, "knockd takes UseSyslog in any section");
    let d = &c.doors[0];
    assert_eq!(d.sequence, [udp(7000), tcp(8000), tcp(9000)]);
    assert_eq!(d.seq_timeout, Duration::from_secs(7));
    assert_eq!(d.start_command.as_deref(), Some("echo %IP% # not a comment"));
    assert_eq!(d.start_command_6.as_deref(), Some("echo6 %IP%"));
    assert_eq!(d.stop_command, None, "an empty command is no command, as in knockd");
    assert_eq!(d.stop_command_6.as_deref(), Some("stop6"));
    assert_eq!(d.target, Some("192.0.2.7".parse().unwrap()));
}

#[test]
fn section_names_are_case_sensitive_and_options_may_repeat() {
    let c = conf("[options]\nUseSyslog\n[Options]\nsequence = 1\n[options]\nLogFile = /x\n");
    assert_eq!(c.doors.len(), 1);
    assert_eq!(c.doors[0].name, "Options");
    assert_eq!(c.options.log_file, Some("/x".into()));
}

#[test]
fn crlf_line_endings() {
    let c = conf("[d]\r\nsequence = 1,2\r\nstart_command = x\r\n");
    assert_eq!(c.doors[0].start_command.as_deref(), Some("x"));
}

#[test]
fn start_and_stop_commands_6() {
    let c = conf("[d]\nsequence=1\nstart_command_6 = a\nstop_command_6 = b\ncmd_timeout = 3\n");
    let d = &c.doors[0];
    assert_eq!(d.start_command_6.as_deref(), Some("a"));
    assert_eq!(d.stop_command_6.as_deref(), Some("b"));
    assert_eq!(d.cmd_timeout, Duration::from_secs(3));
}

#[test]
fn port_out_of_range_names_file_line_and_key() {
    let err = conf_err("[options]\nUseSyslog\n\n[d]\n\tsequence = 7000,70000\n");
    assert_eq!(err.to_string(), "knockd.conf:5: key `sequence`: port 70000 is outside 1-65535");
}

fn assert_err(text: &str, line: usize, key: Option<&str>, message: &str) {
    let err = conf_err(text);
    assert_eq!((err.line, err.key.as_deref(), err.message.as_str()), (Some(line), key, message), "{err}");
}

#[test]
fn sequence_errors() {
    assert_err("[d]\nsequence = 7000,x80\n", 2, Some("sequence"), "`x80` is not a port number");
    assert_err("[d]\n\nsequence = 0\n", 3, Some("sequence"), "port 0 is outside 1-65535");
    assert_err("[d]\nSequence = 1,\n", 2, Some("Sequence"), "empty item in the sequence (a stray comma?)");
    assert_err("[d]\nsequence =\n", 2, Some("sequence"), "the sequence is empty");
    assert_err(
        "[d]\nsequence = 1:icmp\n",
        2,
        Some("sequence"),
        "unknown protocol `icmp` in `1:icmp` (use tcp or udp)",
    );
    let long = format!("[d]\nsequence = {}\n", vec!["1"; 33].join(","));
    assert_err(&long, 2, Some("sequence"), "the sequence has 33 steps; at most 32 are allowed");
    let ok = format!("[d]\nsequence = {}\n", vec!["1"; 32].join(","));
    assert_eq!(conf(&ok).doors[0].sequence.len(), 32);
}

#[test]
fn value_errors() {
    assert_err(
        "[d]\nsequence = 1\ntcpflags = syn,fni\n",
        3,
        Some("tcpflags"),
        "unknown tcp flag `fni` (valid: fin, syn, rst, psh, ack, urg)",
    );
    assert_err(
        "[d]\nsequence = 1\nTCPFlags = syn,!SYN\n",
        3,
        Some("TCPFlags"),
        "tcp flag `syn` is both required and forbidden",
    );
    assert_err(
        "[d]\nsequence = 1\nseq_timeout = 5s\n",
        3,
        Some("seq_timeout"),
        "`5s` is not a whole number of seconds",
    );
    assert_err(
        "[d]\nsequence = 1\ncmd_timeout = -1\n",
        3,
        Some("cmd_timeout"),
        "`-1` is not a whole number of seconds",
    );
    assert_err(
        "[d]\nsequence = 1\ntarget = host.example\n",
        3,
        Some("target"),
        "`host.example` is not an IP address",
    );
    assert_err("[d]\nsequence = 1\nseq_timeout = 0\n", 3, Some("seq_timeout"), "must be more than 0 seconds");
    assert_err(
        "[d]\nsequence = 1\none_time_sequences =\n",
        3,
        Some("one_time_sequences"),
        "needs a file path",
    );
}

#[test]
fn unknown_keys_suggest_the_nearest() {
    assert_err(
        "[d]\nsequence = 1\nSeq_Timout = 5\n",
        3,
        Some("Seq_Timout"),
        "unknown key `Seq_Timout` (did you mean `Seq_Timeout`?)",
    );
    assert_err(
        "[options]\nLogFiel = /x\n",
        2,
        Some("LogFiel"),
        "unknown key `LogFiel` (did you mean `LogFile`?)",
    );
    assert_err(
        "[d]\nsequence = 1\nbanana = 5\n",
        3,
        Some("banana"),
        "unknown key `banana` (valid keys: Sequence, One_Time_Sequences, Seq_Timeout, Timeout, TCPFlags, Target, Start_Command, Command, Start_Command_6, Command_6, Cmd_Timeout, Stop_Command, Stop_Command_6)",
    );
}

#[test]
fn keys_in_the_wrong_section() {
    assert_err(
        "[options]\nsequence = 1\n",
        2,
        Some("sequence"),
        "`sequence` is a door key; it cannot go in [options]",
    );
    assert_err(
        "[d]\nsequence = 1\nLogFile = /x\n",
        3,
        Some("LogFile"),
        "`LogFile` belongs in [options], not in a door",
    );
    // Such a file is detected as YAML, so call the knockd.conf parser directly.
    let err = crate::config::knockd_conf::parse("# hi\nsequence = 1\n[d]\n", Path::new("k"))
        .err()
        .expect("should fail");
    assert_eq!(
        (err.line, err.key.as_deref(), err.message.as_str()),
        (Some(2), Some("sequence"), "every key must come after a section header ([options] or [door name])")
    );
}

#[test]
fn structural_errors() {
    assert_err("[d\nsequence = 1\n", 1, None, "a section header must end with `]`");
    assert_err("[]\n", 1, None, "empty section name");
    assert_err("[d]\n= 5\n", 2, None, "missing key before `=`");
    assert_err("[d]\nsequence\n", 2, Some("sequence"), "`sequence` needs a value (`sequence = ...`)");
    assert_err(
        "[options]\nUseSyslog = yes\n",
        2,
        Some("UseSyslog"),
        "UseSyslog takes no value (write just `UseSyslog`)",
    );
    assert_err("[options]\nLogFile\n", 2, Some("LogFile"), "`LogFile` needs a value (`LogFile = ...`)");
}

#[test]
fn repeated_keys_and_doors() {
    assert_err(
        "[d]\nsequence = 1\nTimeout = 5\nseq_timeout = 6\n",
        4,
        Some("seq_timeout"),
        "already set by `Timeout` on line 3",
    );
    assert_err(
        "[options]\nLogFile = /a\n[options]\nlogfile = /b\n",
        4,
        Some("logfile"),
        "already set by `LogFile` on line 2",
    );
    assert_err(
        "[d]\nsequence = 1\n[e]\nsequence = 2\n[d]\nsequence = 3\n",
        5,
        None,
        "door `d` is already defined on line 1",
    );
}

#[test]
fn doors_without_sequence_or_at_all() {
    assert_err(
        "[options]\nUseSyslog\n[d]\ncommand = x\n",
        3,
        None,
        "door `d` has no `sequence` (nor `one_time_sequences`)",
    );
    let err = conf_err("[options]\nUseSyslog\n");
    assert_eq!((err.line, err.message.as_str()), (None, "no doors defined"));
    let err = conf_err("# only a comment\n\n");
    assert_eq!((err.line, err.message.as_str()), (None, "the file is empty: no doors defined"));
}

#[test]
fn interface_and_long_timeouts() {
    assert_err(
        "[options]\nInterface = eth 0\n",
        2,
        Some("Interface"),
        "`eth 0` is not a valid interface name",
    );
    assert_err(
        "[d]\nsequence = 1\ncmd_timeout = 99999999999\n",
        3,
        Some("cmd_timeout"),
        "`99999999999` is too long (at most 365 days)",
    );
}
