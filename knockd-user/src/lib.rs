//! xknock: an XDP port-knocking daemon that speaks knockd.
//!
//! packet → XDP program (`knockd-ebpf`) → ring buffer → [`events`] →
//! [`tracker`] → [`commands`] (and, later, firewall gates).

pub mod addrs;
pub mod admin;
pub mod bpf;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod dynamic;
pub mod events;
pub mod gate;
pub mod journal;
pub mod knocklog;
pub mod metrics;
pub mod pidfile;
pub mod process;
pub mod spa;
pub mod status;
pub mod tracker;
