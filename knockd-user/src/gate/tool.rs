//! Running `nft`, `iptables-restore`, `ipset` and friends with a deadline.
//! A firewall tool can hang (a stuck xtables lock, a wedged netlink socket, a
//! broken wrapper script); the gate thread must not hang with it, or every
//! later open, repair and reload would wait forever. A tool that overruns is
//! killed with everything it started, and the change counts as failed: the
//! door stays shut.

use std::{
    io::Write,
    os::unix::process::CommandExt,
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use super::GateError;

/// How long one tool run may take. Far above what a healthy `nft` or
/// `ipset` needs (milliseconds), short enough that the opens queued behind a
/// stuck one still land inside a typical knock window.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// After the kill, how long to wait for the pipes to close before giving up
/// on the tool's output.
const REAP: Duration = Duration::from_secs(1);

/// `cmd.output()`, with `input` on stdin, bounded by [`DEADLINE`].
pub fn output(cmd: &mut Command, input: Option<&[u8]>) -> Result<Output, GateError> {
    output_within(cmd, input, DEADLINE)
}

pub fn output_within(cmd: &mut Command, input: Option<&[u8]>, limit: Duration) -> Result<Output, GateError> {
    // Its own process group, so the kill reaches a wrapper's children too.
    cmd.process_group(0)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    let stdin = child.stdin.take();
    let input = input.map(<[u8]>::to_vec);
    // A writer of its own: a tool that never reads must not block us on a
    // full pipe.
    let writer = std::thread::spawn(move || match (stdin, input) {
        // Dropping stdin at the end sends EOF.
        (Some(mut stdin), Some(input)) => stdin.write_all(&input),
        _ => Ok(()),
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out?,
        Err(_) => {
            // SAFETY: kill has no memory preconditions; the group is the
            // child's own, created above, and not yet reaped.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = rx.recv_timeout(REAP);
            return Err(GateError::Deadline { cmd: format!("{cmd:?}"), after: limit });
        }
    };
    let written = writer.join().unwrap_or(Ok(()));
    // On a write error the tool died early; its status and stderr say why.
    if out.status.success() {
        written?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn a_hanging_tool_and_its_children_are_killed_at_the_deadline() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 30 & sleep 30; echo never"]);
        let t0 = Instant::now();
        let res = output_within(&mut cmd, None, Duration::from_millis(300));
        assert!(matches!(res, Err(GateError::Deadline { .. })), "{res:?}");
        // Bounded by the deadline plus the reap wait, not by the sleeps: the
        // background sleep held the pipes, so it must have died too.
        assert!(t0.elapsed() < Duration::from_secs(3), "took {:?}", t0.elapsed());
    }

    #[test]
    fn input_reaches_the_tool_and_output_comes_back() {
        let out = output(&mut Command::new("cat"), Some(b"doc")).unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"doc");
    }

    #[test]
    fn a_tool_that_never_reads_a_large_input_still_finishes() {
        let big = vec![b'x'; 1 << 20];
        let out = output(Command::new("sh").args(["-c", "exit 3"]), Some(&big)).unwrap();
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn a_missing_tool_is_an_io_not_found() {
        let res = output(&mut Command::new("/nonexistent/xknock-tool"), None);
        assert!(
            matches!(res, Err(GateError::Io(ref e)) if e.kind() == std::io::ErrorKind::NotFound),
            "{res:?}"
        );
    }
}
