//! knockd 0.8's `knockd.conf`, read the way knockd reads it: `[options]` holds the
//! globals, every other `[name]` is a door, keys are case-insensitive, `#` starts a
//! comment only at the start of a line. Where knockd silently misreads (ports that wrap,
//! junk that becomes 0, a key given twice) we stop with an error instead.

use std::path::{Path, PathBuf};

use super::{
    draft::{default_options, DoorLines, Draft, DraftDoor},
    error::{unknown_key_message, ConfigError},
    model::Options,
    values::{parse_interface, parse_seconds, parse_sequence, parse_target, parse_tcp_flags},
};

/// (spelling in knockd's docs, canonical snake_case name)
const OPTION_KEYS: &[(&str, &str)] = &[
    ("UseSyslog", "use_syslog"),
    ("LogFile", "log_file"),
    ("PidFile", "pid_file"),
    ("Interface", "interface"),
];

const DOOR_KEYS: &[(&str, &str)] = &[
    ("Sequence", "sequence"),
    ("One_Time_Sequences", "one_time_sequences"),
    ("Seq_Timeout", "seq_timeout"),
    ("Timeout", "seq_timeout"),
    ("TCPFlags", "tcp_flags"),
    ("Target", "target"),
    ("Start_Command", "start_command"),
    ("Command", "start_command"),
    ("Start_Command_6", "start_command_6"),
    ("Command_6", "start_command_6"),
    ("Cmd_Timeout", "cmd_timeout"),
    ("Stop_Command", "stop_command"),
    ("Stop_Command_6", "stop_command_6"),
];

pub(crate) fn parse(text: &str, path: &Path) -> Result<Draft, ConfigError> {
    let mut parser = Parser {
        path,
        options: default_options(),
        option_lines: DoorLines::default(),
        doors: Vec::new(),
        section: Section::None,
    };
    for (index, raw) in text.lines().enumerate() {
        parser.line(index + 1, raw)?;
    }
    Ok(Draft { options: parser.options, doors: parser.doors, doors_line: None })
}

enum Section {
    None,
    Options,
    /// The last door in `Parser::doors`.
    Door,
}

struct Parser<'a> {
    path: &'a Path,
    options: Options,
    /// Where each option was set, to report a repeated one.
    option_lines: DoorLines,
    doors: Vec<DraftDoor>,
    section: Section,
}

/// knockd trims with isspace(), which is ASCII-only.
fn trim(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_ascii_whitespace())
}

fn canonical(table: &[(&str, &'static str)], key: &str) -> Option<&'static str> {
    table.iter().find(|(spelling, _)| spelling.eq_ignore_ascii_case(key)).map(|(_, canonical)| *canonical)
}

fn spellings(table: &'static [(&'static str, &'static str)]) -> impl Iterator<Item = &'static str> + Clone {
    table.iter().map(|(spelling, _)| *spelling)
}

/// knockd runs a command only if it is non-empty, so `Command =` means "no command".
fn command(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_string())
}

impl Parser<'_> {
    fn error(&self, line: usize, key: Option<&str>, message: impl Into<String>) -> ConfigError {
        let err = ConfigError::new(self.path, Some(line), message);
        match key {
            Some(key) => err.with_key(key),
            None => err,
        }
    }

    fn line(&mut self, no: usize, raw: &str) -> Result<(), ConfigError> {
        let line = trim(raw);
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        if line.starts_with('[') {
            return self.section_header(no, line);
        }
        self.directive(no, line)
    }

    fn section_header(&mut self, no: usize, line: &str) -> Result<(), ConfigError> {
        let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) else {
            return Err(self.error(no, None, "a section header must end with `]`"));
        };
        // knockd takes the name verbatim, spaces included, and compares case-sensitively.
        // A repeated name is reported by validation, which sees both formats.
        if name.is_empty() {
            return Err(self.error(no, None, "empty section name"));
        }
        if name == "options" {
            self.section = Section::Options;
            return Ok(());
        }
        self.doors.push(DraftDoor::new(name, Some(no)));
        self.section = Section::Door;
        Ok(())
    }

    fn directive(&mut self, no: usize, line: &str) -> Result<(), ConfigError> {
        let (key, value) = match line.split_once('=') {
            Some((key, value)) => (trim(key), Some(trim(value))),
            None => (line, None),
        };
        if key.is_empty() {
            return Err(self.error(no, None, "missing key before `=`"));
        }
        match self.section {
            Section::None => Err(self.error(
                no,
                Some(key),
                "every key must come after a section header ([options] or [door name])",
            )),
            // knockd accepts the valueless UseSyslog in any section; it is always global.
            _ if key.eq_ignore_ascii_case("UseSyslog") => self.use_syslog(no, key, value),
            Section::Options => self.option(no, key, value),
            Section::Door => self.door_key(no, key, value),
        }
    }

    fn use_syslog(&mut self, no: usize, key: &str, value: Option<&str>) -> Result<(), ConfigError> {
        if value.is_some() {
            return Err(self.error(no, Some(key), "UseSyslog takes no value (write just `UseSyslog`)"));
        }
        self.options.use_syslog = true;
        Ok(())
    }

    fn value<'v>(&self, no: usize, key: &str, value: Option<&'v str>) -> Result<&'v str, ConfigError> {
        value.ok_or_else(|| self.error(no, Some(key), format!("`{key}` needs a value (`{key} = ...`)")))
    }

    fn option(&mut self, no: usize, key: &str, value: Option<&str>) -> Result<(), ConfigError> {
        let Some(canonical) = canonical(OPTION_KEYS, key) else {
            let message = if canonical(DOOR_KEYS, key).is_some() {
                format!("`{key}` is a door key; it cannot go in [options]")
            } else {
                unknown_key_message(key, spellings(OPTION_KEYS))
            };
            return Err(self.error(no, Some(key), message));
        };
        let value = self.value(no, key, value)?;
        if let Some((first, line)) = self.option_lines.get(canonical) {
            return Err(self.error(no, Some(key), repeated(first, line)));
        }
        self.option_lines.set(canonical, key, no);
        let path = (!value.is_empty()).then(|| PathBuf::from(value));
        match canonical {
            "log_file" => self.options.log_file = path,
            "pid_file" => self.options.pid_file = path,
            // knockd listens on one interface; an empty value leaves the choice to the daemon.
            _ if value.is_empty() => self.options.interfaces.clear(),
            _ => {
                let name = parse_interface(value).map_err(|m| self.error(no, Some(key), m))?;
                self.options.interfaces = vec![name];
            }
        }
        Ok(())
    }

    fn door_key(&mut self, no: usize, key: &str, value: Option<&str>) -> Result<(), ConfigError> {
        let Some(canonical) = canonical(DOOR_KEYS, key) else {
            let message = if canonical(OPTION_KEYS, key).is_some() {
                format!("`{key}` belongs in [options], not in a door")
            } else {
                unknown_key_message(key, spellings(DOOR_KEYS))
            };
            return Err(self.error(no, Some(key), message));
        };
        let value = self.value(no, key, value)?;
        let door = self.doors.last_mut().expect("Section::Door implies a door");
        if let Some((first, line)) = door.lines.get(canonical) {
            let message = repeated(first, line);
            return Err(self.error(no, Some(key), message));
        }
        door.lines.set(canonical, key, no);
        apply_door_value(door, canonical, value).map_err(|m| self.error(no, Some(key), m))
    }
}

/// knockd keeps the last of two settings silently; a second `Sequence` is far more
/// likely a paste error than an intent, so we make the user choose.
fn repeated(first: &str, line: usize) -> String {
    format!("already set by `{first}` on line {line}")
}

fn apply_door_value(draft: &mut DraftDoor, canonical: &str, value: &str) -> Result<(), String> {
    let door = &mut draft.door;
    match canonical {
        "sequence" => {
            door.sequence = parse_sequence(value)?;
            draft.sequence_given = true;
        }
        "one_time_sequences" if value.is_empty() => return Err("needs a file path".to_string()),
        "one_time_sequences" => door.one_time_sequences = Some(PathBuf::from(value)),
        "seq_timeout" => door.seq_timeout = parse_seconds(value)?,
        "cmd_timeout" => door.cmd_timeout = parse_seconds(value)?,
        "tcp_flags" => door.tcp_flags = parse_tcp_flags(value)?,
        "target" => door.target = Some(parse_target(value)?),
        "start_command" => door.start_command = command(value),
        "start_command_6" => door.start_command_6 = command(value),
        "stop_command" => door.stop_command = command(value),
        "stop_command_6" => door.stop_command_6 = command(value),
        other => unreachable!("DOOR_KEYS maps to `{other}` without a handler"),
    }
    Ok(())
}
