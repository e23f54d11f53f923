//! The local store: one SQLite file per profile (sqlx, WAL, `secure_delete` on). Everything
//! the client keeps is sealed under the vault's keys: the account, session records, the login
//! (server, user and device ID, access token), settings, trust pins, history records (peer,
//! sender, time, state and body), queued requests and notices. Columns that must be searched
//! hold keyed tags ([`Vault::tag`]) instead of user or device IDs. What stays readable is
//! listed in docs/client.md: row counts, local sequence numbers, session generations and the
//! key-wrapping parameters.
//!
//! Decrypted session records are cached in memory, keyed by a random stamp written with each
//! record, so a record is decrypted only when another process (or a rolled-back transaction)
//! changed the row since this one wrote or read it.
//!
//! Every multi-step change runs in a `BEGIN IMMEDIATE` transaction so that two `hush`
//! processes on one profile (say `listen` and `send`) serialize instead of losing updates.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hush_crypto::{Account, SessionRecord};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};
use zeroize::{Zeroize, Zeroizing};

use crate::clock::Clock;
use crate::vault::{KdfParams, Passphrase, Vault, VaultError, WrappedKey};

/// The store file inside a profile directory.
pub const STORE_FILE: &str = "hush.db";
/// How many received-event digests are kept for de-duplication (oldest dropped first).
pub const SEEN_KEPT: i64 = 100_000;
/// How many decrypted session records the in-memory cache holds.
const SESSION_CACHE_MAX: usize = 1024;
/// The meta key of the sealed login.
const LOGIN_KEY: &str = "login";

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("local store error: {0}")]
    Db(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("local store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Unlocking or decrypting failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// There is no store for this profile.
    #[error("no account in profile directory {0}; run `hush register` or `hush login` first")]
    Missing(PathBuf),
    /// A record did not decode.
    #[error("the local store is damaged: {0}")]
    Corrupt(String),
    /// A session record was changed by someone else since it was loaded.
    #[error("a session record changed concurrently; try again")]
    Conflict,
}

/// Result alias.
pub type StoreResult<T> = Result<T, StoreError>;

/// The login of a profile.
#[derive(Clone)]
pub struct Login {
    /// Homeserver base URL.
    pub server_url: String,
    /// User ID.
    pub user_id: String,
    /// Device ID.
    pub device_id: String,
    /// Access token (stored encrypted).
    pub access_token: Zeroizing<String>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("server_url", &self.server_url)
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// A pinned device identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedDevice {
    /// User ID.
    pub user_id: String,
    /// Device ID.
    pub device_id: String,
    /// Ed25519 identity key, base64.
    pub ed25519: String,
    /// When first seen (s).
    pub first_seen: u64,
    /// Whether sending to it is allowed.
    pub approved: bool,
    /// Whether the server still lists it.
    pub active: bool,
}

/// A message of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Local sequence number (order of arrival).
    pub seq: i64,
    /// Message ID chosen by the sender.
    pub msg_id: String,
    /// The other user of the conversation.
    pub peer: String,
    /// Whether it was sent by this user (from any of its devices).
    pub outgoing: bool,
    /// Sending user.
    pub sender_user: String,
    /// Sending device.
    pub sender_device: String,
    /// Sender's timestamp (ms).
    pub ts: u64,
    /// `pending`, `sent` or `received`.
    pub state: String,
    /// The text.
    pub body: String,
}

/// An open, unlocked store.
pub struct Store {
    pool: SqlitePool,
    vault: Vault,
    path: PathBuf,
    /// Decrypted session records by peer tag, with the stamp of the row they came from.
    sessions: Mutex<HashMap<Vec<u8>, (i64, SessionRecord)>>,
    /// The time of notices and verification marks.
    clock: Clock,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The sealed login (meta key `login`).
#[derive(Serialize, Deserialize)]
struct SealedLogin {
    server_url: String,
    user_id: String,
    device_id: String,
    access_token: String,
}

/// A sealed notice.
#[derive(Serialize, Deserialize)]
struct SealedNotice {
    ts: u64,
    user_id: String,
    text: String,
}

/// A sealed outbox entry: one request carrying the messages `msg_id` and `more` (a batch;
/// entries written before batching have no `more`).
#[derive(Serialize, Deserialize)]
struct SealedSend {
    msg_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    more: Vec<String>,
    messages: serde_json::Value,
}

fn to_json<T: Serialize>(value: &T) -> StoreResult<Zeroizing<Vec<u8>>> {
    serde_json::to_vec(value)
        .map(Zeroizing::new)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode a record: {e}")))
}

fn from_json<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn random_stamp() -> i64 {
    // Any value but the "nothing cached" marker used in queries.
    (rand::rngs::OsRng.next_u64() >> 1) as i64
}

/// Opens the pool. `synchronous=FULL`: every commit is on disk before the client acts on it.
/// With `NORMAL` a power cut could roll back a committed send (ratchet state and outbox) after
/// its request left, and the next message would reuse that message key; or roll back a
/// received batch after the next `/sync` acknowledged it to the server, losing it. The cost is
/// one fsync per transaction, and the engine commits whole batches at a time.
async fn connect(path: &Path, create: bool) -> StoreResult<SqlitePool> {
    let options = SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .create_if_missing(create)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30))
        .pragma("secure_delete", "ON")
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

async fn get_meta(conn: &mut SqliteConnection, key: &str) -> StoreResult<Option<Vec<u8>>> {
    Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
        .bind(key)
        .fetch_optional(conn)
        .await?)
}

async fn set_meta(conn: &mut SqliteConnection, key: &str, value: &[u8]) -> StoreResult<()> {
    sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .bind(key)
        .bind(value)
        .execute(conn)
        .await?;
    Ok(())
}

/// A write transaction (`BEGIN IMMEDIATE`).
pub type Tx = sqlx::Transaction<'static, sqlx::Sqlite>;

impl Store {
    /// Whether a store exists in `dir`.
    pub fn exists(dir: &Path) -> bool {
        dir.join(STORE_FILE).exists()
    }

    /// Creates a new store in `dir` protected by `passphrase`. Fails if one exists.
    pub async fn create(
        dir: &Path,
        passphrase: &Passphrase,
        params: KdfParams,
    ) -> StoreResult<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Corrupt(format!("cannot create {}: {e}", dir.display())))?;
        restrict_permissions(dir);
        let path = dir.join(STORE_FILE);
        if path.exists() {
            return Err(StoreError::Corrupt(format!(
                "{} already holds an account; use another --profile or `hush logout` first",
                dir.display()
            )));
        }
        let pool = connect(&path, true).await?;
        let passphrase_bytes = passphrase;
        let (vault, wrapped) = Vault::create(passphrase_bytes, params)?;
        let mut conn = pool.acquire().await?;
        set_meta(&mut conn, "kdf_salt", &wrapped.salt).await?;
        set_meta(&mut conn, "kdf_params", wrapped.params.encode().as_bytes()).await?;
        set_meta(&mut conn, "wrapped_key", &wrapped.wrapped).await?;
        drop(conn);
        let store = Self::assemble(pool, vault, path);
        store.upgrade().await?;
        Ok(store)
    }

    fn assemble(pool: SqlitePool, vault: Vault, path: PathBuf) -> Self {
        Self {
            pool,
            vault,
            path,
            sessions: Mutex::new(HashMap::new()),
            clock: Clock::system(),
        }
    }

    /// Opens and unlocks the store in `dir`.
    pub async fn open(dir: &Path, passphrase: &Passphrase) -> StoreResult<Self> {
        let path = dir.join(STORE_FILE);
        if !path.exists() {
            return Err(StoreError::Missing(dir.to_owned()));
        }
        let pool = connect(&path, false).await?;
        let mut conn = pool.acquire().await?;
        let salt = get_meta(&mut conn, "kdf_salt").await?;
        let params = get_meta(&mut conn, "kdf_params").await?;
        let wrapped = get_meta(&mut conn, "wrapped_key").await?;
        drop(conn);
        let (Some(salt), Some(params), Some(wrapped)) = (salt, params, wrapped) else {
            return Err(StoreError::Corrupt("the key material is missing".into()));
        };
        let params = KdfParams::decode(&String::from_utf8_lossy(&params))?;
        let wrapped = WrappedKey {
            salt,
            params,
            wrapped,
        };
        let vault = Vault::unlock(passphrase, &wrapped)?;
        let store = Self::assemble(pool, vault, path);
        store.upgrade().await?;
        Ok(store)
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The vault (keys).
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// The clock that dates notices and verification marks (the system time unless
    /// [`Store::set_clock`] replaced it; [`crate::engine::Client::with_clock`] does).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Replaces the clock.
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// Begins a write transaction.
    pub async fn begin(&self) -> StoreResult<Tx> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Closes the pool (checkpointing the WAL).
    pub async fn close(self) {
        self.pool.close().await;
    }

    // --- tags and sealing -------------------------------------------------------------

    fn user_tag(&self, user_id: &str) -> Vec<u8> {
        self.vault.tag("user", &[user_id.as_bytes()])
    }

    fn device_tag(&self, user_id: &str, device_id: &str) -> Vec<u8> {
        self.vault
            .tag("device", &[user_id.as_bytes(), device_id.as_bytes()])
    }

    fn peer_tag(&self, user_id: &str, device_id: &str) -> Vec<u8> {
        self.vault
            .tag("session", &[user_id.as_bytes(), device_id.as_bytes()])
    }

    fn msg_tag(&self, msg_id: &str) -> Vec<u8> {
        self.vault.tag("message", &[msg_id.as_bytes()])
    }

    fn conversation_tag(&self, peer: &str) -> Vec<u8> {
        self.vault.tag("conversation", &[peer.as_bytes()])
    }

    /// Seals `value` as JSON, bound to `context` and the row's `tag`.
    fn seal_json<T: Serialize>(
        &self,
        context: &str,
        tag: &[u8],
        value: &T,
    ) -> StoreResult<Vec<u8>> {
        let json = to_json(value)?;
        Ok(self
            .vault
            .seal(&format!("{context}:{}", hex::encode(tag)), &json))
    }

    fn open_json<T: for<'de> Deserialize<'de>>(
        &self,
        context: &str,
        tag: &[u8],
        blob: &[u8],
    ) -> StoreResult<T> {
        let json = self
            .vault
            .open(&format!("{context}:{}", hex::encode(tag)), blob)?;
        from_json(context, &json)
    }

    // --- schema upgrade ----------------------------------------------------------------

    /// Converts the rows of a store written before metadata was sealed (the `legacy_*`
    /// tables and plaintext login and settings) and drops the old tables, in one
    /// transaction. Does nothing on a current store.
    async fn upgrade(&self) -> StoreResult<()> {
        let legacy: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'legacy_sessions'",
        )
        .fetch_one(&self.pool)
        .await?;
        if legacy == 0 {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        // Another process may have finished the upgrade while we waited for the lock.
        let legacy: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'legacy_sessions'",
        )
        .fetch_one(&mut *tx)
        .await?;
        if legacy == 0 {
            return Ok(());
        }
        // Login and settings were plaintext meta rows.
        let text = |v: Option<Vec<u8>>| v.map(|v| String::from_utf8_lossy(&v).into_owned());
        let server_url = text(get_meta(&mut tx, "server_url").await?);
        let user_id = text(get_meta(&mut tx, "user_id").await?);
        let device_id = text(get_meta(&mut tx, "device_id").await?);
        let token = get_meta(&mut tx, "access_token").await?;
        if let (Some(server_url), Some(user_id), Some(device_id), Some(token)) =
            (server_url, user_id, device_id, token)
        {
            let token = self.vault.open("access_token", &token)?;
            let login = Login {
                server_url,
                user_id,
                device_id,
                access_token: Zeroizing::new(String::from_utf8_lossy(&token).into_owned()),
            };
            self.save_login(&mut tx, &login).await?;
        }
        for key in ["server_url", "user_id", "device_id", "access_token"] {
            sqlx::query("DELETE FROM meta WHERE key = ?")
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        let rows = sqlx::query("SELECT key, value FROM meta WHERE key LIKE 'setting:%'")
            .fetch_all(&mut *tx)
            .await?;
        for r in rows {
            let key: String = r.get(0);
            let value: Vec<u8> = r.get(1);
            let sealed = self.vault.seal(&key, &value);
            set_meta(&mut tx, &key, &sealed).await?;
        }

        let rows = sqlx::query("SELECT user_id, device_id, generation, blob FROM legacy_sessions")
            .fetch_all(&mut *tx)
            .await?;
        for r in rows {
            let (user, device): (String, String) = (r.get(0), r.get(1));
            sqlx::query(
                "INSERT INTO sessions (peer_tag, generation, stamp, blob) VALUES (?, ?, ?, ?)",
            )
            .bind(self.peer_tag(&user, &device))
            .bind(r.get::<i64, _>(2))
            .bind(random_stamp())
            .bind(r.get::<Vec<u8>, _>(3))
            .execute(&mut *tx)
            .await?;
        }
        let rows = sqlx::query(
            "SELECT user_id, device_id, ed25519, first_seen, approved, active FROM legacy_devices",
        )
        .fetch_all(&mut *tx)
        .await?;
        for r in rows {
            let pin = PinnedDevice {
                user_id: r.get(0),
                device_id: r.get(1),
                ed25519: r.get(2),
                first_seen: r.get::<i64, _>(3) as u64,
                approved: r.get::<i64, _>(4) != 0,
                active: r.get::<i64, _>(5) != 0,
            };
            self.put_pin(&mut tx, &pin).await?;
        }
        let rows = sqlx::query("SELECT user_id, verified_at FROM legacy_verified_users")
            .fetch_all(&mut *tx)
            .await?;
        for r in rows {
            let user: String = r.get(0);
            self.put_verified(&mut tx, &user, r.get::<i64, _>(1) as u64)
                .await?;
        }
        let rows = sqlx::query(
            "SELECT seq, msg_id, peer, outgoing, sender_user, sender_device, ts, state, body \
             FROM legacy_messages ORDER BY seq",
        )
        .fetch_all(&mut *tx)
        .await?;
        for r in rows {
            let msg_id: String = r.get(1);
            let body = self
                .vault
                .open(&format!("message:{msg_id}"), &r.get::<Vec<u8>, _>(8))?;
            let m = StoredMessage {
                seq: r.get(0),
                msg_id,
                peer: r.get(2),
                outgoing: r.get::<i64, _>(3) != 0,
                sender_user: r.get(4),
                sender_device: r.get(5),
                ts: r.get::<i64, _>(6) as u64,
                state: r.get(7),
                body: String::from_utf8_lossy(&body).into_owned(),
            };
            self.write_message(&mut tx, Some(m.seq), &m).await?;
        }
        let rows = sqlx::query("SELECT txn_id, msg_id, messages FROM legacy_outbox ORDER BY seq")
            .fetch_all(&mut *tx)
            .await?;
        for r in rows {
            let text: String = r.get(2);
            let messages = serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("outbox entry: {e}")))?;
            let (txn_id, msg_id): (String, String) = (r.get(0), r.get(1));
            self.queue(&mut tx, &txn_id, std::slice::from_ref(&msg_id), &messages)
                .await?;
        }
        let rows = sqlx::query("SELECT digest FROM legacy_seen ORDER BY ts")
            .fetch_all(&mut *tx)
            .await?;
        for r in rows {
            self.mark_seen(&mut tx, &r.get::<Vec<u8>, _>(0)).await?;
        }
        let rows = sqlx::query("SELECT seq, ts, user_id, text FROM legacy_notices ORDER BY seq")
            .fetch_all(&mut *tx)
            .await?;
        for r in rows {
            let notice = SealedNotice {
                ts: r.get::<i64, _>(1) as u64,
                user_id: r.get(2),
                text: r.get(3),
            };
            self.write_notice(&mut tx, Some(r.get(0)), &notice).await?;
        }
        for table in [
            "legacy_sessions",
            "legacy_devices",
            "legacy_verified_users",
            "legacy_messages",
            "legacy_outbox",
            "legacy_seen",
            "legacy_notices",
        ] {
            sqlx::query(&format!("DROP TABLE {table}"))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        // `secure_delete` zeroed the dropped pages; move them out of the WAL as well, so no
        // old plaintext stays behind in either file.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // --- login -------------------------------------------------------------------------

    /// Saves the login (sealed as a whole: server, user and device ID, token).
    pub async fn save_login(&self, tx: &mut SqliteConnection, login: &Login) -> StoreResult<()> {
        let sealed = SealedLogin {
            server_url: login.server_url.clone(),
            user_id: login.user_id.clone(),
            device_id: login.device_id.clone(),
            access_token: login.access_token.to_string(),
        };
        let json = to_json(&sealed);
        let mut token = sealed.access_token;
        token.zeroize();
        set_meta(tx, LOGIN_KEY, &self.vault.seal(LOGIN_KEY, &json?)).await
    }

    /// Loads the login.
    pub async fn login(&self) -> StoreResult<Option<Login>> {
        let mut conn = self.pool.acquire().await?;
        let Some(blob) = get_meta(&mut conn, LOGIN_KEY).await? else {
            return Ok(None);
        };
        let json = self.vault.open(LOGIN_KEY, &blob)?;
        let sealed: SealedLogin = from_json("login", &json)?;
        Ok(Some(Login {
            server_url: sealed.server_url,
            user_id: sealed.user_id,
            device_id: sealed.device_id,
            access_token: Zeroizing::new(sealed.access_token),
        }))
    }

    /// Stores a setting (sealed), e.g. `ca_file` or `sync_token`.
    pub async fn set_setting(
        &self,
        conn: &mut SqliteConnection,
        key: &str,
        value: &str,
    ) -> StoreResult<()> {
        let key = format!("setting:{key}");
        let sealed = self.vault.seal(&key, value.as_bytes());
        set_meta(conn, &key, &sealed).await
    }

    /// Reads a setting.
    pub async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        let mut conn = self.pool.acquire().await?;
        let key = format!("setting:{key}");
        match get_meta(&mut conn, &key).await? {
            None => Ok(None),
            Some(blob) => {
                let value = self.vault.open(&key, &blob)?;
                Ok(Some(String::from_utf8_lossy(&value).into_owned()))
            }
        }
    }

    // --- account -----------------------------------------------------------------------

    /// Saves the device account (encrypted).
    pub async fn save_account(
        &self,
        conn: &mut SqliteConnection,
        account: &Account,
    ) -> StoreResult<()> {
        let blob = account.seal(&mut rand::rngs::OsRng, self.vault.pickle_key());
        sqlx::query("INSERT INTO account (id, blob) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET blob = excluded.blob")
            .bind(blob)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Loads the device account.
    pub async fn account(
        &self,
        conn: &mut SqliteConnection,
        user_id: &str,
        device_id: &str,
    ) -> StoreResult<Account> {
        let blob: Option<Vec<u8>> = sqlx::query_scalar("SELECT blob FROM account WHERE id = 1")
            .fetch_optional(conn)
            .await?;
        let blob = blob.ok_or_else(|| StoreError::Corrupt("no device account".into()))?;
        Account::open(self.vault.pickle_key(), user_id, device_id, &blob)
            .map_err(|e| StoreError::Corrupt(format!("device account: {e}")))
    }

    // --- sessions ----------------------------------------------------------------------

    /// Loads the session record of a peer device (a new empty one if none). A record this
    /// store wrote or read before comes from memory if the row has not changed since.
    pub async fn record(
        &self,
        conn: &mut SqliteConnection,
        user_id: &str,
        device_id: &str,
    ) -> StoreResult<SessionRecord> {
        let tag = self.peer_tag(user_id, device_id);
        let cached_stamp = self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&tag)
            .map_or(-1, |(stamp, _)| *stamp);
        let row = sqlx::query(
            "SELECT stamp, CASE WHEN stamp = ? THEN NULL ELSE blob END FROM sessions WHERE peer_tag = ?",
        )
        .bind(cached_stamp)
        .bind(&tag)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else {
            return Ok(SessionRecord::new(user_id, device_id));
        };
        let stamp: i64 = row.get(0);
        let blob: Option<Vec<u8>> = row.get(1);
        let blob = match blob {
            Some(b) => b,
            None => {
                if let Some((s, record)) = self
                    .sessions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&tag)
                {
                    if *s == stamp {
                        return Ok(record.clone());
                    }
                }
                // The cached entry changed between the two looks: read the row itself.
                sqlx::query_scalar("SELECT blob FROM sessions WHERE peer_tag = ?")
                    .bind(&tag)
                    .fetch_one(&mut *conn)
                    .await?
            }
        };
        let record = SessionRecord::open(self.vault.pickle_key(), user_id, device_id, &blob)
            .map_err(|e| StoreError::Corrupt(format!("session with {user_id}/{device_id}: {e}")))?;
        let mut cache = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= SESSION_CACHE_MAX {
            cache.clear();
        }
        cache.insert(tag, (stamp, record.clone()));
        Ok(record)
    }

    /// Saves a record; refuses one whose generation is not newer than the stored one (P1).
    pub async fn save_record(
        &self,
        conn: &mut SqliteConnection,
        record: &SessionRecord,
    ) -> StoreResult<()> {
        let tag = self.peer_tag(record.user_id(), record.device_id());
        let blob = record.seal(&mut rand::rngs::OsRng, self.vault.pickle_key());
        let generation = i64::try_from(record.generation()).unwrap_or(i64::MAX);
        let stamp = random_stamp();
        let done = sqlx::query(
            "INSERT INTO sessions (peer_tag, generation, stamp, blob) VALUES (?, ?, ?, ?) \
             ON CONFLICT (peer_tag) DO UPDATE SET generation = excluded.generation, \
             stamp = excluded.stamp, blob = excluded.blob \
             WHERE sessions.generation < excluded.generation",
        )
        .bind(&tag)
        .bind(generation)
        .bind(stamp)
        .bind(blob)
        .execute(conn)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict);
        }
        // The stamp is in the row only if this transaction commits; otherwise the next read
        // sees another stamp and decrypts the row instead.
        let mut cache = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= SESSION_CACHE_MAX {
            cache.clear();
        }
        cache.insert(tag, (stamp, record.clone()));
        Ok(())
    }

    /// Deletes the session record with a device (its identity changed).
    pub async fn delete_sessions(
        &self,
        conn: &mut SqliteConnection,
        user_id: &str,
        device_id: &str,
    ) -> StoreResult<()> {
        let tag = self.peer_tag(user_id, device_id);
        sqlx::query("DELETE FROM sessions WHERE peer_tag = ?")
            .bind(&tag)
            .execute(conn)
            .await?;
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&tag);
        Ok(())
    }

    /// Whether there is an active session with the device.
    pub async fn has_active_session(
        &self,
        conn: &mut SqliteConnection,
        user_id: &str,
        device_id: &str,
    ) -> StoreResult<bool> {
        Ok(self
            .record(conn, user_id, device_id)
            .await?
            .active()
            .is_some())
    }

    // --- devices and trust -------------------------------------------------------------

    /// All pinned devices of a user, by device ID.
    pub async fn pinned_devices(
        &self,
        conn: &mut SqliteConnection,
        user_id: &str,
    ) -> StoreResult<Vec<PinnedDevice>> {
        let rows = sqlx::query("SELECT device_tag, blob FROM devices WHERE user_tag = ?")
            .bind(self.user_tag(user_id))
            .fetch_all(conn)
            .await?;
        let mut pins = rows
            .into_iter()
            .map(|r| {
                let tag: Vec<u8> = r.get(0);
                let blob: Vec<u8> = r.get(1);
                self.open_json::<PinnedDevice>("pin", &tag, &blob)
            })
            .collect::<StoreResult<Vec<_>>>()?;
        pins.retain(|p| p.user_id == user_id);
        pins.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        Ok(pins)
    }

    /// Inserts or replaces a pin.
    pub async fn put_pin(
        &self,
        conn: &mut SqliteConnection,
        pin: &PinnedDevice,
    ) -> StoreResult<()> {
        let device_tag = self.device_tag(&pin.user_id, &pin.device_id);
        let blob = self.seal_json("pin", &device_tag, pin)?;
        sqlx::query(
            "INSERT INTO devices (user_tag, device_tag, blob) VALUES (?, ?, ?) \
             ON CONFLICT (user_tag, device_tag) DO UPDATE SET blob = excluded.blob",
        )
        .bind(self.user_tag(&pin.user_id))
        .bind(&device_tag)
        .bind(blob)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Whether the user is marked verified.
    pub async fn is_verified(
        &self,
        conn: &mut SqliteConnection,
        user_id: &str,
    ) -> StoreResult<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM verified_users WHERE user_tag = ?")
            .bind(self.user_tag(user_id))
            .fetch_one(conn)
            .await?;
        Ok(n > 0)
    }

    async fn put_verified(
        &self,
        conn: &mut SqliteConnection,
        user_id: &str,
        at: u64,
    ) -> StoreResult<()> {
        let tag = self.user_tag(user_id);
        let blob = self.seal_json("verified", &tag, &at)?;
        sqlx::query("INSERT OR REPLACE INTO verified_users (user_tag, blob) VALUES (?, ?)")
            .bind(&tag)
            .bind(blob)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Marks a user verified.
    pub async fn set_verified(
        &self,
        conn: &mut SqliteConnection,
        user_id: &str,
    ) -> StoreResult<()> {
        self.put_verified(conn, user_id, self.clock.now_secs())
            .await
    }

    /// Approves every active pin of a user.
    pub async fn approve_all(
        &self,
        conn: &mut SqliteConnection,
        user_id: &str,
    ) -> StoreResult<u64> {
        let mut n = 0;
        for pin in self.pinned_devices(conn, user_id).await? {
            if pin.active && !pin.approved {
                self.put_pin(
                    conn,
                    &PinnedDevice {
                        approved: true,
                        ..pin
                    },
                )
                .await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Adds a notice (key change, new device, undecryptable message).
    pub async fn add_notice(
        &self,
        conn: &mut SqliteConnection,
        user_id: &str,
        text: &str,
    ) -> StoreResult<()> {
        let notice = SealedNotice {
            ts: self.clock.now_secs(),
            user_id: user_id.to_owned(),
            text: text.to_owned(),
        };
        self.write_notice(conn, None, &notice).await
    }

    async fn write_notice(
        &self,
        conn: &mut SqliteConnection,
        seq: Option<i64>,
        notice: &SealedNotice,
    ) -> StoreResult<()> {
        let blob = self.seal_json("notice", &[], notice)?;
        sqlx::query("INSERT INTO notices (seq, blob) VALUES (?, ?)")
            .bind(seq)
            .bind(blob)
            .execute(conn)
            .await?;
        Ok(())
    }

    // --- history -----------------------------------------------------------------------

    /// Inserts a message (the whole record sealed); ignores a repeated message id.
    pub async fn insert_message(
        &self,
        conn: &mut SqliteConnection,
        m: &StoredMessage,
    ) -> StoreResult<Option<i64>> {
        self.write_message(conn, None, m).await
    }

    async fn write_message(
        &self,
        conn: &mut SqliteConnection,
        seq: Option<i64>,
        m: &StoredMessage,
    ) -> StoreResult<Option<i64>> {
        let msg_tag = self.msg_tag(&m.msg_id);
        // The sequence number lives in its column only.
        let blob = self.seal_json(
            "message",
            &msg_tag,
            &StoredMessage {
                seq: 0,
                ..m.clone()
            },
        )?;
        let done = sqlx::query(
            "INSERT INTO messages (seq, msg_tag, peer_tag, blob) VALUES (?, ?, ?, ?) \
             ON CONFLICT (msg_tag) DO NOTHING",
        )
        .bind(seq)
        .bind(&msg_tag)
        .bind(self.conversation_tag(&m.peer))
        .bind(blob)
        .execute(conn)
        .await?;
        Ok((done.rows_affected() > 0).then(|| done.last_insert_rowid()))
    }

    /// Sets a message's delivery state.
    pub async fn set_message_state(
        &self,
        conn: &mut SqliteConnection,
        msg_id: &str,
        state: &str,
    ) -> StoreResult<()> {
        let msg_tag = self.msg_tag(msg_id);
        let blob: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT blob FROM messages WHERE msg_tag = ?")
                .bind(&msg_tag)
                .fetch_optional(&mut *conn)
                .await?;
        let Some(blob) = blob else {
            return Ok(());
        };
        let mut m: StoredMessage = self.open_json("message", &msg_tag, &blob)?;
        m.seq = 0;
        if m.state == state {
            return Ok(());
        }
        m.state = state.to_owned();
        let blob = self.seal_json("message", &msg_tag, &m)?;
        sqlx::query("UPDATE messages SET blob = ? WHERE msg_tag = ?")
            .bind(blob)
            .bind(&msg_tag)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// The conversation with `peer`, oldest first (the last `limit` messages).
    pub async fn history(&self, peer: &str, limit: i64) -> StoreResult<Vec<StoredMessage>> {
        let rows = sqlx::query(
            "SELECT seq, msg_tag, blob FROM \
             (SELECT seq, msg_tag, blob FROM messages WHERE peer_tag = ? ORDER BY seq DESC LIMIT ?) \
             ORDER BY seq",
        )
        .bind(self.conversation_tag(peer))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| self.decode_message(r))
            .collect::<StoreResult<Vec<_>>>()?;
        out.retain(|m| m.peer == peer);
        Ok(out)
    }

    /// Messages after local sequence `after` (any conversation).
    pub async fn messages_after(&self, after: i64) -> StoreResult<Vec<StoredMessage>> {
        let rows =
            sqlx::query("SELECT seq, msg_tag, blob FROM messages WHERE seq > ? ORDER BY seq")
                .bind(after)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|r| self.decode_message(r)).collect()
    }

    fn decode_message(&self, r: &sqlx::sqlite::SqliteRow) -> StoreResult<StoredMessage> {
        let tag: Vec<u8> = r.get(1);
        let blob: Vec<u8> = r.get(2);
        let m: StoredMessage = self.open_json("message", &tag, &blob)?;
        Ok(StoredMessage { seq: r.get(0), ..m })
    }

    /// Notices after sequence `after`: `(seq, user_id, text)`.
    pub async fn notices_after(&self, after: i64) -> StoreResult<Vec<(i64, String, String)>> {
        let rows = sqlx::query("SELECT seq, blob FROM notices WHERE seq > ? ORDER BY seq")
            .bind(after)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                let blob: Vec<u8> = r.get(1);
                let n: SealedNotice = self.open_json("notice", &[], &blob)?;
                Ok((seq, n.user_id, n.text))
            })
            .collect()
    }

    /// The highest message and notice sequence numbers.
    pub async fn high_water(&self) -> StoreResult<(i64, i64)> {
        let m: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM messages")
            .fetch_one(&self.pool)
            .await?;
        let n: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM notices")
            .fetch_one(&self.pool)
            .await?;
        Ok((m, n))
    }

    // --- outbox and dedupe -------------------------------------------------------------

    /// Queues one encrypted request carrying the messages `msg_ids` (at least one) for
    /// sending (sealed: the request names users and devices).
    pub async fn queue(
        &self,
        conn: &mut SqliteConnection,
        txn_id: &str,
        msg_ids: &[String],
        messages: &serde_json::Value,
    ) -> StoreResult<()> {
        let (first, more) = msg_ids
            .split_first()
            .ok_or_else(|| StoreError::Corrupt("an outbox entry without a message".into()))?;
        let entry = SealedSend {
            msg_id: first.clone(),
            more: more.to_vec(),
            messages: messages.clone(),
        };
        let blob = self.seal_json("outbox", txn_id.as_bytes(), &entry)?;
        sqlx::query("INSERT INTO outbox (txn_id, blob) VALUES (?, ?)")
            .bind(txn_id)
            .bind(blob)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// The queued sends, oldest first: `(txn_id, msg_ids, messages)`.
    pub async fn outbox(&self) -> StoreResult<Vec<(String, Vec<String>, serde_json::Value)>> {
        let rows = sqlx::query("SELECT txn_id, blob FROM outbox ORDER BY seq")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                let txn_id: String = r.get(0);
                let blob: Vec<u8> = r.get(1);
                let entry: SealedSend = self.open_json("outbox", txn_id.as_bytes(), &blob)?;
                let mut ids = Vec::with_capacity(1 + entry.more.len());
                ids.push(entry.msg_id);
                ids.extend(entry.more);
                Ok((txn_id, ids, entry.messages))
            })
            .collect()
    }

    /// Removes a sent entry and marks its messages sent.
    pub async fn sent(&self, txn_id: &str, msg_ids: &[String]) -> StoreResult<()> {
        self.sent_many(&[(txn_id, msg_ids)]).await
    }

    /// Removes several sent entries and marks their messages sent, in one transaction.
    pub async fn sent_many(&self, done: &[(&str, &[String])]) -> StoreResult<()> {
        if done.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for (txn_id, msg_ids) in done {
            sqlx::query("DELETE FROM outbox WHERE txn_id = ?")
                .bind(txn_id)
                .execute(&mut *tx)
                .await?;
            for msg_id in *msg_ids {
                self.set_message_state(&mut tx, msg_id, "sent").await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a received event's digest (stored as a keyed tag); false if already seen.
    pub async fn mark_seen(&self, conn: &mut SqliteConnection, digest: &[u8]) -> StoreResult<bool> {
        let done =
            sqlx::query("INSERT INTO seen (digest) VALUES (?) ON CONFLICT (digest) DO NOTHING")
                .bind(self.vault.tag("seen", &[digest]))
                .execute(conn)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Keeps only the newest [`SEEN_KEPT`] digests.
    pub async fn prune_seen(&self) -> StoreResult<()> {
        sqlx::query("DELETE FROM seen WHERE rowid <= (SELECT MAX(rowid) FROM seen) - ?")
            .bind(SEEN_KEPT)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Makes the profile directory private to the user (Unix).
fn restrict_permissions(dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const PASS: &str = "store test passphrase";

    fn cheap() -> KdfParams {
        KdfParams {
            m_kib: 64,
            t: 1,
            p: 1,
        }
    }

    fn file_bytes(dir: &Path) -> Vec<u8> {
        let mut all = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                all.extend(std::fs::read(p).unwrap());
            }
        }
        all
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// A store as the first schema wrote it: plaintext IDs everywhere.
    async fn legacy_store(dir: &Path) {
        let path = dir.join(STORE_FILE);
        let options = SqliteConnectOptions::from_str("sqlite://")
            .unwrap()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        let mut first = sqlx::migrate!("./migrations");
        first.migrations = std::borrow::Cow::Owned(first.migrations[..1].to_vec());
        first.run(&pool).await.unwrap();
        let (vault, wrapped) = Vault::create(&Passphrase::new(PASS.into()), cheap()).unwrap();
        let mut c = pool.acquire().await.unwrap();
        set_meta(&mut c, "kdf_salt", &wrapped.salt).await.unwrap();
        set_meta(&mut c, "kdf_params", wrapped.params.encode().as_bytes())
            .await
            .unwrap();
        set_meta(&mut c, "wrapped_key", &wrapped.wrapped)
            .await
            .unwrap();
        set_meta(&mut c, "server_url", b"https://alpha.example")
            .await
            .unwrap();
        set_meta(&mut c, "user_id", b"@alice:alpha.example")
            .await
            .unwrap();
        set_meta(&mut c, "device_id", b"ALICEDEV").await.unwrap();
        set_meta(&mut c, "access_token", &vault.seal("access_token", b"tok"))
            .await
            .unwrap();
        set_meta(&mut c, "setting:sync_token", b"s42")
            .await
            .unwrap();
        let record = SessionRecord::new("@bob:beta.example", "BOBDEV");
        let blob = record.seal(&mut rand::rngs::OsRng, vault.pickle_key());
        sqlx::query("INSERT INTO sessions VALUES ('@bob:beta.example', 'BOBDEV', 3, ?)")
            .bind(blob)
            .execute(&mut *c)
            .await
            .unwrap();
        sqlx::query("INSERT INTO devices VALUES ('@bob:beta.example', 'BOBDEV', 'edkey', 7, 1, 1)")
            .execute(&mut *c)
            .await
            .unwrap();
        sqlx::query("INSERT INTO verified_users VALUES ('@bob:beta.example', 9)")
            .execute(&mut *c)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO messages (seq, msg_id, peer, outgoing, sender_user, sender_device, ts, state, body) \
             VALUES (5, 'm1', '@bob:beta.example', 0, '@bob:beta.example', 'BOBDEV', 1234, 'received', ?)",
        )
        .bind(vault.seal("message:m1", b"hello alice"))
        .execute(&mut *c)
        .await
        .unwrap();
        sqlx::query("INSERT INTO outbox (txn_id, msg_id, messages) VALUES ('t1', 'm2', ?)")
            .bind(r#"{"@bob:beta.example":{"BOBDEV":{"x":1}}}"#)
            .execute(&mut *c)
            .await
            .unwrap();
        sqlx::query("INSERT INTO seen VALUES (x'0102', 1)")
            .execute(&mut *c)
            .await
            .unwrap();
        sqlx::query("INSERT INTO notices (seq, ts, user_id, text) VALUES (8, 1, '@bob:beta.example', 'bob has a new device')")
            .execute(&mut *c)
            .await
            .unwrap();
        drop(c);
        pool.close().await;
    }

    #[tokio::test]
    async fn a_legacy_store_is_converted_and_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        legacy_store(dir.path()).await;
        assert!(contains(&file_bytes(dir.path()), b"@bob:beta.example"));

        let store = Store::open(dir.path(), &Passphrase::new(PASS.into()))
            .await
            .unwrap();
        let login = store.login().await.unwrap().unwrap();
        assert_eq!(login.user_id, "@alice:alpha.example");
        assert_eq!(login.device_id, "ALICEDEV");
        assert_eq!(login.server_url, "https://alpha.example");
        assert_eq!(login.access_token.as_str(), "tok");
        assert_eq!(
            store.setting("sync_token").await.unwrap().as_deref(),
            Some("s42")
        );
        let mut tx = store.begin().await.unwrap();
        let pins = store
            .pinned_devices(&mut tx, "@bob:beta.example")
            .await
            .unwrap();
        assert_eq!(pins.len(), 1);
        assert_eq!(pins[0].ed25519, "edkey");
        assert_eq!(pins[0].first_seen, 7);
        assert!(store
            .is_verified(&mut tx, "@bob:beta.example")
            .await
            .unwrap());
        assert!(!store
            .is_verified(&mut tx, "@carol:beta.example")
            .await
            .unwrap());
        let record = store
            .record(&mut tx, "@bob:beta.example", "BOBDEV")
            .await
            .unwrap();
        assert_eq!(record.user_id(), "@bob:beta.example");
        assert!(
            !store.mark_seen(&mut tx, &[1, 2]).await.unwrap(),
            "digest kept"
        );
        assert!(store.mark_seen(&mut tx, &[1, 3]).await.unwrap());
        tx.commit().await.unwrap();
        let history = store.history("@bob:beta.example", 10).await.unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].seq, 5);
        assert_eq!(history[0].body, "hello alice");
        assert_eq!(history[0].ts, 1234);
        let outbox = store.outbox().await.unwrap();
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox[0].1, vec!["m2".to_owned()]);
        assert_eq!(outbox[0].2["@bob:beta.example"]["BOBDEV"]["x"], 1);
        let notices = store.notices_after(0).await.unwrap();
        assert_eq!(
            notices,
            vec![(
                8,
                "@bob:beta.example".to_owned(),
                "bob has a new device".to_owned()
            )]
        );
        store.close().await;

        let bytes = file_bytes(dir.path());
        for needle in [
            &b"@bob:beta.example"[..],
            b"@alice:alpha.example",
            b"BOBDEV",
            b"ALICEDEV",
            b"alpha.example",
            b"bob has a new device",
        ] {
            assert!(
                !contains(&bytes, needle),
                "{}",
                String::from_utf8_lossy(needle)
            );
        }
        // Opening again changes nothing.
        let store = Store::open(dir.path(), &Passphrase::new(PASS.into()))
            .await
            .unwrap();
        assert_eq!(
            store.history("@bob:beta.example", 10).await.unwrap().len(),
            1
        );
        store.close().await;
    }

    #[tokio::test]
    async fn cached_session_records_follow_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let pass = Passphrase::new(PASS.into());
        let a = Store::create(dir.path(), &pass, cheap()).await.unwrap();
        let b = Store::open(dir.path(), &pass).await.unwrap();
        let mut record = SessionRecord::new("@bob:beta.example", "BOBDEV");
        record.expire(0);
        let mut tx = a.begin().await.unwrap();
        a.save_record(&mut tx, &record).await.unwrap();
        tx.commit().await.unwrap();
        // Another store handle (another process) writes a newer generation.
        let mut tx = b.begin().await.unwrap();
        let mut theirs = b
            .record(&mut tx, "@bob:beta.example", "BOBDEV")
            .await
            .unwrap();
        assert_eq!(theirs.generation(), record.generation());
        theirs.expire(0);
        theirs.expire(0);
        b.save_record(&mut tx, &theirs).await.unwrap();
        tx.commit().await.unwrap();
        // `a` must not serve its stale cached copy.
        let mut tx = a.begin().await.unwrap();
        let seen = a
            .record(&mut tx, "@bob:beta.example", "BOBDEV")
            .await
            .unwrap();
        assert_eq!(seen.generation(), theirs.generation());
        // A write that is rolled back leaves the cache unable to answer for it.
        let mut mine = seen.clone();
        mine.expire(0);
        a.save_record(&mut tx, &mine).await.unwrap();
        tx.rollback().await.unwrap();
        let mut tx = a.begin().await.unwrap();
        let again = a
            .record(&mut tx, "@bob:beta.example", "BOBDEV")
            .await
            .unwrap();
        assert_eq!(again.generation(), theirs.generation());
        // An older generation is refused.
        assert!(matches!(
            a.save_record(&mut tx, &record).await,
            Err(StoreError::Conflict)
        ));
        tx.rollback().await.unwrap();
        a.close().await;
        b.close().await;
    }
}
