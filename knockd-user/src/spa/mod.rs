//! Single-packet authorization, wire-compatible with fwknop 2.6 in its
//! Rijndael + HMAC-SHA256 mode (what `fwknop --use-hmac` sends).
//!
//! A packet is `b64(Salted__ ‖ salt ‖ AES-256-CBC(plaintext))` without its
//! first 10 chars, followed by a 43-char b64 HMAC-SHA256 of the full b64
//! ciphertext. The plaintext is `rand:b64(user):time:version:type:b64(access)
//! [:timeout]:digest`. The facts come from fwknop 2.6.10's `lib/fko_*.c`,
//! `lib/cipher_funcs.c` and `server/incoming_spa.c`, checked against
//! Debian's fwknop and fwknopd (see the fixtures and tests/tests/spa_fwknopd.rs).
//!
//! The pieces, for the daemon:
//! - [`SpaKeys`]: a door's keys, from `KEY_BASE64`/`HMAC_KEY_BASE64` or files.
//! - [`decode`]: HMAC first (constant time), then decryption and fields;
//!   [`encode`] builds packets (our client, tests).
//! - [`SpaPolicy::check`]: age, source, users and ports, at an injected time.
//! - [`ReplayCache`]: persistent digests of authentic packets; fail closed.
//! - [`receive`]: all of it for one datagram and one door.
//!
//! Decisions where fwknop leaves room:
//! - Only SHA-256 inner digests and the access message types (1, and 3 with
//!   a client timeout). Commands (0) and NAT types (2, 4-6) are refused as
//!   [`DecodeError::Unsupported`]; `server_auth` is ignored, as fwknopd does.
//! - `require_source_address` is stricter than fwknopd's: the allow-IP must
//!   equal the source. Off, `0.0.0.0` means the source and any other
//!   allow-IP is opened, as fwknopd does.
//! - The allow-IP may be IPv6 (fwknopd refuses that); fwknop's own client
//!   over IPv6 can only send `0.0.0.0` (`-s`).
//! - A packet longer than 399 chars is refused: fwknop treats it as GnuPG.
//! - Key files must not be readable by other users.

mod b64;
pub mod codec;
mod crypto;
pub mod error;
pub mod keys;
pub mod message;
pub mod plaintext;
pub mod policy;
pub mod receive;
pub mod replay;
#[cfg(test)]
pub(crate) mod test_door;

pub use codec::{decode, encode, random_digits, random_salt, replay_digest, seal, DEFAULT_PORT};
pub use error::{DecodeError, EncodeError, KeyError, Refusal, ReplayError};
pub use keys::SpaKeys;
pub use message::{AccessSpec, MessageType, SpaMessage, SpaProto, PROTOCOL_VERSION};
pub use policy::{Grant, SpaPolicy, DEFAULT_MAX_AGE};
pub use receive::{receive, Rejected};
pub use replay::ReplayCache;
