//! `to_yaml`: any `Config` as native YAML, for `xknockd --convert`.
//!
//! Written by hand rather than through serde so the output reads like the examples:
//! defaults left out, steps as `"7000:tcp"`, durations as whole seconds where they are.

use std::{fmt::Write, path::Path, time::Duration};

use super::{
    model::{
        Config, Door, OpenAction, Options, Step, DEFAULT_BPFFS_DIR, DEFAULT_CMD_TIMEOUT,
        DEFAULT_FIRST_STEP_SLOTS, DEFAULT_MAX_SOURCES, DEFAULT_OPEN_BURST, DEFAULT_OPEN_RATE,
        DEFAULT_SWEEP_LIMIT,
    },
    values::{backend_name, format_tcp_flags},
};

/// The equivalent native YAML; `parse_str` on it gives back `config` (bar `path` and
/// `format`). Non-UTF-8 paths are written lossily.
pub fn to_yaml(config: &Config) -> String {
    let mut out = String::from("# xknockd configuration\n");
    emit_options(&mut out, &config.options);
    out.push_str("doors:\n");
    for door in &config.doors {
        emit_door(&mut out, door);
    }
    out
}

fn emit_options(out: &mut String, options: &Options) {
    let mut body = String::new();
    match options.interfaces.as_slice() {
        [] => {}
        [one] => line(&mut body, 2, "interface", &quote(one)),
        many => line(&mut body, 2, "interface", &list(many.iter().map(|i| quote(i)))),
    }
    if let Some(log_file) = &options.log_file {
        line(&mut body, 2, "log_file", &quote_path(log_file));
    }
    if options.use_syslog {
        line(&mut body, 2, "use_syslog", "true");
    }
    if let Some(pid_file) = &options.pid_file {
        line(&mut body, 2, "pid_file", &quote_path(pid_file));
    }
    if options.max_sources != DEFAULT_MAX_SOURCES {
        line(&mut body, 2, "max_sources", &options.max_sources.to_string());
    }
    if options.default_backend != super::model::Backend::Nftables {
        line(&mut body, 2, "backend", backend_name(options.default_backend));
    }
    if options.stealth {
        line(&mut body, 2, "stealth", "true");
    }
    if options.bpffs_dir != Path::new(DEFAULT_BPFFS_DIR) {
        line(&mut body, 2, "bpffs_dir", &quote_path(&options.bpffs_dir));
    }
    if options.open_rate != DEFAULT_OPEN_RATE {
        line(&mut body, 2, "open_rate", &options.open_rate.to_string());
    }
    if options.open_burst != DEFAULT_OPEN_BURST {
        line(&mut body, 2, "open_burst", &options.open_burst.to_string());
    }
    if options.first_step_slots != DEFAULT_FIRST_STEP_SLOTS {
        line(&mut body, 2, "first_step_slots", &options.first_step_slots.to_string());
    }
    if options.sweep_limit != Some(DEFAULT_SWEEP_LIMIT) {
        let limit = options.sweep_limit.map_or_else(|| "off".to_string(), |l| l.to_string());
        line(&mut body, 2, "sweep_limit", &limit);
    }
    if options.state_dir != Path::new(super::model::DEFAULT_STATE_DIR) {
        line(&mut body, 2, "state_dir", &quote_path(&options.state_dir));
    }
    if let Some(addr) = options.metrics_listen {
        line(&mut body, 2, "metrics_listen", &format!("\"{addr}\""));
    }
    if !body.is_empty() {
        out.push_str("options:\n");
        out.push_str(&body);
    }
}

fn emit_door(out: &mut String, door: &Door) {
    let _ = writeln!(out, "  {}:", key(&door.name));
    // A one-time door's sequence comes from its file; writing it too would be stale
    // after the first knock.
    match &door.one_time_sequences {
        Some(file) => line(out, 4, "one_time_sequences", &quote_path(file)),
        None if door.sequence.is_empty() && door.spa.is_some() => {}
        None => line(out, 4, "sequence", &steps(&door.sequence)),
    }
    line(out, 4, "seq_timeout", &duration(door.seq_timeout));
    if door.tcp_flags != Default::default() {
        line(out, 4, "tcp_flags", &quote(&format_tcp_flags(door.tcp_flags)));
    }
    if let Some(target) = door.target {
        line(out, 4, "target", &quote(&target.to_string()));
    }
    emit_commands(out, door);
    if let Some(open) = &door.open {
        emit_open(out, open);
    }
    if let Some(stealth) = door.stealth {
        line(out, 4, "stealth", &stealth.to_string());
    }
    if let Some(spa) = &door.spa {
        super::spa::emit(out, spa);
    }
}

fn emit_commands(out: &mut String, door: &Door) {
    let commands = [
        ("start_command", &door.start_command),
        ("start_command_6", &door.start_command_6),
        ("stop_command", &door.stop_command),
        ("stop_command_6", &door.stop_command_6),
    ];
    for (name, command) in commands {
        if let Some(command) = command {
            line(out, 4, name, &quote(command));
        }
    }
    // cmd_timeout only matters with a stop command; keep it visible there.
    let has_stop = door.stop_command.is_some() || door.stop_command_6.is_some();
    if has_stop || door.cmd_timeout != DEFAULT_CMD_TIMEOUT {
        line(out, 4, "cmd_timeout", &duration(door.cmd_timeout));
    }
}

fn emit_open(out: &mut String, open: &OpenAction) {
    out.push_str("    open:\n");
    line(out, 6, "ports", &steps(&open.ports));
    line(out, 6, "duration", &duration(open.duration));
    if let Some(backend) = open.backend {
        line(out, 6, "backend", backend_name(backend));
    }
}

fn line(out: &mut String, indent: usize, key: &str, value: &str) {
    let _ = writeln!(out, "{:indent$}{key}: {value}", "");
}

fn steps(steps: &[Step]) -> String {
    list(steps.iter().map(|s| quote(&s.to_string())))
}

fn list(items: impl Iterator<Item = String>) -> String {
    format!("[{}]", items.collect::<Vec<_>>().join(", "))
}

/// Whole seconds as an integer, else the largest unit that is exact.
fn duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    let (unit, size) = [("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000), ("ns", 1)]
        .into_iter()
        .find(|(_, size)| nanos.is_multiple_of(*size))
        .expect("1 divides everything");
    match unit {
        "s" => (nanos / size).to_string(),
        _ => quote(&format!("{}{unit}", nanos / size)),
    }
}

fn quote_path(path: &Path) -> String {
    quote(&path.to_string_lossy())
}

/// A YAML double-quoted scalar: always safe, whatever `%IP%`, `:` or `#` a command holds.
fn quote(text: &str) -> String {
    let mut out = String::from('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Door names stay bare when YAML cannot misread them, else they are quoted.
fn key(name: &str) -> String {
    const RESERVED: [&str; 11] = ["true", "false", "null", "yes", "no", "on", "off", "y", "n", "~", "<<"];
    let mut chars = name.chars();
    let plain = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !RESERVED.contains(&name.to_ascii_lowercase().as_str());
    if plain {
        name.to_string()
    } else {
        quote(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_secs(5)), "5");
        assert_eq!(duration(Duration::from_millis(1500)), "\"1500ms\"");
        assert_eq!(duration(Duration::from_nanos(1_000_001)), "\"1000001ns\"");
        assert_eq!(duration(Duration::ZERO), "0");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("a \"b\" \\ c\n"), "\"a \\\"b\\\" \\\\ c\\n\"");
        assert_eq!(quote("\u{7}"), "\"\\u0007\"");
        assert_eq!(key("openSSH"), "openSSH");
        assert_eq!(key("yes"), "\"yes\"");
        assert_eq!(key("open SSH"), "\"open SSH\"");
        assert_eq!(key("1x"), "\"1x\"");
    }
}
