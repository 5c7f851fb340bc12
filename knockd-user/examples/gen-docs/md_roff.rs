//! Just enough Markdown to roff for the README's configuration reference:
//! headings, paragraphs, lists, fenced code and pipe tables, with inline
//! code, bold and links. Anything else passes through as text.

/// The part of `markdown` from the `## {title}` line to the next `## `.
pub fn section<'a>(markdown: &'a str, title: &str) -> Option<&'a str> {
    let start = markdown.find(&format!("\n## {title}\n"))? + 1;
    let body = &markdown[start..];
    let first_line = body.find('\n')? + 1;
    let end = body[first_line..].find("\n## ").map_or(body.len(), |i| first_line + i + 1);
    Some(&body[first_line..end])
}

/// roff for `markdown`, under a `.SH` the caller writes.
pub fn convert(markdown: &str) -> String {
    let mut out = String::new();
    let mut lines = markdown.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_end();
        if trimmed.starts_with("```") {
            out.push_str(".PP\n.RS 4\n.nf\n");
            for code in lines.by_ref().take_while(|l| !l.starts_with("```")) {
                out.push_str(&escape_line(&code.replace('\\', "\\e").replace('-', "\\-")));
                out.push('\n');
            }
            out.push_str(".fi\n.RE\n");
        } else if let Some(h) = trimmed.strip_prefix("#### ").or_else(|| trimmed.strip_prefix("### ")) {
            out.push_str(&format!(".SS \"{}\"\n", inline(h).replace('"', "")));
        } else if trimmed.starts_with('|') {
            let mut rows = vec![trimmed.to_string()];
            while lines.peek().is_some_and(|l| l.starts_with('|')) {
                rows.push(lines.next().unwrap_or_default().trim_end().to_string());
            }
            out.push_str(&table(&rows));
        } else if let Some(item) = trimmed.strip_prefix("- ") {
            out.push_str(&format!(".IP \\(bu 2\n{}\n", inline(item)));
        } else if trimmed.is_empty() {
            out.push_str(".PP\n");
        } else {
            out.push_str(&escape_line(&inline(trimmed.trim_start())));
            out.push('\n');
        }
    }
    out
}

/// A pipe table as tagged paragraphs: the first column as the tag, the
/// others as `Header: cell` lines.
fn table(rows: &[String]) -> String {
    let cells = |row: &str| -> Vec<String> {
        let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
        split_cells(inner).into_iter().map(|c| c.trim().to_string()).collect()
    };
    let header = cells(&rows[0]);
    let mut out = String::new();
    for row in rows.iter().skip(2) {
        let row = cells(row);
        out.push_str(&format!(".TP\n{}\n", escape_line(&inline(row.first().map_or("", String::as_str)))));
        for (i, cell) in row.iter().enumerate().skip(1) {
            if cell.is_empty() {
                continue;
            }
            let head = header.get(i).map_or(String::new(), |h| format!("\\fI{}:\\fR ", inline(h)));
            out.push_str(&escape_line(&format!("{head}{}", inline(cell))));
            out.push_str("\n.br\n");
        }
    }
    out.push_str(".PP\n");
    out
}

/// Splits on `|` outside backticks, keeping `\|` as a literal bar.
fn split_cells(row: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut in_code = false;
    let mut chars = row.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cells.last_mut().unwrap().push('|');
                chars.next();
            }
            '`' => {
                in_code = !in_code;
                cells.last_mut().unwrap().push(c);
            }
            '|' if !in_code => cells.push(String::new()),
            _ => cells.last_mut().unwrap().push(c),
        }
    }
    cells
}

/// Inline code and bold become bold, links their text; roff's escape
/// character and hyphens are escaped.
fn inline(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find(['`', '*', '[']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(code) = tail.strip_prefix('`').and_then(|t| t.split_once('`')) {
            out.push_str(&format!("\\fB{}\\fR", code.0));
            rest = code.1;
        } else if let Some(bold) = tail.strip_prefix("**").and_then(|t| t.split_once("**")) {
            out.push_str(&format!("\\fB{}\\fR", bold.0));
            rest = bold.1;
        } else if let Some((label, after)) = tail.strip_prefix('[').and_then(|t| t.split_once("](")) {
            match after.split_once(')') {
                Some((_, after)) => {
                    out.push_str(label);
                    rest = after;
                }
                None => {
                    out.push('[');
                    rest = &tail[1..];
                }
            }
        } else {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// A line roff would take as a request if it began with `.` or `'`.
fn escape_line(line: &str) -> String {
    if line.starts_with(['.', '\'']) {
        format!("\\&{line}")
    } else {
        line.to_string()
    }
}
