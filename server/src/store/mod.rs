//! Storage: the only module that contains SQL.
//!
//! One [`Store`] type serves both backends (SQLite, the embedded default, and PostgreSQL for
//! production). Every method is a complete unit of work: it commits before it returns `Ok`, so a
//! caller that answers 200 after `Ok` has made the data durable.
//!
//! CONTRACT between the data layer and the HTTP layer. The method list below is the agreed
//! interface; bodies are filled in by the data-layer work. Signatures may grow (new methods,
//! new optional fields) but existing ones change only by agreement.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

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

/// Which database to talk to. Constructed by [`Store::connect`].
#[derive(Clone)]
pub struct Store {
    // Filled in by the data layer.
}

impl Store {
    /// Connects to `sqlite://PATH` (created if missing, WAL) or `postgres://...`, and runs the
    /// migrations for that backend.
    pub async fn connect(_database_url: &str) -> StoreResult<Store> {
        todo!()
    }

    /// `true` for PostgreSQL, `false` for SQLite.
    pub fn is_postgres(&self) -> bool {
        todo!()
    }

    // ---- accounts -------------------------------------------------------------------------
    /// Creates an account; `Conflict` if the user ID is taken. With `token`, atomically
    /// checks and consumes one use of that registration token (`NotFound` if the token is
    /// unknown, expired or used up).
    pub async fn create_user(
        &self,
        _user_id: &str,
        _password_hash: Option<&str>,
        _token: Option<&str>,
        _now: Millis,
    ) -> StoreResult<()> {
        todo!()
    }
    /// Looks up an account.
    pub async fn get_user(&self, _user_id: &str) -> StoreResult<Option<UserRow>> {
        todo!()
    }
    /// Marks an account deactivated and deletes all its devices, tokens, keys and mailboxes.
    pub async fn deactivate_user(&self, _user_id: &str, _now: Millis) -> StoreResult<()> {
        todo!()
    }
    /// Replaces the password hash.
    pub async fn set_password_hash(&self, _user_id: &str, _hash: &str) -> StoreResult<()> {
        todo!()
    }

    // ---- registration tokens ----------------------------------------------------------------
    /// Creates a registration token; `Conflict` if it exists.
    pub async fn create_registration_token(
        &self,
        _row: &RegistrationTokenRow,
        _now: Millis,
    ) -> StoreResult<()> {
        todo!()
    }
    /// Lists every token.
    pub async fn list_registration_tokens(&self) -> StoreResult<Vec<RegistrationTokenRow>> {
        todo!()
    }
    /// Deletes a token; `NotFound` if unknown.
    pub async fn revoke_registration_token(&self, _token: &str) -> StoreResult<()> {
        todo!()
    }
    /// Whether a token is currently usable (exists, not expired, uses left).
    pub async fn registration_token_valid(&self, _token: &str, _now: Millis) -> StoreResult<bool> {
        todo!()
    }

    // ---- user-interactive auth sessions ---------------------------------------------------------
    /// Creates a UIA session bound to a request kind (`register`, `delete_devices:<user>`...).
    pub async fn create_uia_session(
        &self,
        _session_id: &str,
        _kind: &str,
        _now: Millis,
    ) -> StoreResult<()> {
        todo!()
    }
    /// Returns `(kind, completed stages, stored params JSON)`; `None` if unknown or expired.
    pub async fn get_uia_session(
        &self,
        _session_id: &str,
    ) -> StoreResult<Option<(String, Vec<String>, String)>> {
        todo!()
    }
    /// Records a completed stage and an optional value (e.g. the validated registration token).
    pub async fn complete_uia_stage(
        &self,
        _session_id: &str,
        _stage: &str,
        _params_json: &str,
    ) -> StoreResult<()> {
        todo!()
    }
    /// Deletes a UIA session.
    pub async fn delete_uia_session(&self, _session_id: &str) -> StoreResult<()> {
        todo!()
    }

    // ---- devices and access tokens ---------------------------------------------------------------
    /// Creates the device if missing (keeping keys and inbox if it exists), stores the SHA-256 hash
    /// of a new access token for it, and invalidates that device's earlier tokens. Records a
    /// device-list change when the device is new.
    pub async fn login_device(
        &self,
        _user_id: &str,
        _device_id: &str,
        _display_name: Option<&str>,
        _token_hash: &[u8],
        _now: Millis,
    ) -> StoreResult<()> {
        todo!()
    }
    /// Resolves a token hash; also records `last_seen_*` at most once a minute.
    pub async fn token_owner(&self, _token_hash: &[u8]) -> StoreResult<Option<TokenOwner>> {
        todo!()
    }
    /// Lists a user's devices.
    pub async fn list_devices(&self, _user_id: &str) -> StoreResult<Vec<DeviceRow>> {
        todo!()
    }
    /// One device of a user.
    pub async fn get_device(
        &self,
        _user_id: &str,
        _device_id: &str,
    ) -> StoreResult<Option<DeviceRow>> {
        todo!()
    }
    /// Sets a display name; `NotFound` for an unknown device.
    pub async fn set_device_display_name(
        &self,
        _user_id: &str,
        _device_id: &str,
        _name: Option<&str>,
    ) -> StoreResult<()> {
        todo!()
    }
    /// Deletes devices with their tokens, keys and mailbox in one transaction, and records a
    /// device-list change. Unknown device IDs are ignored.
    pub async fn delete_devices(
        &self,
        _user_id: &str,
        _device_ids: &[String],
        _now: Millis,
    ) -> StoreResult<()> {
        todo!()
    }
    /// Device IDs of a local user (for `*` expansion and key queries).
    pub async fn device_ids(&self, _user_id: &str) -> StoreResult<Vec<String>> {
        todo!()
    }

    // ---- end-to-end keys --------------------------------------------------------------------------
    /// Stores device keys. Returns `true` if they changed (a device-list change is recorded).
    pub async fn set_device_keys(
        &self,
        _user_id: &str,
        _device_id: &str,
        _json: &str,
        _now: Millis,
    ) -> StoreResult<bool> {
        todo!()
    }
    /// Device keys of the given devices (all when `device_ids` is empty), with display names:
    /// `device_id -> (json, display_name)`.
    pub async fn get_device_keys(
        &self,
        _user_id: &str,
        _device_ids: &[String],
    ) -> StoreResult<BTreeMap<String, (String, Option<String>)>> {
        todo!()
    }
    /// Adds one-time keys in upload order; identical re-uploads are ignored.
    pub async fn add_one_time_keys(
        &self,
        _user_id: &str,
        _device_id: &str,
        _keys: &[KeyUpload],
        _now: Millis,
    ) -> StoreResult<OtkUploadOutcome> {
        todo!()
    }
    /// Replaces the fallback key for each algorithm given (new key is unused).
    pub async fn set_fallback_keys(
        &self,
        _user_id: &str,
        _device_id: &str,
        _keys: &[KeyUpload],
    ) -> StoreResult<()> {
        todo!()
    }
    /// Unclaimed one-time keys per algorithm.
    pub async fn one_time_key_counts(
        &self,
        _user_id: &str,
        _device_id: &str,
    ) -> StoreResult<BTreeMap<String, i64>> {
        todo!()
    }
    /// Algorithms whose fallback key has not been used.
    pub async fn unused_fallback_key_types(
        &self,
        _user_id: &str,
        _device_id: &str,
    ) -> StoreResult<Vec<String>> {
        todo!()
    }
    /// Atomically claims the oldest-uploaded one-time key of `algorithm`, or else returns the
    /// fallback key and marks it used (`mark_fallback_used = false` for the Hush bundle claim,
    /// which reads the fallback/signed prekey without marking it). `None` if nothing is left.
    pub async fn claim_key(
        &self,
        _user_id: &str,
        _device_id: &str,
        _algorithm: &str,
        _mark_fallback_used: bool,
    ) -> StoreResult<Option<ClaimedKey>> {
        todo!()
    }
    /// Atomically claims one one-time key (no fallback).
    pub async fn claim_one_time_key(
        &self,
        _user_id: &str,
        _device_id: &str,
        _algorithm: &str,
    ) -> StoreResult<Option<ClaimedKey>> {
        todo!()
    }
    /// The current fallback key of `algorithm` without marking it used.
    pub async fn get_fallback_key(
        &self,
        _user_id: &str,
        _device_id: &str,
        _algorithm: &str,
    ) -> StoreResult<Option<ClaimedKey>> {
        todo!()
    }

    // ---- device-list changes -----------------------------------------------------------------------
    /// The current device-list stream position.
    pub async fn device_list_position(&self) -> StoreResult<i64> {
        todo!()
    }
    /// Users (local) whose device lists changed after `since` and that `observer` cares about
    /// (the observer itself and users it has queried keys for or exchanged messages with).
    pub async fn device_list_changes(
        &self,
        _observer: &str,
        _since: i64,
    ) -> StoreResult<Vec<String>> {
        todo!()
    }
    /// Records that `observer` is interested in `target`'s device list.
    pub async fn add_device_list_interest(
        &self,
        _observer: &str,
        _targets: &[String],
    ) -> StoreResult<()> {
        todo!()
    }

    // ---- to-device mailboxes ---------------------------------------------------------------------------
    /// Commits a batch of sendToDevice requests in ONE transaction (group commit: the mailbox
    /// service collects concurrent requests and calls this once). For each request, in order:
    /// if its transaction key was already used the outcome is `Duplicate` and nothing is
    /// written; if a recipient mailbox would exceed `mailbox_cap` the outcome is `MailboxFull`
    /// and nothing of that request is written; otherwise its local messages get per-device
    /// positions (messages to unknown devices are dropped), its remote EDUs go to the outbound
    /// queue, and its transaction key is recorded. Returns one outcome per request.
    pub async fn commit_sends(
        &self,
        _requests: &[SendRequest],
        _mailbox_cap: i64,
        _now: Millis,
    ) -> StoreResult<Vec<SendOutcome>> {
        todo!()
    }
    /// Deletes the device's messages at or before `pos` (the acknowledgement) and returns up to
    /// `limit` messages after `pos`, in order.
    pub async fn ack_and_fetch_inbox(
        &self,
        _user_id: &str,
        _device_id: &str,
        _pos: i64,
        _limit: i64,
    ) -> StoreResult<Vec<InboxEvent>> {
        todo!()
    }
    /// Number of queued messages for every device (for metrics).
    pub async fn inbox_total(&self) -> StoreResult<i64> {
        todo!()
    }

    // ---- idempotency --------------------------------------------------------------------------------
    /// Whether `(user, device, endpoint, txn_id)` was already committed.
    pub async fn txn_seen(&self, _txn: &TxnKey) -> StoreResult<bool> {
        todo!()
    }

    // ---- federation outbound queue -------------------------------------------------------------------
    /// Appends EDUs for remote servers.
    pub async fn enqueue_outbound(&self, _edus: &[OutboundEdu], _now: Millis) -> StoreResult<()> {
        todo!()
    }

    // ---- retention ----------------------------------------------------------------------------------
    /// Deletes undelivered messages older than `mailbox_before`, idempotency records older than
    /// `txn_before`, and expired UIA sessions. Returns the number of rows deleted.
    pub async fn prune(
        &self,
        _mailbox_before: Millis,
        _txn_before: Millis,
        _uia_before: Millis,
    ) -> StoreResult<u64> {
        todo!()
    }
}
