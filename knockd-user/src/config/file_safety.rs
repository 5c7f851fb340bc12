//! Opening files that decide who gets in (one-time sequence files) so that other
//! users cannot steer them: the last path component is never a symlink followed to
//! somewhere else, and a file that other users could write is refused, since whoever
//! can write it can add sequences or revive used ones.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::Path,
};

/// Opens `path` for reading (and writing with `write`) without following a
/// symlink in its last component, and refuses it unless it is a regular file
/// that only root or the daemon's own user can write. The second value is a
/// warning when other users can read it.
pub(crate) fn open_private(path: &Path, write: bool) -> io::Result<(File, Option<String>)> {
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        // O_NONBLOCK: a FIFO planted here must not hang the daemon in open().
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => refused("is a symbolic link; name the file itself"),
            _ => e,
        })?;
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let warning = check_mode(meta.is_file(), meta.mode(), meta.uid(), euid).map_err(refused)?;
    Ok((file, warning))
}

/// `Err`: why the file is refused; `Ok(Some)`: a warning; `Ok(None)`: private.
fn check_mode(is_file: bool, mode: u32, owner: u32, euid: u32) -> Result<Option<String>, String> {
    let perms = mode & 0o7777;
    if !is_file {
        return Err("is not a regular file".to_string());
    }
    if perms & 0o022 != 0 {
        return Err(format!("other users can write it (mode {perms:04o}); run chmod go-w on it"));
    }
    if owner != 0 && owner != euid {
        return Err(format!("it is owned by uid {owner}, neither root nor the daemon's user (uid {euid})"));
    }
    Ok((perms & 0o044 != 0).then(|| {
        format!(
            "other users can read it (mode {perms:04o}), and so learn the sequences; run chmod go-r on it"
        )
    }))
}

fn refused(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, format!("refused: {}", why.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_owners() {
        assert_eq!(check_mode(true, 0o100600, 0, 0), Ok(None));
        assert_eq!(check_mode(true, 0o100400, 1000, 1000), Ok(None));
        assert!(check_mode(true, 0o100644, 0, 0).unwrap().unwrap().contains("mode 0644"));
        assert!(check_mode(true, 0o100640, 0, 0).unwrap().is_some());
        assert!(check_mode(true, 0o100666, 0, 0).unwrap_err().contains("mode 0666"));
        assert!(check_mode(true, 0o100620, 0, 0).is_err(), "group-writable");
        assert!(check_mode(true, 0o100602, 0, 0).is_err(), "world-writable");
        let other = check_mode(true, 0o100600, 1000, 0).unwrap_err();
        assert_eq!(other, "it is owned by uid 1000, neither root nor the daemon's user (uid 0)");
        assert_eq!(check_mode(true, 0o100600, 0, 1000), Ok(None), "root's file is fine for any daemon");
        assert_eq!(check_mode(false, 0o040700, 0, 0), Err("is not a regular file".to_string()));
    }
}
