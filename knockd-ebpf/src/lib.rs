#![no_std]
//! Present so knockd-user can name this crate as a build-dependency; the XDP
//! program itself is the `xknock-xdp` binary, built for the BPF target.
