//! Issue 12: `xknockd --status` asks the running daemon over its socket
//! (an attempt in progress, then the open window and the door's counters),
//! and falls back to kernel state once the daemon is gone.

use std::{os::unix::fs::PermissionsExt, process::Output};

use serde_json::Value;
use xknock_tests::{
    daemon::bin,
    gate::{Rig, FILE, WAIT},
    netns::{CLIENT_V4, SERVER_V4},
    wait_until,
};

/// `xknockd --status ARGS` on the rig's config and pid file, in the server
/// namespace.
fn status(rig: &Rig, args: &[&str]) -> Output {
    let mut cmd = rig.pair().server_cmd(bin("xknockd").to_str().unwrap());
    cmd.arg("--status")
        .args(args)
        .arg("-c")
        .arg(rig.srv.config_path(FILE))
        .arg("-p")
        .arg(rig.srv.dir.path("pid"));
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "--status: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn json(rig: &Rig) -> Value {
    serde_json::from_slice(&status(rig, &["--json"]).stdout).unwrap()
}

fn text(rig: &Rig) -> String {
    String::from_utf8(status(rig, &[]).stdout).unwrap()
}

fn door<'a>(report: &'a Value, name: &str) -> &'a Value {
    let doors = report["doors"].as_array().unwrap();
    doors.iter().find(|d| d["name"] == name).unwrap_or_else(|| panic!("no door {name}: {report}"))
}

#[test]
fn the_daemon_answers_then_the_kernel() {
    let Some(mut rig) = Rig::start("status_socket", "nftables", 30, &[]) else { return };
    let socket = rig.srv.dir.path("pid.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", socket.display());

    // Two of three steps: an attempt in progress at stage 2.
    rig.srv.knock(&[SERVER_V4, "7000", "8000:udp"]);
    rig.srv.daemon.wait_for(&format!("{CLIENT_V4}: ssh: Stage 2"), WAIT).unwrap();
    let r = json(&rig);
    assert_eq!(r["origin"], "daemon", "{r}");
    let attempts = r["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{r}");
    let a = &attempts[0];
    assert_eq!((a["source"].as_str(), a["door"].as_str()), (Some(CLIENT_V4), Some("ssh")), "{r}");
    assert_eq!((a["stage"].as_u64(), a["steps"].as_u64()), (Some(2), Some(3)), "{r}");
    let left = a["left_ms"].as_u64().unwrap();
    assert!(left > 0 && left <= 5_000, "seq_timeout is 5 s, {left} ms left");
    assert_eq!(door(&r, "ssh")["counters"]["opens"], 0, "{r}");
    assert_eq!(door(&r, "ssh")["ports"][0], "2222/tcp", "{r}");
    let t = text(&rig);
    assert!(t.contains(&format!("\n{CLIENT_V4}\tssh\t2/3\t")), "{t}");
    assert!(!t.contains("7000") && !t.contains("8000"), "the sequence must not be shown:\n{t}");

    // The third step: the window is open and counted, the attempt gone.
    rig.srv.knock(&[SERVER_V4, "9000"]);
    rig.srv.daemon.wait_for(&format!("{CLIENT_V4}: ssh: OPEN SESAME"), WAIT).unwrap();
    let r = json(&rig);
    assert!(r["attempts"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(door(&r, "ssh")["counters"]["opens"], 1, "{r}");
    let windows = r["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 1, "{r}");
    assert_eq!(
        (windows[0]["address"].as_str(), windows[0]["backend"].as_str()),
        (Some(CLIENT_V4), Some("nftables"))
    );
    let t = text(&rig);
    assert!(t.contains(&format!("\nssh\t{CLIENT_V4}\t2222/tcp\t")), "{t}");

    // SIGKILL leaves the socket file, which no one answers: kernel state.
    rig.stop(libc::SIGKILL);
    let out = status(&rig, &["--json"]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["origin"], "kernel", "{r}");
    assert_eq!(r["windows"][0]["address"], CLIENT_V4, "{r}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no daemon answered"));
    let t = text(&rig);
    assert!(t.starts_with("DOOR\tADDRESS\tPORT\tLEFT"), "{t}");

    // A restarted daemon replaces the stale socket; a clean stop removes it.
    rig.restart(WAIT);
    assert_eq!(json(&rig)["origin"], "daemon");
    rig.stop(libc::SIGTERM);
    assert!(wait_until(WAIT, || !socket.exists()), "the socket outlived a clean stop");
}
