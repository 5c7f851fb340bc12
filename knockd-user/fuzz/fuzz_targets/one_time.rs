//! One-time sequences files on arbitrary bytes: read, then burn every live
//! line in turn. Each burn must retire exactly the active line (its first
//! byte becomes `#`, nothing else changes), and a fresh read must agree on
//! what is live next.

#![no_main]

use std::{fs, os::unix::fs::PermissionsExt, path::PathBuf};

use libfuzzer_sys::fuzz_target;
use xknock::config::OneTimeFile;

/// One scratch file per fuzzing process, private as the reader demands.
fn scratch() -> PathBuf {
    std::env::temp_dir().join(format!("xknock-fuzz-one-time-{}", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    fs::write(&path, data).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let mut file = OneTimeFile::open(&path).unwrap();
    // Every burn retires a line, so the file runs out within this many.
    let lines = data.split(|&b| b == b'\n').count();
    let mut burns = 0;
    while let Some((_, offset, steps)) = file.active() {
        assert!(burns < lines, "{burns} burns and still an active line");
        assert!(!steps.is_empty());
        let before = fs::read(&path).unwrap();
        let next = file.consume_active().unwrap();
        let after = fs::read(&path).unwrap();
        assert_eq!(after[offset as usize], b'#', "the burn missed the line");
        let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert!(changed <= 1 && before.len() == after.len(), "a burn changed more than one byte");
        let reread = OneTimeFile::open(&path).unwrap();
        assert_eq!(
            reread.active().map(|(_, _, s)| s),
            next,
            "the file and the burn disagree on what is next"
        );
        file = reread;
        burns += 1;
    }
    let _ = fs::remove_file(&path);
});
