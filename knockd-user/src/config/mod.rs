//! xknockd's configuration: knockd 0.8 `knockd.conf` files, read unchanged, and the
//! native YAML format. Both become the same [`Config`]; the format is told by content,
//! not by file name, so `/etc/knockd.conf` can be either.

mod capacity;
mod disjoint;
mod draft;
pub mod dynamic;
mod emit;
mod error;
pub(crate) mod file_safety;
pub(crate) mod icmp;
mod knockd_conf;
pub mod model;
pub mod one_time;
pub mod spa;
mod validate;
mod values;
mod yaml;
mod yaml_de;
mod yaml_lines;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use disjoint::check_disjoint;
pub use emit::to_yaml;
pub use error::ConfigError;
pub use model::*;
pub use one_time::{InvalidLine, LiveLine, OneTimeFile};

/// Reads, parses and validates the config file at `path`, loading the active sequence
/// of every one-time door.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, None, format!("cannot read the config file: {e}")))?;
    parse_str(&text, path)
}

/// As [`load`], on text already read; `path` names the file in errors and anchors
/// relative `one_time_sequences` paths.
pub fn parse_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let Some(format) = detect_format(text) else {
        return Err(ConfigError::new(path, None, "the file is empty: no doors defined"));
    };
    let mut draft = match format {
        Format::KnockdConf => knockd_conf::parse(text, path)?,
        Format::Yaml => yaml::parse(text, path)?,
    };
    one_time::load_sequences(&mut draft, path)?;
    validate::validate(&draft, path)?;
    Ok(Config {
        path: path.to_path_buf(),
        format,
        options: draft.options,
        doors: draft.doors.into_iter().map(|d| d.door).collect(),
    })
}

/// knockd.conf if the first line that is neither blank nor a `#` comment opens a
/// `[section]`, else YAML; `None` if there is no such line.
pub fn detect_format(text: &str) -> Option<Format> {
    let first = text.lines().map(str::trim_start).find(|l| !l.is_empty() && !l.starts_with('#'))?;
    Some(if first.starts_with('[') { Format::KnockdConf } else { Format::Yaml })
}

/// Options as they are when a file sets none of them.
#[cfg(test)]
pub(crate) use draft::default_options;
