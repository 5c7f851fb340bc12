//! The replay cache: digests of authentic packets, kept until the packets
//! could no longer pass the age check, and written through to a file so that
//! a restart does not make old packets valid again.
//!
//! File format, one entry a line: `<replay digest> <expires, Unix seconds>`.
//! Every change rewrites the file (temp file, fsync, rename, fsync of the
//! directory); the cache holds only recent authentic packets, so it stays small.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use super::error::ReplayError;
use crate::config::file_safety::open_private;

/// File name under the state directory.
pub const FILE_NAME: &str = "spa-replay";
/// Room for clocks that disagree or step back: entries outlive their
/// packet's validity by this much.
pub const SKEW: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct ReplayCache {
    path: PathBuf,
    /// digest → expiry (Unix seconds).
    entries: HashMap<String, u64>,
}

impl ReplayCache {
    /// Loads `<state_dir>/spa-replay` (creating the directory, mode 0700, if
    /// missing) and drops what expired by `now`. A file that is unsafe or
    /// unreadable is an error: starting with an empty cache would revive
    /// recorded packets.
    pub fn open(state_dir: &Path, now: u64) -> Result<Self, ReplayError> {
        let path = state_dir.join(FILE_NAME);
        let io_err = |source| ReplayError::Io { path: path.clone(), source };
        fs::DirBuilder::new().recursive(true).mode(0o700).create(state_dir).map_err(io_err)?;
        let mut cache = Self { path: path.clone(), entries: HashMap::new() };
        match open_private(&path, false) {
            Ok((file, _)) => cache.load(file)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        cache.entries.retain(|_, &mut exp| exp > now);
        Ok(cache)
    }

    fn load(&mut self, file: File) -> Result<(), ReplayError> {
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|source| ReplayError::Io { path: self.path.clone(), source })?;
            let corrupt = || ReplayError::Corrupt { path: self.path.clone(), line: i + 1 };
            let (digest, expires) = line.split_once(' ').ok_or_else(corrupt)?;
            let expires: u64 = expires.parse().map_err(|_| corrupt())?;
            if digest.is_empty() || digest.contains(char::is_whitespace) {
                return Err(corrupt());
            }
            self.entries.insert(digest.to_string(), expires);
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether this digest was recorded and has not expired.
    pub fn contains(&self, digest: &str, now: u64) -> bool {
        self.entries.get(digest).is_some_and(|&exp| exp > now)
    }

    /// Records a digest until `expires` and writes the cache through. On
    /// `Err` the packet must be refused; the entry stays in memory, so the
    /// packet is refused again until the daemon stops.
    pub fn record(&mut self, digest: &str, expires: u64, now: u64) -> Result<(), ReplayError> {
        self.entries.retain(|_, &mut exp| exp > now);
        let slot = self.entries.entry(digest.to_string()).or_insert(expires);
        *slot = (*slot).max(expires);
        self.persist()
    }

    fn persist(&self) -> Result<(), ReplayError> {
        let io_err = |source| ReplayError::Io { path: self.path.clone(), source };
        let tmp = self.path.with_extension("tmp");
        let mut text = String::with_capacity(self.entries.len() * 56);
        for (digest, exp) in &self.entries {
            text.push_str(&format!("{digest} {exp}\n"));
        }
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io_err)?;
        let written = file.write_all(text.as_bytes()).and_then(|()| file.sync_all());
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, &self.path)) {
            // A half-written copy must not hold the space a full disk needs
            // back, nor turn the next error into "File exists".
            let _ = fs::remove_file(&tmp);
            return Err(io_err(e));
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err)
    }
}

/// When a packet stamped `timestamp` and seen at `now` stops being able to
/// pass a `max_age` check, plus [`SKEW`]. Measured from the later of the two,
/// so a packet from the future is remembered until it has aged out too.
pub fn expiry(timestamp: u32, now: u64, max_age: Duration) -> u64 {
    u64::from(timestamp).max(now) + max_age.as_secs() + SKEW.as_secs()
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
