//! The encoded message inside the encryption: `:`-separated fields ending in
//! a SHA-256 digest of the rest (`lib/fko_encode.c`, `lib/fko_decode.c`).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{
    b64,
    error::{DecodeError, EncodeError},
    message::{access_message, parse_access_message, valid_user, MessageType, SpaMessage},
};

/// `FKO_RAND_VAL_SIZE`.
pub const RAND_LEN: usize = 16;
/// A b64 SHA-256 without `=`; fwknop picks the digest by this length, and
/// xknock supports only SHA-256.
const DIGEST_B64_LEN: usize = 43;
/// Longest plaintext that keeps the wire packet under fwknop's 400-char
/// GnuPG threshold (`MIN_GNUPG_MSG_SIZE`).
pub const MAX_PLAINTEXT_LEN: usize = 255;
/// fwknop's `fko_limits.h` field bounds, in encoded chars.
const MAX_USER_B64: usize = 64;
const MAX_TIMESTAMP: usize = 12;
const MAX_VERSION: usize = 8;
const MAX_TYPE: usize = 2;
const MAX_MESSAGE_B64: usize = 256;
/// `parse_client_timeout`'s upper bound (2 << 15).
const MAX_CLIENT_TIMEOUT: u32 = 2 << 15;

/// `SpaMessage` → `fields:digest`. The type follows the timeout, as fwknop's
/// encoder switches 1 to 3 when one is set.
pub fn encode(msg: &SpaMessage) -> Result<String, EncodeError> {
    if msg.rand.len() != RAND_LEN || !msg.rand.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EncodeError::Rand);
    }
    if !valid_user(&msg.user) {
        return Err(EncodeError::User(msg.user.clone()));
    }
    if msg.access.is_empty() {
        return Err(EncodeError::NoAccess);
    }
    if msg.timestamp > i32::MAX as u32 {
        return Err(EncodeError::Timestamp(msg.timestamp));
    }
    let timeout = msg.client_timeout.filter(|&t| t > 0);
    if timeout.is_some_and(|t| t > MAX_CLIENT_TIMEOUT) {
        return Err(EncodeError::Timeout(timeout.unwrap_or_default()));
    }
    let kind = if timeout.is_some() { MessageType::ClientTimeoutAccess } else { MessageType::Access };
    let mut text = format!(
        "{}:{}:{}:{}:{}:{}",
        msg.rand,
        b64::encode(msg.user.as_bytes()),
        msg.timestamp,
        msg.version,
        kind.code(),
        b64::encode(access_message(msg.allow_ip, &msg.access).as_bytes())
    );
    if let Some(t) = timeout {
        text.push_str(&format!(":{t}"));
    }
    let digest = digest_b64(&text);
    text.push(':');
    text.push_str(&digest);
    if text.len() > MAX_PLAINTEXT_LEN {
        return Err(EncodeError::TooLong(text.len()));
    }
    Ok(text)
}

/// `fields:digest` → `SpaMessage`, digest checked before any field is read.
pub fn decode(text: &[u8]) -> Result<SpaMessage, DecodeError> {
    if !text.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(DecodeError::BadPlaintext("non-printable byte"));
    }
    let text = std::str::from_utf8(text).map_err(|_| DecodeError::BadPlaintext("not ASCII"))?;
    if text.bytes().filter(|&b| b == b':').count() < 6 {
        return Err(DecodeError::BadPlaintext("too few fields"));
    }
    let (body, digest) = text.rsplit_once(':').ok_or(DecodeError::BadPlaintext("no digest"))?;
    if digest.len() != DIGEST_B64_LEN {
        return Err(DecodeError::BadField { field: "digest", why: "only SHA-256 digests are supported" });
    }
    if !bool::from(digest_b64(body).as_bytes().ct_eq(digest.as_bytes())) {
        return Err(DecodeError::BadDigest);
    }
    parse_fields(body)
}

fn parse_fields(body: &str) -> Result<SpaMessage, DecodeError> {
    let fields: Vec<&str> = body.split(':').collect();
    let [rand, user, ts, version, kind, rest @ ..] = fields.as_slice() else {
        return Err(DecodeError::BadPlaintext("too few fields"));
    };
    let kind = parse_kind(kind)?;
    // After the type: the message, then an optional server_auth (ignored,
    // as fwknopd ignores it for Rijndael), then the timeout for type 3.
    let (message, timeout) = match (kind, rest) {
        (MessageType::Access, [m] | [m, _]) => (*m, None),
        (MessageType::ClientTimeoutAccess, [m, t] | [m, _, t]) => (*m, Some(parse_timeout(t)?)),
        (MessageType::Access | MessageType::ClientTimeoutAccess, _) => {
            return Err(DecodeError::BadPlaintext("wrong number of fields for the type"))
        }
        (other, _) => return Err(DecodeError::Unsupported(other)),
    };
    let (allow_ip, access) = parse_access_message(&b64_field("message", message, MAX_MESSAGE_B64)?)?;
    Ok(SpaMessage {
        rand: parse_rand(rand)?,
        user: parse_user(user)?,
        timestamp: parse_timestamp(ts)?,
        version: parse_version(version)?,
        kind,
        allow_ip,
        access,
        client_timeout: timeout,
    })
}

fn bad(field: &'static str, why: &'static str) -> DecodeError {
    DecodeError::BadField { field, why }
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// fwknop keeps the first 16 chars of a longer field.
fn parse_rand(s: &str) -> Result<String, DecodeError> {
    match s.get(..RAND_LEN) {
        Some(r) if digits(r) => Ok(r.to_string()),
        _ => Err(bad("random value", "needs 16 digits")),
    }
}

fn b64_field(field: &'static str, s: &str, max: usize) -> Result<String, DecodeError> {
    if s.is_empty() || s.len() > max {
        return Err(bad(field, "empty or too long"));
    }
    let bytes = b64::decode(s).map_err(|_| bad(field, "not base64"))?;
    String::from_utf8(bytes).map_err(|_| bad(field, "not text"))
}

fn parse_user(s: &str) -> Result<String, DecodeError> {
    let user = b64_field("user", s, MAX_USER_B64)?;
    if !valid_user(&user) {
        return Err(bad("user", "forbidden characters or length"));
    }
    Ok(user)
}

fn parse_timestamp(s: &str) -> Result<u32, DecodeError> {
    if !digits(s) || s.len() > MAX_TIMESTAMP {
        return Err(bad("timestamp", "not a number"));
    }
    s.parse::<i32>().map(|t| t as u32).map_err(|_| bad("timestamp", "beyond 2^31-1"))
}

fn parse_version(s: &str) -> Result<String, DecodeError> {
    if s.is_empty() || s.len() > MAX_VERSION {
        return Err(bad("version", "empty or longer than 8"));
    }
    Ok(s.to_string())
}

fn parse_kind(s: &str) -> Result<MessageType, DecodeError> {
    if !digits(s) || s.len() > MAX_TYPE {
        return Err(bad("message type", "not a number"));
    }
    s.parse().ok().and_then(MessageType::from_code).ok_or(bad("message type", "unknown"))
}

fn parse_timeout(s: &str) -> Result<u32, DecodeError> {
    if !digits(s) || s.len() > MAX_MESSAGE_B64 {
        return Err(bad("client timeout", "not a number"));
    }
    s.parse().ok().filter(|&t| t <= MAX_CLIENT_TIMEOUT).ok_or(bad("client timeout", "too large"))
}

/// fwknop's `sha256_base64`.
pub fn digest_b64(text: &str) -> String {
    b64::encode(&Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The spec's first test vector, as a message; the codec tests use it too.
    pub(in crate::spa) fn vector1() -> SpaMessage {
        SpaMessage {
            rand: "1234567890123456".into(),
            user: "alice".into(),
            timestamp: 1_700_000_000,
            version: "3.0.0".into(),
            kind: MessageType::Access,
            allow_ip: "127.0.0.1".parse().unwrap(),
            access: vec!["tcp/22".parse().unwrap()],
            client_timeout: None,
        }
    }

    const V1: &str = "1234567890123456:YWxpY2U:1700000000:3.0.0:1:MTI3LjAuMC4xLHRjcC8yMg:\
                      5ILqwcv0Y+gVFByb09+iut9uztU7yjwEdk6WppPezqM";

    #[test]
    fn spec_vectors_encode_and_decode() {
        assert_eq!(encode(&vector1()).unwrap(), V1);
        assert_eq!(decode(V1.as_bytes()).unwrap(), vector1());
        let v2 = SpaMessage { client_timeout: Some(45), ..vector1() };
        let text = encode(&v2).unwrap();
        assert_eq!(
            text,
            "1234567890123456:YWxpY2U:1700000000:3.0.0:3:MTI3LjAuMC4xLHRjcC8yMg:45:\
             nQ2GacYba8r6bajhavelKdCVDffGRPCKR6XvEjNz5l4"
        );
        assert_eq!(
            decode(text.as_bytes()).unwrap(),
            SpaMessage { kind: MessageType::ClientTimeoutAccess, ..v2 }
        );
    }

    #[test]
    fn a_changed_field_breaks_the_digest() {
        let tampered = V1.replace(":1700000000:", ":1700000001:");
        assert_eq!(decode(tampered.as_bytes()), Err(DecodeError::BadDigest));
    }

    /// Re-digests `body`, so only the field rules can refuse it.
    fn with_digest(body: &str) -> Vec<u8> {
        format!("{body}:{}", digest_b64(body)).into_bytes()
    }

    #[test]
    fn field_rules() {
        let ok = "1234567890123456:YWxpY2U:1700000000:3.0.0:1:MTI3LjAuMC4xLHRjcC8yMg";
        assert!(decode(&with_digest(ok)).is_ok());
        assert!(decode(&with_digest(&format!("{ok}:c2VydmVyYXV0aA"))).is_ok(), "server_auth ignored");
        let cases = [
            ("123456789012345x:YWxpY2U:1700000000:3.0.0:1:MTI3LjAuMC4xLHRjcC8yMg", "rand"),
            ("1234567890123456:YTpi:1700000000:3.0.0:1:MTI3LjAuMC4xLHRjcC8yMg", "user a:b"),
            ("1234567890123456:YWxpY2U:2147483648:3.0.0:1:MTI3LjAuMC4xLHRjcC8yMg", "ts > 2^31-1"),
            ("1234567890123456:YWxpY2U:1700000000:3.0.0.0.0:1:MTI3LjAuMC4xLHRjcC8yMg", "version"),
            ("1234567890123456:YWxpY2U:1700000000:3.0.0:7:MTI3LjAuMC4xLHRjcC8yMg", "type 7"),
            ("1234567890123456:YWxpY2U:1700000000:3.0.0:3:MTI3LjAuMC4xLHRjcC8yMg", "type 3, no timeout"),
            ("1234567890123456:YWxpY2U:1700000000:3.0.0:3:MTI3LjAuMC4xLHRjcC8yMg:4x", "timeout"),
            ("1234567890123456:YWxpY2U:1700000000:3.0.0:1:MTI3LjAuMC4x", "no access"),
            ("1234567890123456:YWxpY2U:1700000000:3.0.0:1:a:b:c", "too many fields"),
        ];
        for (body, what) in cases {
            assert!(
                matches!(
                    decode(&with_digest(body)),
                    Err(DecodeError::BadField { .. } | DecodeError::BadPlaintext(_))
                ),
                "{what}"
            );
        }
        let nat = "1234567890123456:YWxpY2U:1700000000:3.0.0:2:MTI3LjAuMC4xLHRjcC8yMg:MTAuMC4wLjIsMjI";
        assert_eq!(decode(&with_digest(nat)), Err(DecodeError::Unsupported(MessageType::NatAccess)));
        let cmd = "1234567890123456:YWxpY2U:1700000000:3.0.0:0:MTI3LjAuMC4xLGxz";
        assert_eq!(decode(&with_digest(cmd)), Err(DecodeError::Unsupported(MessageType::Command)));
        assert!(matches!(decode(b"12:34\x01:5:6:7:8:9"), Err(DecodeError::BadPlaintext(_))));
    }

    #[test]
    fn encoder_refuses_what_fwknop_would() {
        let too_many = (1..=40).map(|p| format!("tcp/{p}").parse().unwrap()).collect();
        assert!(matches!(
            encode(&SpaMessage { access: too_many, ..vector1() }),
            Err(EncodeError::TooLong(_))
        ));
        assert!(matches!(encode(&SpaMessage { user: "a:b".into(), ..vector1() }), Err(EncodeError::User(_))));
        assert!(matches!(encode(&SpaMessage { access: vec![], ..vector1() }), Err(EncodeError::NoAccess)));
        assert!(matches!(encode(&SpaMessage { rand: "12".into(), ..vector1() }), Err(EncodeError::Rand)));
    }
}
