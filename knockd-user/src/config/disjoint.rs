//! Knock ports and protected ports must not meet: the XDP program never gates a knock
//! port (it has to see the knock), so a (proto, port) that is both a knock step and a
//! protected port would be open to everyone.
//!
//! Every line of a one-time file counts, not only the active one: the next rotation
//! would otherwise make the clash live while the daemon runs.

use std::path::Path;

use super::{
    draft::DraftDoor,
    error::ConfigError,
    model::{Config, Door, Step},
    one_time::{LiveLine, OneTimeFile},
};

/// Where a knock step was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The door's `sequence` (or the active one-time line it was loaded from).
    Sequence,
    /// A live line of the door's one-time file.
    OneTimeLine(usize),
}

/// A knock step of `knocker` that `protector` also protects.
struct Clash<'a> {
    step: Step,
    origin: Origin,
    knocker: &'a Door,
    protector: &'a Door,
}

/// Refuses a config where a knock step (any door's `sequence`, or any live line of
/// a one-time file, read again now) is also a protected port (any door's
/// `open.ports`, disabled doors included). For callers that hold a loaded config,
/// e.g. after a one-time file rotates; errors have no config line then.
pub fn check_disjoint(cfg: &Config) -> Result<(), ConfigError> {
    let mut doors = Vec::with_capacity(cfg.doors.len());
    for door in &cfg.doors {
        doors.push((door, read_live_lines(cfg, door)?));
    }
    let views: Vec<_> = doors.iter().map(|(d, lines)| (*d, lines.as_slice())).collect();
    match find_clash(&views) {
        None => Ok(()),
        Some(clash) => {
            let at = |_: &Door, key: &str, m| ConfigError::new(&cfg.path, None, m).with_key(key);
            Err(clash.error(&cfg.path, at, |_, _| None))
        }
    }
}

/// The same check at load time, with the lines of the config file's keys.
pub(crate) fn check_drafts(drafts: &[DraftDoor], path: &Path) -> Result<(), ConfigError> {
    let views: Vec<_> = drafts.iter().map(|d| (&d.door, d.one_time_lines.as_slice())).collect();
    let Some(clash) = find_clash(&views) else {
        return Ok(());
    };
    let draft = |door: &Door| drafts.iter().find(|d| std::ptr::eq(&d.door, door)).expect("a draft's door");
    let at = |door: &Door, key: &str, message| draft(door).error(path, key, message);
    Err(clash.error(path, at, |door, key| draft(door).lines.get(key).map(|(_, line)| line)))
}

fn read_live_lines(cfg: &Config, door: &Door) -> Result<Vec<LiveLine>, ConfigError> {
    let Some(path) = door.one_time_sequences.as_deref() else {
        return Ok(Vec::new());
    };
    // Quiet: the daemon already warned when it opened the file.
    let file = OneTimeFile::read(path).map_err(|e| {
        let message = format!("cannot read one-time sequences file {}: {e}", path.display());
        ConfigError::new(&cfg.path, None, message).with_key("one_time_sequences")
    })?;
    Ok(file.live_lines().to_vec())
}

fn find_clash<'a>(doors: &[(&'a Door, &'a [LiveLine])]) -> Option<Clash<'a>> {
    let protector_of = |step: &Step| {
        doors.iter().map(|(d, _)| *d).find(|d| d.open.as_ref().is_some_and(|o| o.ports.contains(step)))
    };
    for &(knocker, lines) in doors {
        let sequence = knocker.sequence.iter().map(|s| (*s, Origin::Sequence));
        let file_lines =
            lines.iter().flat_map(|l| l.steps.iter().map(move |s| (*s, Origin::OneTimeLine(l.line_no))));
        for (step, origin) in sequence.chain(file_lines) {
            if let Some(protector) = protector_of(&step) {
                return Some(Clash { step, origin, knocker, protector });
            }
        }
    }
    None
}

impl Clash<'_> {
    /// `at(door, key, message)` places an error at a key of a door in the config file;
    /// `line_of(door, key)` finds a key's line there, if known.
    fn error(
        &self,
        config: &Path,
        at: impl Fn(&Door, &str, String) -> ConfigError,
        line_of: impl Fn(&Door, &str) -> Option<usize>,
    ) -> ConfigError {
        let (knocker, step) = (&self.knocker.name, self.step);
        let protected = match line_of(self.protector, "open.ports") {
            Some(line) => {
                format!("door `{}` protects ({}:{line}: `open.ports`)", self.protector.name, config.display())
            }
            None => format!("door `{}` protects (`open.ports`)", self.protector.name),
        };
        let why = "knock ports are never gated, so it would be open to everyone; use another knock port";
        match self.origin {
            Origin::Sequence => {
                let one_time = self.knocker.one_time_sequences.is_some();
                let key = if one_time { "one_time_sequences" } else { "sequence" };
                at(self.knocker, key, format!("door `{knocker}` knocks on {step}, which {protected}: {why}"))
            }
            Origin::OneTimeLine(line_no) => {
                let file = self.knocker.one_time_sequences.as_deref().unwrap_or(config);
                let message = format!(
                    "this one-time sequence of door `{knocker}` (`one_time_sequences` in {}) knocks on {step}, which {protected}: {why}",
                    config.display()
                );
                ConfigError::new(file, Some(line_no), message)
            }
        }
    }
}
