//! Checks that need the whole door or several doors, run on what either parser built.

use std::path::Path;

use super::{
    capacity, disjoint,
    draft::{Draft, DraftDoor},
    dynamic,
    error::ConfigError,
    model::{Backend, OpenAction, Proto, Step, TcpFlags},
    spa,
    values::{backend_name, check_sequence_len},
};

pub(crate) fn validate(draft: &Draft, path: &Path) -> Result<(), ConfigError> {
    if draft.doors.is_empty() {
        return Err(ConfigError::new(path, draft.doors_line, "no doors defined"));
    }
    // Names first: a repeated YAML door's key lines are those of its first block.
    check_unique_names(&draft.doors, path)?;
    for door in &draft.doors {
        check_door(door, path)?;
    }
    check_distinguishable(&draft.doors, path)?;
    check_open_backends(draft, path)?;
    disjoint::check_drafts(&draft.doors, path)?;
    spa::check_doors(&draft.doors, path)?;
    dynamic::check_doors(&draft.doors, path)?;
    capacity::check_window_capacity(draft, path)
}

fn check_door(draft: &DraftDoor, path: &Path) -> Result<(), ConfigError> {
    let door = &draft.door;
    if door.name.is_empty() {
        return Err(ConfigError::new(path, draft.lines.header, "a door needs a name"));
    }
    check_door_name(&door.name).map_err(|m| ConfigError::new(path, draft.lines.header, m))?;
    if !draft.sequence_given
        && door.one_time_sequences.is_none()
        && door.spa.is_none()
        && door.dynamic.is_none()
    {
        let message = format!("door `{}` has no `sequence` (nor `one_time_sequences`)", door.name);
        return Err(ConfigError::new(path, draft.lines.header, message));
    }
    if !is_used_up(draft) && !spa_only(draft) && door.dynamic.is_none() {
        check_sequence_len(&door.sequence).map_err(|m| draft.error(path, draft.sequence_key(), m))?;
    }
    // knockd expires an attempt once `now - start >= seq_timeout`, so 0 kills every
    // attempt at its second packet: the door could never open.
    if door.seq_timeout.is_zero() {
        return Err(draft.error(path, "seq_timeout", "must be more than 0 seconds"));
    }
    if let Some(open) = &door.open {
        if open.ports.is_empty() {
            return Err(draft.error(path, "open.ports", "`open` needs at least one port"));
        }
        if open.duration.is_zero() {
            return Err(draft.error(path, "open.duration", "must be more than 0"));
        }
    }
    Ok(())
}

/// The longest door name. Names ride in log lines, nft and ipset comments
/// (255 bytes at most) and `--convert`'s YAML keys (1024 characters at most,
/// escapes included): found by the knockd.conf fuzzer.
const MAX_DOOR_NAME: usize = 255;

fn check_door_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_DOOR_NAME {
        return Err(format!("a door name is at most {MAX_DOOR_NAME} bytes long"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("door name {name:?} holds a control character"));
    }
    Ok(())
}

fn check_unique_names(doors: &[DraftDoor], path: &Path) -> Result<(), ConfigError> {
    for (j, later) in doors.iter().enumerate() {
        if let Some(first) = doors[..j].iter().find(|d| d.door.name == later.door.name) {
            let first_line = first.lines.header.map_or(String::new(), |l| format!(" on line {l}"));
            let message = format!("door `{}` is already defined{first_line}", later.door.name);
            return Err(ConfigError::new(path, later.lines.header, message));
        }
    }
    Ok(())
}

/// Two doors that accept the same packets in the same order cannot be told apart, and
/// a door whose sequence starts another's opens on the way to the longer one.
fn check_distinguishable(doors: &[DraftDoor], path: &Path) -> Result<(), ConfigError> {
    for (j, later) in doors.iter().enumerate() {
        for earlier in &doors[..j] {
            if let Some(message) = conflict(earlier, later) {
                return Err(later.error(path, later.sequence_key(), message));
            }
        }
    }
    Ok(())
}

fn conflict(a: &DraftDoor, b: &DraftDoor) -> Option<String> {
    let (sa, sb) = (&a.door.sequence, &b.door.sequence);
    // A disabled door matches nothing, so it is no prefix of anything.
    // A dynamic door's range is kept apart from every other step instead.
    if is_used_up(a)
        || is_used_up(b)
        || spa_only(a)
        || spa_only(b)
        || a.door.dynamic.is_some()
        || b.door.dynamic.is_some()
    {
        return None;
    }
    if effective_flags(a) != effective_flags(b) || a.door.target != b.door.target {
        return None;
    }
    let (na, nb) = (&a.door.name, &b.door.name);
    if sa == sb {
        return Some(format!(
            "doors `{na}` and `{nb}` have the same sequence ({}) with the same tcp_flags and target, so their knocks cannot be told apart",
            show(sa)
        ));
    }
    let (short, long) = if sa.len() < sb.len() { (a, b) } else { (b, a) };
    let (ss, ls) = (&short.door.sequence, &long.door.sequence);
    ls.starts_with(ss).then(|| {
        format!(
            "door `{}`'s whole sequence ({}) is the start of door `{}`'s ({}) with the same tcp_flags and target: knocking `{}` always opens `{}` first",
            short.door.name, show(ss), long.door.name, show(ls), long.door.name, short.door.name
        )
    })
}

/// A protected port is closed by one mechanism only: were two backends to guard the same
/// (port, proto), a window opened by one would still be refused by the other. Doors that
/// share a port through the same backend are fine (each knock opens its own window).
fn check_open_backends(draft: &Draft, path: &Path) -> Result<(), ConfigError> {
    let default = draft.options.default_backend;
    let gate = |d| door_gate(d, default);
    for (j, later) in draft.doors.iter().enumerate() {
        let Some((open, backend)) = gate(later) else {
            continue;
        };
        for earlier in &draft.doors[..j] {
            let Some((other_open, other)) = gate(earlier).filter(|(_, b)| *b != backend) else {
                continue;
            };
            if let Some(port) = open.ports.iter().find(|p| other_open.ports.contains(p)) {
                let message = format!(
                    "door `{}` protects {port} with the {} backend, but door `{}` protects it with {}: a port can be guarded by one backend only",
                    later.door.name,
                    backend_name(backend),
                    earlier.door.name,
                    backend_name(other),
                );
                return Err(later.error(path, "open", message));
            }
        }
    }
    Ok(())
}

/// A door's `open` action and the backend it uses: its own, else `options.backend`.
fn door_gate(door: &DraftDoor, default: Backend) -> Option<(&OpenAction, Backend)> {
    let open = door.door.open.as_ref()?;
    Some((open, open.backend.unwrap_or(default)))
}

/// A door opened by SPA packets alone: it has no knock sequence.
fn spa_only(door: &DraftDoor) -> bool {
    door.door.spa.is_some() && !door.sequence_given && door.door.one_time_sequences.is_none()
}

/// A one-time door whose file has no live line left: disabled, still protecting.
fn is_used_up(door: &DraftDoor) -> bool {
    door.door.one_time_sequences.is_some() && door.door.sequence.is_empty()
}

/// Flags only filter TCP packets, so they cannot tell all-UDP sequences apart.
fn effective_flags(door: &DraftDoor) -> TcpFlags {
    let has_tcp = door.door.sequence.iter().any(|s| s.proto == Proto::Tcp);
    if has_tcp {
        door.door.tcp_flags
    } else {
        TcpFlags::default()
    }
}

fn show(steps: &[Step]) -> String {
    steps.iter().map(Step::to_string).collect::<Vec<_>>().join(",")
}
