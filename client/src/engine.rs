//! The messaging engine: a logged-in device with its store and API connection. It keeps the
//! device's keys on the server, tracks and pins other devices, sends a message to every
//! device of the recipient and to the sender's own other devices, and decrypts what `/sync`
//! delivers.
//!
//! Durability rules (DESIGN.md section 5):
//! - sending: the ratchet state, the history entry and the encrypted request are committed
//!   in one transaction before anything leaves; the request is retried with the same
//!   transaction ID until the server accepts it, so a crash neither loses nor duplicates;
//! - receiving: the session state, the plaintext and the sync position of a whole batch are
//!   committed in one transaction; a re-delivered event is recognised by its digest.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use hush_crypto::consts::{BUNDLE_CLAIM_ALGORITHM, SIGNED_CURVE25519};
use hush_crypto::envelope::Payload;
use hush_crypto::session_record::IncomingMessage;
use hush_crypto::ReceivedEnvelope;
use hush_crypto::{
    encrypted_content, parse_content, Account, Curve25519PublicKey, DeviceKeys, Fingerprint,
    IdentityKey, Party, PreKeyBundle, Session, SessionRecord,
};
use rand::rngs::OsRng;
use rand::RngCore;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::api::{Api, ApiError, SyncResponse};
use crate::clock::Clock;
use crate::store::{Login, PinnedDevice, Store, StoreError, StoredMessage};

/// The to-device event type of encrypted messages.
pub const ENCRYPTED_EVENT: &str = "m.room.encrypted";
/// The inner event type of a text message.
pub const TEXT_EVENT: &str = "hush.message";
/// While the engine runs, key maintenance with nothing to top up looks at the account at most
/// this often (signed prekeys rotate every 7 days, so an hour is plenty).
const MAINTAIN_INTERVAL: Duration = Duration::from_secs(3600);
/// The inner event type of several text messages in one encrypted payload, sent by
/// [`Client::send_many`] when it has more than one message for a peer: content
/// `{"peer", "messages": [{"body", "msg_id", "ts"}, ...]}`, the items in sending order. A
/// single message goes out as [`TEXT_EVENT`] with content `{"body", "msg_id", "peer", "ts"}`.
pub const BATCH_EVENT: &str = "hush.messages";
/// The longest message body, in bytes (well below the crypto crate's plaintext bound).
pub const MAX_MESSAGE_BYTES: usize = 60_000;
/// The most bytes of message items (their JSON) one request carries, summed over the target
/// devices (each device gets its own copy of the batch). A federation transaction may carry
/// 100 EDUs and a homeserver refuses requests over 1 MiB by default, so one request's
/// ciphertext must stay near 1/100 of that: 6 KiB of items is about 8.5 KiB of base64
/// ciphertext, about 35 messages of 100 bytes to one device. A longer message goes alone.
pub const BATCH_PAYLOAD_BUDGET: usize = 6 * 1024;
/// The most messages in one batch.
pub const BATCH_MAX_MESSAGES: usize = 64;
/// The setting recording that the device keys reached the server.
const KEYS_PUBLISHED: &str = "keys_published";

/// Errors of client operations, each a clear sentence.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server call failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The user does not exist (the server knows no such user).
    #[error("the user {0} does not exist (or their server did not answer)")]
    UnknownUser(String),
    /// The user has no device with usable keys.
    #[error("{0} has no devices that can receive encrypted messages")]
    NoDevices(String),
    /// A verified contact's identity changed; sending is blocked.
    #[error("{user}'s identity changed since you verified them (devices: {}); compare safety numbers with `hush verify {user}`, then accept with `hush trust {user}`", .devices.join(", "))]
    Untrusted {
        /// The user.
        user: String,
        /// The unapproved devices.
        devices: Vec<String>,
    },
    /// The message is stored and queued but the server did not take it yet.
    #[error("the message is saved and queued, but could not be sent yet: {0}; it will be sent by the next `hush send` or `hush listen`")]
    Queued(ApiError),
    /// A cryptographic operation failed.
    #[error("encryption error: {0}")]
    Crypto(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias.
pub type ClientResult<T> = Result<T, ClientError>;

/// What a send did.
#[derive(Debug, Clone)]
pub struct SendReport {
    /// The message ID.
    pub msg_id: String,
    /// Devices it was encrypted for.
    pub devices: usize,
    /// Notices raised on the way (new devices, key changes, unreachable devices).
    pub notices: Vec<String>,
}

/// What one sync delivered.
#[derive(Debug, Clone, Default)]
pub struct SyncOutcome {
    /// New messages, in order.
    pub messages: Vec<StoredMessage>,
    /// Notices (device changes, undecryptable messages).
    pub notices: Vec<String>,
    /// Whether the server had nothing new.
    pub empty: bool,
}

/// A random identifier (hex of 16 bytes).
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn crypto<E: std::fmt::Display>(e: E) -> ClientError {
    ClientError::Crypto(e.to_string())
}

/// A logged-in device.
#[derive(Debug)]
pub struct Client {
    store: Store,
    api: Api,
    login: Login,
    /// This device's public identity (Ed25519 and X25519 forms), read once.
    own_keys: OnceLock<(IdentityKey, Curve25519PublicKey)>,
    /// When key maintenance last looked at the account (seconds, [`Client::clock`]).
    maintained: Mutex<Option<u64>>,
    /// Where "now" comes from (shared with the store).
    clock: Clock,
}

impl Client {
    /// Wraps an open store and its login. The client reads the store's clock (the system
    /// time unless replaced, see [`Client::with_clock`]).
    pub fn new(store: Store, api: Api, login: Login) -> Self {
        let clock = store.clock().clone();
        Self {
            store,
            api,
            login,
            own_keys: OnceLock::new(),
            maintained: Mutex::new(None),
            clock,
        }
    }

    /// Replaces the clock of the client and its store: every decision with "now" (session
    /// age, prekey rotation, key maintenance) and every timestamp the engine writes follows it.
    /// Tests use a [`Clock::shifted`] clock to move one device's time ahead.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.store.set_clock(clock.clone());
        self.clock = clock;
        self
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// This device's identity key and its X25519 form (they never change for a device).
    async fn own_keys(&self) -> ClientResult<(IdentityKey, Curve25519PublicKey)> {
        if let Some(keys) = self.own_keys.get() {
            return Ok(*keys);
        }
        let account = self.account().await?;
        let keys = (account.identity_key(), account.curve25519_key());
        Ok(*self.own_keys.get_or_init(|| keys))
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The API connection.
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// The login.
    pub fn login(&self) -> &Login {
        &self.login
    }

    /// The user ID.
    pub fn user_id(&self) -> &str {
        &self.login.user_id
    }

    /// Consumes the client, returning the store.
    pub fn into_store(self) -> Store {
        self.store
    }

    async fn account(&self) -> ClientResult<Account> {
        let mut conn = self.store.begin().await?;
        let account = self
            .store
            .account(&mut conn, &self.login.user_id, &self.login.device_id)
            .await?;
        conn.rollback().await.map_err(StoreError::from)?;
        Ok(account)
    }

    // --- keys of this device -----------------------------------------------------------

    /// Creates this device's account, stores it and uploads device keys, the signed prekey
    /// (as fallback key) and one-time prekeys. Called right after register or login.
    pub async fn bootstrap(&self) -> ClientResult<()> {
        let mut account = Account::new(
            &mut OsRng,
            &self.login.user_id,
            &self.login.device_id,
            self.clock.now_secs(),
        )
        .map_err(crypto)?;
        account
            .generate_one_time_keys(&mut OsRng, Account::one_time_keys_wanted(0))
            .map_err(crypto)?;
        let mut tx = self.store.begin().await?;
        self.store.save_account(&mut tx, &account).await?;
        tx.commit().await.map_err(StoreError::from)?;
        self.publish_keys().await
    }

    /// Whether this device's keys are known to be on the server (set after the first
    /// successful upload).
    pub async fn keys_published(&self) -> ClientResult<bool> {
        Ok(self.store.setting(KEYS_PUBLISHED).await?.is_some())
    }

    /// Uploads the stored account's device keys, fallback key and unpublished one-time keys.
    /// Run by [`Client::bootstrap`], and again on the next start if that upload did not
    /// complete (the server accepts an identical re-upload).
    pub async fn publish_keys(&self) -> ClientResult<()> {
        let account = self.account().await?;
        let body = json!({
            "device_keys": account.device_keys().map_err(crypto)?,
            "one_time_keys": account.one_time_keys().map_err(crypto)?,
            "fallback_keys": account.fallback_keys().map_err(crypto)?,
        });
        self.api.upload_keys(&body).await?;
        self.mark_published().await?;
        let mut tx = self.store.begin().await?;
        self.store.set_setting(&mut tx, KEYS_PUBLISHED, "1").await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(())
    }

    async fn mark_published(&self) -> ClientResult<()> {
        let mut tx = self.store.begin().await?;
        let mut account = self
            .store
            .account(&mut tx, &self.login.user_id, &self.login.device_id)
            .await?;
        account.mark_keys_as_published();
        self.store.save_account(&mut tx, &account).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(())
    }

    /// Tops up one-time keys when the server's count is low, rotates the signed prekey when
    /// due (and erases expired ones), and re-uploads the fallback key if it was used.
    pub async fn maintain_keys(
        &self,
        server_otk_count: Option<usize>,
        unused_fallback: Option<&[String]>,
    ) -> ClientResult<()> {
        let wanted = server_otk_count.map_or(0, Account::one_time_keys_wanted);
        let fallback_used =
            unused_fallback.is_some_and(|list| !list.iter().any(|a| a == SIGNED_CURVE25519));
        let now = self.clock.now_secs();
        {
            let mut last = self
                .maintained
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // A clock that went back (since `last`) does not count as recent.
            let recent = last.is_some_and(|t| t <= now && now - t < MAINTAIN_INTERVAL.as_secs());
            if wanted == 0 && !fallback_used && recent {
                return Ok(());
            }
            *last = Some(now);
        }
        let mut tx = self.store.begin().await?;
        let mut account = self
            .store
            .account(&mut tx, &self.login.user_id, &self.login.device_id)
            .await?;
        let rotated = account.maintain(&mut OsRng, now).map_err(crypto)?;
        if wanted > 0 {
            account
                .generate_one_time_keys(&mut OsRng, wanted)
                .map_err(crypto)?;
        }
        let otks = account.one_time_keys().map_err(crypto)?;
        if !rotated && !fallback_used && otks.is_empty() {
            tx.rollback().await.map_err(StoreError::from)?;
            return Ok(());
        }
        self.store.save_account(&mut tx, &account).await?;
        tx.commit().await.map_err(StoreError::from)?;
        let mut body = Map::new();
        if !otks.is_empty() {
            body.insert("one_time_keys".into(), Value::Object(otks));
        }
        if rotated || fallback_used {
            body.insert(
                "fallback_keys".into(),
                Value::Object(account.fallback_keys().map_err(crypto)?),
            );
        }
        self.api.upload_keys(&Value::Object(body)).await?;
        self.mark_published().await
    }

    // --- devices and trust -------------------------------------------------------------

    /// Fetches the device lists of `users`, verifies every device's self-signed keys, pins
    /// them (trust on first use) and records what changed. Returns the verified active
    /// devices per user; users the server does not know are absent.
    pub async fn refresh_devices(
        &self,
        users: &[String],
    ) -> ClientResult<(BTreeMap<String, Vec<DeviceKeys>>, Vec<String>)> {
        let answer = self.api.query_keys(users).await?;
        let empty = Map::new();
        let all = answer
            .get("device_keys")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let mut out = BTreeMap::new();
        let mut notices = Vec::new();
        let now = self.clock.now_secs();
        let mut tx = self.store.begin().await?;
        // Nothing is written (and no commit is flushed) when no pin changed.
        let mut wrote = false;
        for user in users {
            let Some(devices) = all.get(user).and_then(Value::as_object) else {
                if let Some(failure) = answer
                    .get("failures")
                    .and_then(Value::as_object)
                    .filter(|f| !f.is_empty())
                {
                    let server = user.split_once(':').map(|(_, s)| s).unwrap_or_default();
                    if failure.contains_key(server) {
                        return Err(ClientError::Api(ApiError::Unreachable {
                            url: server.to_owned(),
                            reason: "the homeserver of that user did not answer".into(),
                        }));
                    }
                }
                continue;
            };
            let verified = self.store.is_verified(&mut tx, user).await?;
            let known = self.store.pinned_devices(&mut tx, user).await?;
            let had_any = !known.is_empty();
            let mut keys = Vec::new();
            for (device_id, value) in devices {
                let device = match DeviceKeys::from_json(value, user, device_id) {
                    Ok(d) => d,
                    Err(e) => {
                        let text = format!(
                            "ignoring device {device_id} of {user}: its keys do not verify ({e})"
                        );
                        self.store.add_notice(&mut tx, user, &text).await?;
                        notices.push(text);
                        continue;
                    }
                };
                let ed = device.identity_key().to_base64();
                let existing = known.iter().find(|p| &p.device_id == device_id);
                let mine = user == &self.login.user_id && device_id == &self.login.device_id;
                match existing {
                    Some(pin) if pin.ed25519 == ed => {
                        if !pin.active {
                            self.store
                                .put_pin(
                                    &mut tx,
                                    &PinnedDevice {
                                        active: true,
                                        ..pin.clone()
                                    },
                                )
                                .await?;
                            wrote = true;
                        }
                    }
                    Some(_) => {
                        let text = format!(
                            "WARNING: the identity key of {user}'s device {device_id} CHANGED to {}{}",
                            short_key(&ed),
                            if verified { "; sending is blocked until you run `hush trust`" } else { "" }
                        );
                        self.store
                            .put_pin(
                                &mut tx,
                                &PinnedDevice {
                                    user_id: user.clone(),
                                    device_id: device_id.clone(),
                                    ed25519: ed.clone(),
                                    first_seen: now,
                                    approved: !verified,
                                    active: true,
                                },
                            )
                            .await?;
                        wrote = true;
                        // Sessions made with the old identity must never be used again.
                        self.store.delete_sessions(&mut tx, user, device_id).await?;
                        self.store.add_notice(&mut tx, user, &text).await?;
                        notices.push(text);
                    }
                    None => {
                        self.store
                            .put_pin(
                                &mut tx,
                                &PinnedDevice {
                                    user_id: user.clone(),
                                    device_id: device_id.clone(),
                                    ed25519: ed.clone(),
                                    first_seen: now,
                                    approved: !verified || mine,
                                    active: true,
                                },
                            )
                            .await?;
                        wrote = true;
                        if had_any && !mine {
                            let text = format!(
                                "{user} has a new device {device_id} (key {}){}",
                                short_key(&ed),
                                if verified {
                                    "; sending is blocked until you run `hush trust`"
                                } else {
                                    ""
                                }
                            );
                            self.store.add_notice(&mut tx, user, &text).await?;
                            notices.push(text);
                        }
                    }
                }
                keys.push(device);
            }
            for pin in known
                .iter()
                .filter(|p| p.active && !devices.contains_key(&p.device_id))
            {
                self.store
                    .put_pin(
                        &mut tx,
                        &PinnedDevice {
                            active: false,
                            ..pin.clone()
                        },
                    )
                    .await?;
                wrote = true;
                let text = format!("{user} removed device {}", pin.device_id);
                self.store.add_notice(&mut tx, user, &text).await?;
                notices.push(text);
            }
            out.insert(user.clone(), keys);
        }
        if wrote || !notices.is_empty() {
            tx.commit().await.map_err(StoreError::from)?;
        } else {
            tx.rollback().await.map_err(StoreError::from)?;
        }
        Ok((out, notices))
    }

    /// Fails with [`ClientError::Untrusted`] if any active device of `user` is not approved.
    pub async fn check_trust(&self, user: &str) -> ClientResult<()> {
        let mut tx = self.store.begin().await?;
        let pins = self.store.pinned_devices(&mut tx, user).await?;
        tx.rollback().await.map_err(StoreError::from)?;
        let blocked: Vec<String> = pins
            .iter()
            .filter(|p| p.active && !p.approved)
            .map(|p| p.device_id.clone())
            .collect();
        if blocked.is_empty() {
            Ok(())
        } else {
            Err(ClientError::Untrusted {
                user: user.to_owned(),
                devices: blocked,
            })
        }
    }

    /// Accepts the current identities of every device of `user`; returns how many changed.
    pub async fn trust(&self, user: &str) -> ClientResult<u64> {
        self.refresh_devices(&[user.to_owned()]).await?;
        let mut tx = self.store.begin().await?;
        let n = self.store.approve_all(&mut tx, user).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(n)
    }

    /// The safety number with `peer` and both sides' device keys.
    pub async fn safety_number(
        &self,
        peer: &str,
    ) -> ClientResult<(Fingerprint, Vec<PinnedDevice>, Vec<PinnedDevice>, bool)> {
        let own = self.login.user_id.clone();
        let (found, _) = self
            .refresh_devices(&[own.clone(), peer.to_owned()])
            .await?;
        if !found.contains_key(peer) {
            return Err(ClientError::UnknownUser(peer.to_owned()));
        }
        let mut tx = self.store.begin().await?;
        let mine: Vec<PinnedDevice> = self
            .store
            .pinned_devices(&mut tx, &own)
            .await?
            .into_iter()
            .filter(|p| p.active)
            .collect();
        let theirs: Vec<PinnedDevice> = self
            .store
            .pinned_devices(&mut tx, peer)
            .await?
            .into_iter()
            .filter(|p| p.active)
            .collect();
        let verified = self.store.is_verified(&mut tx, peer).await?;
        tx.rollback().await.map_err(StoreError::from)?;
        let keys = |pins: &[PinnedDevice]| -> Vec<IdentityKey> {
            pins.iter()
                .filter_map(|p| IdentityKey::from_base64(&p.ed25519).ok())
                .collect()
        };
        if theirs.is_empty() {
            return Err(ClientError::NoDevices(peer.to_owned()));
        }
        let fp = Fingerprint::new(&own, &keys(&mine), peer, &keys(&theirs)).map_err(crypto)?;
        Ok((fp, mine, theirs, verified))
    }

    /// Marks `peer` verified (after comparing safety numbers); approves its current devices.
    pub async fn mark_verified(&self, peer: &str) -> ClientResult<()> {
        let mut tx = self.store.begin().await?;
        self.store.set_verified(&mut tx, peer).await?;
        self.store.approve_all(&mut tx, peer).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(())
    }

    /// Whether `peer` is marked verified.
    pub async fn is_verified(&self, peer: &str) -> ClientResult<bool> {
        let mut tx = self.store.begin().await?;
        let v = self.store.is_verified(&mut tx, peer).await?;
        tx.rollback().await.map_err(StoreError::from)?;
        Ok(v)
    }

    // --- sending -----------------------------------------------------------------------

    /// Sends everything still queued, oldest first (same transaction IDs as before).
    /// Returns how many messages those requests carried.
    pub async fn flush_outbox(&self) -> ClientResult<usize> {
        let queued = self.store.outbox().await?;
        let mut n = 0;
        for (txn_id, msg_ids, messages) in queued {
            self.api
                .send_to_device(ENCRYPTED_EVENT, &txn_id, &messages)
                .await?;
            self.store.sent(&txn_id, &msg_ids).await?;
            n += msg_ids.len();
        }
        Ok(n)
    }

    /// Encrypts `text` for every device of `peer` and every other device of this user,
    /// commits it locally, then sends it.
    pub async fn send_text(&self, peer: &str, text: &str) -> ClientResult<SendReport> {
        let mut reports = self.send_many(peer, &[text.to_owned()], 1).await?;
        reports
            .pop()
            .ok_or_else(|| ClientError::Invalid("nothing was sent".into()))
    }

    /// Sends several messages in order: one device-list refresh and one local transaction
    /// for all of them (every ratchet step is committed before the first request leaves).
    /// Consecutive messages are packed into batches (see [`BATCH_EVENT`]): one encryption
    /// per device and one request (one transaction ID) per batch, with up to `window`
    /// requests in flight.
    pub async fn send_many(
        &self,
        peer: &str,
        texts: &[String],
        window: usize,
    ) -> ClientResult<Vec<SendReport>> {
        for text in texts {
            if text.is_empty() {
                return Err(ClientError::Invalid(
                    "refusing to send an empty message".into(),
                ));
            }
            if text.len() > MAX_MESSAGE_BYTES {
                return Err(ClientError::Invalid(format!(
                    "the message is too long (at most {MAX_MESSAGE_BYTES} bytes)"
                )));
            }
        }
        self.flush_outbox().await?;
        let own = self.login.user_id.clone();
        let mut users = vec![peer.to_owned()];
        if peer != own {
            users.push(own.clone());
        }
        let (found, mut notices) = self.refresh_devices(&users).await?;
        let peer_devices = found
            .get(peer)
            .ok_or_else(|| ClientError::UnknownUser(peer.to_owned()))?;
        if peer_devices
            .iter()
            .all(|d| d.user_id() == own && d.device_id() == self.login.device_id)
        {
            return Err(ClientError::NoDevices(peer.to_owned()));
        }
        for user in &users {
            self.check_trust(user).await?;
        }
        let targets: Vec<DeviceKeys> = users
            .iter()
            .filter_map(|u| found.get(u))
            .flatten()
            .filter(|d| !(d.user_id() == own && d.device_id() == self.login.device_id))
            .cloned()
            .collect();
        let now = self.clock.now_secs();
        let mut new_sessions = self.new_sessions(&targets, now, &mut notices).await?;

        let (own_ik, own_curve) = self.own_keys().await?;
        let mut tx = self.store.begin().await?;
        let me = Party {
            user_id: &own,
            device_id: &self.login.device_id,
            identity_key: &own_ik,
        };
        let mut records = Vec::new();
        for device in &targets {
            let mut record = self
                .store
                .record(&mut tx, device.user_id(), device.device_id())
                .await?;
            let key = (device.user_id().to_owned(), device.device_id().to_owned());
            if let Some(session) = new_sessions.remove(&key) {
                // The claim was made because there was no usable session; promote the new
                // one unless another process made one meanwhile.
                if needs_session(&record, now) {
                    record.promote(session);
                }
            }
            if record.active().is_some() && !needs_session(&record, now) {
                records.push((device, record));
            }
        }
        if !records.iter().any(|(d, _)| d.user_id() == peer) {
            tx.rollback().await.map_err(StoreError::from)?;
            return Err(ClientError::NoDevices(peer.to_owned()));
        }
        let budget = (BATCH_PAYLOAD_BUDGET / records.len()).max(1);
        let mut queued = Vec::new();
        let mut reports = Vec::with_capacity(texts.len());
        let mut rest = texts;
        while !rest.is_empty() {
            // The next batch: as many messages as fit the budget (at least one).
            let mut items = Vec::new();
            let mut size = 0;
            let mut msg_ids = Vec::new();
            for text in rest {
                let msg_id = random_id();
                let item = json!({"body": text, "msg_id": msg_id, "ts": self.clock.now_ms()});
                let item_size = item.to_string().len();
                if !items.is_empty()
                    && (size + item_size > budget || items.len() >= BATCH_MAX_MESSAGES)
                {
                    break;
                }
                size += item_size;
                items.push(item);
                msg_ids.push(msg_id);
            }
            rest = &rest[items.len()..];
            let (event_type, content) = batch_content(peer, &items);
            let txn_id = random_id();
            let mut messages: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
            for (device, record) in records.iter_mut() {
                let payload = Payload::new(
                    event_type,
                    content.clone(),
                    &me,
                    &Party {
                        user_id: device.user_id(),
                        device_id: device.device_id(),
                        identity_key: device.identity_key(),
                    },
                );
                let out = record.encrypt(&payload.to_bytes()).map_err(crypto)?;
                messages
                    .entry(device.user_id().to_owned())
                    .or_default()
                    .insert(
                        device.device_id().to_owned(),
                        encrypted_content(&own_curve, &[(device.curve25519_key(), out)]),
                    );
            }
            let messages = serde_json::to_value(&messages).map_err(crypto)?;
            for item in &items {
                let msg = StoredMessage {
                    seq: 0,
                    msg_id: item["msg_id"].as_str().unwrap_or_default().to_owned(),
                    peer: peer.to_owned(),
                    outgoing: true,
                    sender_user: own.clone(),
                    sender_device: self.login.device_id.clone(),
                    ts: item["ts"].as_u64().unwrap_or_default(),
                    state: "pending".into(),
                    body: item["body"].as_str().unwrap_or_default().to_owned(),
                };
                self.store.insert_message(&mut tx, &msg).await?;
                reports.push(SendReport {
                    msg_id: msg.msg_id,
                    devices: records.len(),
                    notices: Vec::new(),
                });
            }
            self.store
                .queue(&mut tx, &txn_id, &msg_ids, &messages)
                .await?;
            queued.push((txn_id, msg_ids, messages));
        }
        for (_, record) in &records {
            self.store.save_record(&mut tx, record).await?;
        }
        tx.commit().await.map_err(StoreError::from)?;

        if let Some(first) = reports.first_mut() {
            first.notices = notices;
        }
        // Up to `window` requests in flight; results are taken in order and marked sent
        // in one local transaction per `window` answers.
        // (Collected first: a closure inside the stream type would make this future's
        // lifetimes too specific to be spawned.)
        let requests: Vec<_> = queued
            .iter()
            .map(|(txn_id, msg_ids, messages)| {
                self.send_queued(txn_id.as_str(), msg_ids.as_slice(), messages)
            })
            .collect();
        let mut answers = futures::stream::iter(requests).buffered(window.max(1));
        let mut done = Vec::with_capacity(window.max(1));
        while let Some(answer) = answers.next().await {
            match answer {
                Ok(sent) => done.push(sent),
                Err(e) => {
                    self.store.sent_many(&done).await?;
                    return Err(ClientError::Queued(e));
                }
            }
            if done.len() >= window.max(1) {
                self.store.sent_many(&done).await?;
                done.clear();
            }
        }
        self.store.sent_many(&done).await?;
        Ok(reports)
    }

    /// Sends one queued request; returns its IDs on success.
    async fn send_queued<'a>(
        &self,
        txn_id: &'a str,
        msg_ids: &'a [String],
        messages: &Value,
    ) -> Result<(&'a str, &'a [String]), ApiError> {
        self.api
            .send_to_device(ENCRYPTED_EVENT, txn_id, messages)
            .await
            .map(|()| (txn_id, msg_ids))
    }

    /// Claims bundles and runs X3DH for the targets without a usable session (none, or a
    /// stale one: [`needs_session`]).
    async fn new_sessions(
        &self,
        targets: &[DeviceKeys],
        now: u64,
        notices: &mut Vec<String>,
    ) -> ClientResult<BTreeMap<(String, String), Session>> {
        let mut wanted: Map<String, Value> = Map::new();
        {
            let mut tx = self.store.begin().await?;
            for d in targets {
                let record = self
                    .store
                    .record(&mut tx, d.user_id(), d.device_id())
                    .await?;
                if needs_session(&record, now) {
                    let entry = wanted
                        .entry(d.user_id().to_owned())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Some(map) = entry.as_object_mut() {
                        map.insert(d.device_id().to_owned(), json!(BUNDLE_CLAIM_ALGORITHM));
                    }
                }
            }
            tx.rollback().await.map_err(StoreError::from)?;
        }
        let mut sessions = BTreeMap::new();
        if wanted.is_empty() {
            return Ok(sessions);
        }
        let answer = self.api.claim_keys(&wanted).await?;
        let account = self.account().await?;
        for d in targets {
            let Some(Value::Object(devices)) = wanted.get(d.user_id()) else {
                continue;
            };
            if !devices.contains_key(d.device_id()) {
                continue;
            }
            let claimed = answer
                .pointer(&format!(
                    "/one_time_keys/{}/{}",
                    pointer_escape(d.user_id()),
                    pointer_escape(d.device_id())
                ))
                .and_then(Value::as_object);
            let Some((claim_key, value)) = claimed.and_then(|m| m.iter().next()) else {
                notices.push(format!(
                    "{}'s device {} has no prekeys on the server; it will not receive this message",
                    d.user_id(),
                    d.device_id()
                ));
                continue;
            };
            let session = PreKeyBundle::from_claim(d, claim_key, value)
                .map_err(crypto)
                .and_then(|bundle| {
                    account
                        .initiate_outbound(&mut OsRng, &bundle, now)
                        .map_err(crypto)
                });
            match session {
                Ok(s) => {
                    sessions.insert((d.user_id().to_owned(), d.device_id().to_owned()), s);
                }
                Err(e) => notices.push(format!(
                    "could not start a session with {}'s device {}: {e}",
                    d.user_id(),
                    d.device_id()
                )),
            }
        }
        Ok(sessions)
    }

    // --- receiving ---------------------------------------------------------------------

    /// One `/sync` round: waits up to `timeout_ms` for news, decrypts and stores everything,
    /// saves the position, then keeps the device's keys topped up.
    pub async fn sync_once(&self, timeout_ms: u64) -> ClientResult<SyncOutcome> {
        let since = self.store.setting("sync_token").await?;
        let resp = self.api.sync(since.as_deref(), timeout_ms).await?;
        let outcome = self.process(&resp, since.is_none()).await?;
        self.maintain_keys(resp.one_time_key_count, resp.unused_fallback.as_deref())
            .await?;
        Ok(outcome)
    }

    /// Processes a sync answer (decrypt, store, save the position), all in one transaction:
    /// each sender's pins and each peer device's session record are read once per batch and
    /// the records written once at the end, before the sync position.
    pub async fn process(&self, resp: &SyncResponse, initial: bool) -> ClientResult<SyncOutcome> {
        let own = self.login.user_id.clone();
        let mut notices = Vec::new();
        // Device-list changes of people we talk to: refetch and pin (shows new devices).
        let mut refresh: BTreeSet<String> = if initial {
            BTreeSet::new()
        } else {
            resp.changed.iter().cloned().collect()
        };
        let (own_ik, own_curve) = self.own_keys().await?;
        // Every encrypted event is parsed once.
        let parsed: Vec<Option<Result<ReceivedEnvelope, String>>> = resp
            .events
            .iter()
            .map(|ev| {
                (ev.event_type == ENCRYPTED_EVENT)
                    .then(|| parse_content(&ev.content, &own_curve).map_err(|e| e.to_string()))
            })
            .collect();
        // Senders whose device (by sender_key) is not pinned yet.
        {
            let mut tx = self.store.begin().await?;
            let mut pins = PinCache::default();
            for (ev, env) in resp.events.iter().zip(&parsed) {
                if let Some(Ok(env)) = env {
                    if pins
                        .find(&self.store, &mut tx, &ev.sender, &env.sender_key)
                        .await?
                        .is_none()
                    {
                        refresh.insert(ev.sender.clone());
                    }
                }
            }
            tx.rollback().await.map_err(StoreError::from)?;
        }
        if !refresh.is_empty() {
            let users: Vec<String> = refresh.into_iter().collect();
            match self.refresh_devices(&users).await {
                Ok((_, n)) => notices.extend(n),
                Err(e) => notices.push(format!("could not refresh device lists: {e}")),
            }
        }

        let mut tx = self.store.begin().await?;
        let mut pins = PinCache::default();
        // The account is needed only for a new inbound handshake.
        let mut account: Option<Account> = None;
        let mut account_dirty = false;
        let mut records: HashMap<(String, String), (SessionRecord, bool)> = HashMap::new();
        let mut messages = Vec::new();
        let now = self.clock.now_secs();
        for (ev, env) in resp.events.iter().zip(&parsed) {
            let Some(env) = env else {
                continue;
            };
            let mut hasher = Sha256::new();
            hasher.update(ev.sender.as_bytes());
            hasher.update([0]);
            hasher.update(ev.content.to_string().as_bytes());
            if !self.store.mark_seen(&mut tx, &hasher.finalize()).await? {
                continue;
            }
            let env = match env {
                Ok(env) => env,
                Err(e) => {
                    let text = format!("dropped a malformed message from {}: {e}", ev.sender);
                    self.store.add_notice(&mut tx, &ev.sender, &text).await?;
                    notices.push(text);
                    continue;
                }
            };
            let Some(pin) = pins
                .find(&self.store, &mut tx, &ev.sender, &env.sender_key)
                .await?
            else {
                let text = format!("dropped a message from an unknown device of {}", ev.sender);
                self.store.add_notice(&mut tx, &ev.sender, &text).await?;
                notices.push(text);
                continue;
            };
            let Ok(sender_ik) = IdentityKey::from_base64(&pin.ed25519) else {
                continue;
            };
            let (record, dirty) = match records.entry((ev.sender.clone(), pin.device_id.clone())) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let record = self
                        .store
                        .record(&mut tx, &ev.sender, &pin.device_id)
                        .await?;
                    e.insert((record, false))
                }
            };
            // Decrypt into a copy; it replaces the record only if the payload checks out.
            let mut work = record.clone();
            let mut used_otk = None;
            let decrypted = match &env.message {
                IncomingMessage::PreKey(p) if !work.has_base_key(&p.base_key) => {
                    if p.identity_key != sender_ik || p.sender_device != pin.device_id {
                        Err("the handshake does not match the pinned identity".to_owned())
                    } else {
                        if account.is_none() {
                            account = Some(
                                self.store
                                    .account(&mut tx, &own, &self.login.device_id)
                                    .await?,
                            );
                        }
                        match account.as_ref() {
                            Some(acc) => acc
                                .accept_inbound(&mut OsRng, &work, &ev.sender, p, now)
                                .map(|inbound| {
                                    work = inbound.record;
                                    used_otk = inbound.used_one_time_key;
                                    inbound.plaintext
                                })
                                .map_err(|e| e.to_string()),
                            None => Err("the device account is missing".to_owned()),
                        }
                    }
                }
                other => work
                    .decrypt(&mut OsRng, other, now)
                    .map_err(|e| e.to_string()),
            };
            let plaintext = match decrypted {
                Ok(p) => p,
                Err(e) => {
                    let text = format!(
                        "could not decrypt a message from {} ({}): {e}",
                        ev.sender, pin.device_id
                    );
                    self.store.add_notice(&mut tx, &ev.sender, &text).await?;
                    notices.push(text);
                    continue;
                }
            };
            let checked = Payload::from_bytes(&plaintext)
                .map_err(|e| e.to_string())
                .and_then(|p| {
                    p.check(
                        &Party {
                            user_id: &ev.sender,
                            device_id: &pin.device_id,
                            identity_key: &sender_ik,
                        },
                        &Party {
                            user_id: &own,
                            device_id: &self.login.device_id,
                            identity_key: &own_ik,
                        },
                    )
                    .map(|_| p)
                    .map_err(|e| e.to_string())
                });
            let payload = match checked {
                Ok(p) => p,
                Err(e) => {
                    let text = format!(
                        "rejected a message from {} ({}): {e}",
                        ev.sender, pin.device_id
                    );
                    self.store.add_notice(&mut tx, &ev.sender, &text).await?;
                    notices.push(text);
                    continue;
                }
            };
            *record = work;
            *dirty = true;
            if let (Some(id), Some(acc)) = (used_otk, account.as_mut()) {
                acc.remove_one_time_key(id);
                account_dirty = true;
            }
            let (named_peer, items) = text_items(&payload.event_type, &payload.content);
            let outgoing = ev.sender == own;
            let peer = if outgoing {
                named_peer.unwrap_or(&own).to_owned()
            } else {
                ev.sender.clone()
            };
            for c in items {
                let body = c.get("body").and_then(Value::as_str).unwrap_or_default();
                let msg = StoredMessage {
                    seq: 0,
                    msg_id: c
                        .get("msg_id")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .unwrap_or_else(random_id),
                    peer: peer.clone(),
                    outgoing,
                    sender_user: ev.sender.clone(),
                    sender_device: pin.device_id.clone(),
                    ts: c.get("ts").and_then(Value::as_u64).unwrap_or(0),
                    state: if outgoing {
                        "sent".into()
                    } else {
                        "received".into()
                    },
                    body: body.to_owned(),
                };
                if let Some(seq) = self.store.insert_message(&mut tx, &msg).await? {
                    messages.push(StoredMessage { seq, ..msg });
                }
            }
        }
        for (record, dirty) in records.values() {
            if *dirty {
                self.store.save_record(&mut tx, record).await?;
            }
        }
        if let (true, Some(acc)) = (account_dirty, account.as_ref()) {
            self.store.save_account(&mut tx, acc).await?;
        }
        self.store
            .set_setting(&mut tx, "sync_token", &resp.next_batch)
            .await?;
        tx.commit().await.map_err(StoreError::from)?;
        if initial {
            self.store.prune_seen().await?;
        }
        Ok(SyncOutcome {
            empty: resp.events.is_empty() && resp.changed.is_empty(),
            messages,
            notices,
        })
    }
}

/// The pins of each sender seen in one batch, with their X25519 keys worked out once.
#[derive(Default)]
struct PinCache {
    by_user: HashMap<String, Vec<(PinnedDevice, Option<Curve25519PublicKey>)>>,
}

impl PinCache {
    /// The pinned device of `user` whose X25519 identity is `curve`.
    async fn find(
        &mut self,
        store: &Store,
        tx: &mut sqlx::SqliteConnection,
        user: &str,
        curve: &Curve25519PublicKey,
    ) -> ClientResult<Option<PinnedDevice>> {
        if let Entry::Vacant(slot) = self.by_user.entry(user.to_owned()) {
            let pins = store
                .pinned_devices(tx, user)
                .await?
                .into_iter()
                .map(|p| {
                    let c = IdentityKey::from_base64(&p.ed25519)
                        .ok()
                        .map(|k| k.to_curve25519());
                    (p, c)
                })
                .collect();
            slot.insert(pins);
        }
        Ok(self.by_user.get(user).and_then(|pins| {
            pins.iter()
                .find(|(_, c)| c.as_ref() == Some(curve))
                .map(|(p, _)| p.clone())
        }))
    }
}

/// Whether sending to the peer device of `record` needs a new session (a bundle claim and
/// X3DH) first: there is no active session, or the active one has waited for the peer's first
/// answer for more than 30 days (`now` in seconds; see docs/protocol.md §7). The send path asks
/// only this, both to decide what to claim and whether to promote the claimed session.
fn needs_session(record: &SessionRecord, now: u64) -> bool {
    record.needs_new_session(now)
}

/// The inner event type and content of a batch of message items (`{"body", "msg_id",
/// "ts"}`) for `peer`: a single item as [`TEXT_EVENT`], several as [`BATCH_EVENT`].
fn batch_content(peer: &str, items: &[Value]) -> (&'static str, Value) {
    match items {
        [one] => {
            let mut content = one.clone();
            if let Some(map) = content.as_object_mut() {
                map.insert("peer".into(), json!(peer));
            }
            (TEXT_EVENT, content)
        }
        _ => (BATCH_EVENT, json!({"peer": peer, "messages": items})),
    }
}

/// The text messages of a decrypted payload, as `(peer, items)`: one item for
/// [`TEXT_EVENT`], the list of a [`BATCH_EVENT`], nothing for other types. `peer` is the
/// conversation named by the sender (used only for our own devices' copies).
fn text_items<'a>(event_type: &str, content: &'a Value) -> (Option<&'a str>, Vec<&'a Value>) {
    let peer = content.get("peer").and_then(Value::as_str);
    match event_type {
        TEXT_EVENT => (peer, vec![content]),
        BATCH_EVENT => (
            peer,
            content
                .get("messages")
                .and_then(Value::as_array)
                .map(|list| list.iter().take(BATCH_MAX_MESSAGES).collect())
                .unwrap_or_default(),
        ),
        _ => (peer, Vec::new()),
    }
}

fn pointer_escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// The first 8 characters of a base64 key, for messages.
pub fn short_key(b64: &str) -> String {
    b64.chars().take(8).collect()
}
