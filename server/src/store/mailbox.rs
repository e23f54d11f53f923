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

use super::notify::{wake_payload, WakeOnCommit};

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

/// The backend-specific steps of a group commit: SQLite runs one cached statement per row
/// (in-process, that is the fastest form); PostgreSQL sends each step as one statement over
/// arrays, so a batch costs a fixed number of round trips whatever its size.
trait MailboxOps {
    /// For each existing recipient device (`recipients` sorted, unknown devices left out):
    /// `(index into recipients, last allocated position, first queued position)`. On PostgreSQL
    /// the device rows are locked (`FOR NO KEY UPDATE`, in sorted order, so concurrent group
    /// commits cannot deadlock) BEFORE the first queued position is read, by a later statement
    /// with a fresh snapshot.
    async fn load_heads(
        &mut self,
        recipients: &[(&str, &str)],
    ) -> Result<Vec<(usize, i64, Option<i64>)>, sqlx::Error>;

    /// Sets `inbox_last_pos` of each `(user, device, last)`.
    async fn store_heads(&mut self, heads: &[(&str, &str, i64)]) -> Result<(), sqlx::Error>;

    /// Inserts `rows` with `created_ts = now`.
    async fn insert_inbox(&mut self, rows: &[InboxRow<'_>], now: Millis)
        -> Result<(), sqlx::Error>;
}

impl MailboxOps for sqlx::SqliteConnection {
    async fn load_heads(
        &mut self,
        recipients: &[(&str, &str)],
    ) -> Result<Vec<(usize, i64, Option<i64>)>, sqlx::Error> {
        let mut out = Vec::with_capacity(recipients.len());
        for (i, &(user_id, device_id)) in recipients.iter().enumerate() {
            let row = sqlx::query(
                "SELECT inbox_last_pos, (SELECT MIN(pos) FROM to_device_inbox i \
                 WHERE i.user_id = d.user_id AND i.device_id = d.device_id) AS first_pos \
                 FROM devices d WHERE d.user_id = $1 AND d.device_id = $2",
            )
            .bind(user_id)
            .bind(device_id)
            .fetch_optional(&mut *self)
            .await?;
            if let Some(row) = row {
                out.push((i, row.try_get("inbox_last_pos")?, row.try_get("first_pos")?));
            }
        }
        Ok(out)
    }

    async fn store_heads(&mut self, heads: &[(&str, &str, i64)]) -> Result<(), sqlx::Error> {
        for &(user_id, device_id, last) in heads {
            sqlx::query(
                "UPDATE devices SET inbox_last_pos = $3 WHERE user_id = $1 AND device_id = $2",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(last)
            .execute(&mut *self)
            .await?;
        }
        Ok(())
    }

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

impl MailboxOps for sqlx::PgConnection {
    async fn load_heads(
        &mut self,
        recipients: &[(&str, &str)],
    ) -> Result<Vec<(usize, i64, Option<i64>)>, sqlx::Error> {
        let users: Vec<&str> = recipients.iter().map(|r| r.0).collect();
        let devices: Vec<&str> = recipients.iter().map(|r| r.1).collect();
        // Lock first (ORDER BY is applied before the rows are locked).
        let locked = sqlx::query(
            "SELECT user_id, device_id, inbox_last_pos FROM devices \
             WHERE (user_id, device_id) IN (SELECT u, d FROM UNNEST($1::text[], $2::text[]) AS x(u, d)) \
             ORDER BY user_id, device_id FOR NO KEY UPDATE",
        )
        .bind(&users)
        .bind(&devices)
        .fetch_all(&mut *self)
        .await?;
        let mut last = HashMap::with_capacity(locked.len());
        for row in &locked {
            let user_id: String = row.try_get("user_id")?;
            let device_id: String = row.try_get("device_id")?;
            last.insert(
                (user_id, device_id),
                row.try_get::<i64, _>("inbox_last_pos")?,
            );
        }
        // Then read the queue heads with a snapshot taken after the locks were granted.
        let firsts = sqlx::query(
            "SELECT x.n, (SELECT MIN(i.pos) FROM to_device_inbox i \
             WHERE i.user_id = x.u AND i.device_id = x.d) AS first_pos \
             FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS x(u, d, n)",
        )
        .bind(&users)
        .bind(&devices)
        .fetch_all(&mut *self)
        .await?;
        let mut out = Vec::with_capacity(last.len());
        for row in &firsts {
            let n: i64 = row.try_get("n")?;
            let Some(i) = usize::try_from(n - 1).ok() else {
                continue;
            };
            let Some(&(user_id, device_id)) = recipients.get(i) else {
                continue;
            };
            if let Some(&pos) = last.get(&(user_id.to_owned(), device_id.to_owned())) {
                out.push((i, pos, row.try_get("first_pos")?));
            }
        }
        Ok(out)
    }

    async fn store_heads(&mut self, heads: &[(&str, &str, i64)]) -> Result<(), sqlx::Error> {
        if heads.is_empty() {
            return Ok(());
        }
        let users: Vec<&str> = heads.iter().map(|h| h.0).collect();
        let devices: Vec<&str> = heads.iter().map(|h| h.1).collect();
        let positions: Vec<i64> = heads.iter().map(|h| h.2).collect();
        sqlx::query(
            "UPDATE devices SET inbox_last_pos = x.p \
             FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS x(u, d, p) \
             WHERE devices.user_id = x.u AND devices.device_id = x.d",
        )
        .bind(users)
        .bind(devices)
        .bind(positions)
        .execute(&mut *self)
        .await?;
        Ok(())
    }

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
            let recipients: Vec<(&str, &str)> = recipients.into_iter().collect();
            let mut heads: HashMap<(&str, &str), Head> = HashMap::new();
            for (i, last, first) in MailboxOps::load_heads(&mut *tx, &recipients).await? {
                let Some(&key) = recipients.get(i) else {
                    continue;
                };
                let len = first.map_or(0, |first| last - first + 1);
                heads.insert(
                    key,
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

            MailboxOps::insert_inbox(&mut *tx, &rows, now).await?;
            let woken: Vec<String> = heads
                .iter()
                .filter(|(_, h)| h.dirty)
                .map(|((user_id, device_id), _)| wake_payload(user_id, device_id))
                .collect();
            WakeOnCommit::wake_on_commit(&mut *tx, &woken).await?;
            let advanced: Vec<(&str, &str, i64)> = heads
                .iter()
                .filter(|(_, h)| h.dirty)
                .map(|(&(user_id, device_id), h)| (user_id, device_id, h.last))
                .collect();
            MailboxOps::store_heads(&mut *tx, &advanced).await?;
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
