//! fwknop's Rijndael mode and HMAC, from RustCrypto primitives: AES-256-CBC
//! with OpenSSL's salted MD5 `EVP_BytesToKey`, the `Salted__` header, and
//! HMAC-SHA256 over the base64 ciphertext (`lib/fko_encryption.c`,
//! `lib/cipher_funcs.c`, `lib/fko_hmac.c`).

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{b64, error::DecodeError};

type Enc = cbc::Encryptor<aes::Aes256>;
type Dec = cbc::Decryptor<aes::Aes256>;

pub const SALT_LEN: usize = 8;
const MAGIC: &[u8; 8] = b"Salted__";
/// b64 of `Salted__`'s first 7.5 bytes: on the wire fwknop leaves it out.
pub const SALTED_PREFIX: &str = "U2FsdGVkX1";
/// A b64 HMAC-SHA256 without `=`.
pub const HMAC_B64_LEN: usize = 43;

/// OpenSSL `EVP_BytesToKey` with MD5, one round: `D_i = MD5(D_{i-1} || pass || salt)`,
/// key = D1‖D2, IV = D3.
pub fn derive_key_iv(pass: &[u8], salt: &[u8; SALT_LEN]) -> ([u8; 32], [u8; 16]) {
    let mut out = [0u8; 48];
    let mut prev: Vec<u8> = Vec::new();
    for chunk in out.chunks_mut(16) {
        let d = Md5::new().chain_update(&prev).chain_update(pass).chain_update(salt).finalize();
        chunk.copy_from_slice(&d);
        prev = d.to_vec();
    }
    let (key, iv) = out.split_at(32);
    (key.try_into().expect("32"), iv.try_into().expect("16"))
}

/// `plaintext` → b64(`Salted__` ‖ salt ‖ AES-256-CBC), `=` stripped, prefix kept.
pub fn encrypt(plaintext: &[u8], pass: &[u8], salt: &[u8; SALT_LEN]) -> String {
    let (key, iv) = derive_key_iv(pass, salt);
    let ct = Enc::new(&key.into(), &iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext);
    let mut blob = Vec::with_capacity(16 + ct.len());
    blob.extend_from_slice(MAGIC);
    blob.extend_from_slice(salt);
    blob.extend_from_slice(&ct);
    b64::encode(&blob)
}

/// The prefixed b64 ciphertext → plaintext bytes. Strict PKCS#7, and fwknop's
/// own sanity checks on the result (`_rijndael_decrypt`).
pub fn decrypt(ct_b64: &str, pass: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let blob = b64::decode(ct_b64).map_err(|_| DecodeError::BadCiphertext("not base64"))?;
    if blob.len() < 32 || blob.len() % 16 != 0 {
        return Err(DecodeError::BadCiphertext("length is not a whole number of blocks"));
    }
    let (header, body) = blob.split_at(16);
    if &header[..8] != MAGIC {
        return Err(DecodeError::BadCiphertext("no Salted__ header"));
    }
    let salt: &[u8; SALT_LEN] = header[8..].try_into().expect("8");
    let (key, iv) = derive_key_iv(pass, salt);
    let pt = Dec::new(&key.into(), &iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(body)
        .map_err(|_| DecodeError::Decrypt)?;
    // fwknop: 36 <= len < 1500, then 16 digits and a colon.
    if !(36..1500).contains(&pt.len()) {
        return Err(DecodeError::BadPlaintext("length out of bounds"));
    }
    if !pt[..16].iter().all(u8::is_ascii_digit) || pt[16] != b':' {
        return Err(DecodeError::BadPlaintext("does not start with 16 digits and a colon"));
    }
    Ok(pt)
}

/// An HMAC-SHA256 keyed once. A clone per packet costs the packet's own
/// blocks and not the key's two, which is most of what junk costs us.
#[derive(Clone)]
pub struct MacKey(Hmac<Sha256>);

impl MacKey {
    pub fn new(key: &[u8]) -> Self {
        Self(Hmac::new_from_slice(key).expect("HMAC takes any key length"))
    }

    /// The HMAC of the b64 ciphertext `SALTED_PREFIX ‖ body`; the prefix is
    /// hashed rather than prepended, so nothing is allocated.
    fn tag(&self, body: &str) -> [u8; 32] {
        let mut m = self.0.clone();
        m.update(SALTED_PREFIX.as_bytes());
        m.update(body.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// The b64 tag fwknop appends to `body`.
    pub fn sign(&self, body: &str) -> String {
        b64::encode(&self.tag(body))
    }

    /// Whether `mac` is `body`'s b64 tag, compared as strings in constant
    /// time, as `fko_verify_hmac` does.
    pub fn verify(&self, body: &str, mac: &str) -> Result<(), DecodeError> {
        let mut want = [0u8; HMAC_B64_LEN + 1];
        let n = b64::encode_into(&self.tag(body), &mut want);
        if bool::from(want[..n].ct_eq(mac.as_bytes())) {
            Ok(())
        } else {
            Err(DecodeError::BadHmac)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    const SALT: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

    #[test]
    fn kdf_matches_openssl() {
        let (key, iv) = derive_key_iv(b"shortpw", &SALT);
        assert!(hex(&key).starts_with("323733ec") && hex(&key).ends_with("f8539e"));
        assert_eq!(hex(&iv), "1511ba3a3fd6f5769b366e076a3872a0");
        let pass: Vec<u8> = (0..32).collect();
        let (key, iv) = derive_key_iv(&pass, &SALT);
        assert_eq!(hex(&key), "bd10b84d106cdf422e83fbde1a7c9ebf8f0ed34002f66a7128ea87d4ee91b744");
        assert_eq!(hex(&iv), "49530965847d18784efabbbb84dcdcca");
    }

    #[test]
    fn encrypt_decrypt_round_trip() {
        let pt = b"1234567890123456:the rest of a plaintext message";
        let ct = encrypt(pt, b"pw", &SALT);
        assert!(ct.starts_with(SALTED_PREFIX));
        assert_eq!(decrypt(&ct, b"pw").unwrap(), pt);
        assert!(decrypt(&ct, b"other").is_err(), "wrong key: bad padding or bad plaintext");
        assert!(matches!(decrypt("U2FsdGVkX1", b"pw"), Err(DecodeError::BadCiphertext(_))));
        let not_salted = b64::encode(&[0u8; 48]);
        assert_eq!(decrypt(&not_salted, b"pw"), Err(DecodeError::BadCiphertext("no Salted__ header")));
    }

    #[test]
    fn hmac_compares_strings() {
        let mac = MacKey::new(b"k").sign("abc");
        assert_eq!(mac.len(), HMAC_B64_LEN);
        assert!(MacKey::new(b"k").verify("abc", &mac).is_ok());
        assert_eq!(MacKey::new(b"k2").verify("abc", &mac), Err(DecodeError::BadHmac));
        assert_eq!(MacKey::new(b"k").verify("abc", &mac[..42]), Err(DecodeError::BadHmac));
        let mut longer = mac.clone();
        longer.push('A');
        assert_eq!(MacKey::new(b"k").verify("abc", &longer), Err(DecodeError::BadHmac));
    }
}
