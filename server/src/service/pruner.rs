//! The retention pruner: deletes expired mailbox messages, idempotency records and UIA sessions
//! so that no table grows without bound.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Limits;
use crate::service::now_ms;
use crate::store::Store;

/// How often the pruner runs.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(300);
/// Unfinished user-interactive auth sessions expire after this long.
pub const UIA_TTL_MS: i64 = 30 * 60 * 1000;

/// The running pruner task.
#[derive(Debug)]
pub struct PrunerTask {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl PrunerTask {
    /// Starts pruning now and then every [`PRUNE_INTERVAL`].
    pub fn start(store: Store, limits: &Limits) -> PrunerTask {
        let message_ttl_ms = secs_to_ms(limits.message_ttl_secs);
        let txn_ttl_ms = secs_to_ms(limits.txn_ttl_secs);
        let (stop, mut stop_rx) = watch::channel(false);
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(PRUNE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = crate::service::stopped(&mut stop_rx) => break,
                }
                let now = now_ms();
                match store
                    .prune(now - message_ttl_ms, now - txn_ttl_ms, now - UIA_TTL_MS)
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "pruned expired rows"),
                    Err(e) => tracing::warn!(error = %e, "pruning failed; will retry"),
                }
            }
        });
        PrunerTask { stop, handle }
    }

    /// Stops the pruner (an in-progress prune finishes first).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.handle.await {
            tracing::error!(error = %e, "pruner task failed");
        }
    }
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}
