//! Storage: the only module that contains SQL.
//!
//! One [`Store`] type serves both backends (SQLite, the embedded default, and PostgreSQL for
//! production). Every method is a complete unit of work: it commits before it returns `Ok`, so a
//! caller that answers 200 after `Ok` has made the data durable.
//!
//! CONTRACT between the data layer and the HTTP layer. The method list below is the agreed
//! interface; bodies are filled in by the data-layer work. Signatures may grow (new methods,
//! new optional fields) but existing ones change only by agreement.
//!
//! # How it works
//! * **Backends**: concrete pools, no `Any` driver. Each method's body is written once and
//!   compiled for both drivers (`with_pools!` / `with_tx!`), so the same SQL text is checked
//!   against SQLite and PostgreSQL; the few dialect differences (`FOR UPDATE SKIP LOCKED`,
//!   `FOR NO KEY UPDATE`, PostgreSQL's `UNNEST` bulk insert) are spelled out where they occur.
//!   Migrations live in `migrations/sqlite` and `migrations/postgres` and run in
//!   [`Store::connect`].
//! * **SQLite**: WAL, foreign keys on, 10 s busy timeout, one writer connection (write
//!   transactions start with `BEGIN IMMEDIATE`) plus four readers. Durability is
//!   `synchronous = NORMAL` by default: a commit reaches the WAL file before `Ok` is returned, so
//!   it survives a crash or `kill -9` of the server process, but not necessarily a power loss;
//!   `sqlite://PATH?synchronous=full` adds an fsync per (group) commit. See [`SqliteSync`].
//! * **PostgreSQL**: everything that matters is in the database, so several processes can
//!   share one database: mailbox positions and device-list positions come from counter rows
//!   locked inside the writing transaction (never from sequences, whose values can become
//!   visible out of order), one-time keys are claimed with `SKIP LOCKED`, and idempotency is a
//!   primary key checked inside the send transaction.
//! * **Bounds**: mailboxes are capped per device (`commit_sends`' `mailbox_cap`), one-time keys
//!   per device ([`MAX_ONE_TIME_KEYS_PER_DEVICE`]), fallback keys and in-flight federation
//!   transactions to one per device/algorithm and destination; everything time-based
//!   (messages, outbound EDUs, txn IDs, UIA sessions, claimed-key memory, device-list stream
//!   and interests, idle destinations) is deleted by [`Store::prune`]; everything per device is
//!   deleted with the device.

mod accounts;
mod connect;
mod device_lists;
mod devices;
mod federation;
pub mod federation_txn;
mod keys;
mod mailbox;
mod notify;
mod retention;
mod token_cache;

pub use connect::SqliteSync;
pub use federation::{DestinationLockSession, DestinationRow};
pub use keys::{Claimed, KeyClaim, MAX_ONE_TIME_KEYS_PER_DEVICE};
pub use notify::{WakeListener, Wakeup, WAKE_CHANNEL};
pub use retention::PruneCutoffs;
pub use token_cache::TOKEN_CACHE_TTL;

use sqlx::{PgPool, SqlitePool};

/// Errors from the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness constraint was violated (for example, a taken user ID).
    #[error("already exists")]
    Conflict,
    /// The row the operation needs does not exist.
    #[error("not found")]
    NotFound,
    /// A bound was reached (for example, the recipient's mailbox is full).
    #[error("limit reached: {0}")]
    Limit(&'static str),
    /// The database failed or is unreachable; retryable from the client's point of view.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed at start-up.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Result alias for the store.
pub type StoreResult<T> = Result<T, StoreError>;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// A device row as returned by `GET /devices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    /// Device ID.
    pub device_id: String,
    /// Display name, if set.
    pub display_name: Option<String>,
    /// Last IP seen using this device, if recorded.
    pub last_seen_ip: Option<String>,
    /// Last time the device was seen (ms).
    pub last_seen_ts: Option<Millis>,
}

/// What an access token resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOwner {
    /// Full user ID (`@alice:example.org`).
    pub user_id: String,
    /// Device the token belongs to.
    pub device_id: String,
}

/// A stored account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// Full user ID.
    pub user_id: String,
    /// argon2id PHC string; `None` for accounts that cannot log in with a password.
    pub password_hash: Option<String>,
    /// Whether the account was deactivated.
    pub deactivated: bool,
}

/// A registration token and its usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationTokenRow {
    /// The token string (opaque ID, at most 64 chars).
    pub token: String,
    /// How many registrations it allows in total; `None` = unlimited.
    pub uses_allowed: Option<i64>,
    /// Registrations completed with it.
    pub completed: i64,
    /// Expiry (ms); `None` = never.
    pub expiry_ts: Option<Millis>,
}

/// One key to store, `<algorithm>:<key_id>` split, with its exact JSON (string or key object).
#[derive(Debug, Clone)]
pub struct KeyUpload {
    /// Algorithm (`signed_curve25519`, ...).
    pub algorithm: String,
    /// Opaque key ID; never parsed or sorted.
    pub key_id: String,
    /// The exact JSON value uploaded (kept byte-for-byte as received after re-serialisation).
    pub json: String,
}

/// Outcome of uploading one-time keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtkUploadOutcome {
    /// All keys stored or were identical re-uploads.
    Stored,
    /// A key ID already exists with different content: `(algorithm:key_id, old json, new json)`.
    ConflictingKey(String, String, String),
}

/// A claimed key: `(algorithm:key_id, json)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedKey {
    /// `<algorithm>:<key_id>`.
    pub full_id: String,
    /// Exact uploaded JSON.
    pub json: String,
}

/// A to-device message for one recipient device.
#[derive(Debug, Clone)]
pub struct ToDeviceMessage {
    /// Recipient user ID (local).
    pub user_id: String,
    /// Recipient device ID (already expanded, never `*`).
    pub device_id: String,
    /// Sender user ID.
    pub sender: String,
    /// Event type.
    pub event_type: String,
    /// Content JSON (serialised object).
    pub content: String,
}

/// A queued to-device event as delivered by `/sync`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEvent {
    /// Per-device stream position; strictly increasing in commit order for one device.
    pub pos: i64,
    /// Sender user ID.
    pub sender: String,
    /// Event type.
    pub event_type: String,
    /// Content JSON (serialised object).
    pub content: String,
}

/// What one `/sync` answer reads ([`Store::sync_reads`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReads {
    /// Current device-list stream position (read first).
    pub device_list_pos: i64,
    /// Messages at or before the acknowledged position are still queued.
    pub unacknowledged: bool,
    /// Queued messages after the acknowledged position, in order.
    pub events: Vec<InboxEvent>,
    /// Unclaimed one-time keys per algorithm (algorithms with none are absent).
    pub one_time_key_counts: std::collections::BTreeMap<String, i64>,
    /// Algorithms whose fallback key is unused, ordered.
    pub unused_fallback_key_types: Vec<String>,
}

/// An EDU queued for a remote server (drained by the federation sender).
#[derive(Debug, Clone)]
pub struct OutboundEdu {
    /// Destination server name.
    pub destination: String,
    /// EDU type, e.g. `m.direct_to_device`.
    pub edu_type: String,
    /// EDU content JSON (serialised object).
    pub content: String,
}

/// Idempotency key of a client request: `(user, device, endpoint path, txn_id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnKey {
    /// Sender user ID.
    pub user_id: String,
    /// Sender device ID.
    pub device_id: String,
    /// Endpoint, e.g. `sendToDevice/m.room.encrypted`.
    pub endpoint: String,
    /// Client-chosen transaction ID.
    pub txn_id: String,
}

/// One sendToDevice request, expanded (`*` resolved for local users) and split by destination.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// Idempotency key.
    pub txn: TxnKey,
    /// Messages for local devices.
    pub local: Vec<ToDeviceMessage>,
    /// EDUs for remote servers.
    pub remote: Vec<OutboundEdu>,
}

/// What happened to one [`SendRequest`] in a group commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Committed; these `(user_id, device_id)` got mail and should be woken.
    Committed(Vec<(String, String)>),
    /// The transaction key was used before; nothing was written.
    Duplicate,
    /// A recipient mailbox is full; nothing of this request was written.
    MailboxFull,
}

/// Which database to talk to. Constructed by [`Store::connect`]; cheap to clone (pools are shared).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// Recent access-token look-ups (see [`token_cache`]).
    tokens: std::sync::Arc<token_cache::TokenCache>,
    /// The group commit of one-time key claims (see [`Store::claim_keys`]).
    claims: std::sync::Arc<keys::ClaimGroup>,
    /// The group commit of mailbox acknowledgements on PostgreSQL (see [`Store::ack_inbox`]).
    acks: std::sync::Arc<mailbox::AckGroup>,
}

/// The concrete connections of one backend.
#[derive(Clone)]
enum Backend {
    /// SQLite: one dedicated writer connection behind a mutex (SQLite has a single writer; one
    /// connection avoids lock upgrades failing with `SQLITE_BUSY`, and holding it directly
    /// avoids the pool's per-use overhead on the hot write path) and a small pool of readers
    /// (WAL lets them run alongside the writer).
    Sqlite {
        writer: std::sync::Arc<connect::SqliteWriter>,
        reader: SqlitePool,
    },
    /// PostgreSQL: one pool for everything.
    Postgres(PgPool),
}

/// Runs a read-only `$body` with `$r`, the pool for reads. Inside the body the type alias `Db`
/// names the backend's `sqlx::Database` and `$pg` says whether it is PostgreSQL. The body is
/// compiled once per backend, so the same SQL text is type-checked against both drivers; it
/// evaluates to a `StoreResult`.
macro_rules! with_pools {
    ($store:expr, |$r:ident, $pg:ident| $body:expr) => {
        match &$store.backend {
            $crate::store::Backend::Sqlite { reader, .. } => {
                #[allow(dead_code)]
                type Db = sqlx::Sqlite;
                #[allow(unused_variables)]
                let ($r, $pg) = (reader, false);
                $body
            }
            $crate::store::Backend::Postgres(pool) => {
                #[allow(dead_code)]
                type Db = sqlx::Postgres;
                #[allow(unused_variables)]
                let ($r, $pg) = (pool, true);
                $body
            }
        }
    };
}

/// Runs `$body` with `$w`, an executor for ONE autocommitted statement (the locked SQLite
/// writer connection, or the PostgreSQL pool). Evaluates to the body's `StoreResult`.
macro_rules! with_writer {
    ($store:expr, |$w:ident, $pg:ident| $body:expr) => {
        match &$store.backend {
            $crate::store::Backend::Sqlite { writer, .. } => {
                #[allow(dead_code)]
                type Db = sqlx::Sqlite;
                #[allow(unused_variables)]
                let $pg = false;
                let mut guard = writer.lock().await?;
                let $w = &mut *guard;
                $body
            }
            $crate::store::Backend::Postgres(pool) => {
                #[allow(dead_code)]
                type Db = sqlx::Postgres;
                #[allow(unused_variables)]
                let $pg = true;
                let $w = pool;
                $body
            }
        }
    };
}

/// Runs `$body` inside one write transaction and commits it if the body finishes; evaluates to
/// `Ok(value of body)`. A `?` or `return` inside the body leaves without committing, which rolls
/// the transaction back (used on purpose for all-or-nothing outcomes). SQLite transactions start
/// with `BEGIN IMMEDIATE` so they take the write lock up front instead of failing on upgrade.
macro_rules! with_tx {
    ($store:expr, |$tx:ident, $pg:ident| $body:expr) => {
        match &$store.backend {
            $crate::store::Backend::Sqlite { writer, .. } => {
                #[allow(dead_code)]
                type Db = sqlx::Sqlite;
                #[allow(unused_variables)]
                let $pg = false;
                let mut guard = writer.lock().await?;
                #[allow(unused_mut)]
                let mut $tx = writer.begin(&mut *guard).await?;
                let out = $body;
                $tx.commit().await.inspect_err(|e| writer.note_error(e))?;
                Ok(out)
            }
            $crate::store::Backend::Postgres(pool) => {
                #[allow(dead_code)]
                type Db = sqlx::Postgres;
                #[allow(unused_variables)]
                let $pg = true;
                #[allow(unused_mut)]
                let mut $tx = pool.begin().await?;
                let out = $body;
                $tx.commit().await?;
                Ok(out)
            }
        }
    };
}

/// Appends a device-list change for `$user` inside transaction `$tx`; the position comes from a
/// counter row updated in the same transaction, so positions become visible in order.
macro_rules! record_device_list_change {
    ($tx:ident, $user:expr, $now:expr) => {{
        let pos: i64 = sqlx::query_scalar(
            "UPDATE stream_counters SET value = value + 1 WHERE name = 'device_list' RETURNING value",
        )
        .fetch_one(&mut *$tx)
        .await?;
        sqlx::query("INSERT INTO device_list_stream (pos, user_id, ts) VALUES ($1, $2, $3)")
            .bind(pos)
            .bind($user)
            .bind($now)
            .execute(&mut *$tx)
            .await?;
    }};
}

/// Deletes one device with everything that hangs off it inside transaction `$tx`; evaluates to
/// `true` if the device existed.
macro_rules! purge_device {
    ($tx:ident, $user:expr, $device:expr) => {{
        for sql in [
            "DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2",
            "DELETE FROM one_time_keys WHERE user_id = $1 AND device_id = $2",
            "DELETE FROM claimed_one_time_keys WHERE user_id = $1 AND device_id = $2",
            "DELETE FROM fallback_keys WHERE user_id = $1 AND device_id = $2",
            "DELETE FROM to_device_inbox WHERE user_id = $1 AND device_id = $2",
            "DELETE FROM txn_ids WHERE user_id = $1 AND device_id = $2",
        ] {
            sqlx::query(sql)
                .bind($user)
                .bind($device)
                .execute(&mut *$tx)
                .await?;
        }
        sqlx::query("DELETE FROM devices WHERE user_id = $1 AND device_id = $2")
            .bind($user)
            .bind($device)
            .execute(&mut *$tx)
            .await?
            .rows_affected()
            > 0
    }};
}

use {purge_device, record_device_list_change, with_pools, with_tx, with_writer};

impl Store {
    /// `true` for PostgreSQL, `false` for SQLite.
    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Closes every pooled connection (waits for in-flight queries). Used at shutdown and by
    /// tests before dropping their database.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite { writer, reader } => {
                reader.close().await;
                writer.close().await;
            }
            Backend::Postgres(pool) => pool.close().await,
        }
    }
}

/// Milliseconds since the Unix epoch from the system clock (for the few methods whose contract
/// has no `now` parameter).
fn system_now() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
