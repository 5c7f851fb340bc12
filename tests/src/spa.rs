//! The SPA keys every end-to-end SPA test uses, as `fwknop --key-gen`
//! prints them (KEY_BASE64, HMAC_KEY_BASE64).

pub const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
pub const HMAC: &str =
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==";
