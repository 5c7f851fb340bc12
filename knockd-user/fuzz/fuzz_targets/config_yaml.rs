//! The YAML loader on arbitrary text (knockd.conf-looking inputs are left
//! to the other target). Whatever it accepts must survive `--convert`: the
//! emitted YAML parses back to the same config.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use xknock::config::{detect_format, parse_str, to_yaml, Format};

fuzz_target!(|text: &str| {
    if detect_format(text) != Some(Format::Yaml) {
        return;
    }
    let path = Path::new("/nonexistent/xknock-fuzz/xknockd.yaml");
    let Ok(cfg) = parse_str(text, path) else { return };
    let yaml = to_yaml(&cfg);
    let back = parse_str(&yaml, path).unwrap_or_else(|e| panic!("--convert output refused: {e}\n{yaml}"));
    assert_eq!((&back.options, &back.doors), (&cfg.options, &cfg.doors), "\n{yaml}");
});
