//! knockd's one-time sequences: a file with one sequence per line, the first line that
//! parses being the active one. A used line is retired by overwriting its first byte
//! with `#`, exactly as knockd does, so files can be shared between the two daemons.
//!
//! Crash safety: the caller calls [`OneTimeFile::consume_active`] *before* acting on
//! a knock. The retirement is a single-byte in-place write followed by fsync; a one-byte
//! write cannot tear, so after a crash the line is either still live (the knock was not
//! acted on) or retired (it may have been) and a used sequence is never accepted twice.

use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use super::{
    draft::Draft, error::ConfigError, file_safety::open_private, model::Step, values::parse_sequence,
};

/// One sequences file and its current active line.
#[derive(Clone, Debug)]
pub struct OneTimeFile {
    path: PathBuf,
    active: Option<ActiveLine>,
    live: Vec<LiveLine>,
    invalid: Vec<InvalidLine>,
    warning: Option<String>,
}

/// A live line that parses: a sequence that may still become active.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveLine {
    pub line_no: usize,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ActiveLine {
    line_no: usize,
    offset: u64,
    /// The line's bytes without its newline, to notice an edit under our feet.
    raw: Vec<u8>,
    steps: Vec<Step>,
}

/// A live line that does not parse. knockd skips these silently; the daemon can log them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidLine {
    pub line_no: usize,
    pub message: String,
}

impl OneTimeFile {
    /// Reads the file, refusing a symlink or a file other users can write (see
    /// [`file_safety`](super::file_safety)); logs a warning if other users can read it.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = Self::read(path)?;
        if let Some(warning) = &file.warning {
            log::warn!("one-time sequences file {}: {warning}", path.display());
        }
        Ok(file)
    }

    /// As [`Self::open`], without logging the warning.
    pub(crate) fn read(path: &Path) -> io::Result<Self> {
        let (mut handle, warning) = open_private(path, false)?;
        let mut bytes = Vec::new();
        handle.read_to_end(&mut bytes)?;
        let mut file = OneTimeFile {
            path: path.to_path_buf(),
            active: None,
            live: Vec::new(),
            invalid: Vec::new(),
            warning,
        };
        file.rescan(&bytes);
        Ok(file)
    }

    /// Why the file is readable by others, if it is.
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// (1-based line number, byte offset of the line's start, its sequence).
    pub fn active(&self) -> Option<(usize, u64, Vec<Step>)> {
        self.active.as_ref().map(|a| (a.line_no, a.offset, a.steps.clone()))
    }

    /// Every live line that parses, the active one first, as of the last read.
    pub fn live_lines(&self) -> &[LiveLine] {
        &self.live
    }

    /// Live lines that failed to parse, as of the last read of the file.
    pub fn invalid_lines(&self) -> &[InvalidLine] {
        &self.invalid
    }

    /// Retires the active line (first byte → `#`, then fsync) and returns the new
    /// active sequence, `None` once the file is used up.
    ///
    /// The file is re-read first, since an editor or another process may have changed
    /// it: the cached offset is trusted only if the same line is still there, else the
    /// first live line holding the same sequence is retired instead (as knockd finds
    /// it); if none does, nothing is written.
    pub fn consume_active(&mut self) -> io::Result<Option<Vec<Step>>> {
        let Some(active) = self.active.clone() else {
            return Ok(None);
        };
        let (file, _) = open_private(&self.path, true)?;
        let mut bytes = Vec::new();
        (&file).read_to_end(&mut bytes)?;
        if let Some(offset) = locate(&bytes, &active) {
            retire(&file, offset)?;
            bytes[offset] = b'#';
        }
        self.rescan(&bytes);
        Ok(self.active.as_ref().map(|a| a.steps.clone()))
    }

    fn rescan(&mut self, bytes: &[u8]) {
        self.active = None;
        self.live.clear();
        self.invalid.clear();
        for line in lines(bytes) {
            match live_sequence(line.raw) {
                None => {}
                Some(Err(message)) => self.invalid.push(InvalidLine { line_no: line.line_no, message }),
                Some(Ok(steps)) => {
                    self.live.push(LiveLine { line_no: line.line_no, steps: steps.clone() });
                    if self.active.is_none() {
                        self.active = Some(line.into_active(steps));
                    }
                }
            }
        }
    }
}

fn retire(file: &File, offset: usize) -> io::Result<()> {
    file.write_all_at(b"#", offset as u64)?;
    file.sync_all()
}

/// Where the line to retire starts in `bytes`, if it is still there.
fn locate(bytes: &[u8], active: &ActiveLine) -> Option<usize> {
    let offset = usize::try_from(active.offset).ok()?;
    let at_line_start = offset == 0 || bytes.get(offset - 1) == Some(&b'\n');
    if at_line_start && offset < bytes.len() && line_at(bytes, offset) == active.raw.as_slice() {
        return Some(offset);
    }
    lines(bytes)
        .find(|line| matches!(live_sequence(line.raw), Some(Ok(ref s)) if *s == active.steps))
        .map(|line| line.offset)
}

fn line_at(bytes: &[u8], offset: usize) -> &[u8] {
    let rest = &bytes[offset..];
    let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
    &rest[..end]
}

struct Line<'a> {
    line_no: usize,
    offset: usize,
    raw: &'a [u8],
}

impl Line<'_> {
    fn into_active(self, steps: Vec<Step>) -> ActiveLine {
        ActiveLine { line_no: self.line_no, offset: self.offset as u64, raw: self.raw.to_vec(), steps }
    }
}

fn lines(bytes: &[u8]) -> impl Iterator<Item = Line<'_>> {
    let mut offset = 0;
    bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .map(move |(index, raw)| {
            let line = Line { line_no: index + 1, offset, raw };
            offset += raw.len() + 1;
            line
        })
        .filter(|line| !line.raw.is_empty() || line.offset < bytes.len())
}

/// `None` for a blank or `#` line (trimmed as knockd trims, ASCII whitespace only).
fn live_sequence(raw: &[u8]) -> Option<Result<Vec<Step>, String>> {
    let text = raw.trim_ascii();
    if text.is_empty() || text.starts_with(b"#") {
        return None;
    }
    Some(match std::str::from_utf8(text) {
        Ok(text) => parse_sequence(text),
        Err(_) => Err("the line is not valid UTF-8".to_string()),
    })
}

/// Gives every door with `one_time_sequences` its file's active sequence, or an
/// empty one (a disabled door, with a warning) when the file is used up.
///
/// The file wins over a `sequence` given too, whatever their order. (knockd applies
/// keys in file order, so there a `Sequence` line after `One_Time_Sequences` would win
/// until the first rotation; a door naming a one-time file is meant to be one-time.)
/// Relative paths are taken from the config file's directory: knockd used its working
/// directory, which is `/` once it daemonizes, so relative paths never worked there.
pub(crate) fn load_sequences(draft: &mut Draft, config_path: &Path) -> Result<(), ConfigError> {
    let base = config_path.parent().unwrap_or(Path::new(""));
    for door in &mut draft.doors {
        let Some(file_path) = door.door.one_time_sequences.as_ref().map(|p| base.join(p)) else {
            continue;
        };
        // Absolute, so rotations still find the file if the daemon changes directory.
        let file_path = std::path::absolute(&file_path).unwrap_or(file_path);
        let file = OneTimeFile::open(&file_path).map_err(|e| {
            let message = format!("cannot read one-time sequences file {}: {e}", file_path.display());
            door.error(config_path, "one_time_sequences", message)
        })?;
        // A used-up file disables the door but keeps its ports protected: refusing
        // to start would leave them open once the gate is flushed.
        let steps = file.active().map(|(_, _, steps)| steps).unwrap_or_else(|| {
            log::warn!(
                "one-time sequences file {} is used up: door {} is disabled; its protected ports stay closed",
                file_path.display(),
                door.door.name
            );
            Vec::new()
        });
        door.door.sequence = steps;
        door.door.one_time_sequences = Some(file_path);
        door.one_time_lines = file.live_lines().to_vec();
    }
    Ok(())
}
