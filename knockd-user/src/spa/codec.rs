//! The wire packet: encrypt-then-MAC around the plaintext, and its replay
//! digest. `decode` checks in fwknop's order, the HMAC before anything is
//! decrypted; `encode` builds what the fwknop 2.6 client sends.

use sha2::{Digest, Sha256};

use super::{
    b64,
    crypto::{self, HMAC_B64_LEN, SALTED_PREFIX, SALT_LEN},
    error::{DecodeError, EncodeError},
    keys::SpaKeys,
    message::SpaMessage,
    plaintext,
};

/// fwknop's UDP port (`FKO_DEFAULT_PORT`).
pub const DEFAULT_PORT: u16 = 62201;
/// `MIN_SPA_DATA_SIZE`: fwknopd drops anything shorter unread.
pub const MIN_WIRE_LEN: usize = 140;
/// From 400 chars on, fwknop takes a packet for GnuPG (`MIN_GNUPG_MSG_SIZE`).
pub const MAX_WIRE_LEN: usize = 399;

/// Builds the wire string for `msg` with a given salt (random in real use:
/// see [`random_salt`]). Deterministic, so the spec's vectors reproduce.
pub fn encode(keys: &SpaKeys, msg: &SpaMessage, salt: &[u8; SALT_LEN]) -> Result<String, EncodeError> {
    Ok(seal(keys, plaintext::encode(msg)?.as_bytes(), salt))
}

/// Encrypts and authenticates any plaintext, unchecked: the wire form of
/// [`encode`], and how the fuzzer reaches the parser behind the HMAC.
pub fn seal(keys: &SpaKeys, plain: &[u8], salt: &[u8; SALT_LEN]) -> String {
    let ct = crypto::encrypt(plain, keys.enc(), salt);
    let body = ct.strip_prefix(SALTED_PREFIX).expect("the Salted__ header always encodes to this");
    format!("{body}{}", keys.mac().sign(body))
}

/// Authenticates, decrypts and parses one datagram's payload.
pub fn decode(keys: &SpaKeys, wire: &[u8]) -> Result<SpaMessage, DecodeError> {
    open(keys, authenticate(keys, wire)?)
}

/// A payload whose HMAC matched: its b64 ciphertext without the prefix.
/// Only [`authenticate`] makes one, so nothing unauthenticated is decrypted.
#[derive(Clone, Copy, Debug)]
pub struct Authentic<'a>(&'a str);

/// Shape and HMAC only: all that junk costs, with no allocation.
pub fn authenticate<'a>(keys: &SpaKeys, wire: &'a [u8]) -> Result<Authentic<'a>, DecodeError> {
    // Room for the HMAC and fwknop's minimal body (36) is guaranteed.
    const _: () = assert!(MIN_WIRE_LEN >= HMAC_B64_LEN + 36);
    let wire = check_shape(wire)?;
    let (body, mac) = wire.split_at(wire.len() - HMAC_B64_LEN);
    keys.mac().verify(body, mac)?;
    Ok(Authentic(body))
}

/// Decrypts and parses an authenticated payload.
pub fn open(keys: &SpaKeys, authentic: Authentic<'_>) -> Result<SpaMessage, DecodeError> {
    let plain = crypto::decrypt(&format!("{SALTED_PREFIX}{}", authentic.0), keys.enc())?;
    plaintext::decode(&plain)
}

/// Length and alphabet, before any crypto: fwknopd's `preprocess_spa_data`,
/// stricter on `=`, which a real packet never carries.
fn check_shape(wire: &[u8]) -> Result<&str, DecodeError> {
    if !(MIN_WIRE_LEN..=MAX_WIRE_LEN).contains(&wire.len()) {
        return Err(DecodeError::BadLength(wire.len()));
    }
    if !wire.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/') {
        return Err(DecodeError::NotBase64);
    }
    let wire = std::str::from_utf8(wire).map_err(|_| DecodeError::NotBase64)?;
    if wire.starts_with(SALTED_PREFIX) {
        return Err(DecodeError::BadCiphertext("the Salted__ prefix is never sent"));
    }
    Ok(wire)
}

/// What the replay cache keys on: b64(SHA-256(the datagram as received)),
/// the digest fwknopd keeps in its own digest cache.
pub fn replay_digest(wire: &[u8]) -> String {
    b64::encode(&Sha256::digest(wire))
}

/// 8 salt bytes from the OS.
pub fn random_salt() -> Result<[u8; SALT_LEN], getrandom::Error> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt)?;
    Ok(salt)
}

/// 16 random decimal digits (the first field), unbiased: bytes of 250 and
/// up are drawn again.
pub fn random_digits() -> Result<String, getrandom::Error> {
    let mut digits = String::with_capacity(plaintext::RAND_LEN);
    while digits.len() < plaintext::RAND_LEN {
        let mut bytes = [0u8; plaintext::RAND_LEN];
        getrandom::fill(&mut bytes)?;
        let fresh = bytes.iter().filter(|&&b| b < 250).map(|b| char::from(b'0' + b % 10));
        digits.extend(fresh.take(plaintext::RAND_LEN - digits.len()));
    }
    Ok(digits)
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
