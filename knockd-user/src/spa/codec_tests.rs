use std::net::IpAddr;

use super::*;
use crate::spa::message::{AccessSpec, MessageType};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const HMAC: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==";
const SALT: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

fn keys() -> SpaKeys {
    SpaKeys::from_base64(KEY, HMAC).unwrap()
}

use crate::spa::plaintext::tests::vector1;

const WIRE1: &str = "8BAgMEBQYHCGn9PZ4nxPwf7DQ7Vp7SDMPX6d36vlKmhoMDTu7pRTvP+1g4fx9V2y9zad+5K1mHEfClgi/8IM9ssfgufZoPa7tWK8lBjDKJk949HWwTPp1Yf9xGkjWxeZOLPhgce7+Mc1kp8fCkS7uCrWpIUk3TyPQ+o9lzUtMooGGmSojhQhiKmg4Qn+DFeJ83mLvvoH8SV4";
const WIRE2: &str = "8BAgMEBQYHCGn9PZ4nxPwf7DQ7Vp7SDMPX6d36vlKmhoMDTu7pRTvPZeiF0tKWT3T8XAEEg5cDb/7x4f7HmXenS+5BXrXpwzoFUCFFSEOQwldnc4qGCg2tZZE/JK2sg9keqLBltcotkJOUkMP09BLiCFjTLaUUfYOZzLU8iNmMngx+ZbqSKT/AeA0iN0OIaX+VWn5HhH1SJn36KG5DFIjh0linzDdVr6Y";

#[test]
fn spec_vectors_reproduce_byte_for_byte() {
    assert_eq!(encode(&keys(), &vector1(), &SALT).unwrap(), WIRE1);
    assert_eq!(replay_digest(WIRE1.as_bytes()), "ZOxLQwkGB/o39uE2CdwOqWseknm69QBGV5HaNO2Oz6c");
    let v2 = SpaMessage { client_timeout: Some(45), ..vector1() };
    assert_eq!(encode(&keys(), &v2, &SALT).unwrap(), WIRE2);
    assert_eq!(replay_digest(WIRE2.as_bytes()), "eXyOpbF0p4+yUmfG7UhwDGOXsRcc5kpQPF8eRrfAyTI");
    assert_eq!(decode(&keys(), WIRE1.as_bytes()).unwrap(), vector1());
    let back = decode(&keys(), WIRE2.as_bytes()).unwrap();
    assert_eq!((back.kind, back.client_timeout), (MessageType::ClientTimeoutAccess, Some(45)));
}

/// A fixture as fwknop's `-B` wrote it, without its trailing newline.
fn fixture(text: &str) -> &[u8] {
    text.strip_suffix('\n').expect("-B ends the file with a newline").as_bytes()
}

const ACCESS: &str = include_str!("fixtures/access.spa");
const TIMEOUT_MULTI: &str = include_str!("fixtures/timeout_multi.spa");
const SOURCE: &str = include_str!("fixtures/source.spa");
const LITERAL: &str = include_str!("fixtures/literal_keys.spa");
const FIXTURE_TIME: u32 = 1_796_176_795;

fn spec(s: &str) -> AccessSpec {
    s.parse().unwrap()
}

#[test]
fn real_fwknop_packets_decode() {
    let m = decode(&keys(), fixture(ACCESS)).unwrap();
    assert_eq!((m.user.as_str(), m.timestamp, m.kind), ("alice", FIXTURE_TIME, MessageType::Access));
    assert_eq!((m.rand.as_str(), m.version.as_str()), ("1085489970112806", "3.0.0"));
    assert_eq!((m.allow_ip, m.access.as_slice()), ("10.0.0.5".parse().unwrap(), &[spec("tcp/22")][..]));
    assert_eq!(m.client_timeout, None);

    let m = decode(&keys(), fixture(TIMEOUT_MULTI)).unwrap();
    assert_eq!(
        (m.user.as_str(), m.kind, m.client_timeout),
        ("bob", MessageType::ClientTimeoutAccess, Some(45))
    );
    assert_eq!(m.access, vec![spec("tcp/22"), spec("udp/53")]);

    let m = decode(&keys(), fixture(SOURCE)).unwrap();
    assert_eq!(m.allow_ip, IpAddr::from([0, 0, 0, 0]), "-s sends 0.0.0.0");

    let literal = SpaKeys::new(b"shortpw".to_vec(), b"a literal hmac key".to_vec()).unwrap();
    let m = decode(&literal, fixture(LITERAL)).unwrap();
    assert_eq!((m.user.as_str(), m.access.as_slice()), ("carol", &[spec("udp/53")][..]));
    assert_eq!(replay_digest(fixture(ACCESS)), "4C955okzzQ3W81Ufq5m6tfn2lT/Ft5BVqgm2wlaRFUc");
}

#[test]
fn every_flipped_byte_fails_the_hmac() {
    let wire = fixture(ACCESS);
    for i in 0..wire.len() {
        let mut bad = wire.to_vec();
        // Stay in the alphabet, so the HMAC is what refuses it.
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        assert_eq!(decode(&keys(), &bad), Err(DecodeError::BadHmac), "byte {i}");
    }
}

#[test]
fn wrong_keys_fail_the_hmac_first() {
    let wrong_hmac = SpaKeys::new(keys().enc().to_vec(), vec![9; 64]).unwrap();
    assert_eq!(decode(&wrong_hmac, fixture(ACCESS)), Err(DecodeError::BadHmac));
    // Right HMAC key, wrong passphrase: authentic bytes that do not decrypt.
    let wrong_enc = SpaKeys::new(vec![9; 32], keys().hmac().to_vec()).unwrap();
    let err = decode(&wrong_enc, fixture(ACCESS)).unwrap_err();
    assert!(matches!(err, DecodeError::Decrypt | DecodeError::BadPlaintext(_)), "{err:?}");
}

#[test]
fn shape_is_checked_before_crypto() {
    assert_eq!(decode(&keys(), ACCESS.as_bytes()), Err(DecodeError::NotBase64), "trailing newline");
    assert_eq!(decode(&keys(), &[b'A'; 139]), Err(DecodeError::BadLength(139)));
    assert_eq!(decode(&keys(), &[b'A'; 400]), Err(DecodeError::BadLength(400)));
    let prefixed = format!("U2FsdGVkX1{WIRE1}");
    assert!(matches!(decode(&keys(), prefixed.as_bytes()), Err(DecodeError::BadCiphertext(_))));
    // A packet with its HMAC cut off is refused without being decrypted.
    let no_mac = &WIRE1.as_bytes()[..WIRE1.len() - 43];
    assert_eq!(decode(&keys(), no_mac), Err(DecodeError::BadHmac));
}

#[test]
fn encoded_packets_stay_under_the_gnupg_threshold() {
    let many: Vec<AccessSpec> = (1..=17).map(|p| spec(&format!("tcp/{}", 60000 + p))).collect();
    let msg = SpaMessage { access: many, client_timeout: Some(300), ..vector1() };
    match encode(&keys(), &msg, &SALT) {
        Ok(wire) => assert!(wire.len() <= MAX_WIRE_LEN, "{}", wire.len()),
        Err(e) => assert!(matches!(e, EncodeError::TooLong(_))),
    }
    let rand = random_digits().unwrap();
    assert!(rand.len() == 16 && rand.bytes().all(|b| b.is_ascii_digit()));
    assert_ne!(random_salt().unwrap(), random_salt().unwrap());
}
