//! Domain logic and background workers behind the HTTP handlers.

pub mod federation_admin;
pub mod federation_hub;
pub mod federation_keys;
pub mod federation_policy;
pub mod identifiers;
pub mod keys;
pub mod mailbox;
pub mod notify;
pub mod outbound;
pub mod passwords;
pub mod pruner;
pub mod remote_keys;
pub mod uia;

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Resolves once a stop flag becomes `true` (or its sender is gone).
pub async fn stopped(flag: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}
