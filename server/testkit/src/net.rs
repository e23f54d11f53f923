//! Loopback addresses and ports.

use std::net::TcpListener;

/// A TCP port that is free on `ip` right now (the kernel picks it; a test binds it soon after).
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("no free port on {ip}: {e}"))
}
