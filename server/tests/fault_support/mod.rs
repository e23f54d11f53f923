//! Support for the fault tests (`fault_*.rs`): a TCP fault proxy, client load that keeps
//! sending and syncing through outages, and a private PostgreSQL instance that may be stopped.
//! Each test binary declares `mod fed_common; mod fault_support;`.

#![allow(dead_code)]

pub mod load;
pub mod pg;
pub mod proxy;

/// Reads a duration in seconds from the environment variable `name`, else `default`.
pub fn env_secs(name: &str, default: u64) -> std::time::Duration {
    let secs = std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default);
    std::time::Duration::from_secs(secs)
}
