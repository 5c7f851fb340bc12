//! Issue 12: under systemd (JOURNAL_STREAM naming stderr), log lines carry
//! their sd-daemon priority and no timestamp of their own.

use std::{os::unix::fs::MetadataExt, process::Stdio, time::Duration};

use xknock_tests::{
    daemon::{bin, TempDir},
    netns::{ChildGuard, NetPair, CLIENT_V4, SERVER_V4},
    privileged, wait_until,
};

const CONFIG: &str = "doors:\n  tcp-door:\n    sequence: [\"7000\"]\n";
const WAIT: Duration = Duration::from_secs(20);

#[test]
fn journal_lines_have_a_priority_and_no_timestamp() {
    if !privileged("journal_stream") {
        return;
    }
    let pair = NetPair::new().unwrap();
    let dir = TempDir::new();
    std::fs::write(dir.path("xknockd.yaml"), CONFIG).unwrap();
    // A file stands in for the journal's socket: what counts is that
    // JOURNAL_STREAM names the very file stderr is.
    let stderr = std::fs::File::create(dir.path("stderr")).unwrap();
    let meta = stderr.metadata().unwrap();
    let mut cmd = pair.server_cmd(bin("xknockd").to_str().unwrap());
    cmd.arg("-c").arg(dir.path("xknockd.yaml")).args(["-i", &pair.server_if, "-p"]).arg(dir.path("pid"));
    cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
    let mut daemon = ChildGuard(cmd.spawn().unwrap());
    let read = || std::fs::read_to_string(dir.path("stderr")).unwrap();
    assert!(wait_until(WAIT, || read().contains("starting up, listening on")), "{}", read());
    let knock = pair.client_cmd(bin("xknock").to_str().unwrap()).args([SERVER_V4, "7000"]).status().unwrap();
    assert!(knock.success());
    let sesame = format!("<5>{CLIENT_V4}: tcp-door: OPEN SESAME");
    assert!(wait_until(WAIT, || read().lines().any(|l| l == sesame)), "{}", read());
    assert!(daemon.signal_and_wait(libc::SIGTERM, WAIT).is_some(), "xknockd did not stop");
    let text = read();
    assert!(text.lines().any(|l| l.starts_with("<5>starting up, listening on")), "{text}");
    assert!(text.lines().any(|l| l == "<5>shutting down"), "{text}");
    for line in text.lines() {
        let prio = line.strip_prefix('<').and_then(|l| l.split_once('>')).map(|(p, _)| p);
        assert!(
            prio.is_some_and(|p| p.len() == 1 && p.as_bytes()[0].is_ascii_digit()),
            "no priority: {line}"
        );
        assert!(!line.contains(" INFO ") && !line.contains("[20"), "a timestamp or level in: {line}");
    }
}
