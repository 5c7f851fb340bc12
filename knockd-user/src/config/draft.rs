//! What a parser hands to the shared checks: the model plus where things were written,
//! because errors found after parsing (cross-field, cross-door) must still name a line.

use std::path::{Path, PathBuf};

use super::{
    error::ConfigError,
    model::{
        Backend, Door, Options, TcpFlags, DEFAULT_BPFFS_DIR, DEFAULT_CMD_TIMEOUT, DEFAULT_FIRST_STEP_SLOTS,
        DEFAULT_MAX_SOURCES, DEFAULT_OPEN_BURST, DEFAULT_OPEN_RATE, DEFAULT_SEQ_TIMEOUT, DEFAULT_STATE_DIR,
        DEFAULT_SWEEP_LIMIT,
    },
    one_time::LiveLine,
};

pub(crate) struct Draft {
    pub options: Options,
    pub doors: Vec<DraftDoor>,
    /// Line of the YAML `doors:` key, for "no doors" errors.
    pub doors_line: Option<usize>,
}

pub(crate) struct DraftDoor {
    pub door: Door,
    /// `door.sequence` is empty both for "not given" and "given empty"; the error differs.
    pub sequence_given: bool,
    pub lines: DoorLines,
    /// Every live line of the one-time file, once loaded; empty for other doors.
    pub one_time_lines: Vec<LiveLine>,
}

/// Line of a door's header and of each key it sets, by canonical (snake_case) name.
#[derive(Debug, Default)]
pub(crate) struct DoorLines {
    pub header: Option<usize>,
    /// (canonical key, key as written, line)
    keys: Vec<(String, String, usize)>,
}

impl DoorLines {
    pub fn new(header: Option<usize>) -> Self {
        DoorLines { header, keys: Vec::new() }
    }

    pub fn set(&mut self, canonical: &str, written: &str, line: usize) {
        self.keys.push((canonical.to_string(), written.to_string(), line));
    }

    /// First line that set `canonical`, with the spelling used there.
    pub fn get(&self, canonical: &str) -> Option<(&str, usize)> {
        self.keys
            .iter()
            .find(|(key, _, _)| key == canonical)
            .map(|(_, written, line)| (written.as_str(), *line))
    }
}

impl DraftDoor {
    /// A door with knockd's defaults, to be filled in key by key.
    pub fn new(name: &str, header: Option<usize>) -> Self {
        let door = Door {
            name: name.to_string(),
            sequence: Vec::new(),
            one_time_sequences: None,
            seq_timeout: DEFAULT_SEQ_TIMEOUT,
            tcp_flags: TcpFlags::default(),
            target: None,
            start_command: None,
            start_command_6: None,
            cmd_timeout: DEFAULT_CMD_TIMEOUT,
            stop_command: None,
            stop_command_6: None,
            open: None,
            stealth: None,
            spa: None,
            dynamic: None,
        };
        DraftDoor { door, sequence_given: false, lines: DoorLines::new(header), one_time_lines: Vec::new() }
    }

    /// An error about `key` of this door: at the key's line when it was written,
    /// else at the door's header (the key is then missing, so naming it would mislead).
    pub fn error(&self, path: &Path, key: &str, message: impl Into<String>) -> ConfigError {
        match self.lines.get(key) {
            Some((written, line)) => ConfigError::new(path, Some(line), message).with_key(written),
            None => ConfigError::new(path, self.lines.header, message),
        }
    }

    /// The key that defines the active sequence: the one-time file wins over `sequence`.
    pub fn sequence_key(&self) -> &'static str {
        if self.door.one_time_sequences.is_some() {
            "one_time_sequences"
        } else {
            "sequence"
        }
    }
}

/// Options as they are when a file sets none of them.
pub(crate) fn default_options() -> Options {
    Options {
        interfaces: Vec::new(),
        log_file: None,
        use_syslog: false,
        pid_file: None,
        max_sources: DEFAULT_MAX_SOURCES,
        default_backend: Backend::Nftables,
        stealth: false,
        bpffs_dir: PathBuf::from(DEFAULT_BPFFS_DIR),
        open_rate: DEFAULT_OPEN_RATE,
        open_burst: DEFAULT_OPEN_BURST,
        first_step_slots: DEFAULT_FIRST_STEP_SLOTS,
        sweep_limit: Some(DEFAULT_SWEEP_LIMIT),
        state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        metrics_listen: None,
    }
}
