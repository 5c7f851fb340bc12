//! fwknop's base64: the standard alphabet, `=` always stripped on output, and a
//! lenient reader that stops at the first `=` and ignores leftover bits, as
//! `lib/base64.c` does. Every field, digest, HMAC and ciphertext uses it.

use base64::{
    alphabet,
    engine::{general_purpose, DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    DecodeError, Engine,
};

const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Base64 without `=` padding.
pub fn encode(bytes: &[u8]) -> String {
    general_purpose::STANDARD_NO_PAD.encode(bytes)
}

/// Base64 without `=` into `out`, which must have room; returns the length.
pub fn encode_into(bytes: &[u8], out: &mut [u8]) -> usize {
    general_purpose::STANDARD_NO_PAD.encode_slice(bytes, out).expect("the caller sized the buffer")
}

/// Decodes up to the first `=`, padded or not.
pub fn decode(text: &str) -> Result<Vec<u8>, DecodeError> {
    let text = text.split('=').next().unwrap_or_default();
    // A lone trailing char carries fewer than 8 bits; fwknop drops it.
    let usable = if text.len() % 4 == 1 { &text[..text.len() - 1] } else { text };
    LENIENT.decode(usable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_and_tolerates_padding() {
        assert_eq!(encode(b"alice"), "YWxpY2U");
        assert_eq!(decode("YWxpY2U").unwrap(), b"alice");
        assert_eq!(decode("YWxpY2U=").unwrap(), b"alice");
        assert_eq!(decode("YWxpY2U=junk").unwrap(), b"alice", "stops at the first =");
        assert_eq!(decode("YWxpY2V").unwrap(), b"alice", "leftover bits ignored");
        assert!(decode("YW*p").is_err());
    }
}
