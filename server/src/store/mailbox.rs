//! To-device mailboxes: group commit of sends, acknowledgement and fetch, idempotency records.
//!
//! Positions are per device and come from the device row's `inbox_last_pos` counter, updated in
//! the same transaction that inserts the messages. On PostgreSQL the counter rows are locked
//! (`FOR NO KEY UPDATE`, in sorted order, so concurrent group commits cannot deadlock) before
//! anything is allocated: a second writer to the same device waits until the first commits, so
//! a reader can never see position N+1 while N is still uncommitted, and an acknowledgement up
//! to N+1 can never delete an unseen message. On SQLite the single writer connection serialises
//! all writers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::Row;

use super::{
    with_pools, with_tx, InboxEvent, Millis, OutboundEdu, SendOutcome, SendRequest, Store,
    StoreResult, ToDeviceMessage, TxnKey,
};

/// Counter state of one recipient device during a group commit.
struct Head {
    /// Last allocated position.
    last: i64,
    /// Messages queued (upper bound: `last - first + 1`; exact while deletions are prefixes,
    /// which acknowledgements always are).
    len: i64,
    /// Whether this commit allocated positions for it.
    dirty: bool,
}

/// One message row to insert.
struct InboxRow<'a> {
    pos: i64,
    message: &'a ToDeviceMessage,
}

/// Backend-specific bulk insert of mailbox rows.
trait InboxInsert {
    /// Inserts `rows` with `created_ts = now`.
    async fn insert_inbox(&mut self, rows: &[InboxRow<'_>], now: Millis)
        -> Result<(), sqlx::Error>;
}

impl InboxInsert for sqlx::SqliteConnection {
    /// One cached prepared statement per row: in-process SQLite makes this the fastest form.
    async fn insert_inbox(
        &mut self,
        rows: &[InboxRow<'_>],
        now: Millis,
    ) -> Result<(), sqlx::Error> {
        for row in rows {
            sqlx::query(
                "INSERT INTO to_device_inbox \
                 (user_id, device_id, pos, sender, event_type, content, created_ts) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&row.message.user_id)
            .bind(&row.message.device_id)
            .bind(row.pos)
            .bind(&row.message.sender)
            .bind(&row.message.event_type)
            .bind(&row.message.content)
            .bind(now)
            .execute(&mut *self)
            .await?;
        }
        Ok(())
    }
}

impl InboxInsert for sqlx::PgConnection {
    /// One statement for the whole batch (arrays unnested server-side): one round trip.
    async fn insert_inbox(
        &mut self,
        rows: &[InboxRow<'_>],
        now: Millis,
    ) -> Result<(), sqlx::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let users: Vec<&str> = rows.iter().map(|r| r.message.user_id.as_str()).collect();
        let devices: Vec<&str> = rows.iter().map(|r| r.message.device_id.as_str()).collect();
        let positions: Vec<i64> = rows.iter().map(|r| r.pos).collect();
        let senders: Vec<&str> = rows.iter().map(|r| r.message.sender.as_str()).collect();
        let types: Vec<&str> = rows.iter().map(|r| r.message.event_type.as_str()).collect();
        let contents: Vec<&str> = rows.iter().map(|r| r.message.content.as_str()).collect();
        sqlx::query(
            "INSERT INTO to_device_inbox \
             (user_id, device_id, pos, sender, event_type, content, created_ts) \
             SELECT u, d, p, s, t, c, $7 \
             FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[]) \
             AS x(u, d, p, s, t, c)",
        )
        .bind(users)
        .bind(devices)
        .bind(positions)
        .bind(senders)
        .bind(types)
        .bind(contents)
        .bind(now)
        .execute(&mut *self)
        .await?;
        Ok(())
    }
}

impl Store {
    // ---- to-device mailboxes ---------------------------------------------------------------------------
    /// Commits a batch of sendToDevice requests in ONE transaction (group commit: the mailbox
    /// service collects concurrent requests and calls this once). For each request, in order:
    /// if its transaction key was already used the outcome is `Duplicate` and nothing is
    /// written; if a recipient mailbox would exceed `mailbox_cap` the outcome is `MailboxFull`
    /// and nothing of that request is written; otherwise its local messages get per-device
    /// positions (messages to unknown devices are dropped), its remote EDUs go to the outbound
    /// queue, and its transaction key is recorded. Returns one outcome per request.
    ///
    /// `Committed` lists each recipient device once, sorted. A database error fails the whole
    /// batch (nothing is written), so callers may retry every request of it.
    pub async fn commit_sends(
        &self,
        requests: &[SendRequest],
        mailbox_cap: i64,
        now: Millis,
    ) -> StoreResult<Vec<SendOutcome>> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        // Sorted: the lock order on PostgreSQL.
        let recipients: BTreeSet<(&str, &str)> = requests
            .iter()
            .flat_map(|r| r.local.iter())
            .map(|m| (m.user_id.as_str(), m.device_id.as_str()))
            .collect();
        with_tx!(self, |tx, pg| {
            let lock_sql = if pg {
                "SELECT inbox_last_pos FROM devices WHERE user_id = $1 AND device_id = $2 \
                 FOR NO KEY UPDATE"
            } else {
                "SELECT inbox_last_pos FROM devices WHERE user_id = $1 AND device_id = $2"
            };
            let mut heads: HashMap<(&str, &str), Head> = HashMap::new();
            for &(user_id, device_id) in &recipients {
                let last: Option<i64> = sqlx::query_scalar(lock_sql)
                    .bind(user_id)
                    .bind(device_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(last) = last else { continue };
                let first: Option<i64> = sqlx::query_scalar(
                    "SELECT MIN(pos) FROM to_device_inbox WHERE user_id = $1 AND device_id = $2",
                )
                .bind(user_id)
                .bind(device_id)
                .fetch_one(&mut *tx)
                .await?;
                let len = first.map_or(0, |first| last - first + 1);
                heads.insert(
                    (user_id, device_id),
                    Head {
                        last,
                        len,
                        dirty: false,
                    },
                );
            }

            let mut outcomes = Vec::with_capacity(requests.len());
            let mut rows: Vec<InboxRow<'_>> = Vec::new();
            let mut edus: Vec<&OutboundEdu> = Vec::new();
            for request in requests {
                let txn = &request.txn;
                let fresh = sqlx::query(
                    "INSERT INTO txn_ids (user_id, device_id, endpoint, txn_id, created_ts) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (user_id, device_id, endpoint, txn_id) DO NOTHING",
                )
                .bind(&txn.user_id)
                .bind(&txn.device_id)
                .bind(&txn.endpoint)
                .bind(&txn.txn_id)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    > 0;
                if !fresh {
                    outcomes.push(SendOutcome::Duplicate);
                    continue;
                }
                let mut added: BTreeMap<(&str, &str), i64> = BTreeMap::new();
                for m in &request.local {
                    let key = (m.user_id.as_str(), m.device_id.as_str());
                    if heads.contains_key(&key) {
                        *added.entry(key).or_default() += 1;
                    }
                }
                let full = added
                    .iter()
                    .any(|(key, n)| heads.get(key).is_some_and(|h| h.len + n > mailbox_cap));
                if full {
                    sqlx::query(
                        "DELETE FROM txn_ids WHERE user_id = $1 AND device_id = $2 \
                         AND endpoint = $3 AND txn_id = $4",
                    )
                    .bind(&txn.user_id)
                    .bind(&txn.device_id)
                    .bind(&txn.endpoint)
                    .bind(&txn.txn_id)
                    .execute(&mut *tx)
                    .await?;
                    outcomes.push(SendOutcome::MailboxFull);
                    continue;
                }
                for message in &request.local {
                    let key = (message.user_id.as_str(), message.device_id.as_str());
                    if let Some(head) = heads.get_mut(&key) {
                        head.last += 1;
                        head.len += 1;
                        head.dirty = true;
                        rows.push(InboxRow {
                            pos: head.last,
                            message,
                        });
                    }
                }
                edus.extend(request.remote.iter());
                outcomes.push(SendOutcome::Committed(
                    added
                        .keys()
                        .map(|(u, d)| ((*u).to_owned(), (*d).to_owned()))
                        .collect(),
                ));
            }

            InboxInsert::insert_inbox(&mut *tx, &rows, now).await?;
            for (&(user_id, device_id), head) in heads.iter().filter(|(_, h)| h.dirty) {
                sqlx::query(
                    "UPDATE devices SET inbox_last_pos = $3 WHERE user_id = $1 AND device_id = $2",
                )
                .bind(user_id)
                .bind(device_id)
                .bind(head.last)
                .execute(&mut *tx)
                .await?;
            }
            super::federation::enqueue_edus!(tx, edus, now);
            outcomes
        })
    }

    /// Deletes the device's messages at or before `pos` (the acknowledgement) and returns up to
    /// `limit` messages after `pos`, in order.
    pub async fn ack_and_fetch_inbox(
        &self,
        user_id: &str,
        device_id: &str,
        pos: i64,
        limit: i64,
    ) -> StoreResult<Vec<InboxEvent>> {
        with_pools!(self, |w, r, pg| {
            // Only take the write path when there is something to acknowledge.
            let stale: Option<i64> = sqlx::query_scalar(
                "SELECT pos FROM to_device_inbox WHERE user_id = $1 AND device_id = $2 \
                 AND pos <= $3 LIMIT 1",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(pos)
            .fetch_optional(r)
            .await?;
            if stale.is_some() {
                sqlx::query(
                    "DELETE FROM to_device_inbox WHERE user_id = $1 AND device_id = $2 AND pos <= $3",
                )
                .bind(user_id)
                .bind(device_id)
                .bind(pos)
                .execute(w)
                .await?;
            }
            let rows = sqlx::query(
                "SELECT pos, sender, event_type, content FROM to_device_inbox \
                 WHERE user_id = $1 AND device_id = $2 AND pos > $3 ORDER BY pos LIMIT $4",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(pos)
            .bind(limit.max(0))
            .fetch_all(r)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(InboxEvent {
                    pos: row.try_get("pos")?,
                    sender: row.try_get("sender")?,
                    event_type: row.try_get("event_type")?,
                    content: row.try_get("content")?,
                });
            }
            Ok(out)
        })
    }

    /// The last position allocated to a device's mailbox (`None` for an unknown device). A sync
    /// with nothing queued can use it as its `next_batch` position.
    pub async fn inbox_last_pos(&self, user_id: &str, device_id: &str) -> StoreResult<Option<i64>> {
        with_pools!(self, |w, r, pg| {
            Ok(sqlx::query_scalar(
                "SELECT inbox_last_pos FROM devices WHERE user_id = $1 AND device_id = $2",
            )
            .bind(user_id)
            .bind(device_id)
            .fetch_optional(r)
            .await?)
        })
    }

    /// Number of queued messages for every device (for metrics).
    pub async fn inbox_total(&self) -> StoreResult<i64> {
        with_pools!(self, |w, r, pg| {
            Ok(sqlx::query_scalar("SELECT COUNT(*) FROM to_device_inbox")
                .fetch_one(r)
                .await?)
        })
    }

    // ---- idempotency --------------------------------------------------------------------------------
    /// Whether `(user, device, endpoint, txn_id)` was already committed.
    pub async fn txn_seen(&self, txn: &TxnKey) -> StoreResult<bool> {
        with_pools!(self, |w, r, pg| {
            let found: Option<i64> = sqlx::query_scalar(
                "SELECT created_ts FROM txn_ids WHERE user_id = $1 AND device_id = $2 \
                 AND endpoint = $3 AND txn_id = $4",
            )
            .bind(&txn.user_id)
            .bind(&txn.device_id)
            .bind(&txn.endpoint)
            .bind(&txn.txn_id)
            .fetch_optional(r)
            .await?;
            Ok(found.is_some())
        })
    }
}
