//! Process lifecycle: `-d` detaching. The pid file is in [`crate::pidfile`].

use std::{
    fs::File,
    io::{self, Read, Write},
    os::fd::{FromRawFd, OwnedFd},
};

/// The detached daemon's line back to the process that started it: the
/// starter exits only once start-up has succeeded or failed, with that
/// outcome, as knockd does by opening the interface before detaching.
pub struct Readiness(File);

impl Readiness {
    pub fn ready(mut self) {
        let _ = self.0.write_all(b"\0");
    }

    pub fn failed(mut self, why: &str) {
        let _ = self.0.write_all(why.as_bytes());
    }
}

/// Classic double fork. The original process waits for the grandchild's
/// readiness report and exits 0 or 1 with its message; the grandchild
/// returns, detached from the terminal with stdio on /dev/null. Must run
/// before any thread starts.
pub fn daemonize() -> io::Result<Readiness> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we own from here on.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds from pipe2, each owned exactly once.
    let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: single-threaded at this point (no runtime yet), so fork is sound.
    match unsafe { libc::fork() } {
        -1 => return Err(io::Error::last_os_error()),
        0 => drop(rx),
        _ => {
            drop(tx);
            wait_for_child(File::from(rx));
        }
    }
    // SAFETY: as above; the intermediate child exits at once.
    unsafe {
        if libc::setsid() == -1 {
            return Err(io::Error::last_os_error());
        }
        match libc::fork() {
            -1 => return Err(io::Error::last_os_error()),
            0 => {}
            _ => libc::_exit(0),
        }
        libc::chdir(c"/".as_ptr());
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
    Ok(Readiness(File::from(tx)))
}

/// In the starting process: exit with the daemon's start-up outcome.
fn wait_for_child(mut rx: File) -> ! {
    let mut msg = Vec::new();
    let _ = rx.read_to_end(&mut msg);
    match msg.as_slice() {
        [0] => std::process::exit(0),
        [] => {
            eprintln!("xknockd: the daemon exited during start-up");
            std::process::exit(1)
        }
        why => {
            eprintln!("xknockd: {}", String::from_utf8_lossy(why));
            std::process::exit(1)
        }
    }
}
