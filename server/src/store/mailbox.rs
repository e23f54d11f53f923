//! To-device mailboxes: group commit of sends, acknowledgement and fetch, idempotency records.
//!
//! Positions are per device and come from the device row's `inbox_last_pos` counter, updated in
//! the same transaction that inserts the messages. On PostgreSQL the counter rows are locked
//! (`FOR NO KEY UPDATE`, in sorted order, so concurrent group commits cannot deadlock) before
//! anything is allocated: a second writer to the same device waits until the first commits, so
//! a reader can never see position N+1 while N is still uncommitted, and an acknowledgement up
//! to N+1 can never delete an unseen message. On SQLite the single writer connection serialises
//! all writers.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::OnceLock;

use sqlx::Row;

use tokio::sync::oneshot;

use super::notify::wake_payloads;

use super::{
    with_pools, with_tx, InboxEvent, Millis, OutboundEdu, SendOutcome, SendRequest, Store,
    StoreResult, SyncReads, ToDeviceMessage, TxnKey,
};

mod pg_commit;
mod sqlite_commit;

/// Removes the transaction keys `$keys` (`&[&TxnKey]`) recorded earlier in the transaction on
/// `$conn` whose requests were refused, so that a retry is not taken for a duplicate. One
/// statement per key: refusals are rare.
macro_rules! forget_txns {
    ($conn:ident, $keys:expr) => {{
        for txn in $keys {
            sqlx::query(
                "DELETE FROM txn_ids WHERE user_id = $1 AND device_id = $2 \
                 AND endpoint = $3 AND txn_id = $4",
            )
            .bind(&txn.user_id)
            .bind(&txn.device_id)
            .bind(&txn.endpoint)
            .bind(&txn.txn_id)
            .execute(&mut *$conn)
            .await?;
        }
    }};
}
use forget_txns;

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

/// The backend-specific steps of the general group commit ([`Store::commit_sends`] between its
/// `BEGIN` and `COMMIT`; SQLite's usual batches take the shorter path of [`sqlite_commit`]).
/// Both backends write a batch with a fixed number of statements whatever its size:
/// PostgreSQL over arrays ([`pg_commit`]), SQLite as padded multi-row statements of a few fixed
/// sizes (every statement on SQLite is a round trip to sqlx's connection worker thread, so
/// per-row statements made the cost of a batch grow with its size).
trait MailboxOps {
    /// Reads the queue head of each existing recipient device (`recipients` sorted, unknown
    /// devices left out) as `(index into recipients, last allocated position, first queued
    /// position)`, and records the transaction keys `keys` (distinct, sorted) with
    /// `created_ts = now`, leaving existing ones alone; returns the heads and the keys that
    /// were new. On PostgreSQL the device rows are locked (`FOR NO KEY UPDATE`, in sorted
    /// order, so concurrent group commits cannot deadlock) BEFORE the first queued positions
    /// are read, by a later statement with a fresh snapshot.
    async fn read_heads_and_record_txns(
        &mut self,
        recipients: &[(&str, &str)],
        keys: &[&TxnKey],
        now: Millis,
    ) -> Result<(Vec<(usize, i64, Option<i64>)>, HashSet<TxnTuple>), sqlx::Error>;

    /// Inserts `rows` with `created_ts = now`, sets `inbox_last_pos` of each
    /// `(user, device, last)` in `heads`, and on PostgreSQL queues the wake-up notifications
    /// `woken` (delivered when the transaction commits; SQLite's single process wakes its
    /// syncs itself after the commit).
    async fn write_batch(
        &mut self,
        rows: &[InboxRow<'_>],
        heads: &[(&str, &str, i64)],
        woken: &[String],
        now: Millis,
    ) -> Result<(), sqlx::Error>;
}

/// A transaction key as returned by `RETURNING`: `(user, device, endpoint, txn_id)`.
type TxnTuple = (String, String, String, String);

/// Sort key of a transaction key (the order keys are recorded in, so that concurrent batches
/// on PostgreSQL take the unique-index locks in the same order).
fn txn_order(key: &TxnKey) -> (&str, &str, &str, &str) {
    (&key.user_id, &key.device_id, &key.endpoint, &key.txn_id)
}

/// The owned form of a key, as [`MailboxOps::read_heads_and_record_txns`] returns it.
fn txn_tuple(key: &TxnKey) -> TxnTuple {
    (
        key.user_id.clone(),
        key.device_id.clone(),
        key.endpoint.clone(),
        key.txn_id.clone(),
    )
}

/// Row counts of SQLite's multi-row statements. A batch is cut into chunks of at most the
/// largest class and each chunk is padded with all-NULL rows (filtered out by the statement) up
/// to the next class, so only a few distinct statements exist and each is prepared once per
/// connection, while a batch of any size costs one statement per chunk instead of one per row.
const SQLITE_CLASSES: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/// The largest class.
const SQLITE_CHUNK: usize = 256;

/// Index into [`SQLITE_CLASSES`] of the smallest class that holds `n` rows (`n <= SQLITE_CHUNK`).
fn class_index(n: usize) -> usize {
    SQLITE_CLASSES
        .iter()
        .position(|&c| c >= n)
        .unwrap_or(SQLITE_CLASSES.len() - 1)
}

/// The padded row count (class size) of a statement for `n` rows (`n <= SQLITE_CHUNK`).
fn class_rows(n: usize) -> usize {
    SQLITE_CLASSES
        .get(class_index(n))
        .copied()
        .unwrap_or(SQLITE_CHUNK)
}

/// A query on SQLite with its arguments.
type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds one row of a padded multi-row `VALUES` per item of `rows` (its `width` values bound
/// by `bind_row`), then NULLs for the padding rows up to `class` rows. Padding rows are all
/// NULL, which every statement filters out (NULL equals nothing, whatever its declared type).
fn bind_rows<'q, T>(
    mut query: SqliteQuery<'q>,
    rows: impl ExactSizeIterator<Item = T>,
    width: usize,
    class: usize,
    bind_row: impl Fn(SqliteQuery<'q>, T) -> SqliteQuery<'q>,
) -> SqliteQuery<'q> {
    let padding = class.saturating_sub(rows.len()) * width;
    for row in rows {
        query = bind_row(query, row);
    }
    for _ in 0..padding {
        query = query.bind(None::<&str>);
    }
    query
}

/// Binds a transaction key as `(user, device, endpoint, txn_id)`.
fn bind_key<'q>(query: SqliteQuery<'q>, key: &'q TxnKey) -> SqliteQuery<'q> {
    query
        .bind(key.user_id.as_str())
        .bind(key.device_id.as_str())
        .bind(key.endpoint.as_str())
        .bind(key.txn_id.as_str())
}

/// Binds a message as `(user, device, pos, sender, event type, content)`; `pos` is the
/// position, or in the one-command path the offset added to the device's last position.
fn bind_message<'q>(
    query: SqliteQuery<'q>,
    message: &'q ToDeviceMessage,
    pos: i64,
) -> SqliteQuery<'q> {
    query
        .bind(message.user_id.as_str())
        .bind(message.device_id.as_str())
        .bind(pos)
        .bind(message.sender.as_str())
        .bind(message.event_type.as_str())
        .bind(message.content.as_str())
}

/// Binds `(user, device, n)`: a device with a position or a message count.
fn bind_device_number<'q>(
    query: SqliteQuery<'q>,
    &(user_id, device_id, n): &(&'q str, &'q str, i64),
) -> SqliteQuery<'q> {
    query.bind(user_id).bind(device_id).bind(n)
}

/// Binds `(index, user, device)` of the `index`th recipient for a head read.
fn bind_head_probe<'q>(
    query: SqliteQuery<'q>,
    (index, &(user_id, device_id)): (usize, &(&'q str, &'q str)),
) -> SqliteQuery<'q> {
    query
        .bind(i64::try_from(index).unwrap_or(i64::MAX))
        .bind(user_id)
        .bind(device_id)
}

/// `head` + `(VALUES (?2, ..), ..)` with `rows` rows of `width` numbered parameters starting at
/// `?2` (`?1` is left for a per-statement value such as the timestamp) + `tail`.
fn values_sql(head: &str, width: usize, rows: usize, tail: &str) -> String {
    let mut sql = String::with_capacity(head.len() + tail.len() + rows * width * 7);
    sql.push_str(head);
    push_values(&mut sql, width, rows, 2);
    sql.push_str(tail);
    sql
}

/// The statement of class `index` from `cell`, built on first use.
fn class_sql(
    cell: &'static OnceLock<Vec<String>>,
    index: usize,
    make: fn(usize) -> String,
) -> &'static str {
    let all = cell.get_or_init(|| SQLITE_CLASSES.iter().map(|&rows| make(rows)).collect());
    all.get(index).map_or("", String::as_str)
}

/// SQLite: inserts up to [`SQLITE_CHUNK`] inbox rows (`?1` = `created_ts`).
fn sqlite_inbox_sql(rows: usize) -> String {
    values_sql(
        "INSERT INTO to_device_inbox \
         (user_id, device_id, pos, sender, event_type, content, created_ts) \
         SELECT column1, column2, column3, column4, column5, column6, ?1 FROM ",
        6,
        rows,
        " WHERE column1 IS NOT NULL",
    )
}

/// SQLite: records up to [`SQLITE_CHUNK`] transaction keys (`?1` = `created_ts`) and returns
/// the new ones.
fn sqlite_txn_sql(rows: usize) -> String {
    values_sql(
        "INSERT INTO txn_ids (user_id, device_id, endpoint, txn_id, created_ts) \
         SELECT column1, column2, column3, column4, ?1 FROM ",
        4,
        rows,
        " WHERE column1 IS NOT NULL \
         ON CONFLICT (user_id, device_id, endpoint, txn_id) DO NOTHING \
         RETURNING user_id, device_id, endpoint, txn_id",
    )
}

/// SQLite: `(index, inbox_last_pos, first queued position)` of up to [`SQLITE_CHUNK`] devices
/// given as `(index, user, device)` rows; unknown devices (and padding) match nothing.
fn sqlite_heads_sql(rows: usize) -> String {
    values_sql(
        "SELECT v.column1, d.inbox_last_pos, (SELECT MIN(i.pos) FROM to_device_inbox i \
         WHERE i.user_id = d.user_id AND i.device_id = d.device_id) FROM ",
        3,
        rows,
        " AS v JOIN devices d ON d.user_id = v.column2 AND d.device_id = v.column3",
    )
}

/// SQLite: sets `inbox_last_pos` of up to [`SQLITE_CHUNK`] `(user, device, last)` rows.
fn sqlite_store_heads_sql(rows: usize) -> String {
    values_sql(
        "UPDATE devices SET inbox_last_pos = v.column3 FROM ",
        3,
        rows,
        " AS v WHERE devices.user_id = v.column1 AND devices.device_id = v.column2",
    )
}

static SQLITE_HEADS_SQL: OnceLock<Vec<String>> = OnceLock::new();
static SQLITE_STORE_HEADS_SQL: OnceLock<Vec<String>> = OnceLock::new();
static SQLITE_INBOX_SQL: OnceLock<Vec<String>> = OnceLock::new();
static SQLITE_TXN_SQL: OnceLock<Vec<String>> = OnceLock::new();

/// SQLite: the queue heads of `recipients` (see [`MailboxOps::read_heads_and_record_txns`]);
/// one padded multi-row statement per [`SQLITE_CHUNK`] recipients.
async fn sqlite_load_heads(
    conn: &mut sqlx::SqliteConnection,
    recipients: &[(&str, &str)],
) -> Result<Vec<(usize, i64, Option<i64>)>, sqlx::Error> {
    let mut out = Vec::with_capacity(recipients.len());
    for (c, chunk) in recipients.chunks(SQLITE_CHUNK).enumerate() {
        let class = class_index(chunk.len());
        let offset = c * SQLITE_CHUNK;
        // `?1` is not used by this statement.
        let query = bind_rows(
            sqlx::query(class_sql(&SQLITE_HEADS_SQL, class, sqlite_heads_sql)).bind(0_i64),
            chunk.iter().enumerate().map(|(i, r)| (offset + i, r)),
            3,
            class_rows(chunk.len()),
            bind_head_probe,
        );
        for row in query.fetch_all(&mut *conn).await? {
            let index: i64 = row.try_get(0)?;
            let Ok(index) = usize::try_from(index) else {
                continue;
            };
            out.push((index, row.try_get(1)?, row.try_get(2)?));
        }
    }
    Ok(out)
}

/// SQLite: sets `inbox_last_pos` of each `(user, device, last)`; one padded multi-row
/// statement per [`SQLITE_CHUNK`] devices.
async fn sqlite_store_heads(
    conn: &mut sqlx::SqliteConnection,
    heads: &[(&str, &str, i64)],
) -> Result<(), sqlx::Error> {
    for chunk in heads.chunks(SQLITE_CHUNK) {
        let class = class_index(chunk.len());
        // `?1` is not used by this statement.
        let query = bind_rows(
            sqlx::query(class_sql(
                &SQLITE_STORE_HEADS_SQL,
                class,
                sqlite_store_heads_sql,
            ))
            .bind(0_i64),
            chunk.iter(),
            3,
            class_rows(chunk.len()),
            bind_device_number,
        );
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// SQLite: inserts `rows` with `created_ts = now`; one padded multi-row statement per
/// [`SQLITE_CHUNK`] rows.
async fn sqlite_insert_inbox(
    conn: &mut sqlx::SqliteConnection,
    rows: &[InboxRow<'_>],
    now: Millis,
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(SQLITE_CHUNK) {
        let class = class_index(chunk.len());
        let query = bind_rows(
            sqlx::query(class_sql(&SQLITE_INBOX_SQL, class, sqlite_inbox_sql)).bind(now),
            chunk.iter(),
            6,
            class_rows(chunk.len()),
            |q, row| bind_message(q, row.message, row.pos),
        );
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// SQLite: records the keys `keys` and returns the new ones; one padded multi-row statement
/// per [`SQLITE_CHUNK`] keys.
async fn sqlite_record_txns(
    conn: &mut sqlx::SqliteConnection,
    keys: &[&TxnKey],
    now: Millis,
) -> Result<HashSet<TxnTuple>, sqlx::Error> {
    let mut fresh = HashSet::with_capacity(keys.len());
    for chunk in keys.chunks(SQLITE_CHUNK) {
        let class = class_index(chunk.len());
        let query = bind_rows(
            sqlx::query(class_sql(&SQLITE_TXN_SQL, class, sqlite_txn_sql)).bind(now),
            chunk.iter(),
            4,
            class_rows(chunk.len()),
            |q, key| bind_key(q, key),
        );
        for row in query.fetch_all(&mut *conn).await? {
            fresh.insert((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
            ));
        }
    }
    Ok(fresh)
}

impl MailboxOps for sqlx::SqliteConnection {
    async fn read_heads_and_record_txns(
        &mut self,
        recipients: &[(&str, &str)],
        keys: &[&TxnKey],
        now: Millis,
    ) -> Result<(Vec<(usize, i64, Option<i64>)>, HashSet<TxnTuple>), sqlx::Error> {
        let heads = sqlite_load_heads(self, recipients).await?;
        Ok((heads, sqlite_record_txns(self, keys, now).await?))
    }

    async fn write_batch(
        &mut self,
        rows: &[InboxRow<'_>],
        heads: &[(&str, &str, i64)],
        _woken: &[String],
        now: Millis,
    ) -> Result<(), sqlx::Error> {
        sqlite_insert_inbox(self, rows, now).await?;
        sqlite_store_heads(self, heads).await
    }
}

/// What a group commit writes, decided from the queue heads and the fresh transaction keys.
struct Plan<'r> {
    /// One outcome per request, in order.
    outcomes: Vec<SendOutcome>,
    /// Message rows to insert.
    rows: Vec<InboxRow<'r>>,
    /// EDUs to queue for other servers.
    edus: Vec<&'r OutboundEdu>,
    /// Transaction keys recorded by this batch whose request was refused (mailbox full) and
    /// that no later request of the batch used: they are removed again.
    refused: Vec<&'r TxnKey>,
    /// `(user, device, last position)` of every device that got mail.
    advanced: Vec<(&'r str, &'r str, i64)>,
}

/// Decides each request of a batch in order: `Duplicate` if its transaction key is not in
/// `fresh` (or was used by an earlier request of the batch), `MailboxFull` if a recipient would
/// exceed `mailbox_cap`, else `Committed` with positions allocated after the device's last one
/// (messages to devices without a head, i.e. unknown devices, are dropped). `heads` are
/// [`MailboxOps::read_heads_and_record_txns`] heads for `recipients`.
fn plan_batch<'r>(
    requests: &'r [SendRequest],
    recipients: &[(&'r str, &'r str)],
    heads: Vec<(usize, i64, Option<i64>)>,
    mut fresh: HashSet<TxnTuple>,
    mailbox_cap: i64,
) -> Plan<'r> {
    let mut state: HashMap<(&str, &str), Head> = HashMap::with_capacity(heads.len());
    for (i, last, first) in heads {
        let Some(&key) = recipients.get(i) else {
            continue;
        };
        let len = first.map_or(0, |first| last - first + 1);
        state.insert(
            key,
            Head {
                last,
                len,
                dirty: false,
            },
        );
    }
    let mut outcomes = Vec::with_capacity(requests.len());
    let mut rows: Vec<InboxRow<'r>> = Vec::new();
    let mut edus: Vec<&'r OutboundEdu> = Vec::new();
    let mut refused: Vec<&'r TxnKey> = Vec::new();
    for request in requests {
        let txn = &request.txn;
        let tuple = txn_tuple(txn);
        if !fresh.contains(&tuple) {
            outcomes.push(SendOutcome::Duplicate);
            continue;
        }
        let mut added: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for m in &request.local {
            let key = (m.user_id.as_str(), m.device_id.as_str());
            if state.contains_key(&key) {
                *added.entry(key).or_default() += 1;
            }
        }
        let full = added
            .iter()
            .any(|(key, n)| state.get(key).is_some_and(|h| h.len + n > mailbox_cap));
        if full {
            refused.push(txn);
            outcomes.push(SendOutcome::MailboxFull);
            continue;
        }
        // Used: a later request of this batch with the same key is a duplicate.
        fresh.remove(&tuple);
        for message in &request.local {
            let key = (message.user_id.as_str(), message.device_id.as_str());
            if let Some(head) = state.get_mut(&key) {
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
    // A refused key is removed again unless it was already removed (an earlier refusal) or a
    // later request of the batch used it.
    refused.retain(|txn| fresh.remove(&txn_tuple(txn)));
    let mut advanced: Vec<(&'r str, &'r str, i64)> = Vec::new();
    for &(user_id, device_id) in recipients {
        if let Some(head) = state.get(&(user_id, device_id)).filter(|h| h.dirty) {
            advanced.push((user_id, device_id, head.last));
        }
    }
    Plan {
        outcomes,
        rows,
        edus,
        refused,
        advanced,
    }
}

/// Appends `(VALUES (?first, ..), ..)` with `rows` rows of `width` numbered parameters to
/// `sql` and returns the next free parameter number.
fn push_values(sql: &mut String, width: usize, rows: usize, first: usize) -> usize {
    let mut n = first;
    sql.push_str("(VALUES ");
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..width {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push('?');
            sql.push_str(&n.to_string());
            n += 1;
        }
        sql.push(')');
    }
    sql.push(')');
    n
}

/// SQLite: everything [`Store::sync_reads`] reads, as ONE statement (one snapshot and one
/// round trip to the reader's worker thread instead of five). Each row says what it is in
/// `kind`: 0 a queued message, 1 the device-list position, 2 a message at or before `after`
/// (acknowledgement due), 3 a one-time key count, 4 an unused fallback key algorithm.
const SQLITE_SYNC_READS: &str = "\
    SELECT 0 AS kind, pos AS n, sender AS a, event_type AS b, content AS c FROM \
      (SELECT pos, sender, event_type, content FROM to_device_inbox \
       WHERE user_id = $1 AND device_id = $2 AND pos > $3 ORDER BY pos LIMIT $4) \
    UNION ALL SELECT 1, value, NULL, NULL, NULL FROM stream_counters WHERE name = 'device_list' \
    UNION ALL SELECT 2, pos, NULL, NULL, NULL FROM \
      (SELECT pos FROM to_device_inbox WHERE user_id = $1 AND device_id = $2 AND pos <= $3 \
       LIMIT 1) \
    UNION ALL SELECT 3, COUNT(*), algorithm, NULL, NULL FROM one_time_keys \
      WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm \
    UNION ALL SELECT 4, 0, algorithm, NULL, NULL FROM fallback_keys \
      WHERE user_id = $1 AND device_id = $2 AND used = FALSE";

/// [`Store::sync_reads`] on SQLite (see [`SQLITE_SYNC_READS`]).
async fn sqlite_sync_reads(
    reader: &sqlx::SqlitePool,
    user_id: &str,
    device_id: &str,
    after: i64,
    limit: i64,
) -> StoreResult<SyncReads> {
    let rows = sqlx::query(SQLITE_SYNC_READS)
        .bind(user_id)
        .bind(device_id)
        .bind(after)
        .bind(limit.max(0))
        .fetch_all(reader)
        .await?;
    let mut reads = SyncReads {
        device_list_pos: 0,
        unacknowledged: false,
        events: Vec::with_capacity(rows.len()),
        one_time_key_counts: BTreeMap::new(),
        unused_fallback_key_types: Vec::new(),
    };
    let mut device_list_pos = None;
    for row in &rows {
        let kind: i64 = row.try_get(0)?;
        let n: i64 = row.try_get(1)?;
        let a: Option<String> = row.try_get(2)?;
        match (kind, a) {
            (0, Some(sender)) => reads.events.push(InboxEvent {
                pos: n,
                sender,
                event_type: row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
                content: row.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
            }),
            (1, _) => device_list_pos = Some(n),
            (2, _) => reads.unacknowledged = true,
            (3, Some(algorithm)) => {
                reads.one_time_key_counts.insert(algorithm, n);
            }
            (4, Some(algorithm)) => reads.unused_fallback_key_types.push(algorithm),
            _ => {}
        }
    }
    // The order of a compound SELECT's rows is not guaranteed across its parts.
    reads.events.sort_by_key(|e| e.pos);
    reads.unused_fallback_key_types.sort();
    reads.device_list_pos = device_list_pos.ok_or(sqlx::Error::RowNotFound)?;
    Ok(reads)
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
        let recipients: Vec<(&str, &str)> = recipients.into_iter().collect();
        // Idempotency: every distinct transaction key of the batch is recorded with one
        // statement; the ones it reports as new may be used by one request each.
        let mut keys: Vec<&TxnKey> = requests.iter().map(|r| &r.txn).collect();
        keys.sort_by(|a, b| txn_order(a).cmp(&txn_order(b)));
        keys.dedup();
        if let super::Backend::Sqlite { writer, .. } = &self.backend {
            if recipients.len() <= SQLITE_CHUNK && keys.len() <= SQLITE_CHUNK {
                return sqlite_commit::commit_sends(
                    writer,
                    requests,
                    &recipients,
                    &keys,
                    mailbox_cap,
                    now,
                )
                .await;
            }
        }
        with_tx!(self, |tx, pg| {
            let (heads, fresh) =
                MailboxOps::read_heads_and_record_txns(&mut *tx, &recipients, &keys, now).await?;
            let plan = plan_batch(requests, &recipients, heads, fresh, mailbox_cap);
            forget_txns!(tx, &plan.refused);
            // One notification for the whole batch (a few for a very long device list).
            let woken = wake_payloads(
                plan.advanced
                    .iter()
                    .map(|&(user_id, device_id, _)| (user_id, device_id)),
            );
            MailboxOps::write_batch(&mut *tx, &plan.rows, &plan.advanced, &woken, now).await?;
            super::federation::enqueue_edus!(tx, plan.edus, now);
            plan.outcomes
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
        // Only take the write path when there is something to acknowledge.
        let stale: Option<i64> = with_pools!(self, |r, pg| {
            StoreResult::Ok(
                sqlx::query_scalar(
                    "SELECT pos FROM to_device_inbox WHERE user_id = $1 AND device_id = $2 \
                 AND pos <= $3 LIMIT 1",
                )
                .bind(user_id)
                .bind(device_id)
                .bind(pos)
                .fetch_optional(r)
                .await?,
            )
        })?;
        if stale.is_some() {
            self.ack_inbox(user_id, device_id, pos).await?;
        }
        with_pools!(self, |r, pg| {
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

    /// Everything one `/sync` answer reads, in one statement on either backend (one snapshot): the device-list stream position, whether messages at
    /// or before `after` are still queued (an acknowledgement to apply with
    /// [`Store::ack_inbox`]), up to `limit` messages after `after`, the unclaimed one-time key
    /// counts and the unused fallback key algorithms.
    pub async fn sync_reads(
        &self,
        user_id: &str,
        device_id: &str,
        after: i64,
        limit: i64,
    ) -> StoreResult<SyncReads> {
        match &self.backend {
            super::Backend::Sqlite { reader, .. } => {
                sqlite_sync_reads(reader, user_id, device_id, after, limit).await
            }
            super::Backend::Postgres(pool) => {
                pg_sync_reads(pool, user_id, device_id, after, limit).await
            }
        }
    }

    /// Deletes the device's messages at or before `pos` (an acknowledgement).
    ///
    /// Concurrent acknowledgements of this process are committed together (one statement and
    /// one commit for the group, see [`AckGroup`]); the call returns once its group committed.
    pub async fn ack_inbox(&self, user_id: &str, device_id: &str, pos: i64) -> StoreResult<()> {
        self.acks.ack(&self.backend, user_id, device_id, pos).await
    }

    /// The last position allocated to a device's mailbox (`None` for an unknown device). A sync
    /// with nothing queued can use it as its `next_batch` position.
    pub async fn inbox_last_pos(&self, user_id: &str, device_id: &str) -> StoreResult<Option<i64>> {
        with_pools!(self, |r, pg| {
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
        with_pools!(self, |r, pg| {
            Ok(sqlx::query_scalar("SELECT COUNT(*) FROM to_device_inbox")
                .fetch_one(r)
                .await?)
        })
    }

    // ---- idempotency --------------------------------------------------------------------------------
    /// Whether `(user, device, endpoint, txn_id)` was already committed.
    pub async fn txn_seen(&self, txn: &TxnKey) -> StoreResult<bool> {
        with_pools!(self, |r, pg| {
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

/// PostgreSQL: everything [`Store::sync_reads`] reads, in ONE statement (one round trip and
/// one snapshot instead of five statements).
async fn pg_sync_reads(
    pool: &sqlx::PgPool,
    user_id: &str,
    device_id: &str,
    after: i64,
    limit: i64,
) -> StoreResult<SyncReads> {
    let row = sqlx::query(
        "WITH m AS (SELECT pos, sender, event_type, content FROM to_device_inbox \
             WHERE user_id = $1 AND device_id = $2 AND pos > $3 ORDER BY pos LIMIT $4), \
         k AS (SELECT algorithm, COUNT(*) AS n FROM one_time_keys \
             WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm) \
         SELECT (SELECT value FROM stream_counters WHERE name = 'device_list') AS device_list_pos, \
         EXISTS (SELECT 1 FROM to_device_inbox \
             WHERE user_id = $1 AND device_id = $2 AND pos <= $3) AS stale, \
         (SELECT array_agg(pos ORDER BY pos) FROM m) AS positions, \
         (SELECT array_agg(sender ORDER BY pos) FROM m) AS senders, \
         (SELECT array_agg(event_type ORDER BY pos) FROM m) AS types, \
         (SELECT array_agg(content ORDER BY pos) FROM m) AS contents, \
         (SELECT array_agg(algorithm ORDER BY algorithm) FROM k) AS algorithms, \
         (SELECT array_agg(n ORDER BY algorithm) FROM k) AS counts, \
         (SELECT array_agg(algorithm ORDER BY algorithm) FROM fallback_keys \
             WHERE user_id = $1 AND device_id = $2 AND used = FALSE) AS fallback",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(after)
    .bind(limit.max(0))
    .fetch_one(pool)
    .await?;
    let positions: Vec<i64> = row
        .try_get::<Option<_>, _>("positions")?
        .unwrap_or_default();
    let senders: Vec<String> = row.try_get::<Option<_>, _>("senders")?.unwrap_or_default();
    let types: Vec<String> = row.try_get::<Option<_>, _>("types")?.unwrap_or_default();
    let contents: Vec<String> = row.try_get::<Option<_>, _>("contents")?.unwrap_or_default();
    let events = positions
        .into_iter()
        .zip(senders)
        .zip(types)
        .zip(contents)
        .map(|(((pos, sender), event_type), content)| InboxEvent {
            pos,
            sender,
            event_type,
            content,
        })
        .collect();
    let algorithms: Vec<String> = row
        .try_get::<Option<_>, _>("algorithms")?
        .unwrap_or_default();
    let counts: Vec<i64> = row.try_get::<Option<_>, _>("counts")?.unwrap_or_default();
    Ok(SyncReads {
        device_list_pos: row.try_get("device_list_pos")?,
        unacknowledged: row.try_get("stale")?,
        events,
        one_time_key_counts: algorithms.into_iter().zip(counts).collect(),
        unused_fallback_key_types: row.try_get::<Option<_>, _>("fallback")?.unwrap_or_default(),
    })
}

/// One queued acknowledgement: delete `(user_id, device_id)`'s messages up to `pos`.
struct AckJob {
    user_id: String,
    device_id: String,
    pos: i64,
    reply: oneshot::Sender<StoreResult<()>>,
}

/// Group commit of acknowledgements.
///
/// Every delivered message is acknowledged by the recipient's next `/sync`, so under load
/// there is one acknowledgement per message; alone, each would be its own transaction (on
/// PostgreSQL with its own WAL flush, on SQLite a command to the single writer between the
/// group commits of sends). The caller that finds no group committing becomes the leader: it
/// takes every queued acknowledgement and deletes them with one statement (over arrays on
/// PostgreSQL, padded multi-row on SQLite), in a spawned task (a cancelled caller cannot abort
/// the others'); the ones that queued meanwhile are taken by the next leader. If a group fails, each of its acknowledgements is retried alone, so one
/// caller's error never becomes another's.
#[derive(Default)]
pub(super) struct AckGroup {
    queue: std::sync::Mutex<Vec<AckJob>>,
    leader: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl AckGroup {
    /// Queues one acknowledgement and waits until its group committed.
    async fn ack(
        &self,
        backend: &super::Backend,
        user_id: &str,
        device_id: &str,
        pos: i64,
    ) -> StoreResult<()> {
        let (reply, mut answer) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(AckJob {
                user_id: user_id.to_owned(),
                device_id: device_id.to_owned(),
                pos,
                reply,
            });
        let leader = self.leader.clone().lock_owned().await;
        match answer.try_recv() {
            Ok(result) => return result, // committed by the previous leader
            Err(oneshot::error::TryRecvError::Closed) => return Err(lost_ack()),
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        let jobs = std::mem::take(
            &mut *self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let backend = backend.clone();
        tokio::spawn(async move {
            let _leader = leader;
            commit_ack_group(&backend, jobs).await;
        });
        answer.await.unwrap_or_else(|_| Err(lost_ack()))
    }
}

/// Deletes the acknowledged messages of `jobs` with one statement and answers each; on failure
/// retries each alone.
async fn commit_ack_group(backend: &super::Backend, jobs: Vec<AckJob>) {
    if jobs.len() > 1 {
        match delete_acked(backend, &jobs).await {
            Ok(()) => {
                for job in jobs {
                    let _ = job.reply.send(Ok(()));
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "acknowledgement group failed; retrying one by one")
            }
        }
    }
    for job in jobs {
        let result = delete_acked(backend, std::slice::from_ref(&job)).await;
        let _ = job.reply.send(result);
    }
}

/// `DELETE` of every job's messages at or before its position, as one statement (on SQLite one
/// per [`SQLITE_CHUNK`] jobs).
async fn delete_acked(backend: &super::Backend, jobs: &[AckJob]) -> StoreResult<()> {
    let pool = match backend {
        super::Backend::Postgres(pool) => pool,
        super::Backend::Sqlite { writer, .. } => return sqlite_delete_acked(writer, jobs).await,
    };
    let users: Vec<&str> = jobs.iter().map(|j| j.user_id.as_str()).collect();
    let devices: Vec<&str> = jobs.iter().map(|j| j.device_id.as_str()).collect();
    let positions: Vec<i64> = jobs.iter().map(|j| j.pos).collect();
    sqlx::query(
        "DELETE FROM to_device_inbox i \
         USING UNNEST($1::text[], $2::text[], $3::bigint[]) AS x(u, d, p) \
         WHERE i.user_id = x.u AND i.device_id = x.d AND i.pos <= x.p",
    )
    .bind(users)
    .bind(devices)
    .bind(positions)
    .execute(pool)
    .await?;
    Ok(())
}

/// SQLite: deletes up to [`SQLITE_CHUNK`] acknowledged ranges given as `(user, device, pos)`
/// rows (`?1` unused); the join finds the rows through the mailbox's primary key.
fn sqlite_ack_sql(rows: usize) -> String {
    values_sql(
        "DELETE FROM to_device_inbox WHERE rowid IN (SELECT i.rowid FROM ",
        3,
        rows,
        " AS v JOIN to_device_inbox i ON i.user_id = v.column1 AND i.device_id = v.column2 \
         AND i.pos <= v.column3)",
    )
}

static SQLITE_ACK_SQL: OnceLock<Vec<String>> = OnceLock::new();

/// [`delete_acked`] on SQLite, on the writer connection (each statement commits by itself:
/// an acknowledgement repeated after a failure deletes nothing more).
async fn sqlite_delete_acked(
    writer: &super::connect::SqliteWriter,
    jobs: &[AckJob],
) -> StoreResult<()> {
    let mut guard = writer.lock().await?;
    for chunk in jobs.chunks(SQLITE_CHUNK) {
        let class = class_index(chunk.len());
        let query = bind_rows(
            sqlx::query(class_sql(&SQLITE_ACK_SQL, class, sqlite_ack_sql)).bind(0_i64),
            chunk.iter(),
            3,
            class_rows(chunk.len()),
            |q, job| {
                q.bind(job.user_id.as_str())
                    .bind(job.device_id.as_str())
                    .bind(job.pos)
            },
        );
        if let Err(e) = query.execute(&mut *guard).await {
            writer.note_error(&e);
            return Err(e.into());
        }
    }
    Ok(())
}

/// The error of an acknowledgement whose group commit task went away without answering.
fn lost_ack() -> super::StoreError {
    super::StoreError::Database(sqlx::Error::WorkerCrashed)
}
