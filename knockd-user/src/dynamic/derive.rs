//! The published derivation (README, "Dynamic sequences"). Any change
//! here breaks every other client: the test vectors pin it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A decoded shared secret. Its bytes never reach a log or `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Secret {
    /// `text` with whitespace removed, decoded as RFC 4648 base32.
    /// Lower case and missing `=` padding are accepted, as authenticator
    /// apps write secrets both ways.
    pub fn from_base32(text: &str) -> Result<Self, String> {
        let mut clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        clean.make_ascii_uppercase();
        let unpadded = clean.trim_end_matches('=');
        data_encoding::BASE32_NOPAD.decode(unpadded.as_bytes()).map(Secret).map_err(|e| e.to_string())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `T` = floor(unix_seconds / period).
pub fn period_index(unix_seconds: u64, period: u64) -> u64 {
    unix_seconds / period.max(1)
}

/// The `steps` distinct ports of period `t` in `lo..=hi`: for k = 0, 1,
/// ... block_k = HMAC-SHA256(key, t as u64 BE || k as u8); each block is
/// eight BE u32 words; each word gives lo + w mod (hi - lo + 1); repeats
/// are skipped. `None` only if 256 blocks cannot fill the sequence (the
/// config keeps `steps` within the range, so practically never).
pub fn derive(key: &Secret, t: u64, steps: usize, lo: u16, hi: u16) -> Option<Vec<u16>> {
    let span = u32::from(hi.checked_sub(lo)?) + 1;
    let mut ports: Vec<u16> = Vec::with_capacity(steps);
    for k in 0..=u8::MAX {
        if ports.len() == steps {
            break;
        }
        let block = block(key, t, k);
        for word in block.chunks_exact(4) {
            let w = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
            // span <= 65536 and lo + (w mod span) <= hi, so this fits.
            let port = (u32::from(lo) + w % span) as u16;
            if ports.len() < steps && !ports.contains(&port) {
                ports.push(port);
            }
        }
    }
    (ports.len() == steps).then_some(ports)
}

fn block(key: &Secret, t: u64, k: u8) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key.0).expect("HMAC takes keys of any length");
    mac.update(&t.to_be_bytes());
    mac.update(&[k]);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed vectors (tests/fixtures/dynamic/vectors.txt), which
    /// the independent Python check also reads.
    const VECTORS: &str = include_str!("../../../tests/fixtures/dynamic/vectors.txt");

    #[test]
    fn published_vectors() {
        let mut n = 0;
        for line in VECTORS.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let key = Secret::from_base32(f[0]).unwrap();
            let t: u64 = f[1].parse().unwrap();
            let steps: usize = f[2].parse().unwrap();
            let (lo, hi) = f[3].split_once('-').unwrap();
            let want: Vec<u16> = f[4].split(',').map(|p| p.parse().unwrap()).collect();
            let got = derive(&key, t, steps, lo.parse().unwrap(), hi.parse().unwrap()).unwrap();
            assert_eq!(got, want, "vector {line}");
            n += 1;
        }
        assert!(n >= 5, "only {n} vectors");
    }

    #[test]
    fn ports_are_distinct_and_in_range() {
        let key = Secret::from_base32("JBSWY3DPEHPK3PXP").unwrap();
        for t in 0..200 {
            let p = derive(&key, t, 8, 1000, 1009).unwrap();
            let mut sorted = p.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 8);
            assert!(p.iter().all(|&x| (1000..=1009).contains(&x)));
        }
        assert_eq!(derive(&key, 1, 3, 5, 4), None, "an empty range");
        assert_eq!(derive(&key, 1, 3, 7, 8), None, "three ports do not fit in two");
    }

    #[test]
    fn base32_forms() {
        let a = Secret::from_base32("JBSWY3DPEHPK3PXP").unwrap();
        assert_eq!(Secret::from_base32(" jbsw y3dp\nehpk 3pxp\n").unwrap(), a);
        assert_eq!(Secret::from_base32("MZXW6===").unwrap(), Secret(b"foo".to_vec()));
        assert_eq!(Secret::from_base32("MZXW6").unwrap(), Secret(b"foo".to_vec()));
        assert!(Secret::from_base32("JBSWY3DPEHPK3PX1").is_err(), "1 is not base32");
        assert_eq!(format!("{a:?}"), "Secret(10 bytes)");
    }
}
