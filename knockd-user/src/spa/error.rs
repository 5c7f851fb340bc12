//! Why a packet, a key or the replay cache was refused. Each variant has a
//! short stable `reason()` for log lines and per-reason counters.

use std::{io, path::PathBuf, time::Duration};

use thiserror::Error;

use super::message::MessageType;

/// A datagram that is not an authentic, well-formed SPA packet.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("packet length {0} is outside fwknop's bounds")]
    BadLength(usize),
    #[error("packet holds characters outside base64")]
    NotBase64,
    /// Also what a packet sent without an HMAC gets: fwknop's format has no
    /// marker for one, so its last 43 chars are taken as the HMAC, which fails
    /// before anything is decrypted.
    #[error("HMAC does not match")]
    BadHmac,
    #[error("ciphertext is malformed: {0}")]
    BadCiphertext(&'static str),
    #[error("decryption failed (bad padding)")]
    Decrypt,
    #[error("plaintext is malformed: {0}")]
    BadPlaintext(&'static str),
    #[error("inner digest does not match")]
    BadDigest,
    #[error("field {field} is invalid: {why}")]
    BadField { field: &'static str, why: &'static str },
    /// Commands and NAT requests: xknockd runs no commands and forwards nothing.
    #[error("message type {0:?} is not supported")]
    Unsupported(MessageType),
}

impl DecodeError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadLength(_) => "bad length",
            Self::NotBase64 => "not base64",
            Self::BadHmac => "bad HMAC",
            Self::BadCiphertext(_) => "bad ciphertext",
            Self::Decrypt => "decrypt error",
            Self::BadPlaintext(_) => "bad plaintext",
            Self::BadDigest => "bad digest",
            Self::BadField { .. } => "bad field",
            Self::Unsupported(_) => "unsupported message type",
        }
    }
}

/// An authentic packet that a door's policy does not grant.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Refusal {
    #[error("replayed packet")]
    Replay,
    #[error("packet is {0:?} old, more than max_age")]
    TooOld(Duration),
    #[error("packet is {0:?} in the future, more than max_age")]
    FromFuture(Duration),
    #[error("allow-IP {allow} is not the source {from}")]
    SourceMismatch { allow: std::net::IpAddr, from: std::net::IpAddr },
    #[error("user `{0}` is not allowed")]
    User(String),
    #[error("none of the requested ports is protected by the door")]
    AccessNotAllowed,
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Replay => "replay",
            Self::TooOld(_) => "too old",
            Self::FromFuture(_) => "from the future",
            Self::SourceMismatch { .. } => "source mismatch",
            Self::User(_) => "user not allowed",
            Self::AccessNotAllowed => "access not allowed",
        }
    }
}

/// A key that fwknop would not accept, or a key file we will not read.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("{which} is not base64: {source}")]
    Base64 { which: &'static str, source: base64::DecodeError },
    #[error("{which} is {len} bytes; it must be {min} to {max}")]
    Length { which: &'static str, len: usize, min: usize, max: usize },
    #[error("the HMAC key equals the encryption key; fwknop refuses that")]
    SameKeys,
    #[error("{}: {source}", path.display())]
    File { path: PathBuf, source: io::Error },
}

/// The replay cache could not be read or written. A packet whose digest could
/// not be recorded must be refused.
#[derive(Debug, Error)]
pub enum ReplayError {
    #[error("replay cache {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("replay cache {}: line {line} is malformed", path.display())]
    Corrupt { path: PathBuf, line: usize },
}

/// A packet our encoder will not build, because fwknop would refuse it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    #[error("the random value must be 16 digits")]
    Rand,
    #[error(
        "user `{0}` is not a valid fwknop user name (1-63 chars, none of \" / \\ [ ] : ; | = , + * ? < >)"
    )]
    User(String),
    #[error("no proto/port to request")]
    NoAccess,
    #[error("timestamp {0} is beyond 2^31-1")]
    Timestamp(u32),
    #[error("client timeout {0} is beyond 65536")]
    Timeout(u32),
    #[error("the message is {0} bytes; fwknop's limit keeps it at 255 (fewer ports)")]
    TooLong(usize),
}
