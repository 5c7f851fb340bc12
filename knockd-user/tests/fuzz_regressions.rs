//! Inputs the libFuzzer targets (knockd-user/fuzz) once crashed on, kept in
//! knockd-user/fuzz/regressions/<target>/, each run through that target's
//! checks on every `cargo test`.

use std::path::{Path, PathBuf};

use xknock::config::{parse_str, to_yaml};

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions").join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no inputs in {}", dir.display());
    out
}

/// The config targets' check: what parses survives `--convert`.
fn round_trips(text: &str, name: &Path) {
    let path = Path::new("/nonexistent/xknock-fuzz/config");
    let Ok(cfg) = parse_str(text, path) else { return };
    let yaml = to_yaml(&cfg);
    let back = parse_str(&yaml, path)
        .unwrap_or_else(|e| panic!("{}: --convert output refused: {e}", name.display()));
    assert_eq!((&back.options, &back.doors), (&cfg.options, &cfg.doors), "{}", name.display());
}

#[test]
fn config_knockd_conf() {
    for (name, bytes) in inputs("config_knockd_conf") {
        let text = format!("[options]\n{}", String::from_utf8_lossy(&bytes));
        round_trips(&text, &name);
    }
}

#[test]
fn door_names_that_convert_cannot_write_are_refused() {
    for (name, bytes) in inputs("config_knockd_conf") {
        let text = String::from_utf8_lossy(&bytes);
        let err = parse_str(&text, Path::new("fuzz.conf")).expect_err(&name.display().to_string());
        assert!(err.to_string().contains("door name"), "{}: {err}", name.display());
    }
}
