//! Retention: the TTLs that keep every table bounded.

use super::{with_tx, Millis, Store, StoreResult};

/// Cut-off times for [`Store::prune_with`]: rows older than these are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneCutoffs {
    /// Undelivered to-device messages, outbound federation EDUs, device-list stream entries,
    /// device-list interests and idle federation destinations.
    pub mailbox_before: Millis,
    /// Idempotency (txnId) records.
    pub txn_before: Millis,
    /// User-interactive auth sessions.
    pub uia_before: Millis,
    /// Memory of claimed one-time keys.
    pub claimed_keys_before: Millis,
}

impl Store {
    // ---- retention ----------------------------------------------------------------------------------
    /// Deletes undelivered messages older than `mailbox_before`, idempotency records older than
    /// `txn_before`, and expired UIA sessions. Returns the number of rows deleted.
    ///
    /// Also applies `mailbox_before` to the outbound federation queue, the device-list stream and
    /// interests and idle destinations, and `txn_before` to the memory of claimed one-time keys
    /// (see [`Store::prune_with`]).
    pub async fn prune(
        &self,
        mailbox_before: Millis,
        txn_before: Millis,
        uia_before: Millis,
    ) -> StoreResult<u64> {
        self.prune_with(PruneCutoffs {
            mailbox_before,
            txn_before,
            uia_before,
            claimed_keys_before: txn_before,
        })
        .await
    }

    /// Deletes every row older than its cut-off, in one transaction. Returns the rows deleted.
    pub async fn prune_with(&self, cut: PruneCutoffs) -> StoreResult<u64> {
        with_tx!(self, |tx, pg| {
            let mut deleted = 0;
            for (sql, before) in [
                (
                    "DELETE FROM to_device_inbox WHERE created_ts < $1",
                    cut.mailbox_before,
                ),
                (
                    "DELETE FROM federation_outbound WHERE created_ts < $1",
                    cut.mailbox_before,
                ),
                (
                    "DELETE FROM device_list_interest WHERE updated_ts < $1",
                    cut.mailbox_before,
                ),
                ("DELETE FROM txn_ids WHERE created_ts < $1", cut.txn_before),
                (
                    "DELETE FROM uia_sessions WHERE created_ts < $1",
                    cut.uia_before,
                ),
                (
                    "DELETE FROM claimed_one_time_keys WHERE claimed_ts < $1",
                    cut.claimed_keys_before,
                ),
                (
                    "DELETE FROM federation_destinations WHERE updated_ts < $1 \
                     AND NOT EXISTS (SELECT 1 FROM federation_outbound o \
                     WHERE o.destination = federation_destinations.destination)",
                    cut.mailbox_before,
                ),
            ] {
                deleted += sqlx::query(sql)
                    .bind(before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            // Device-list stream: remember the horizon so older `since` values get a full answer.
            let horizon: Option<i64> =
                sqlx::query_scalar("SELECT MAX(pos) FROM device_list_stream WHERE ts < $1")
                    .bind(cut.mailbox_before)
                    .fetch_one(&mut *tx)
                    .await?;
            if let Some(horizon) = horizon {
                deleted += sqlx::query("DELETE FROM device_list_stream WHERE pos <= $1")
                    .bind(horizon)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query(
                    "UPDATE stream_counters SET value = $1 \
                     WHERE name = 'device_list_pruned' AND value < $1",
                )
                .bind(horizon)
                .execute(&mut *tx)
                .await?;
            }
            deleted
        })
    }
}
