//! The local store: one SQLite file per profile (sqlx, WAL, `secure_delete` on). The account,
//! session records, access token and message bodies are stored only encrypted under the
//! vault's keys; public keys, user IDs and the sync position are plaintext.
//!
//! Every multi-step change runs in a `BEGIN IMMEDIATE` transaction so that two `hush`
//! processes on one profile (say `listen` and `send`) serialize instead of losing updates.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use hush_crypto::{Account, SessionRecord};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};
use zeroize::Zeroizing;

use crate::vault::{KdfParams, Passphrase, Vault, VaultError, WrappedKey};

/// The store file inside a profile directory.
pub const STORE_FILE: &str = "hush.db";

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
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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
#[derive(Debug)]
pub struct Store {
    pool: SqlitePool,
    vault: Vault,
    path: PathBuf,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn connect(path: &Path, create: bool) -> StoreResult<SqlitePool> {
    let options = SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .create_if_missing(create)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
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
        Ok(Self { pool, vault, path })
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
        Ok(Self { pool, vault, path })
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The vault (keys).
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// Begins a write transaction.
    pub async fn begin(&self) -> StoreResult<Tx> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Closes the pool (checkpointing the WAL).
    pub async fn close(self) {
        self.pool.close().await;
    }

    // --- login -------------------------------------------------------------------------

    /// Saves the login (the token encrypted).
    pub async fn save_login(&self, tx: &mut SqliteConnection, login: &Login) -> StoreResult<()> {
        set_meta(tx, "server_url", login.server_url.as_bytes()).await?;
        set_meta(tx, "user_id", login.user_id.as_bytes()).await?;
        set_meta(tx, "device_id", login.device_id.as_bytes()).await?;
        let sealed = self
            .vault
            .seal("access_token", login.access_token.as_bytes());
        set_meta(tx, "access_token", &sealed).await?;
        Ok(())
    }

    /// Loads the login.
    pub async fn login(&self) -> StoreResult<Option<Login>> {
        let mut conn = self.pool.acquire().await?;
        let text = |v: Option<Vec<u8>>| v.map(|v| String::from_utf8_lossy(&v).into_owned());
        let server_url = text(get_meta(&mut conn, "server_url").await?);
        let user_id = text(get_meta(&mut conn, "user_id").await?);
        let device_id = text(get_meta(&mut conn, "device_id").await?);
        let token = get_meta(&mut conn, "access_token").await?;
        let (Some(server_url), Some(user_id), Some(device_id), Some(token)) =
            (server_url, user_id, device_id, token)
        else {
            return Ok(None);
        };
        let token = self.vault.open("access_token", &token)?;
        let access_token = Zeroizing::new(String::from_utf8_lossy(&token).into_owned());
        Ok(Some(Login {
            server_url,
            user_id,
            device_id,
            access_token,
        }))
    }

    /// Stores a plaintext setting (not secret), e.g. `ca_file` or `sync_token`.
    pub async fn set_setting(
        &self,
        conn: &mut SqliteConnection,
        key: &str,
        value: &str,
    ) -> StoreResult<()> {
        set_meta(conn, &format!("setting:{key}"), value.as_bytes()).await
    }

    /// Reads a plaintext setting.
    pub async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        let mut conn = self.pool.acquire().await?;
        Ok(get_meta(&mut conn, &format!("setting:{key}"))
            .await?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
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

    /// Loads the session record of a peer device (a new empty one if none).
    pub async fn record(
        &self,
        conn: &mut SqliteConnection,
        user_id: &str,
        device_id: &str,
    ) -> StoreResult<SessionRecord> {
        let blob: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT blob FROM sessions WHERE user_id = ? AND device_id = ?")
                .bind(user_id)
                .bind(device_id)
                .fetch_optional(conn)
                .await?;
        match blob {
            None => Ok(SessionRecord::new(user_id, device_id)),
            Some(blob) => SessionRecord::open(self.vault.pickle_key(), user_id, device_id, &blob)
                .map_err(|e| {
                    StoreError::Corrupt(format!("session with {user_id}/{device_id}: {e}"))
                }),
        }
    }

    /// Saves a record; refuses one whose generation is not newer than the stored one (P1).
    pub async fn save_record(
        &self,
        conn: &mut SqliteConnection,
        record: &SessionRecord,
    ) -> StoreResult<()> {
        let blob = record.seal(&mut rand::rngs::OsRng, self.vault.pickle_key());
        let generation = i64::try_from(record.generation()).unwrap_or(i64::MAX);
        let done = sqlx::query(
            "INSERT INTO sessions (user_id, device_id, generation, blob) VALUES (?, ?, ?, ?) \
             ON CONFLICT (user_id, device_id) DO UPDATE SET generation = excluded.generation, blob = excluded.blob \
             WHERE sessions.generation < excluded.generation",
        )
        .bind(record.user_id())
        .bind(record.device_id())
        .bind(generation)
        .bind(blob)
        .execute(conn)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict);
        }
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

    /// All pinned devices of a user.
    pub async fn pinned_devices(
        &self,
        conn: &mut SqliteConnection,
        user_id: &str,
    ) -> StoreResult<Vec<PinnedDevice>> {
        let rows = sqlx::query(
            "SELECT user_id, device_id, ed25519, first_seen, approved, active FROM devices \
             WHERE user_id = ? ORDER BY device_id",
        )
        .bind(user_id)
        .fetch_all(conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| PinnedDevice {
                user_id: r.get(0),
                device_id: r.get(1),
                ed25519: r.get(2),
                first_seen: r.get::<i64, _>(3) as u64,
                approved: r.get::<i64, _>(4) != 0,
                active: r.get::<i64, _>(5) != 0,
            })
            .collect())
    }

    /// Inserts or replaces a pin.
    pub async fn put_pin(
        &self,
        conn: &mut SqliteConnection,
        pin: &PinnedDevice,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO devices (user_id, device_id, ed25519, first_seen, approved, active) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (user_id, device_id) DO UPDATE SET ed25519 = excluded.ed25519, first_seen = excluded.first_seen, \
             approved = excluded.approved, active = excluded.active",
        )
        .bind(&pin.user_id)
        .bind(&pin.device_id)
        .bind(&pin.ed25519)
        .bind(pin.first_seen as i64)
        .bind(i64::from(pin.approved))
        .bind(i64::from(pin.active))
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
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM verified_users WHERE user_id = ?")
            .bind(user_id)
            .fetch_one(conn)
            .await?;
        Ok(n > 0)
    }

    /// Marks a user verified.
    pub async fn set_verified(
        &self,
        conn: &mut SqliteConnection,
        user_id: &str,
    ) -> StoreResult<()> {
        sqlx::query("INSERT OR REPLACE INTO verified_users (user_id, verified_at) VALUES (?, ?)")
            .bind(user_id)
            .bind(now_secs() as i64)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Approves every active pin of a user.
    pub async fn approve_all(
        &self,
        conn: &mut SqliteConnection,
        user_id: &str,
    ) -> StoreResult<u64> {
        Ok(sqlx::query(
            "UPDATE devices SET approved = 1 WHERE user_id = ? AND approved = 0 AND active = 1",
        )
        .bind(user_id)
        .execute(conn)
        .await?
        .rows_affected())
    }

    /// Adds a notice (key change, new device, undecryptable message).
    pub async fn add_notice(
        &self,
        conn: &mut SqliteConnection,
        user_id: &str,
        text: &str,
    ) -> StoreResult<()> {
        sqlx::query("INSERT INTO notices (ts, user_id, text) VALUES (?, ?, ?)")
            .bind(now_secs() as i64)
            .bind(user_id)
            .bind(text)
            .execute(conn)
            .await?;
        Ok(())
    }

    // --- history -----------------------------------------------------------------------

    /// Inserts a message (body encrypted); ignores a repeated message id.
    pub async fn insert_message(
        &self,
        conn: &mut SqliteConnection,
        m: &StoredMessage,
    ) -> StoreResult<Option<i64>> {
        let body = self
            .vault
            .seal(&format!("message:{}", m.msg_id), m.body.as_bytes());
        let done = sqlx::query(
            "INSERT INTO messages (msg_id, peer, outgoing, sender_user, sender_device, ts, state, body) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (msg_id) DO NOTHING",
        )
        .bind(&m.msg_id)
        .bind(&m.peer)
        .bind(i64::from(m.outgoing))
        .bind(&m.sender_user)
        .bind(&m.sender_device)
        .bind(m.ts as i64)
        .bind(&m.state)
        .bind(body)
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
        sqlx::query("UPDATE messages SET state = ? WHERE msg_id = ?")
            .bind(state)
            .bind(msg_id)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// The conversation with `peer`, oldest first (the last `limit` messages).
    pub async fn history(&self, peer: &str, limit: i64) -> StoreResult<Vec<StoredMessage>> {
        let rows = sqlx::query(
            "SELECT seq, msg_id, peer, outgoing, sender_user, sender_device, ts, state, body FROM \
             (SELECT * FROM messages WHERE peer = ? ORDER BY seq DESC LIMIT ?) ORDER BY seq",
        )
        .bind(peer)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|r| self.decode_message(&r)).collect()
    }

    /// Messages after local sequence `after` (any conversation).
    pub async fn messages_after(&self, after: i64) -> StoreResult<Vec<StoredMessage>> {
        let rows = sqlx::query(
            "SELECT seq, msg_id, peer, outgoing, sender_user, sender_device, ts, state, body FROM messages \
             WHERE seq > ? ORDER BY seq",
        )
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|r| self.decode_message(&r)).collect()
    }

    fn decode_message(&self, r: &sqlx::sqlite::SqliteRow) -> StoreResult<StoredMessage> {
        let msg_id: String = r.get(1);
        let blob: Vec<u8> = r.get(8);
        let body = self.vault.open(&format!("message:{msg_id}"), &blob)?;
        Ok(StoredMessage {
            seq: r.get(0),
            msg_id,
            peer: r.get(2),
            outgoing: r.get::<i64, _>(3) != 0,
            sender_user: r.get(4),
            sender_device: r.get(5),
            ts: r.get::<i64, _>(6) as u64,
            state: r.get(7),
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// Notices after sequence `after`.
    pub async fn notices_after(&self, after: i64) -> StoreResult<Vec<(i64, String, String)>> {
        let rows = sqlx::query("SELECT seq, user_id, text FROM notices WHERE seq > ? ORDER BY seq")
            .bind(after)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
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

    /// Queues encrypted messages for sending.
    pub async fn queue(
        &self,
        conn: &mut SqliteConnection,
        txn_id: &str,
        msg_id: &str,
        messages: &serde_json::Value,
    ) -> StoreResult<()> {
        sqlx::query("INSERT INTO outbox (txn_id, msg_id, messages) VALUES (?, ?, ?)")
            .bind(txn_id)
            .bind(msg_id)
            .bind(messages.to_string())
            .execute(conn)
            .await?;
        Ok(())
    }

    /// The queued sends, oldest first: `(txn_id, msg_id, messages)`.
    pub async fn outbox(&self) -> StoreResult<Vec<(String, String, serde_json::Value)>> {
        let rows = sqlx::query("SELECT txn_id, msg_id, messages FROM outbox ORDER BY seq")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                let text: String = r.get(2);
                let value = serde_json::from_str(&text)
                    .map_err(|e| StoreError::Corrupt(format!("outbox entry: {e}")))?;
                Ok((r.get(0), r.get(1), value))
            })
            .collect()
    }

    /// Removes a sent entry and marks its message sent.
    pub async fn sent(&self, txn_id: &str, msg_id: &str) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM outbox WHERE txn_id = ?")
            .bind(txn_id)
            .execute(&mut *tx)
            .await?;
        self.set_message_state(&mut tx, msg_id, "sent").await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a received ciphertext digest; false if it was already seen.
    pub async fn mark_seen(&self, conn: &mut SqliteConnection, digest: &[u8]) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO seen (digest, ts) VALUES (?, ?) ON CONFLICT (digest) DO NOTHING",
        )
        .bind(digest)
        .bind(now_secs() as i64)
        .execute(conn)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes seen digests older than `max_age_secs`.
    pub async fn prune_seen(&self, max_age_secs: u64) -> StoreResult<()> {
        sqlx::query("DELETE FROM seen WHERE ts < ?")
            .bind(now_secs().saturating_sub(max_age_secs) as i64)
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
