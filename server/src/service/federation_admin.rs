//! `hushd admin federation list|reset`: the operator's view of the outbound queue.

use crate::store::{Millis, Store, StoreResult};

/// One line per destination: `NAME<TAB>backlog=N<TAB>retries=N<TAB>next_attempt_ms=T<TAB>inflight=TXN`.
pub async fn list(store: &Store) -> StoreResult<String> {
    let mut out = String::new();
    for d in store.federation_overview().await? {
        out.push_str(&format!(
            "{}\tbacklog={}\tretries={}\tnext_attempt_ms={}\tinflight={}\n",
            d.destination,
            d.backlog,
            d.retry_count,
            d.next_attempt_ts,
            d.inflight_txn.as_deref().unwrap_or("-"),
        ));
    }
    Ok(out)
}

/// Clears the backoff of `destination`; `false` if no such destination is known. A running
/// server notices within a few seconds.
pub async fn reset(store: &Store, destination: &str, now: Millis) -> StoreResult<bool> {
    store.federation_reset_destination(destination, now).await
}
