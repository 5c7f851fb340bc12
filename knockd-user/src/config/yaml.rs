//! The native YAML format: `options` and `doors` maps, knockd's keys in snake_case.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{
    draft::{default_options, Draft, DraftDoor},
    dynamic,
    error::{unknown_key_message, ConfigError},
    model::{OpenAction, Options},
    spa,
    yaml_de::{
        AtLeastOneDe, BackendDe, DurationDe, InterfacesDe, ListenDe, MaxSourcesDe, OpenPortDe, OrderedMap,
        SequenceDe, SlotsDe, SweepLimitDe, TargetDe, TcpFlagsDe, MARK,
    },
    yaml_lines::KeyLines,
};

const DOOR_KEYS: &[&str] = &[
    "sequence",
    "one_time_sequences",
    "seq_timeout",
    "tcp_flags",
    "target",
    "start_command",
    "command",
    "start_command_6",
    "command_6",
    "cmd_timeout",
    "stop_command",
    "stop_command_6",
    "open",
    "stealth",
    "spa",
    "dynamic",
];
const OPEN_KEYS: &[&str] = &["ports", "duration", "backend"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map with `options` and `doors`")]
struct RawFile {
    options: Option<RawOptions>,
    doors: Option<OrderedMap<Option<RawDoor>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map of options")]
struct RawOptions {
    interface: Option<InterfacesDe>,
    log_file: Option<PathBuf>,
    use_syslog: Option<bool>,
    pid_file: Option<PathBuf>,
    max_sources: Option<MaxSourcesDe>,
    backend: Option<BackendDe>,
    stealth: Option<bool>,
    bpffs_dir: Option<PathBuf>,
    open_rate: Option<AtLeastOneDe>,
    open_burst: Option<AtLeastOneDe>,
    first_step_slots: Option<SlotsDe>,
    sweep_limit: Option<SweepLimitDe>,
    state_dir: Option<PathBuf>,
    metrics_listen: Option<ListenDe>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map of door keys")]
struct RawDoor {
    sequence: Option<SequenceDe>,
    one_time_sequences: Option<PathBuf>,
    seq_timeout: Option<DurationDe>,
    tcp_flags: Option<TcpFlagsDe>,
    target: Option<TargetDe>,
    #[serde(alias = "command")]
    start_command: Option<String>,
    #[serde(alias = "command_6")]
    start_command_6: Option<String>,
    cmd_timeout: Option<DurationDe>,
    stop_command: Option<String>,
    stop_command_6: Option<String>,
    open: Option<RawOpen>,
    stealth: Option<bool>,
    spa: Option<spa::RawSpa>,
    dynamic: Option<dynamic::RawDynamic>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map with `ports`, `duration` and `backend`")]
struct RawOpen {
    ports: Option<Vec<OpenPortDe>>,
    duration: Option<DurationDe>,
    backend: Option<BackendDe>,
}

pub(crate) fn parse(text: &str, path: &Path) -> Result<Draft, ConfigError> {
    let lines = KeyLines::scan(text);
    let raw: RawFile = serde_yaml::from_str(text).map_err(|e| serde_error(&e, &lines, path))?;
    let options = raw.options.map_or_else(default_options, convert_options);
    let mut doors: Vec<DraftDoor> = Vec::new();
    for (name, raw_door) in raw.doors.map(|m| m.0).unwrap_or_default() {
        // A repeated name must point at its second block, not its first.
        let occurrence = doors.iter().filter(|d| d.door.name == name).count();
        let header = lines.nth_line(&["doors", &name], occurrence);
        let draft = convert_door(&name, header, raw_door.unwrap_or_default(), &lines, path)?;
        doors.push(draft);
    }
    Ok(Draft { options, doors, doors_line: lines.line(&["doors"]) })
}

fn convert_options(raw: RawOptions) -> Options {
    let defaults = default_options();
    Options {
        interfaces: raw.interface.map(|i| i.0).unwrap_or_default(),
        log_file: raw.log_file,
        use_syslog: raw.use_syslog.unwrap_or(false),
        pid_file: raw.pid_file,
        max_sources: raw.max_sources.map_or(defaults.max_sources, |m| m.0),
        default_backend: raw.backend.map_or(defaults.default_backend, |b| b.0),
        stealth: raw.stealth.unwrap_or(defaults.stealth),
        bpffs_dir: raw.bpffs_dir.unwrap_or(defaults.bpffs_dir),
        open_rate: raw.open_rate.map_or(defaults.open_rate, |r| r.0),
        open_burst: raw.open_burst.map_or(defaults.open_burst, |b| b.0),
        first_step_slots: raw.first_step_slots.map_or(defaults.first_step_slots, |s| s.0),
        sweep_limit: raw.sweep_limit.map_or(defaults.sweep_limit, |s| s.0),
        state_dir: raw.state_dir.unwrap_or(defaults.state_dir),
        metrics_listen: raw.metrics_listen.map(|l| l.0),
    }
}

fn convert_door(
    name: &str,
    header: Option<usize>,
    raw: RawDoor,
    lines: &KeyLines,
    path: &Path,
) -> Result<DraftDoor, ConfigError> {
    let mut draft = DraftDoor::new(name, header);
    record_key_lines(&mut draft, lines);
    let door = &mut draft.door;
    if let Some(SequenceDe(steps)) = raw.sequence {
        door.sequence = steps;
        draft.sequence_given = true;
    }
    door.one_time_sequences = raw.one_time_sequences;
    if let Some(DurationDe(timeout)) = raw.seq_timeout {
        door.seq_timeout = timeout;
    }
    if let Some(DurationDe(timeout)) = raw.cmd_timeout {
        door.cmd_timeout = timeout;
    }
    door.tcp_flags = raw.tcp_flags.map(|f| f.0).unwrap_or_default();
    door.target = raw.target.map(|t| t.0);
    door.start_command = raw.start_command;
    door.start_command_6 = raw.start_command_6;
    door.stop_command = raw.stop_command;
    door.stop_command_6 = raw.stop_command_6;
    door.stealth = raw.stealth;
    if let Some(open) = raw.open {
        draft.door.open = Some(convert_open(open, &draft, path)?);
    }
    if let Some(raw_spa) = raw.spa {
        draft.door.spa = Some(spa::convert(raw_spa, &draft, path)?);
    }
    if let Some(raw_dynamic) = raw.dynamic {
        draft.door.dynamic = Some(dynamic::convert(raw_dynamic, &draft, path)?);
    }
    Ok(draft)
}

/// `ports` and `duration` are optional in `RawOpen` only so that their absence is
/// reported at the `open:` line rather than at the first key inside it.
fn convert_open(raw: RawOpen, draft: &DraftDoor, path: &Path) -> Result<OpenAction, ConfigError> {
    let Some(ports) = raw.ports else {
        return Err(draft.error(path, "open", "`open` needs `ports` (the ports to open)"));
    };
    let Some(DurationDe(duration)) = raw.duration else {
        return Err(draft.error(path, "open", "`open` needs a `duration` (how long to keep them open)"));
    };
    Ok(OpenAction {
        ports: ports.into_iter().map(|p| p.0).collect(),
        duration,
        backend: raw.backend.map(|b| b.0),
    })
}

fn canonical_key(key: &str) -> &str {
    match key {
        "command" => "start_command",
        "command_6" => "start_command_6",
        other => other,
    }
}

fn record_key_lines(draft: &mut DraftDoor, lines: &KeyLines) {
    let name = draft.door.name.clone();
    for (key, line) in lines.children(&["doors", &name]) {
        draft.lines.set(canonical_key(key), key, line);
    }
    for block in ["open", "spa", "dynamic"] {
        for (key, line) in lines.children(&["doors", &name, block]) {
            let dotted = format!("{block}.{key}");
            draft.lines.set(&dotted, &dotted, line);
        }
    }
}

/// Turns serde_yaml's `path: message at line L column C` into a `ConfigError`, with
/// unknown keys given a suggestion and repeated keys pointed at their second line.
fn serde_error(err: &serde_yaml::Error, lines: &KeyLines, path: &Path) -> ConfigError {
    let location = err.location();
    let mut text = err.to_string();
    if let Some(loc) = &location {
        // libyaml puts the location mid-message, serde errors at the end.
        text = text.replacen(&format!(" at line {} column {}", loc.line(), loc.column()), "", 1);
    }
    let (yaml_path, message) = split_path(&text);
    let line = location.map(|l| l.line());
    if let Some(field) = backticked_after(message, "unknown field `") {
        let candidates: Vec<&str> = backticked_words(message).skip(1).collect();
        let message = unknown_key_message(field, candidates.iter().copied());
        return ConfigError::new(path, line, message).with_key(field);
    }
    if let Some(field) = backticked_after(message, "duplicate field `") {
        let line = duplicate_line(lines, yaml_path, field).or(line);
        return ConfigError::new(path, line, "set twice in the same block").with_key(field);
    }
    let err = ConfigError::new(path, line, message);
    match key_from_path(yaml_path) {
        Some(key) => err.with_key(key),
        None => err,
    }
}

/// Splits `doors.a.sequence[1]: message` into path and message; the path is absent
/// when the error is at the document root.
fn split_path(text: &str) -> (&str, &str) {
    if let Some(i) = text.find(MARK) {
        let path = text[..i].strip_suffix(": ").unwrap_or("");
        return (path, &text[i + MARK.len_utf8()..]);
    }
    const SERDE_PREFIXES: [&str; 7] = [
        "invalid type",
        "invalid value",
        "invalid length",
        "unknown field",
        "missing field",
        "duplicate field",
        "unknown variant",
    ];
    let split = SERDE_PREFIXES.iter().filter_map(|prefix| text.find(&format!(": {prefix}"))).min();
    match split {
        Some(i) => (&text[..i], &text[i + 2..]),
        None => ("", text),
    }
}

fn backticked_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    message.strip_prefix(prefix)?.split('`').next()
}

fn backticked_words(message: &str) -> impl Iterator<Item = &str> {
    message.split('`').skip(1).step_by(2)
}

/// The config key a serde_yaml path points into: `doors.x.open.ports[0]` → `open.ports`.
fn key_from_path(yaml_path: &str) -> Option<String> {
    let mut path = yaml_path;
    while path.ends_with(']') {
        path = &path[..path.rfind('[')?];
    }
    if path == "options" || path == "doors" {
        return Some(path.to_string());
    }
    if let Some(key) = path.strip_prefix("options.") {
        return Some(key.to_string());
    }
    let (head, last) = path.strip_prefix("doors.")?.rsplit_once('.')?;
    if OPEN_KEYS.contains(&last) && head.ends_with(".open") {
        return Some(format!("open.{last}"));
    }
    if spa::SPA_KEYS.contains(&last) && head.ends_with(".spa") {
        return Some(format!("spa.{last}"));
    }
    if dynamic::DYNAMIC_KEYS.contains(&last) && head.ends_with(".dynamic") {
        return Some(format!("dynamic.{last}"));
    }
    DOOR_KEYS.contains(&last).then(|| last.to_string())
}

/// serde reports a repeated key at the start of its block; find the repeat itself.
fn duplicate_line(lines: &KeyLines, yaml_path: &str, field: &str) -> Option<usize> {
    let second = |block: &[&str]| {
        lines.children(block).filter(|(key, _)| canonical_key(key) == field).nth(1).map(|(_, line)| line)
    };
    match yaml_path {
        "" | "." => second(&[]),
        "options" => second(&["options"]),
        _ => {
            let door = yaml_path.strip_prefix("doors.")?;
            let in_open = door.strip_suffix(".open").and_then(|d| second(&["doors", d, "open"]));
            in_open.or_else(|| second(&["doors", door]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_to_keys() {
        assert_eq!(key_from_path("doors.a.sequence[3]").as_deref(), Some("sequence"));
        assert_eq!(key_from_path("doors.a.b.open.ports[0]").as_deref(), Some("open.ports"));
        assert_eq!(key_from_path("doors.open.duration").as_deref(), None);
        assert_eq!(key_from_path("options.interface[1]").as_deref(), Some("interface"));
        assert_eq!(key_from_path("doors.a").as_deref(), None);
        assert_eq!(key_from_path("").as_deref(), None);
    }

    #[test]
    fn splits_serde_messages() {
        assert_eq!(
            split_path("doors.a: b.seq: invalid type: string \"x\", expected u64"),
            ("doors.a: b.seq", "invalid type: string \"x\", expected u64")
        );
        let ours = format!("doors.a.sequence[1]: {MARK}port 0 is outside 1-65535");
        assert_eq!(split_path(&ours), ("doors.a.sequence[1]", "port 0 is outside 1-65535"));
        assert_eq!(split_path("unknown field `x`"), ("", "unknown field `x`"));
    }
}
