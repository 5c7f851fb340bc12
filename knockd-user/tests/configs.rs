//! Every shipped example config must load. Reads the workspace's `configs/`.

use std::{fs, path::Path};

#[test]
fn every_example_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut seen = 0;
    for entry in fs::read_dir(&dir).expect("configs/ exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "conf") {
            let config = xknock::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!config.doors.is_empty());
            seen += 1;
        }
    }
    assert!(seen >= 3, "expected the example configs in {}", dir.display());
}
