//! The SPA decoder on arbitrary input. The first byte picks the path:
//! even, the rest is a datagram (the HMAC stops nearly all of it, so this
//! fuzzes the checks in front of the crypto); odd, the rest is a plaintext
//! body, digested and sealed with the fuzzer's keys, so the field parser
//! behind the HMAC sees it. Whatever decodes must survive a re-encode.

#![no_main]

use libfuzzer_sys::fuzz_target;
use xknock::spa::{self, plaintext::digest_b64, MessageType, SpaKeys, SpaMessage};

/// The keys of the committed fixtures and seeds (bytes 0..32 and 0..64).
fn keys() -> SpaKeys {
    SpaKeys::new((0..32).collect(), (0..64).collect()).expect("valid keys")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let keys = keys();
    let wire = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let mut plain = rest.to_vec();
        plain.push(b':');
        plain.extend_from_slice(digest_b64(&String::from_utf8_lossy(rest)).as_bytes());
        spa::seal(&keys, &plain, &[mode; 8]).into_bytes()
    };
    if let Ok(msg) = spa::decode(&keys, &wire) {
        round_trip(&keys, msg);
    }
});

/// decode(encode(m)) == m, up to what the encoder normalises: a zero client
/// timeout is no timeout, and the type follows the timeout.
fn round_trip(keys: &SpaKeys, msg: SpaMessage) {
    let timeout = msg.client_timeout.filter(|&t| t > 0);
    let kind = if timeout.is_some() { MessageType::ClientTimeoutAccess } else { MessageType::Access };
    let want = SpaMessage { client_timeout: timeout, kind, ..msg };
    // The decoder takes plaintexts up to 1500 bytes; the encoder stops at 255.
    if let Ok(wire) = spa::encode(keys, &want, &[7; 8]) {
        assert_eq!(spa::decode(keys, wire.as_bytes()).as_ref(), Ok(&want));
    }
}
