//! Shared helpers for the end-to-end tests: privilege gating, network
//! namespaces torn down by a guard, hand-built frames, and the differential
//! fuzzer's reference model and frame generator.

pub mod daemon;
pub mod frames;
pub mod fuzz;
pub mod gate;
pub mod model;
pub mod netns;
pub mod rawsock;
pub mod spa;

/// Whether privileged tests may run. Without root they skip, loudly; but
/// `cargo xtask test` sets XKNOCK_REQUIRE_PRIV=1 as root, and then a missing
/// privilege is a failure, never a silent skip.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        if std::env::var_os("XKNOCK_REQUIRE_PRIV").is_some() {
            panic!("{test}: XKNOCK_REQUIRE_PRIV is set but we are not root");
        }
        eprintln!("SKIPPED {test}: needs root (CAP_BPF, CAP_NET_ADMIN)");
    }
    root
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes. The bounded
/// wait for a condition, used instead of fixed sleeps.
pub fn wait_until(timeout: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
