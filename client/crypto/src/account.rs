//! A device's long-term state: its identity, its signed prekeys (rotation and retention) and
//! its pool of one-time prekeys; plus the two X3DH entry points that use them.

use std::collections::BTreeMap;
use std::fmt;

use rand_core::{CryptoRng, RngCore};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::consts::{
    MAX_ID_LEN, MAX_ONE_TIME_KEYS, MAX_STATE_LEN, ONE_TIME_KEY_LOW_WATERMARK, ONE_TIME_KEY_TARGET,
    SPK_RETENTION_SECS, SPK_ROTATION_SECS, STATE_VERSION,
};
use crate::encoding::{Reader, Writer};
use crate::errors::{AccountError, DecodeError, X3dhError};
use crate::identity::{IdentityKey, IdentityKeyPair};
use crate::keys::{diffie_hellman, Curve25519PublicKey, Curve25519Secret};
use crate::message::PreKeyMessage;
use crate::prekeys::{signed_key_object, DeviceKeys, KeyId, OneTimePreKey, SignedPreKey};
use crate::session::{PendingPreKey, Session};
use crate::session_record::SessionRecord;
use crate::x3dh::{associated_data, shared_secret, valid_id, Party, PreKeyBundle};

/// Most signed prekeys kept at once (the current one plus those in their retention period);
/// with 7-day rotation and 30-day retention at most 6 are ever needed.
const MAX_SIGNED_PREKEYS: usize = 16;

/// The outcome of accepting a prekey message. Nothing is stored yet: the caller saves
/// `record` and, if `used_one_time_key` is set, removes that key with
/// [`Account::remove_one_time_key`] and saves the account, all in one transaction.
#[derive(Debug)]
pub struct InboundSession {
    /// The peer's record with the new (or deduplicated) session active.
    pub record: SessionRecord,
    /// The first plaintext.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The one-time prekey this handshake consumed, to delete in the same transaction.
    pub used_one_time_key: Option<KeyId>,
    /// The sender's identity key (check it against the pinned one: TOFU).
    pub sender_identity: IdentityKey,
    /// True if the message belonged to a handshake the record already had (a repeat).
    pub existing_session: bool,
}

/// A device account: identity key pair, signed prekeys and one-time prekeys.
pub struct Account {
    user_id: String,
    device_id: String,
    identity: IdentityKeyPair,
    next_key_id: u32,
    signed_prekeys: Vec<SignedPreKey>,
    one_time_keys: BTreeMap<u32, OneTimePreKey>,
}

impl Account {
    /// A new device with a fresh identity and a first signed prekey.
    pub fn new<R: RngCore + CryptoRng>(
        rng: &mut R,
        user_id: &str,
        device_id: &str,
        now: u64,
    ) -> Result<Self, AccountError> {
        let identity = IdentityKeyPair::generate(rng);
        Self::from_identity(rng, identity, user_id, device_id, now)
    }

    /// A new account around an existing identity (used for fixed test vectors).
    pub fn from_identity<R: RngCore + CryptoRng>(
        rng: &mut R,
        identity: IdentityKeyPair,
        user_id: &str,
        device_id: &str,
        now: u64,
    ) -> Result<Self, AccountError> {
        if !valid_id(user_id) || !valid_id(device_id) {
            return Err(AccountError::InvalidIdentifier);
        }
        let mut account = Self {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            identity,
            next_key_id: 1,
            signed_prekeys: Vec::new(),
            one_time_keys: BTreeMap::new(),
        };
        account.rotate_signed_prekey(rng, now)?;
        Ok(account)
    }

    /// The user ID.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The device ID.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The Ed25519 identity key.
    pub fn identity_key(&self) -> IdentityKey {
        self.identity.public_key()
    }

    /// The X25519 form of the identity (`curve25519:DEVICE`, the envelope `sender_key`).
    pub fn curve25519_key(&self) -> Curve25519PublicKey {
        self.identity.public_key().to_curve25519()
    }

    /// The identity key pair (for signing other statements with their own context).
    pub fn identity(&self) -> &IdentityKeyPair {
        &self.identity
    }

    fn allocate_id(&mut self) -> Result<KeyId, AccountError> {
        let id = self.next_key_id;
        self.next_key_id = id.checked_add(1).ok_or(AccountError::KeyIdsExhausted)?;
        Ok(KeyId(id))
    }

    /// The signed `device_keys` object for `keys/upload`.
    pub fn device_keys(&self) -> Result<Value, AccountError> {
        DeviceKeys::sign(&self.identity, &self.user_id, &self.device_id)
    }

    /// The current signed prekey.
    pub fn current_signed_prekey(&self) -> Option<&SignedPreKey> {
        self.signed_prekeys
            .iter()
            .rev()
            .find(|k| k.retired_at.is_none())
    }

    /// All signed prekeys whose private half is still kept.
    pub fn signed_prekeys(&self) -> &[SignedPreKey] {
        &self.signed_prekeys
    }

    /// True when the current signed prekey is older than the rotation period.
    pub fn signed_prekey_due(&self, now: u64) -> bool {
        self.current_signed_prekey()
            .is_none_or(|k| now.saturating_sub(k.created_at) >= SPK_ROTATION_SECS)
    }

    /// Replaces the signed prekey; the old private half is kept for the retention period.
    pub fn rotate_signed_prekey<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        now: u64,
    ) -> Result<KeyId, AccountError> {
        let id = self.allocate_id()?;
        for k in self
            .signed_prekeys
            .iter_mut()
            .filter(|k| k.retired_at.is_none())
        {
            k.retired_at = Some(now);
        }
        self.signed_prekeys.push(SignedPreKey {
            id,
            secret: Curve25519Secret::generate(rng),
            created_at: now,
            retired_at: None,
        });
        if self.signed_prekeys.len() > MAX_SIGNED_PREKEYS {
            let excess = self.signed_prekeys.len() - MAX_SIGNED_PREKEYS;
            self.signed_prekeys.drain(..excess);
        }
        Ok(id)
    }

    /// Rotates if due and erases signed prekeys past their retention; returns whether a new
    /// fallback key must be uploaded.
    pub fn maintain<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        now: u64,
    ) -> Result<bool, AccountError> {
        let rotated = if self.signed_prekey_due(now) {
            self.rotate_signed_prekey(rng, now)?;
            true
        } else {
            false
        };
        self.signed_prekeys.retain(|k| {
            k.retired_at
                .is_none_or(|t| now.saturating_sub(t) < SPK_RETENTION_SECS)
        });
        Ok(rotated)
    }

    /// The `fallback_keys` map for `keys/upload`: the current SPK with `"fallback": true`.
    pub fn fallback_keys(&self) -> Result<Map<String, Value>, AccountError> {
        let mut map = Map::new();
        if let Some(k) = self.current_signed_prekey() {
            let object = signed_key_object(
                &self.identity,
                &self.user_id,
                &self.device_id,
                &k.public_key(),
                true,
            )?;
            map.insert(k.id.to_matrix_key_id(), object);
        }
        Ok(map)
    }

    /// Generates `count` one-time prekeys. If the pool would exceed
    /// [`MAX_ONE_TIME_KEYS`], the oldest keys are dropped.
    pub fn generate_one_time_keys<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        count: usize,
    ) -> Result<(), AccountError> {
        for _ in 0..count.min(MAX_ONE_TIME_KEYS) {
            let id = self.allocate_id()?;
            self.one_time_keys.insert(
                id.0,
                OneTimePreKey {
                    secret: Curve25519Secret::generate(rng),
                    published: false,
                },
            );
        }
        while self.one_time_keys.len() > MAX_ONE_TIME_KEYS {
            self.one_time_keys.pop_first();
        }
        Ok(())
    }

    /// How many one-time keys to generate given the server's count from `/sync`.
    pub fn one_time_keys_wanted(server_count: usize) -> usize {
        if server_count < ONE_TIME_KEY_LOW_WATERMARK {
            ONE_TIME_KEY_TARGET - server_count
        } else {
            0
        }
    }

    /// The `one_time_keys` map of every not yet published key, for `keys/upload`.
    pub fn one_time_keys(&self) -> Result<Map<String, Value>, AccountError> {
        let mut map = Map::new();
        for (id, k) in self.one_time_keys.iter().filter(|(_, k)| !k.published) {
            let object = signed_key_object(
                &self.identity,
                &self.user_id,
                &self.device_id,
                &k.secret.public_key(),
                false,
            )?;
            map.insert(KeyId(*id).to_matrix_key_id(), object);
        }
        Ok(map)
    }

    /// Marks every one-time key as published (call after a successful upload).
    pub fn mark_keys_as_published(&mut self) {
        for k in self.one_time_keys.values_mut() {
            k.published = true;
        }
    }

    /// Number of one-time keys held (published or not).
    pub fn one_time_key_count(&self) -> usize {
        self.one_time_keys.len()
    }

    /// Whether the private half of a one-time key is held.
    pub fn has_one_time_key(&self, id: KeyId) -> bool {
        self.one_time_keys.contains_key(&id.0)
    }

    /// Erases a one-time key; call in the transaction that stores the session it created.
    pub fn remove_one_time_key(&mut self, id: KeyId) -> bool {
        self.one_time_keys.remove(&id.0).is_some()
    }

    fn party(&self) -> (IdentityKey, &str, &str) {
        (self.identity.public_key(), &self.user_id, &self.device_id)
    }

    /// X3DH as initiator with a verified bundle, at `now` (seconds): returns the new session, to
    /// be made active with [`SessionRecord::promote`]. Its messages are prekey messages until
    /// the peer answers; unanswered after [`crate::consts::MAX_UNACKNOWLEDGED_SESSION_AGE_SECS`]
    /// it is stale ([`SessionRecord::needs_new_session`]).
    pub fn initiate_outbound<R: RngCore + CryptoRng>(
        &self,
        rng: &mut R,
        bundle: &PreKeyBundle,
        now: u64,
    ) -> Result<Session, X3dhError> {
        let peer = bundle.device();
        let peer_ik = peer.identity_key().to_curve25519();
        let spk = bundle.signed_prekey();
        let base = Curve25519Secret::generate(rng);
        let own = self.identity.to_curve25519_secret();
        let dh1 = diffie_hellman(&own, &spk.key)?;
        let dh2 = diffie_hellman(&base, &peer_ik)?;
        let dh3 = diffie_hellman(&base, &spk.key)?;
        let sk = match bundle.one_time_key() {
            Some(otk) => {
                let dh4 = diffie_hellman(&base, &otk.key)?;
                shared_secret(&[&dh1, &dh2, &dh3, &dh4])
            }
            None => shared_secret(&[&dh1, &dh2, &dh3]),
        };
        let (own_ik, own_user, own_device) = self.party();
        let ad = associated_data(
            &Party {
                user_id: own_user,
                device_id: own_device,
                identity_key: &own_ik,
            },
            &Party {
                user_id: peer.user_id(),
                device_id: peer.device_id(),
                identity_key: peer.identity_key(),
            },
        );
        let pending = PendingPreKey {
            identity_key: own_ik,
            signed_prekey_id: spk.id.0,
            one_time_key_id: bundle.one_time_key().map(|k| k.id.0),
            sender_user: own_user.to_owned(),
            sender_device: own_device.to_owned(),
            created_at: Some(now),
        };
        Session::new_initiator(
            rng,
            sk,
            ad,
            *peer.identity_key(),
            &spk.key,
            base.public_key(),
            pending,
        )
        .map_err(X3dhError::Decrypt)
    }

    /// X3DH as responder. `record` is the stored record of the sender's device (or a new
    /// empty one) and `expected_sender` the user the homeserver says sent the event. Nothing is
    /// changed: on success the caller stores `InboundSession::record` and removes
    /// `used_one_time_key` together. A repeated initiation is decrypted in its existing session
    /// and never creates a second one; a tampered one leaves the one-time key in place.
    pub fn accept_inbound<R: RngCore + CryptoRng>(
        &self,
        rng: &mut R,
        record: &SessionRecord,
        expected_sender: &str,
        message: &PreKeyMessage,
        now: u64,
    ) -> Result<InboundSession, X3dhError> {
        if message.sender_user != expected_sender {
            return Err(X3dhError::SenderMismatch);
        }
        if record.user_id() != message.sender_user || record.device_id() != message.sender_device {
            return Err(X3dhError::RecordMismatch);
        }
        if record.has_base_key(&message.base_key) {
            let mut record = record.clone();
            let plaintext = record.decrypt(
                rng,
                &crate::session_record::IncomingMessage::PreKey(Box::new(message.clone())),
                now,
            )?;
            return Ok(InboundSession {
                record,
                plaintext,
                used_one_time_key: None,
                sender_identity: message.identity_key,
                existing_session: true,
            });
        }
        let spk = self
            .signed_prekeys
            .iter()
            .find(|k| k.id.0 == message.signed_prekey_id)
            .ok_or(X3dhError::UnknownSignedPreKey(message.signed_prekey_id))?;
        let otk = match message.one_time_key_id {
            Some(id) => Some(
                self.one_time_keys
                    .get(&id)
                    .ok_or(X3dhError::UnknownOneTimeKey(id))?,
            ),
            None => None,
        };
        let peer_ik = message.identity_key.to_curve25519();
        let own = self.identity.to_curve25519_secret();
        let dh1 = diffie_hellman(&spk.secret, &peer_ik)?;
        let dh2 = diffie_hellman(&own, &message.base_key)?;
        let dh3 = diffie_hellman(&spk.secret, &message.base_key)?;
        let sk = match otk {
            Some(otk) => {
                let dh4 = diffie_hellman(&otk.secret, &message.base_key)?;
                shared_secret(&[&dh1, &dh2, &dh3, &dh4])
            }
            None => shared_secret(&[&dh1, &dh2, &dh3]),
        };
        let (own_ik, own_user, own_device) = self.party();
        let ad = associated_data(
            &Party {
                user_id: &message.sender_user,
                device_id: &message.sender_device,
                identity_key: &message.identity_key,
            },
            &Party {
                user_id: own_user,
                device_id: own_device,
                identity_key: &own_ik,
            },
        );
        let mut session = Session::new_responder(
            sk,
            ad,
            message.identity_key,
            spk.secret.clone(),
            message.base_key,
        );
        let plaintext = session.decrypt(rng, &message.message, now)?;
        let mut record = record.clone();
        record.promote(session);
        Ok(InboundSession {
            record,
            plaintext,
            used_one_time_key: message.one_time_key_id.map(KeyId),
            sender_identity: message.identity_key,
            existing_session: false,
        })
    }

    /// Versioned binary serialization (secrets included; encrypt with [`crate::pickle`]).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new();
        w.u8(STATE_VERSION);
        w.bytes16(self.user_id.as_bytes());
        w.bytes16(self.device_id.as_bytes());
        w.raw(self.identity.seed().as_ref());
        w.u32(self.next_key_id);
        w.u32(self.signed_prekeys.len() as u32);
        for k in &self.signed_prekeys {
            w.u32(k.id.0);
            w.raw(k.secret.to_bytes().as_ref());
            w.u64(k.created_at);
            w.option(k.retired_at.as_ref(), |w, v| w.u64(*v));
        }
        w.u32(self.one_time_keys.len() as u32);
        for (id, k) in &self.one_time_keys {
            w.u32(*id);
            w.raw(k.secret.to_bytes().as_ref());
            w.u8(u8::from(k.published));
        }
        w.into_bytes()
    }

    /// Parses [`Account::to_bytes`]. Key ids stay unique: every stored id is below the
    /// stored id counter, which is checked.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_STATE_LEN {
            return Err(DecodeError::TooLong {
                field: "account",
                len: bytes.len(),
                max: MAX_STATE_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != STATE_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let user_id = r.string16("user_id", MAX_ID_LEN)?;
        let device_id = r.string16("device_id", MAX_ID_LEN)?;
        let identity = IdentityKeyPair::from_seed(&Zeroizing::new(r.array()?));
        let next_key_id = r.u32()?;
        let n = r.count("signed_prekeys", MAX_SIGNED_PREKEYS)?;
        let mut signed_prekeys = Vec::with_capacity(n);
        for _ in 0..n {
            let id = r.u32()?;
            let secret = Curve25519Secret::from_bytes(*Zeroizing::new(r.array()?));
            let created_at = r.u64()?;
            let retired_at = r.option("retired_at", |r| r.u64())?;
            if id >= next_key_id {
                return Err(DecodeError::InvalidField("signed prekey id"));
            }
            signed_prekeys.push(SignedPreKey {
                id: KeyId(id),
                secret,
                created_at,
                retired_at,
            });
        }
        let n = r.count("one_time_keys", MAX_ONE_TIME_KEYS)?;
        let mut one_time_keys = BTreeMap::new();
        for _ in 0..n {
            let id = r.u32()?;
            let secret = Curve25519Secret::from_bytes(*Zeroizing::new(r.array()?));
            let published = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(DecodeError::InvalidField("published")),
            };
            if id >= next_key_id
                || one_time_keys
                    .insert(id, OneTimePreKey { secret, published })
                    .is_some()
            {
                return Err(DecodeError::InvalidField("one-time key id"));
            }
        }
        r.finish()?;
        if !valid_id(&user_id) || !valid_id(&device_id) {
            return Err(DecodeError::InvalidField("identifier"));
        }
        Ok(Self {
            user_id,
            device_id,
            identity,
            next_key_id,
            signed_prekeys,
            one_time_keys,
        })
    }
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("identity", &self.identity.public_key())
            .field("signed_prekeys", &self.signed_prekeys.len())
            .field("one_time_keys", &self.one_time_keys.len())
            .finish_non_exhaustive()
    }
}
