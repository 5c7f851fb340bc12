//! A door's `spa` block (YAML only): single-packet authorization in fwknop's
//! format, beside a knock sequence or instead of it.
//!
//! Keys are loaded and checked here, so `--check` reports a bad key with its
//! file, line and key like any other config error, and the daemon never
//! starts with a door it cannot open.

use std::{
    io::Read,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use super::{
    draft::DraftDoor,
    error::ConfigError,
    file_safety::open_private,
    model::{Door, Proto, Step},
    yaml_de::DurationDe,
};
use crate::spa::{KeyError, SpaKeys, SpaPolicy, DEFAULT_MAX_AGE, DEFAULT_PORT};

/// The keys of a `spa` block, for error paths and suggestions.
pub(super) const SPA_KEYS: &[&str] = &[
    "port",
    "key_base64",
    "key_file",
    "hmac_key_base64",
    "hmac_key_file",
    "max_age",
    "require_source_address",
    "users",
];

/// Where one of the two keys is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRef {
    Base64(String),
    /// A private file holding the base64 key, as given (relative paths are
    /// taken from the config file's directory).
    File(PathBuf),
}

/// A door's SPA settings, with its keys loaded and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaConfig {
    /// UDP port the packets come to (fwknop's 62201 by default).
    pub port: u16,
    pub key: KeyRef,
    pub hmac_key: KeyRef,
    pub keys: SpaKeys,
    /// Packets further than this from our clock, either way, are refused.
    pub max_age: Duration,
    /// The allow-IP in the packet must be its source address.
    pub require_source_address: bool,
    /// `None`: any user name.
    pub users: Option<Vec<String>>,
}

impl SpaConfig {
    /// The UDP port as a knock step, for the disjointness rule.
    pub fn step(&self) -> Step {
        Step { port: self.port, proto: Proto::Udp }
    }

    /// The door's policy: its `open` ports and duration bound what a packet gets.
    pub fn policy(&self, door: &Door) -> SpaPolicy {
        let (ports, duration) = match &door.open {
            Some(open) => (open.ports.clone(), open.duration),
            None => (Vec::new(), Duration::ZERO),
        };
        SpaPolicy {
            max_age: self.max_age,
            require_source_address: self.require_source_address,
            users: self.users.clone(),
            ports,
            duration,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map of SPA settings")]
pub(super) struct RawSpa {
    port: Option<u16>,
    key_base64: Option<String>,
    key_file: Option<PathBuf>,
    hmac_key_base64: Option<String>,
    hmac_key_file: Option<PathBuf>,
    max_age: Option<DurationDe>,
    require_source_address: Option<bool>,
    users: Option<Vec<String>>,
}

/// Builds the door's `SpaConfig`, reading key files relative to `path`.
pub(super) fn convert(raw: RawSpa, draft: &DraftDoor, path: &Path) -> Result<SpaConfig, ConfigError> {
    let err = |key: &str, message: String| draft.error(path, &format!("spa.{key}"), message);
    let port = raw.port.unwrap_or(DEFAULT_PORT);
    if port == 0 {
        return Err(err("port", "port 0 is outside 1-65535".into()));
    }
    let key = key_ref(raw.key_base64, raw.key_file, "key").map_err(|m| draft.error(path, "spa", m))?;
    let hmac_key = key_ref(raw.hmac_key_base64, raw.hmac_key_file, "hmac_key")
        .map_err(|m| draft.error(path, "spa", m))?;
    let keys = load_keys(&key, &hmac_key, path).map_err(|(which, m)| err(which, m))?;
    let max_age = raw.max_age.map_or(DEFAULT_MAX_AGE, |d| d.0);
    if max_age < Duration::from_secs(1) {
        return Err(err("max_age", "must be at least 1 second".into()));
    }
    if let Some(users) = &raw.users {
        check_users(users).map_err(|m| err("users", m))?;
    }
    Ok(SpaConfig {
        port,
        key,
        hmac_key,
        keys,
        max_age,
        require_source_address: raw.require_source_address.unwrap_or(true),
        users: raw.users,
    })
}

fn key_ref(b64: Option<String>, file: Option<PathBuf>, name: &str) -> Result<KeyRef, String> {
    match (b64, file) {
        (Some(b), None) => Ok(KeyRef::Base64(b)),
        (None, Some(f)) => Ok(KeyRef::File(f)),
        (Some(_), Some(_)) => Err(format!("give `{name}_base64` or `{name}_file`, not both")),
        (None, None) => Err(format!("`spa` needs `{name}_base64` or `{name}_file`")),
    }
}

/// The key text from the config or its file, then fwknop's checks. An error
/// names the key it is about (`key_base64`, `hmac_key_file`, ...).
fn load_keys(key: &KeyRef, hmac: &KeyRef, config: &Path) -> Result<SpaKeys, (&'static str, String)> {
    let key_name = name_of(key, "key");
    let hmac_name = name_of(hmac, "hmac_key");
    let key_text = read_ref(key, config).map_err(|m| (key_name, m))?;
    let hmac_text = read_ref(hmac, config).map_err(|m| (hmac_name, m))?;
    SpaKeys::from_base64(&key_text, &hmac_text).map_err(|e| {
        let which = match &e {
            KeyError::Base64 { which, .. } | KeyError::Length { which, .. } => *which,
            _ => "HMAC",
        };
        let blame = if which.starts_with("HMAC") { hmac_name } else { key_name };
        (blame, e.to_string())
    })
}

fn name_of(r: &KeyRef, stem: &str) -> &'static str {
    match (r, stem) {
        (KeyRef::Base64(_), "key") => "key_base64",
        (KeyRef::File(_), "key") => "key_file",
        (KeyRef::Base64(_), _) => "hmac_key_base64",
        (KeyRef::File(_), _) => "hmac_key_file",
    }
}

/// A key file gets the one-time file checks, and may not be readable by
/// others either: whoever reads it can open the door.
fn read_ref(r: &KeyRef, config: &Path) -> Result<String, String> {
    let file = match r {
        KeyRef::Base64(text) => return Ok(text.clone()),
        KeyRef::File(file) => config.parent().unwrap_or(Path::new("")).join(file),
    };
    let shown = file.display();
    let (mut f, readable) = open_private(&file, false).map_err(|e| format!("{shown}: {e}"))?;
    if let Some(why) = readable {
        return Err(format!("{shown}: refused: {why}"));
    }
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(|e| format!("{shown}: {e}"))?;
    Ok(text)
}

/// fwknop user names: 1-63 chars, none it forbids (`fko_user.c`).
fn check_users(users: &[String]) -> Result<(), String> {
    const FORBIDDEN: &str = "\"/\\[]:;|=,+*?<>";
    if users.is_empty() {
        return Err("an empty list lets nobody in; leave `users` out to allow any user".into());
    }
    match users
        .iter()
        .find(|u| u.is_empty() || u.len() > 63 || u.chars().any(|c| c.is_control() || FORBIDDEN.contains(c)))
    {
        Some(bad) => {
            Err(format!("`{bad}` is not a user name fwknop can send (1-63 chars, none of {FORBIDDEN})"))
        }
        None => Ok(()),
    }
}

/// A `spa` door needs `open`: its ports bound what a packet may open. An
/// SPA port that a door knocks on would be read two ways by the kernel; one
/// that is protected would be open to everyone (see `disjoint`).
pub(super) fn check_doors(drafts: &[DraftDoor], path: &Path) -> Result<(), ConfigError> {
    for d in drafts {
        let Some(spa) = &d.door.spa else { continue };
        if d.door.open.is_none() {
            let message = "a door with `spa` needs `open` (the ports a packet may open, and for how long)";
            return Err(d.error(path, "spa", message));
        }
        let step = spa.step();
        if let Some(k) = drafts.iter().find(|k| k.door.sequence.contains(&step)) {
            let message = format!(
                "the SPA port {} is a knock step of door `{}`; use another port",
                spa.port, k.door.name
            );
            return Err(d.error(path, "spa.port", message));
        }
        if let Some(p) = drafts.iter().find(|p| p.door.open.as_ref().is_some_and(|o| o.ports.contains(&step)))
        {
            let message = format!(
                "the SPA port {}/udp is protected by door `{}`: SPA ports are never gated, so it would be open to everyone",
                spa.port, p.door.name
            );
            return Err(d.error(path, "spa.port", message));
        }
    }
    Ok(())
}

/// Appends the block to `--convert`/emit output (4-space door indent).
pub(super) fn emit(out: &mut String, spa: &SpaConfig) {
    use std::fmt::Write;
    out.push_str("    spa:\n");
    let _ = writeln!(out, "      port: {}", spa.port);
    for (stem, r) in [("key", &spa.key), ("hmac_key", &spa.hmac_key)] {
        let _ = match r {
            KeyRef::Base64(b) => writeln!(out, "      {stem}_base64: {b:?}"),
            KeyRef::File(f) => writeln!(out, "      {stem}_file: {:?}", f.display().to_string()),
        };
    }
    let _ = writeln!(out, "      max_age: {}", spa.max_age.as_secs());
    let _ = writeln!(out, "      require_source_address: {}", spa.require_source_address);
    if let Some(users) = &spa.users {
        let quoted: Vec<String> = users.iter().map(|u| format!("{u:?}")).collect();
        let _ = writeln!(out, "      users: [{}]", quoted.join(", "));
    }
}
