//! The one error type every config problem becomes, plus the "did you mean" helper.

use std::path::{Path, PathBuf};

/// A problem in a config file, located as precisely as the format allows.
///
/// Displays as `/etc/knockd.conf:12: key `sequence`: port 70000 is outside 1-65535`;
/// the line and key parts are left out when unknown.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based; `None` only when no line is to blame (unreadable file, no doors at all).
    pub line: Option<usize>,
    /// The key as the user wrote it (knockd.conf) or its YAML path below the door (`open.ports`).
    pub key: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        ConfigError { path: path.to_path_buf(), line, key: None, message: message.into() }
    }

    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    fn render(&self) -> String {
        let mut out = self.path.display().to_string();
        if let Some(line) = self.line {
            out.push_str(&format!(":{line}"));
        }
        out.push_str(": ");
        if let Some(key) = &self.key {
            out.push_str(&format!("key `{key}`: "));
        }
        out.push_str(&self.message);
        out
    }
}

/// `unknown key `x` (did you mean `y`?)`, or the list of valid keys when nothing is close.
pub(crate) fn unknown_key_message<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str> + Clone,
) -> String {
    match did_you_mean(word, candidates.clone()) {
        Some(best) => format!("unknown key `{word}` (did you mean `{best}`?)"),
        None => {
            let all: Vec<&str> = candidates.into_iter().collect();
            format!("unknown key `{word}` (valid keys: {})", all.join(", "))
        }
    }
}

/// The candidate nearest to `word` by edit distance (case-insensitive), if it is close
/// enough to be a plausible typo rather than a different word.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (levenshtein(&word, &c.to_ascii_lowercase()), c))
        .filter(|(dist, c)| *dist <= (c.len() / 3).max(2))
        .min_by_key(|(dist, _)| *dist)
        .map(|(_, c)| c)
}

/// Classic two-row Levenshtein; the inputs are short key names, so no need for strsim.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitution.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_path_line_key_message() {
        let err = ConfigError::new(Path::new("/etc/knockd.conf"), Some(12), "port 70000 is outside 1-65535")
            .with_key("sequence");
        assert_eq!(err.to_string(), "/etc/knockd.conf:12: key `sequence`: port 70000 is outside 1-65535");
    }

    #[test]
    fn display_without_line_or_key() {
        let err = ConfigError::new(Path::new("x.yaml"), None, "no doors defined");
        assert_eq!(err.to_string(), "x.yaml: no doors defined");
    }

    #[test]
    fn suggestions() {
        let keys = ["sequence", "seq_timeout", "cmd_timeout"];
        assert_eq!(did_you_mean("seq_timout", keys), Some("seq_timeout"));
        assert_eq!(did_you_mean("SEQUENCE", keys), Some("sequence"));
        assert_eq!(did_you_mean("banana", keys), None);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
    }
}
