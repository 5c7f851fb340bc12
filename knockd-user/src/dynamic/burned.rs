//! Burned (door, T) pairs: a dynamic sequence that opened once never
//! opens again. Kept in one small file under `state_dir`, written
//! atomically (temporary file, fsync, rename) before the door opens, and
//! pruned to the periods that can still be live (T-1 to T+2).

use std::{
    collections::BTreeSet,
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

/// The file's name under `state_dir`.
pub const BURNED_FILE: &str = "dynamic-burned";

/// Lines of "door T"; door names are single YAML keys but may hold
/// spaces, so T is the last field.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Burned {
    path: PathBuf,
    used: BTreeSet<(String, u64)>,
}

impl Burned {
    /// Reads `state_dir/dynamic-burned`; a missing file is an empty set,
    /// an unreadable one an error (starting without it would reopen).
    pub fn load(state_dir: &Path) -> io::Result<Self> {
        let path = state_dir.join(BURNED_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let used = text
            .lines()
            .filter_map(|l| {
                let (door, t) = l.trim_end().rsplit_once(' ')?;
                Some((door.to_string(), t.parse().ok()?))
            })
            .collect();
        Ok(Burned { path, used })
    }

    pub fn contains(&self, door: &str, t: u64) -> bool {
        self.used.contains(&(door.to_string(), t))
    }

    /// Adds (door, t), drops what `keep` says can no longer be live, and
    /// writes the file. On an error nothing is recorded: the caller must
    /// not open.
    pub fn burn(&mut self, door: &str, t: u64, keep: impl Fn(&str, u64) -> bool) -> io::Result<()> {
        let mut next = self.used.clone();
        next.insert((door.to_string(), t));
        next.retain(|(d, t)| keep(d, *t));
        write_atomic(&self.path, &render(&next))?;
        self.used = next;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

fn render(used: &BTreeSet<(String, u64)>) -> String {
    used.iter().map(|(d, t)| format!("{d} {t}\n")).collect()
}

/// Replaces `path` with `text` so that a crash leaves the old or the new
/// content, never a torn file; 0600, in a 0700 directory made if missing.
fn write_atomic(path: &Path, text: &str) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let tmp = dir.join(format!(".{BURNED_FILE}.{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    // The rename itself must reach the disk before the door opens.
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xknock-burned-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn burns_survive_a_reload_and_stay_bounded() {
        let d = dir("keep");
        let mut b = Burned::load(&d).unwrap();
        assert!(b.is_empty());
        b.burn("ssh door", 10, |_, _| true).unwrap();
        b.burn("ssh door", 11, |_, t| t >= 10).unwrap();
        b.burn("web", 12, |_, t| t >= 11).unwrap();
        let again = Burned::load(&d).unwrap();
        assert!(!again.contains("ssh door", 10), "pruned as too old");
        assert!(again.contains("ssh door", 11) && again.contains("web", 12));
        assert_eq!(again.len(), 2);
        let mode = fs::metadata(d.join(BURNED_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_write_records_nothing() {
        let d = dir("fail");
        fs::create_dir_all(&d).unwrap();
        let mut b = Burned::load(&d).unwrap();
        // A directory where the file should be: the rename fails.
        fs::create_dir(d.join(BURNED_FILE)).unwrap();
        fs::write(d.join(BURNED_FILE).join("x"), "").unwrap();
        assert!(b.burn("ssh", 5, |_, _| true).is_err());
        assert!(!b.contains("ssh", 5));
        fs::remove_dir_all(&d).unwrap();
    }
}
