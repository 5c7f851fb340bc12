//! Finds the line of a YAML key by its path (`doors` → `openSSH` → `sequence`).
//!
//! serde_yaml reports a location only for errors raised while it deserializes a value;
//! checks that span several fields or doors run afterwards and need this instead. It is
//! a best-effort reading of block-style YAML by indentation: flow mappings and
//! multi-line flow values are not entered, and callers fall back to an outer line.

pub(crate) struct KeyLines {
    entries: Vec<Entry>,
}

struct Entry {
    path: Vec<String>,
    line: usize,
}

impl KeyLines {
    pub fn scan(text: &str) -> Self {
        let mut entries = Vec::new();
        let mut stack: Vec<(usize, String)> = Vec::new();
        // Indent of a key whose value is a block scalar (`|` or `>`): deeper lines are text.
        let mut block_scalar: Option<usize> = None;
        for (index, raw) in text.lines().enumerate() {
            let content = raw.trim_start_matches(' ');
            let indent = raw.len() - content.len();
            if content.trim().is_empty() || content.starts_with('#') {
                continue;
            }
            if block_scalar.is_some_and(|key_indent| indent > key_indent) {
                continue;
            }
            block_scalar = None;
            if is_document_marker(content) {
                stack.clear();
                continue;
            }
            if content == "-" || content.starts_with("- ") {
                continue;
            }
            let Some((key, rest)) = split_key(content) else {
                continue;
            };
            while stack.last().is_some_and(|(i, _)| *i >= indent) {
                stack.pop();
            }
            stack.push((indent, key));
            entries.push(Entry { path: stack.iter().map(|(_, k)| k.clone()).collect(), line: index + 1 });
            if rest.trim_start().starts_with(['|', '>']) {
                block_scalar = Some(indent);
            }
        }
        KeyLines { entries }
    }

    /// Line of the first key at exactly `path`.
    pub fn line(&self, path: &[&str]) -> Option<usize> {
        self.nth_line(path, 0)
    }

    /// Line of the `n`th (0-based) key at exactly `path`; used for repeated keys.
    pub fn nth_line(&self, path: &[&str], n: usize) -> Option<usize> {
        self.entries
            .iter()
            .filter(|e| e.path.iter().map(String::as_str).eq(path.iter().copied()))
            .nth(n)
            .map(|e| e.line)
    }

    /// Direct child keys of `path`, in file order, with their lines.
    pub fn children<'a>(&'a self, path: &'a [&'a str]) -> impl Iterator<Item = (&'a str, usize)> + 'a {
        self.entries
            .iter()
            .filter(move |e| {
                e.path.len() == path.len() + 1
                    && e.path.iter().map(String::as_str).zip(path.iter().copied()).all(|(a, b)| a == b)
            })
            .map(|e| (e.path[path.len()].as_str(), e.line))
    }
}

fn is_document_marker(content: &str) -> bool {
    ["---", "..."].iter().any(|marker| {
        content.strip_prefix(marker).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
    })
}

/// `key: rest` → (key, rest). Handles plain, 'single' and "double" quoted keys.
fn split_key(content: &str) -> Option<(String, &str)> {
    let (key, after) = match content.chars().next()? {
        '"' | '\'' => quoted_key(content)?,
        '{' | '[' | '?' | '&' | '*' | '!' | '|' | '>' => return None,
        _ => plain_key(content)?,
    };
    let rest = after.trim_start_matches([' ', '\t']).strip_prefix(':')?;
    if rest.is_empty() || rest.starts_with([' ', '\t']) {
        Some((key, rest))
    } else {
        None
    }
}

fn plain_key(content: &str) -> Option<(String, &str)> {
    let bytes = content.as_bytes();
    let colon = (0..bytes.len())
        .find(|&i| bytes[i] == b':' && bytes.get(i + 1).is_none_or(|b| *b == b' ' || *b == b'\t'))?;
    let key = content[..colon].trim_end();
    // A comment before the colon means the colon is inside the comment.
    if key.contains(" #") || key.is_empty() {
        return None;
    }
    Some((key.to_string(), &content[colon..]))
}

fn quoted_key(content: &str) -> Option<(String, &str)> {
    let quote = content.chars().next()?;
    let mut key = String::new();
    let mut chars = content.char_indices().skip(1).peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if quote == '"' => {
                let (_, escaped) = chars.next()?;
                key.push(escaped);
            }
            '\'' if quote == '\'' && chars.peek().is_some_and(|(_, n)| *n == '\'') => {
                chars.next();
                key.push('\'');
            }
            c if c == quote => return Some((key, &content[i + 1..])),
            c => key.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# comment: not a key
options:
  interface: eth0
doors:
  openSSH:
    sequence:
      - 7000
      - \"8000:udp\"
    start_command: |
      echo a: b
      nft add x
    open:
      ports: [22]
      duration: 30s
  \"odd: name\":
    sequence: [1]
  openSSH:
    sequence: [2]
";

    #[test]
    fn finds_nested_keys() {
        let lines = KeyLines::scan(TEXT);
        assert_eq!(lines.line(&["options", "interface"]), Some(3));
        assert_eq!(lines.line(&["doors", "openSSH"]), Some(5));
        assert_eq!(lines.line(&["doors", "openSSH", "sequence"]), Some(6));
        assert_eq!(lines.line(&["doors", "openSSH", "open", "duration"]), Some(14));
        assert_eq!(lines.line(&["doors", "odd: name", "sequence"]), Some(16));
        assert_eq!(lines.nth_line(&["doors", "openSSH"], 1), Some(17));
        assert_eq!(lines.line(&["doors", "openSSH", "start_command", "echo a"]), None);
        let keys: Vec<_> = lines.children(&["doors", "openSSH"]).map(|(k, _)| k).collect();
        assert_eq!(keys, ["sequence", "start_command", "open", "sequence"]);
    }

    #[test]
    fn split_key_cases() {
        assert_eq!(split_key("a: b").map(|k| k.0), Some("a".into()));
        assert_eq!(split_key("a:").map(|k| k.0), Some("a".into()));
        assert_eq!(split_key("7000:udp"), None);
        assert_eq!(split_key("'it''s': 1").map(|k| k.0), Some("it's".into()));
        assert_eq!(split_key("\"a\\\"b\" : 1").map(|k| k.0), Some("a\"b".into()));
        assert_eq!(split_key("{a: 1}"), None);
    }
}
