//! The receive-side tests' door: its keys, its policy (22/tcp for 30 s),
//! and an access message to it.

use std::time::Duration;

use super::{MessageType, SpaKeys, SpaMessage, SpaPolicy};
use crate::config::model::{Proto, Step};

pub fn keys() -> SpaKeys {
    SpaKeys::new(b"passphrase".to_vec(), b"hmac key".to_vec()).unwrap()
}

pub fn ssh_policy() -> SpaPolicy {
    SpaPolicy {
        max_age: Duration::from_secs(120),
        require_source_address: true,
        users: None,
        ports: vec![Step { port: 22, proto: Proto::Tcp }],
        duration: Duration::from_secs(30),
    }
}

/// alice asks for tcp/22 for `allow_ip` at Unix time `at`.
pub fn ssh_access(allow_ip: &str, at: u64) -> SpaMessage {
    SpaMessage {
        rand: "0000000000000001".into(),
        user: "alice".into(),
        timestamp: u32::try_from(at).unwrap(),
        version: "3.0.0".into(),
        kind: MessageType::Access,
        allow_ip: allow_ip.parse().unwrap(),
        access: vec!["tcp/22".parse().unwrap()],
        client_timeout: None,
    }
}
