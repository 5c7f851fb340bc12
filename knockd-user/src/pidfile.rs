//! The pid file, held with an exclusive `flock` for the daemon's lifetime.
//!
//! The lock, not the file's content, says whether a daemon runs: checking the pid
//! and then writing is a race two starting daemons can both win, and a failed
//! start must never rewrite or delete the pid file of the daemon that runs.
//! Take it after `-d` detaches, so the lock belongs to the process that stays.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

/// Holds the pid file locked; removes it when dropped (clean exit or error return).
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    /// Kept open: closing it would release the lock.
    _file: File,
}

impl PidFile {
    /// Locks `path` (created if missing, never truncated before the lock is held)
    /// and writes our pid into it. Fails, touching nothing, while another
    /// process holds the lock.
    pub fn create(path: &Path) -> io::Result<Self> {
        let mut file = lock(path)?;
        file.set_len(0)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
        Ok(PidFile { path: path.to_path_buf(), _file: file })
    }
}

impl Drop for PidFile {
    /// Unlinks while still holding the lock, so no other daemon can have locked
    /// this file in between (see `lock`, which checks the path still names it).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Opens and locks the file at `path`. A daemon that stops unlinks its file just
/// before it lets go of the lock, so a lock won on a file no longer at `path` is
/// worthless: retry on whatever is there now.
fn lock(path: &Path) -> io::Result<File> {
    loop {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o644)
            // Commands the daemon runs must not inherit the lock; a symlink planted
            // at the path must not redirect our write.
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err);
            }
            return Err(already_running(path, &mut file));
        }
        if still_at(path, &file)? {
            return Ok(file);
        }
    }
}

fn still_at(path: &Path, file: &File) -> io::Result<bool> {
    let held = file.metadata()?;
    match std::fs::symlink_metadata(path) {
        Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The lock proves a live holder; its pid is in the file unless it is still
/// being written.
fn already_running(path: &Path, file: &mut File) -> io::Error {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let message = match text.trim().parse::<u32>() {
        Ok(pid) => format!("xknockd is already running as pid {pid} ({})", path.display()),
        Err(_) => format!("xknockd is already running ({} is locked)", path.display()),
    };
    io::Error::new(io::ErrorKind::AlreadyExists, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("xknockd-{name}-{}.pid", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    fn content(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn pid_file_holds_our_pid_and_goes_away() {
        let path = temp_path("ours");
        {
            let _pid = PidFile::create(&path).unwrap();
            assert_eq!(content(&path), format!("{}\n", std::process::id()));
        }
        assert!(!path.exists());
    }

    #[test]
    fn a_stale_pid_file_is_replaced() {
        let path = temp_path("stale");
        // Nobody holds a lock on it: whatever it says, it is stale.
        std::fs::write(&path, "1\nand a longer tail that must not survive\n").unwrap();
        let pid = PidFile::create(&path).unwrap();
        assert_eq!(content(&path), format!("{}\n", std::process::id()));
        drop(pid);
    }

    /// A flock conflicts between two open file descriptions even within one
    /// process, so this is what a second daemon sees.
    #[test]
    fn a_second_taker_fails_and_leaves_the_file_alone() {
        let path = temp_path("second");
        let first = PidFile::create(&path).unwrap();
        let ours = format!("{}\n", std::process::id());
        let err = PidFile::create(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        let want = format!("xknockd is already running as pid {} ({})", std::process::id(), path.display());
        assert_eq!(err.to_string(), want);
        assert_eq!(content(&path), ours, "the failed attempt neither truncated nor rewrote it");
        drop(err);
        assert_eq!(content(&path), ours, "nor deleted it");
        drop(first);
        assert!(!path.exists());
        // Once released, the next taker gets it.
        let _again = PidFile::create(&path).unwrap();
    }

    #[test]
    fn a_lock_won_on_an_unlinked_file_is_not_kept() {
        let path = temp_path("unlinked");
        let file = lock(&path).unwrap();
        assert!(still_at(&path, &file).unwrap());
        std::fs::remove_file(&path).unwrap();
        assert!(!still_at(&path, &file).unwrap());
        std::fs::write(&path, "x").unwrap();
        assert!(!still_at(&path, &file).unwrap(), "a new file at the path is another file");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let path = temp_path("link");
        let target = temp_path("link-target");
        std::fs::write(&target, "keep\n").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(PidFile::create(&path).is_err());
        assert_eq!(content(&target), "keep\n");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&target);
    }
}
