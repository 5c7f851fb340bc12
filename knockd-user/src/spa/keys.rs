//! A door's two secrets: the Rijndael passphrase and the HMAC-SHA256 key,
//! from `fwknop --key-gen` output or from private files.

use std::{fmt, io::Read, path::Path};

use super::{b64, crypto::MacKey, error::KeyError};
use crate::config::file_safety::open_private;

/// fwknop's `RIJNDAEL_MAX_KEYSIZE`: the passphrase is used as is, never padded.
pub const MAX_KEY_LEN: usize = 32;
/// The fwknop client's `MAX_KEY_LEN`; fwknopd allows 136, the client 128.
pub const MAX_HMAC_KEY_LEN: usize = 128;

/// The keys of one door. `Debug` never shows them.
#[derive(Clone)]
pub struct SpaKeys {
    enc: Vec<u8>,
    hmac: Vec<u8>,
    /// `hmac`, keyed once for the receive path.
    mac: MacKey,
}

impl PartialEq for SpaKeys {
    fn eq(&self, other: &Self) -> bool {
        // `mac` follows from `hmac`.
        self.enc == other.enc && self.hmac == other.hmac
    }
}

impl Eq for SpaKeys {}

impl SpaKeys {
    /// Raw key bytes, checked against fwknop's length rules.
    pub fn new(enc: Vec<u8>, hmac: Vec<u8>) -> Result<Self, KeyError> {
        check_len("encryption key", enc.len(), MAX_KEY_LEN)?;
        check_len("HMAC key", hmac.len(), MAX_HMAC_KEY_LEN)?;
        if enc == hmac {
            return Err(KeyError::SameKeys);
        }
        let mac = MacKey::new(&hmac);
        Ok(Self { enc, hmac, mac })
    }

    /// `KEY_BASE64` and `HMAC_KEY_BASE64` as `fwknop --key-gen` prints them,
    /// with or without `=` padding.
    pub fn from_base64(key_b64: &str, hmac_b64: &str) -> Result<Self, KeyError> {
        let enc = decode_key("KEY_BASE64", key_b64)?;
        let hmac = decode_key("HMAC_KEY_BASE64", hmac_b64)?;
        Self::new(enc, hmac)
    }

    /// Each file holds one base64 key (surrounding whitespace ignored) and is
    /// opened with the checks one-time files get: no symlink, not writable by
    /// others, owned by root or us. Readable by others is refused too, since
    /// whoever reads it can open the door.
    pub fn from_files(key_file: &Path, hmac_key_file: &Path) -> Result<Self, KeyError> {
        let enc = read_key_file("KEY_BASE64", key_file)?;
        let hmac = read_key_file("HMAC_KEY_BASE64", hmac_key_file)?;
        Self::new(enc, hmac)
    }

    pub fn enc(&self) -> &[u8] {
        &self.enc
    }

    pub fn hmac(&self) -> &[u8] {
        &self.hmac
    }

    pub(super) fn mac(&self) -> &MacKey {
        &self.mac
    }
}

impl fmt::Debug for SpaKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpaKeys {{ enc: {} bytes, hmac: {} bytes }}", self.enc.len(), self.hmac.len())
    }
}

fn check_len(which: &'static str, len: usize, max: usize) -> Result<(), KeyError> {
    if (1..=max).contains(&len) {
        Ok(())
    } else {
        Err(KeyError::Length { which, len, min: 1, max })
    }
}

/// Strict here, unlike packet fields: a typo in a key should say so.
fn decode_key(which: &'static str, text: &str) -> Result<Vec<u8>, KeyError> {
    use base64::Engine;
    let text = text.trim().trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(text)
        .map_err(|source| KeyError::Base64 { which, source })
}

fn read_key_file(which: &'static str, path: &Path) -> Result<Vec<u8>, KeyError> {
    let file_err = |source| KeyError::File { path: path.to_path_buf(), source };
    let (mut file, readable_by_others) = open_private(path, false).map_err(file_err)?;
    if let Some(why) = readable_by_others {
        return Err(file_err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, why)));
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(file_err)?;
    decode_key(which, &text)
}

/// The b64 form fwknop's `--key-base64-*` options take.
pub fn to_base64(key: &[u8]) -> String {
    b64::encode(key)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const HMAC: &str =
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==";

    #[test]
    fn key_gen_output_parses_padded_or_not() {
        let k = SpaKeys::from_base64(KEY, HMAC).unwrap();
        assert_eq!(k.enc(), (0u8..32).collect::<Vec<_>>());
        assert_eq!(k.hmac(), (0u8..64).collect::<Vec<_>>());
        let bare = SpaKeys::from_base64(KEY.trim_end_matches('='), HMAC.trim_end_matches('=')).unwrap();
        assert_eq!(bare, k);
        assert_eq!(format!("{k:?}"), "SpaKeys { enc: 32 bytes, hmac: 64 bytes }");
    }

    #[test]
    fn lengths_and_junk_are_refused() {
        let too_long = to_base64(&[7u8; 33]);
        assert!(matches!(SpaKeys::from_base64(&too_long, HMAC), Err(KeyError::Length { len: 33, .. })));
        assert!(matches!(SpaKeys::from_base64("", HMAC), Err(KeyError::Length { len: 0, .. })));
        let big_hmac = to_base64(&[7u8; 129]);
        assert!(matches!(SpaKeys::from_base64(KEY, &big_hmac), Err(KeyError::Length { len: 129, .. })));
        assert!(matches!(SpaKeys::from_base64("not*base64", HMAC), Err(KeyError::Base64 { .. })));
        assert!(matches!(SpaKeys::from_base64(KEY, KEY), Err(KeyError::SameKeys)));
        assert!(SpaKeys::new(b"x".to_vec(), vec![1; 128]).is_ok(), "1-byte passphrase is legal");
    }

    #[test]
    fn key_files_are_private() {
        let dir = std::env::temp_dir().join(format!("xknock-spa-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (k, h) = (dir.join("key"), dir.join("hmac"));
        std::fs::write(&k, format!("{KEY}\n")).unwrap();
        std::fs::write(&h, HMAC).unwrap();
        for f in [&k, &h] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert_eq!(SpaKeys::from_files(&k, &h).unwrap(), SpaKeys::from_base64(KEY, HMAC).unwrap());
        std::fs::set_permissions(&h, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SpaKeys::from_files(&k, &h).unwrap_err().to_string();
        assert!(err.contains("other users can read it"), "{err}");
        std::fs::set_permissions(&h, std::fs::Permissions::from_mode(0o622)).unwrap();
        assert!(SpaKeys::from_files(&k, &h).unwrap_err().to_string().contains("can write"));
        let link = dir.join("link");
        std::os::unix::fs::symlink(&k, &link).unwrap();
        assert!(SpaKeys::from_files(&link, &k).unwrap_err().to_string().contains("symbolic link"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
