//! The knockd.conf reader on arbitrary text, forced into that format by a
//! leading section header. Whatever it accepts must survive `--convert`:
//! the emitted YAML parses back to the same config.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use xknock::config::{parse_str, to_yaml, Format};

fuzz_target!(|text: &str| {
    let text = format!("[options]\n{text}");
    // No file of ours is there: one-time paths fail to load, as they should.
    let path = Path::new("/nonexistent/xknock-fuzz/knockd.conf");
    let Ok(cfg) = parse_str(&text, path) else { return };
    assert_eq!(cfg.format, Format::KnockdConf);
    let yaml = to_yaml(&cfg);
    let back = parse_str(&yaml, path).unwrap_or_else(|e| panic!("--convert output refused: {e}\n{yaml}"));
    assert_eq!((&back.options, &back.doors), (&cfg.options, &cfg.doors), "\n{yaml}");
});
