//! The ring-buffer record decoder on arbitrary bytes: records come from the
//! kernel, but a decoder that trusts them must still never panic, and what
//! it accepts must carry a family-consistent address pair.

#![no_main]

use libfuzzer_sys::fuzz_target;
use xknock::events::decode;

fuzz_target!(|data: &[u8]| {
    if let Some(rec) = decode(data) {
        assert_eq!(rec.src.is_ipv4(), rec.dst.is_ipv4(), "{rec:?}");
    }
});
