//! Transactions in flight to other servers, and the operator's view of the outbound queue.
//!
//! The outbound sender takes up to 100 queued EDUs of a destination, writes the exact transaction
//! (txnId, body, the queue IDs it carries) here BEFORE its first attempt, and retries that row
//! until the destination answers 200. Then one database transaction deletes the EDUs, the row,
//! and the destination's retry state. A restart therefore resumes with the same txnId and the
//! same body, which the receiver deduplicates.

use sqlx::Row;

use super::{with_pools, with_tx, with_writer, Millis, Store, StoreResult};

/// A transaction written before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InflightTxn {
    /// Destination server name.
    pub destination: String,
    /// Transaction ID, reused on every retry.
    pub txn_id: String,
    /// The exact JSON body sent.
    pub body: String,
    /// Queue IDs (`federation_outbound.id`) of the EDUs it carries.
    pub edu_ids: Vec<i64>,
}

/// One line of `hushd admin federation list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationOverview {
    /// Server name.
    pub destination: String,
    /// EDUs waiting for it (including those of the transaction in flight).
    pub backlog: i64,
    /// Consecutive failed attempts.
    pub retry_count: i64,
    /// Earliest next attempt (ms); 0 when not backing off.
    pub next_attempt_ts: Millis,
    /// Transaction in flight, if any.
    pub inflight_txn: Option<String>,
}

impl Store {
    /// The transaction in flight to `destination`, if any.
    pub async fn federation_inflight(&self, destination: &str) -> StoreResult<Option<InflightTxn>> {
        with_writer!(self, |w, pg| {
            let row = sqlx::query(
                "SELECT txn_id, body, edu_ids FROM federation_txn_inflight WHERE destination = $1",
            )
            .bind(destination)
            .fetch_optional(w)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let ids: String = row.try_get("edu_ids")?;
            Ok(Some(InflightTxn {
                destination: destination.to_owned(),
                txn_id: row.try_get("txn_id")?,
                body: row.try_get("body")?,
                edu_ids: serde_json::from_str(&ids).unwrap_or_default(),
            }))
        })
    }

    /// Records a transaction before its first attempt (replacing none: one per destination).
    pub async fn federation_save_inflight(
        &self,
        txn: &InflightTxn,
        now: Millis,
    ) -> StoreResult<()> {
        let ids = serde_json::to_string(&txn.edu_ids).unwrap_or_else(|_| "[]".to_owned());
        let count = i64::try_from(txn.edu_ids.len()).unwrap_or(i64::MAX);
        with_writer!(self, |w, pg| {
            sqlx::query(
                "INSERT INTO federation_txn_inflight \
                 (destination, txn_id, body, edu_ids, edu_count, created_ts) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&txn.destination)
            .bind(&txn.txn_id)
            .bind(&txn.body)
            .bind(&ids)
            .bind(count)
            .bind(now)
            .execute(w)
            .await?;
            Ok(())
        })
    }

    /// The destination accepted `txn`: deletes its EDUs and the in-flight row and clears the
    /// retry state, in one transaction.
    pub async fn federation_finish_txn(&self, txn: &InflightTxn, now: Millis) -> StoreResult<()> {
        with_tx!(self, |tx, pg| {
            super::federation::delete_outbound_ids!(tx, txn.edu_ids);
            sqlx::query("DELETE FROM federation_txn_inflight WHERE destination = $1")
                .bind(&txn.destination)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE federation_destinations SET retry_count = 0, next_attempt_ts = 0, \
                 last_txn_id = NULL, updated_ts = $2 WHERE destination = $1",
            )
            .bind(&txn.destination)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        })
    }

    /// Drops everything queued for `destination` (a server the policy now refuses). Returns
    /// the number of EDUs dropped.
    pub async fn federation_discard(&self, destination: &str) -> StoreResult<u64> {
        with_tx!(self, |tx, pg| {
            let dropped = sqlx::query("DELETE FROM federation_outbound WHERE destination = $1")
                .bind(destination)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM federation_txn_inflight WHERE destination = $1")
                .bind(destination)
                .execute(&mut *tx)
                .await?;
            dropped
        })
    }

    /// Clears the backoff of `destination` so it is tried at once. `false` if it is unknown.
    pub async fn federation_reset_destination(
        &self,
        destination: &str,
        now: Millis,
    ) -> StoreResult<bool> {
        with_writer!(self, |w, pg| {
            let done = sqlx::query(
                "UPDATE federation_destinations SET retry_count = 0, next_attempt_ts = 0, \
                 updated_ts = $2 WHERE destination = $1",
            )
            .bind(destination)
            .bind(now)
            .execute(w)
            .await?
            .rows_affected();
            Ok(done > 0)
        })
    }

    /// Every known destination with its backlog and retry state, by name.
    pub async fn federation_overview(&self) -> StoreResult<Vec<DestinationOverview>> {
        with_pools!(self, |r, pg| {
            let rows = sqlx::query(
                "SELECT d.destination, d.retry_count, d.next_attempt_ts, i.txn_id, \
                 (SELECT COUNT(*) FROM federation_outbound o WHERE o.destination = d.destination) \
                 AS backlog \
                 FROM federation_destinations d \
                 LEFT JOIN federation_txn_inflight i ON i.destination = d.destination \
                 ORDER BY d.destination",
            )
            .fetch_all(r)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(DestinationOverview {
                    destination: row.try_get("destination")?,
                    backlog: row.try_get("backlog")?,
                    retry_count: row.try_get("retry_count")?,
                    next_attempt_ts: row.try_get("next_attempt_ts")?,
                    inflight_txn: row.try_get("txn_id")?,
                });
            }
            Ok(out)
        })
    }
}
