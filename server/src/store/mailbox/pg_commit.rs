//! The steps of [`Store::commit_sends`](crate::store::Store::commit_sends) on PostgreSQL: three
//! statements between `BEGIN` and `COMMIT`, each one network round trip, whatever the size of
//! the batch (the arrays are unnested by the server):
//!
//! 1. lock the recipients' device rows (`FOR NO KEY UPDATE`, sorted, so concurrent group commits
//!    cannot deadlock) and read their last positions;
//! 2. with a snapshot taken after those locks were granted, read each mailbox's first queued
//!    position, and record the transaction keys (`ON CONFLICT DO NOTHING RETURNING` the new
//!    ones), both in one statement;
//! 3. after the decisions ([`super::plan_batch`]), insert the messages, store the new last
//!    positions and queue the wake-up notifications, all in one statement (the data-modifying
//!    CTEs run whether or not the final `SELECT` reads them).
//!
//! Positions become visible in order because a second writer to the same device waits for the
//! row lock of step 1 until the first commits (ADR 0003,
//! `docs/adr/0003-per-device-mailbox-positions.md`).

use std::collections::{HashMap, HashSet};

use sqlx::Row;

use super::{InboxRow, MailboxOps, TxnTuple};
use crate::store::notify::WAKE_CHANNEL;
use crate::store::{Millis, TxnKey};

/// Row kinds of step 2.
const ROW_FIRST_POSITION: i32 = 0;
const ROW_FRESH_KEY: i32 = 1;

impl MailboxOps for sqlx::PgConnection {
    async fn read_heads_and_record_txns(
        &mut self,
        recipients: &[(&str, &str)],
        keys: &[&TxnKey],
        now: Millis,
    ) -> Result<(Vec<(usize, i64, Option<i64>)>, HashSet<TxnTuple>), sqlx::Error> {
        let users: Vec<&str> = recipients.iter().map(|r| r.0).collect();
        let devices: Vec<&str> = recipients.iter().map(|r| r.1).collect();
        // 1. Lock first (ORDER BY is applied before the rows are locked).
        let mut last = HashMap::with_capacity(recipients.len());
        if !recipients.is_empty() {
            let locked = sqlx::query(
                "SELECT user_id, device_id, inbox_last_pos FROM devices \
                 WHERE (user_id, device_id) IN \
                 (SELECT u, d FROM UNNEST($1::text[], $2::text[]) AS x(u, d)) \
                 ORDER BY user_id, device_id FOR NO KEY UPDATE",
            )
            .bind(&users)
            .bind(&devices)
            .fetch_all(&mut *self)
            .await?;
            for row in &locked {
                let user_id: String = row.try_get(0)?;
                let device_id: String = row.try_get(1)?;
                last.insert((user_id, device_id), row.try_get::<i64, _>(2)?);
            }
        }
        // 2. First queued positions (fresh snapshot) and the keys, in one statement.
        let key_users: Vec<&str> = keys.iter().map(|k| k.user_id.as_str()).collect();
        let key_devices: Vec<&str> = keys.iter().map(|k| k.device_id.as_str()).collect();
        let endpoints: Vec<&str> = keys.iter().map(|k| k.endpoint.as_str()).collect();
        let txn_ids: Vec<&str> = keys.iter().map(|k| k.txn_id.as_str()).collect();
        let rows = sqlx::query(&format!(
            "WITH fresh AS (INSERT INTO txn_ids (user_id, device_id, endpoint, txn_id, created_ts) \
             SELECT u, d, e, t, $7 FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[]) \
             AS k(u, d, e, t) \
             ON CONFLICT (user_id, device_id, endpoint, txn_id) DO NOTHING \
             RETURNING user_id, device_id, endpoint, txn_id) \
             SELECT {ROW_FIRST_POSITION} AS kind, x.n AS n, \
             (SELECT MIN(i.pos) FROM to_device_inbox i \
             WHERE i.user_id = x.u AND i.device_id = x.d) AS first_pos, \
             NULL::text AS u, NULL::text AS d, NULL::text AS e, NULL::text AS t \
             FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS x(u, d, n) \
             UNION ALL SELECT {ROW_FRESH_KEY}, 0, NULL, user_id, device_id, endpoint, txn_id \
             FROM fresh"
        ))
        .bind(&users)
        .bind(&devices)
        .bind(key_users)
        .bind(key_devices)
        .bind(endpoints)
        .bind(txn_ids)
        .bind(now)
        .fetch_all(&mut *self)
        .await?;
        let mut heads = Vec::with_capacity(last.len());
        let mut fresh = HashSet::with_capacity(keys.len());
        for row in &rows {
            if row.try_get::<i32, _>(0)? == ROW_FRESH_KEY {
                fresh.insert((
                    row.try_get(3)?,
                    row.try_get(4)?,
                    row.try_get(5)?,
                    row.try_get(6)?,
                ));
                continue;
            }
            let n: i64 = row.try_get(1)?;
            let Some(i) = usize::try_from(n - 1).ok() else {
                continue;
            };
            let Some(&(user_id, device_id)) = recipients.get(i) else {
                continue;
            };
            if let Some(&pos) = last.get(&(user_id.to_owned(), device_id.to_owned())) {
                heads.push((i, pos, row.try_get(2)?));
            }
        }
        Ok((heads, fresh))
    }

    async fn write_batch(
        &mut self,
        rows: &[InboxRow<'_>],
        heads: &[(&str, &str, i64)],
        woken: &[String],
        now: Millis,
    ) -> Result<(), sqlx::Error> {
        if rows.is_empty() && heads.is_empty() && woken.is_empty() {
            return Ok(());
        }
        let users: Vec<&str> = rows.iter().map(|r| r.message.user_id.as_str()).collect();
        let devices: Vec<&str> = rows.iter().map(|r| r.message.device_id.as_str()).collect();
        let positions: Vec<i64> = rows.iter().map(|r| r.pos).collect();
        let senders: Vec<&str> = rows.iter().map(|r| r.message.sender.as_str()).collect();
        let types: Vec<&str> = rows.iter().map(|r| r.message.event_type.as_str()).collect();
        let contents: Vec<&str> = rows.iter().map(|r| r.message.content.as_str()).collect();
        let head_users: Vec<&str> = heads.iter().map(|h| h.0).collect();
        let head_devices: Vec<&str> = heads.iter().map(|h| h.1).collect();
        let head_positions: Vec<i64> = heads.iter().map(|h| h.2).collect();
        sqlx::query(
            "WITH inserted AS (INSERT INTO to_device_inbox \
             (user_id, device_id, pos, sender, event_type, content, created_ts) \
             SELECT u, d, p, s, t, c, $7 \
             FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[]) \
             AS x(u, d, p, s, t, c)), \
             advanced AS (UPDATE devices SET inbox_last_pos = h.p \
             FROM UNNEST($8::text[], $9::text[], $10::bigint[]) AS h(u, d, p) \
             WHERE devices.user_id = h.u AND devices.device_id = h.d) \
             SELECT pg_notify($11, w) FROM UNNEST($12::text[]) AS w",
        )
        .bind(users)
        .bind(devices)
        .bind(positions)
        .bind(senders)
        .bind(types)
        .bind(contents)
        .bind(now)
        .bind(head_users)
        .bind(head_devices)
        .bind(head_positions)
        .bind(WAKE_CHANNEL)
        .bind(woken)
        .execute(&mut *self)
        .await?;
        Ok(())
    }
}
