//! The durable outbound federation queue: EDUs per destination and per-destination retry state.
//!
//! Writers append in the same transaction as the local messages of a send. The federation
//! sender drains it with [`Store::outbound_due_destinations`], [`Store::outbound_peek`] and
//! [`Store::outbound_delete`] (by ID list: IDs from a sequence may become visible out of order on
//! PostgreSQL, so "delete everything up to ID N" could drop an EDU it never saw).

use sqlx::Row;

use super::{with_pools, with_tx, with_writer, Millis, OutboundEdu, Store, StoreResult};

/// Per-destination delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationRow {
    /// Server name.
    pub destination: String,
    /// Consecutive failed attempts.
    pub retry_count: i64,
    /// Do not send before this time (ms).
    pub next_attempt_ts: Millis,
    /// Transaction ID of the batch in flight, reused when retrying it.
    pub last_txn_id: Option<String>,
}

/// Appends `$edus` (an iterator of `&OutboundEdu`) to the queue inside transaction `$tx` and makes
/// sure each destination has a state row.
macro_rules! enqueue_edus {
    ($tx:ident, $edus:expr, $now:expr) => {{
        for edu in $edus {
            sqlx::query(
                "INSERT INTO federation_outbound (destination, edu_type, content, created_ts) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(&edu.destination)
            .bind(&edu.edu_type)
            .bind(&edu.content)
            .bind($now)
            .execute(&mut *$tx)
            .await?;
            sqlx::query(
                "INSERT INTO federation_destinations (destination, updated_ts) VALUES ($1, $2) \
                 ON CONFLICT (destination) DO NOTHING",
            )
            .bind(&edu.destination)
            .bind($now)
            .execute(&mut *$tx)
            .await?;
        }
    }};
}
pub(super) use enqueue_edus;

/// Most queue IDs bound in one `DELETE ... WHERE id IN (...)` (far below SQLite's limit of
/// bound parameters).
pub(super) const DELETE_CHUNK: usize = 500;

/// `DELETE FROM federation_outbound WHERE id IN ($1, ..., $n)` for `n` IDs.
pub(super) fn delete_ids_sql(n: usize) -> String {
    let mut sql = String::from("DELETE FROM federation_outbound WHERE id IN (");
    for i in 1..=n {
        if i > 1 {
            sql.push_str(", ");
        }
        sql.push('$');
        sql.push_str(&i.to_string());
    }
    sql.push(')');
    sql
}

/// Deletes the queue rows `$ids` (a `&[i64]`) inside transaction `$tx`, one statement per
/// [`DELETE_CHUNK`] IDs rather than one per ID.
macro_rules! delete_outbound_ids {
    ($tx:ident, $ids:expr) => {{
        for chunk in $ids.chunks($crate::store::federation::DELETE_CHUNK) {
            let sql = $crate::store::federation::delete_ids_sql(chunk.len());
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            query.execute(&mut *$tx).await?;
        }
    }};
}
pub(super) use delete_outbound_ids;

impl Store {
    // ---- federation outbound queue -------------------------------------------------------------------
    /// Appends EDUs for remote servers.
    pub async fn enqueue_outbound(&self, edus: &[OutboundEdu], now: Millis) -> StoreResult<()> {
        with_tx!(self, |tx, pg| {
            enqueue_edus!(tx, edus, now);
        })
    }

    /// Destinations with queued EDUs whose next attempt is due at `now`, most overdue first.
    pub async fn outbound_due_destinations(
        &self,
        now: Millis,
        limit: i64,
    ) -> StoreResult<Vec<String>> {
        with_pools!(self, |r, pg| {
            Ok(sqlx::query_scalar(
                "SELECT d.destination FROM federation_destinations d \
                 WHERE d.next_attempt_ts <= $1 AND EXISTS \
                 (SELECT 1 FROM federation_outbound o WHERE o.destination = d.destination) \
                 ORDER BY d.next_attempt_ts, d.destination LIMIT $2",
            )
            .bind(now)
            .bind(limit.max(0))
            .fetch_all(r)
            .await?)
        })
    }

    /// Up to `limit` queued EDUs for `destination`, oldest first, with their queue IDs.
    pub async fn outbound_peek(
        &self,
        destination: &str,
        limit: i64,
    ) -> StoreResult<Vec<(i64, OutboundEdu)>> {
        with_pools!(self, |r, pg| {
            let rows = sqlx::query(
                "SELECT id, destination, edu_type, content FROM federation_outbound \
                 WHERE destination = $1 ORDER BY id LIMIT $2",
            )
            .bind(destination)
            .bind(limit.max(0))
            .fetch_all(r)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push((
                    row.try_get("id")?,
                    OutboundEdu {
                        destination: row.try_get("destination")?,
                        edu_type: row.try_get("edu_type")?,
                        content: row.try_get("content")?,
                    },
                ));
            }
            Ok(out)
        })
    }

    /// Removes delivered EDUs by queue ID.
    pub async fn outbound_delete(&self, ids: &[i64]) -> StoreResult<()> {
        with_tx!(self, |tx, pg| {
            delete_outbound_ids!(tx, ids);
        })
    }

    /// Number of EDUs waiting for any destination (for metrics).
    pub async fn outbound_total(&self) -> StoreResult<i64> {
        with_pools!(self, |r, pg| {
            Ok(
                sqlx::query_scalar("SELECT COUNT(*) FROM federation_outbound")
                    .fetch_one(r)
                    .await?,
            )
        })
    }

    /// Delivery state of a destination, if it ever had queued EDUs.
    pub async fn destination_state(
        &self,
        destination: &str,
    ) -> StoreResult<Option<DestinationRow>> {
        with_pools!(self, |r, pg| {
            let row = sqlx::query(
                "SELECT destination, retry_count, next_attempt_ts, last_txn_id \
                 FROM federation_destinations WHERE destination = $1",
            )
            .bind(destination)
            .fetch_optional(r)
            .await?;
            match row {
                None => Ok(None),
                Some(row) => Ok(Some(DestinationRow {
                    destination: row.try_get("destination")?,
                    retry_count: row.try_get("retry_count")?,
                    next_attempt_ts: row.try_get("next_attempt_ts")?,
                    last_txn_id: row.try_get("last_txn_id")?,
                })),
            }
        })
    }

    /// Creates or replaces the delivery state of a destination.
    pub async fn set_destination_state(
        &self,
        state: &DestinationRow,
        now: Millis,
    ) -> StoreResult<()> {
        with_writer!(self, |w, pg| {
            sqlx::query(
                "INSERT INTO federation_destinations \
                 (destination, retry_count, next_attempt_ts, last_txn_id, updated_ts) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (destination) DO UPDATE SET \
                 retry_count = excluded.retry_count, next_attempt_ts = excluded.next_attempt_ts, \
                 last_txn_id = excluded.last_txn_id, updated_ts = excluded.updated_ts",
            )
            .bind(&state.destination)
            .bind(state.retry_count)
            .bind(state.next_attempt_ts)
            .bind(&state.last_txn_id)
            .bind(now)
            .execute(w)
            .await?;
            Ok(())
        })
    }
}

/// First key of every destination lock (`pg_try_advisory_lock(int, int)`), so Hush's advisory
/// locks cannot collide with another application's on the same database ("HUSH" in ASCII).
const DESTINATION_LOCK_SPACE: i32 = 0x4855_5348;

/// A dedicated PostgreSQL session holding the session-level advisory locks of the federation
/// destinations this process sends to (see `docs/adr/0004-federation-sender-advisory-locks.md`).
///
/// PostgreSQL releases every lock when the session ends, so when the process dies (or its
/// connection does), other processes can take its destinations over at once. The second lock key
/// is `hashtext(destination)`: two destinations may share a lock, which only means that one
/// process sends both.
pub struct DestinationLockSession {
    conn: sqlx::PgConnection,
}

impl std::fmt::Debug for DestinationLockSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationLockSession")
            .finish_non_exhaustive()
    }
}

impl DestinationLockSession {
    /// Takes the lock of `destination` if no other session holds it. Taking a lock this session
    /// already holds succeeds again (and must then be released as often).
    pub async fn try_lock(&mut self, destination: &str) -> StoreResult<bool> {
        Ok(
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
                .bind(DESTINATION_LOCK_SPACE)
                .bind(destination)
                .fetch_one(&mut self.conn)
                .await?,
        )
    }

    /// Releases the lock of `destination`; `false` if this session did not hold it.
    pub async fn unlock(&mut self, destination: &str) -> StoreResult<bool> {
        Ok(
            sqlx::query_scalar("SELECT pg_advisory_unlock($1, hashtext($2))")
                .bind(DESTINATION_LOCK_SPACE)
                .bind(destination)
                .fetch_one(&mut self.conn)
                .await?,
        )
    }

    /// Checks that the session is still alive (a round trip).
    pub async fn ping(&mut self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&mut self.conn).await?;
        Ok(())
    }
}

impl Store {
    /// Opens a dedicated session for federation destination locks: `None` on SQLite, where one
    /// process owns the database and needs no lock. The session asks the server to probe the
    /// connection with TCP keep-alives so that a vanished client releases its locks soon.
    pub async fn destination_lock_session(&self) -> StoreResult<Option<DestinationLockSession>> {
        use sqlx::Connection as _;
        let super::Backend::Postgres(pool) = &self.backend else {
            return Ok(None);
        };
        let options = pool.connect_options();
        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
        for setting in [
            "SET tcp_keepalives_idle = 5",
            "SET tcp_keepalives_interval = 2",
            "SET tcp_keepalives_count = 3",
        ] {
            // Not fatal: some PostgreSQL-compatible databases do not have these settings.
            if let Err(e) = sqlx::query(setting).execute(&mut conn).await {
                tracing::debug!(error = %e, setting, "keep-alive setting refused");
            }
        }
        Ok(Some(DestinationLockSession { conn }))
    }
}
