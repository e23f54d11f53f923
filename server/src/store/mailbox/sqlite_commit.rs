//! [`Store::commit_sends`](crate::store::Store::commit_sends) on SQLite.
//!
//! Every command sent to sqlx's SQLite connection is a round trip between the async runtime
//! and that connection's worker thread: two thread wake-ups, which cost more than the SQL of a
//! small batch. A group commit therefore runs as few commands as it can, each a multi-statement
//! query with one shared, numbered (`?N`) argument list (relied on from sqlx's SQLite driver).
//! The transaction is begun and committed by these statements themselves, outside sqlx's
//! transaction manager ([`SqliteWriter::begin_raw`] makes sure a transaction left open by an
//! error or a cancellation is rolled back before the writer is used again). Callers answer only
//! after the command holding the `COMMIT` returned: it succeeded.
//!
//! - [`one_command`], the usual case: the whole batch in ONE command. Positions are computed
//!   by the SQL from the device rows, and the two things that would change what a batch writes
//!   abort it instead: a transaction key that was already used (the `txn_ids` primary key
//!   refuses the insert) and a mailbox that the batch would fill beyond the cap (an insert into
//!   `mailbox_cap_guard`, whose CHECK refuses every row). On such a conflict the transaction is
//!   rolled back and the batch runs again as two commands.
//! - [`two_commands`]: reads the heads and records the keys first, then decides each request
//!   ([`plan_batch`]) and writes. Duplicates, full mailboxes, repeated keys within a batch and
//!   very large batches take this path.

use std::collections::{BTreeSet, HashSet};

use sqlx::Row;

use super::{
    bind_device_number, bind_head_probe, bind_key, bind_message, bind_rows, class_rows, plan_batch,
    push_values, sqlite_insert_inbox, sqlite_store_heads, SQLITE_CHUNK,
};
use crate::store::connect::SqliteWriter;
use crate::store::{
    Millis, OutboundEdu, SendOutcome, SendRequest, StoreError, StoreResult, TxnKey,
};

/// Most EDUs for other servers that [`one_command`] queues; a batch with more runs as
/// [`two_commands`].
const ONE_COMMAND_MAX_EDUS: usize = 64;

/// Runs a group commit on the writer connection: [`one_command`] when the batch allows it and
/// nothing conflicts, [`two_commands`] otherwise. `recipients` are the distinct recipient
/// devices (sorted) and `keys` the distinct transaction keys (sorted) of `requests`.
pub(super) async fn commit_sends(
    writer: &SqliteWriter,
    requests: &[SendRequest],
    recipients: &[(&str, &str)],
    keys: &[&TxnKey],
    mailbox_cap: i64,
    now: Millis,
) -> StoreResult<Vec<SendOutcome>> {
    let mut guard = writer.lock().await?;
    let conn: &mut sqlx::SqliteConnection = &mut guard;
    if let Some(batch) = OneCommandBatch::new(requests, recipients, keys) {
        let one = writer
            .in_raw_transaction(conn, async |conn| {
                one_command(conn, &batch, mailbox_cap, now).await
            })
            .await;
        match one {
            Err(e) if is_conflict(&e) => {}
            result => return result,
        }
    }
    writer
        .in_raw_transaction(conn, async |conn| {
            two_commands(conn, requests, recipients, keys, mailbox_cap, now).await
        })
        .await
}

/// Whether `error` is one of the refusals [`one_command`] relies on (a used transaction key,
/// a mailbox over its cap) rather than a failure.
fn is_conflict(error: &StoreError) -> bool {
    use sqlx::error::ErrorKind;
    matches!(
        error,
        StoreError::Database(sqlx::Error::Database(db))
            if matches!(db.kind(), ErrorKind::UniqueViolation | ErrorKind::CheckViolation)
    )
}

/// One message row of [`one_command`]: the message and its place among the batch's messages
/// for the same device (1 for the first), added to the device's `inbox_last_pos`.
struct Offset<'r> {
    message: &'r crate::store::ToDeviceMessage,
    offset: i64,
}

/// A batch that [`one_command`] can write: every request has its own transaction key, and
/// every part fits one statement.
struct OneCommandBatch<'r> {
    requests: &'r [SendRequest],
    keys: &'r [&'r TxnKey],
    /// `(user, device, messages in this batch)` for each recipient device, sorted.
    counts: Vec<(&'r str, &'r str, i64)>,
    rows: Vec<Offset<'r>>,
    edus: Vec<&'r OutboundEdu>,
}

impl<'r> OneCommandBatch<'r> {
    /// `None` when the batch must run as [`two_commands`]: two requests share a transaction key
    /// (only the first may be committed), or a part is larger than one statement takes.
    fn new(
        requests: &'r [SendRequest],
        recipients: &[(&'r str, &'r str)],
        keys: &'r [&'r TxnKey],
    ) -> Option<OneCommandBatch<'r>> {
        let messages: usize = requests.iter().map(|r| r.local.len()).sum();
        let edus: Vec<&OutboundEdu> = requests.iter().flat_map(|r| r.remote.iter()).collect();
        if keys.len() != requests.len()
            || keys.len() > SQLITE_CHUNK
            || recipients.len() > SQLITE_CHUNK
            || messages > SQLITE_CHUNK
            || edus.len() > ONE_COMMAND_MAX_EDUS
        {
            return None;
        }
        let mut counts: Vec<(&str, &str, i64)> =
            recipients.iter().map(|&(u, d)| (u, d, 0)).collect();
        let mut rows = Vec::with_capacity(messages);
        for message in requests.iter().flat_map(|r| r.local.iter()) {
            let key = (message.user_id.as_str(), message.device_id.as_str());
            let i = counts
                .binary_search_by(|&(u, d, _)| (u, d).cmp(&key))
                .ok()?;
            let count = &mut counts.get_mut(i)?.2;
            *count += 1;
            rows.push(Offset {
                message,
                offset: *count,
            });
        }
        Some(OneCommandBatch {
            requests,
            keys,
            counts,
            rows,
            edus,
        })
    }

    /// The command's SQL and the number of trailing filler arguments it needs. `?1` is `now`,
    /// `?2` the mailbox cap; the device counts are bound once and used by both the cap check
    /// and the head update, the EDU rows by both EDU statements.
    ///
    /// The filler: sqlx binds each statement's parameters `1..=max` where `max` is the largest
    /// number the statement uses; a number the statement does not use takes the next
    /// *positional* argument, counted across the statements of the command, and once that
    /// count passes the end of the argument list sqlx stops binding, leaving the statement's
    /// remaining parameters NULL. Each statement here skips some numbers (`?1`, then its own
    /// rows), so the command binds that many extra NULLs at the end to keep the count inside
    /// the list.
    fn sql(&self) -> (String, usize) {
        let (count_rows, key_rows) = (class_rows(self.counts.len()), class_rows(self.keys.len()));
        let message_rows = class_rows(self.rows.len());
        let edu_rows = class_rows(self.edus.len());
        let mut sql = String::with_capacity(
            1024 + (2 * count_rows * 3 + key_rows * 4 + message_rows * 6 + 2 * edu_rows * 3) * 7,
        );
        sql.push_str("BEGIN IMMEDIATE; ");
        // Numbers each statement skips: below its first own parameter, less `?1`/`?2` if used.
        let mut skipped = 0;
        let mut next = 3;
        let counts_first = next;
        if !self.counts.is_empty() {
            skipped += 1; // ?1
            sql.push_str("INSERT INTO mailbox_cap_guard (within_cap) SELECT 0 FROM ");
            next = push_values(&mut sql, 3, count_rows, next);
            sql.push_str(
                " AS v JOIN devices d ON d.user_id = v.column1 AND d.device_id = v.column2 \
                 WHERE d.inbox_last_pos + v.column3 + 1 - COALESCE((SELECT MIN(i.pos) \
                 FROM to_device_inbox i WHERE i.user_id = d.user_id \
                 AND i.device_id = d.device_id), d.inbox_last_pos + 1) > ?2 LIMIT 1; ",
            );
        }
        skipped += next - 2; // ?2 .. before its rows
        sql.push_str(
            "INSERT INTO txn_ids (user_id, device_id, endpoint, txn_id, created_ts) \
             SELECT column1, column2, column3, column4, ?1 FROM ",
        );
        next = push_values(&mut sql, 4, key_rows, next);
        sql.push_str(" WHERE column1 IS NOT NULL; ");
        if !self.rows.is_empty() {
            skipped += next - 2;
            sql.push_str(
                "INSERT INTO to_device_inbox \
                 (user_id, device_id, pos, sender, event_type, content, created_ts) \
                 SELECT v.column1, v.column2, d.inbox_last_pos + v.column3, v.column4, \
                 v.column5, v.column6, ?1 FROM ",
            );
            next = push_values(&mut sql, 6, message_rows, next);
            sql.push_str(
                " AS v JOIN devices d ON d.user_id = v.column1 AND d.device_id = v.column2; ",
            );
        }
        if !self.counts.is_empty() {
            skipped += counts_first - 1;
            sql.push_str("UPDATE devices SET inbox_last_pos = inbox_last_pos + v.column3 FROM ");
            push_values(&mut sql, 3, count_rows, counts_first);
            sql.push_str(
                " AS v WHERE devices.user_id = v.column1 AND devices.device_id = v.column2 \
                 RETURNING user_id, device_id; ",
            );
        }
        if !self.edus.is_empty() {
            let edus_first = next;
            skipped += 2 * (edus_first - 2);
            sql.push_str(
                "INSERT INTO federation_outbound (destination, edu_type, content, created_ts) \
                 SELECT column1, column2, column3, ?1 FROM ",
            );
            push_values(&mut sql, 3, edu_rows, edus_first);
            sql.push_str(
                " WHERE column1 IS NOT NULL; \
                 INSERT INTO federation_destinations (destination, updated_ts) \
                 SELECT DISTINCT column1, ?1 FROM ",
            );
            push_values(&mut sql, 3, edu_rows, edus_first);
            sql.push_str(" WHERE column1 IS NOT NULL ON CONFLICT (destination) DO NOTHING; ");
        }
        sql.push_str("COMMIT");
        (sql, skipped)
    }
}

/// Writes a whole batch with ONE command (see the module documentation). Fails with a unique
/// or check violation, before its `COMMIT`, when a transaction key was used before or a
/// mailbox would exceed `mailbox_cap`.
async fn one_command(
    conn: &mut sqlx::SqliteConnection,
    batch: &OneCommandBatch<'_>,
    mailbox_cap: i64,
    now: Millis,
) -> StoreResult<Vec<SendOutcome>> {
    let (sql, filler) = batch.sql();
    let mut query = sqlx::query(&sql).bind(now).bind(mailbox_cap);
    let counts = batch.counts.len();
    if counts > 0 {
        query = bind_rows(
            query,
            batch.counts.iter(),
            3,
            class_rows(counts),
            bind_device_number,
        );
    }
    let keys = batch.keys.len();
    query = bind_rows(query, batch.keys.iter(), 4, class_rows(keys), |q, key| {
        bind_key(q, key)
    });
    let rows = batch.rows.len();
    if rows > 0 {
        query = bind_rows(query, batch.rows.iter(), 6, class_rows(rows), |q, row| {
            bind_message(q, row.message, row.offset)
        });
    }
    let edus = batch.edus.len();
    if edus > 0 {
        query = bind_rows(query, batch.edus.iter(), 3, class_rows(edus), |q, edu| {
            q.bind(edu.destination.as_str())
                .bind(edu.edu_type.as_str())
                .bind(edu.content.as_str())
        });
    }
    for _ in 0..filler {
        query = query.bind(None::<i64>);
    }
    // The rows are the devices that exist (messages to unknown devices were dropped).
    let mut existing: HashSet<(String, String)> = HashSet::with_capacity(batch.counts.len());
    for row in query.fetch_all(&mut *conn).await? {
        existing.insert((row.try_get(0)?, row.try_get(1)?));
    }
    Ok(batch
        .requests
        .iter()
        .map(|request| {
            let woken: BTreeSet<(&str, &str)> = request
                .local
                .iter()
                .map(|m| (m.user_id.as_str(), m.device_id.as_str()))
                .filter(|&(u, d)| existing.contains(&(u.to_owned(), d.to_owned())))
                .collect();
            SendOutcome::Committed(
                woken
                    .into_iter()
                    .map(|(u, d)| (u.to_owned(), d.to_owned()))
                    .collect(),
            )
        })
        .collect())
}

/// The general group commit in two commands:
///
/// 1. `BEGIN IMMEDIATE`, read the queue heads, record the transaction keys;
/// 2. insert the messages, store the new heads, `COMMIT`.
///
/// Rarely needed extra statements (removing refused transaction keys, queueing EDUs, more
/// than [`SQLITE_CHUNK`] messages) run in between.
async fn two_commands(
    conn: &mut sqlx::SqliteConnection,
    requests: &[SendRequest],
    recipients: &[(&str, &str)],
    keys: &[&TxnKey],
    mailbox_cap: i64,
    now: Millis,
) -> StoreResult<Vec<SendOutcome>> {
    // 1. BEGIN IMMEDIATE; heads (kind 0); fresh keys (kind 1). `?1` is `now`.
    let (head_rows, key_rows) = (class_rows(recipients.len()), class_rows(keys.len()));
    let mut sql = String::with_capacity(256 + (head_rows * 3 + key_rows * 4) * 7);
    let mut next = 2;
    sql.push_str("BEGIN IMMEDIATE; ");
    if !recipients.is_empty() {
        sql.push_str(
            "SELECT 0, v.column1, d.inbox_last_pos, (SELECT MIN(i.pos) FROM to_device_inbox i \
             WHERE i.user_id = d.user_id AND i.device_id = d.device_id) FROM ",
        );
        next = push_values(&mut sql, 3, head_rows, next);
        sql.push_str(" AS v JOIN devices d ON d.user_id = v.column2 AND d.device_id = v.column3; ");
    }
    sql.push_str(
        "INSERT INTO txn_ids (user_id, device_id, endpoint, txn_id, created_ts) \
         SELECT column1, column2, column3, column4, ?1 FROM ",
    );
    push_values(&mut sql, 4, key_rows, next);
    sql.push_str(
        " WHERE column1 IS NOT NULL \
         ON CONFLICT (user_id, device_id, endpoint, txn_id) DO NOTHING \
         RETURNING 1, user_id, device_id, endpoint, txn_id",
    );
    let mut query = sqlx::query(&sql).bind(now);
    if !recipients.is_empty() {
        query = bind_rows(
            query,
            recipients.iter().enumerate(),
            3,
            head_rows,
            bind_head_probe,
        );
    }
    let query = bind_rows(query, keys.iter(), 4, key_rows, |q, key| bind_key(q, key));
    let mut heads = Vec::with_capacity(recipients.len());
    let mut fresh = HashSet::with_capacity(keys.len());
    for row in query.fetch_all(&mut *conn).await? {
        if row.try_get::<i64, _>(0)? == 0 {
            let Ok(index) = usize::try_from(row.try_get::<i64, _>(1)?) else {
                continue;
            };
            heads.push((index, row.try_get(2)?, row.try_get(3)?));
        } else {
            fresh.insert((
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
                row.try_get(4)?,
            ));
        }
    }
    let plan = plan_batch(requests, recipients, heads, fresh, mailbox_cap);

    // Rare extras, each its own statement.
    super::forget_txns!(conn, &plan.refused);
    let tx = &mut *conn;
    crate::store::federation::enqueue_edus!(tx, plan.edus, now);
    // All but the last chunk of messages (more than SQLITE_CHUNK rows).
    let last_chunk = plan.rows.len().saturating_sub(1) / SQLITE_CHUNK * SQLITE_CHUNK;
    let (early, rows) = plan.rows.split_at(last_chunk);
    sqlite_insert_inbox(&mut *conn, early, now).await?;
    let (advanced, early_heads) = if plan.advanced.len() <= SQLITE_CHUNK {
        (plan.advanced.as_slice(), &[][..])
    } else {
        (&[][..], plan.advanced.as_slice())
    };
    sqlite_store_heads(&mut *conn, early_heads).await?;

    // 2. messages; heads; COMMIT. `?1` is `now`.
    let mut sql = String::with_capacity(64 + (rows.len() * 6 + advanced.len() * 3) * 8);
    let mut next = 2;
    let (row_class, head_class) = (class_rows(rows.len()), class_rows(advanced.len()));
    if !rows.is_empty() {
        sql.push_str(
            "INSERT INTO to_device_inbox \
             (user_id, device_id, pos, sender, event_type, content, created_ts) \
             SELECT column1, column2, column3, column4, column5, column6, ?1 FROM ",
        );
        next = push_values(&mut sql, 6, row_class, next);
        sql.push_str(" WHERE column1 IS NOT NULL; ");
    }
    if !advanced.is_empty() {
        sql.push_str("UPDATE devices SET inbox_last_pos = v.column3 FROM ");
        push_values(&mut sql, 3, head_class, next);
        sql.push_str(" AS v WHERE devices.user_id = v.column1 AND devices.device_id = v.column2; ");
    }
    sql.push_str("COMMIT");
    let mut query = sqlx::query(&sql).bind(now);
    if !rows.is_empty() {
        query = bind_rows(query, rows.iter(), 6, row_class, |q, row| {
            bind_message(q, row.message, row.pos)
        });
    }
    if !advanced.is_empty() {
        query = bind_rows(query, advanced.iter(), 3, head_class, bind_device_number);
    }
    query.execute(&mut *conn).await?;
    Ok(plan.outcomes)
}
