//! Under systemd, stderr is the journal: log lines then carry their
//! priority as an sd-daemon `<N>` prefix and no timestamp of their own
//! (the journal stamps them).

use std::{io::Write, os::unix::fs::MetadataExt};

/// Whether stderr is the journal stream systemd gave us: `JOURNAL_STREAM`
/// names its `device:inode`. A stderr redirected elsewhere by a child's
/// shell keeps the variable but not the stream, so both are compared.
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream.to_str().is_some_and(|s| names_stream(s, meta.dev(), meta.ino()))
}

/// `JOURNAL_STREAM`'s `DEV:INO` against stderr's.
pub fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
    value.split_once(':').is_some_and(|(d, i)| d.parse() == Ok(dev) && i.parse() == Ok(ino))
}

/// The syslog priority of a level: knockd's lines are notices, as they
/// are in syslog.
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 5,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Makes `builder` write journal lines when stderr is the journal.
pub fn configure(builder: &mut env_logger::Builder) {
    if stderr_is_journal() {
        builder.format(|buf, record| writeln!(buf, "<{}>{}", priority(record.level()), record.args()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_must_be_ours() {
        assert!(names_stream("8:1234", 8, 1234));
        assert!(!names_stream("8:1234", 8, 1235));
        assert!(!names_stream("8", 8, 1234));
        assert!(!names_stream("x:y", 8, 1234));
    }

    #[test]
    fn knock_lines_are_notices() {
        assert_eq!(priority(log::Level::Info), 5);
        assert_eq!(priority(log::Level::Error), 3);
        assert_eq!(priority(log::Level::Trace), 7);
    }
}
