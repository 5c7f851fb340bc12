//! xknock: an XDP port-knocking daemon that speaks knockd.
//!
//! packet → XDP program (`knockd-ebpf`) → ring buffer → [`events`] →
//! tracker → actions.

pub mod addrs;
pub mod bpf;
pub mod config;
pub mod events;
